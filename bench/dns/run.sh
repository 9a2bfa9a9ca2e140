#!/usr/bin/env bash
# dnsperf against mxlb's DNS (bench/dns: a fixed state, RRL off) and against NSD serving
# the same zone, one after the other, on 127.0.0.1 high ports. Prints qps and latency and
# their ratios. Needs dnsperf and nsd (apt packages dnsperf, nsd; installed here when
# running as root and missing).
#   DURATION=10 CLIENTS=4 NSD_SERVERS=1 bench/dns/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
NSD_SERVERS=${NSD_SERVERS:-1}
MXLB_PORT=${MXLB_PORT:-53530}
NSD_PORT=${NSD_PORT:-53531}

if ! command -v dnsperf >/dev/null || ! command -v nsd >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dnsperf nsd >/dev/null
	else
		echo "bench/dns: needs dnsperf and nsd (apt-get install dnsperf nsd); skipping" >&2
		exit 0
	fi
fi
NSD=$(command -v nsd || echo /usr/sbin/nsd)

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

# The same zone as bench/dns/main.go's spec.
cat >"$work/bench.test.zone" <<ZONE
\$ORIGIN bench.test.
\$TTL 30
@     SOA ns1.bench.test. hostmaster.bench.test. 1 3600 600 1209600 30
@     NS  ns1
@     MX  10 mx-rr
ns1   A   198.18.0.53
ZONE
for i in 1 2 3 4 5 6 7 8; do echo "mx-rr A 198.18.1.$i" >>"$work/bench.test.zone"; done

cat >"$work/queries" <<Q
mx-rr.bench.test A
bench.test MX
nope.bench.test A
mx-rr.bench.test AAAA
Q

cat >"$work/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@$NSD_PORT
  username: ""
  chroot: ""
  zonesdir: "$work"
  database: ""
  zonelistfile: "$work/zone.list"
  xfrdfile: "$work/xfrd.state"
  xfrdir: "$work"
  pidfile: "$work/nsd.pid"
  logfile: "$work/nsd.log"
  server-count: $NSD_SERVERS
  rrl-ratelimit: 0
  minimal-responses: yes
  verbosity: 0
remote-control:
  control-enable: no
zone:
  name: bench.test.
  zonefile: bench.test.zone
CONF

wait_port() { # port
	for _ in $(seq 100); do
		ss -Hlun "sport = :$1" | grep -q . && return 0
		sleep 0.1
	done
	echo "bench/dns: nothing listens on udp $1" >&2
	return 1
}

perf() { # name port
	dnsperf -s 127.0.0.1 -p "$2" -d "$work/queries" -l "$DURATION" -c "$CLIENTS" -q 200 >"$work/$1.out" 2>&1
	qps=$(awk '/Queries per second/ {print $4}' "$work/$1.out")
	lat=$(awk '/Average Latency/ {print $4}' "$work/$1.out")
	lost=$(awk '/Queries lost/ {print $3}' "$work/$1.out")
	printf '%-5s qps %10.0f  avg latency %8.1f us  lost %s\n' "$1" "$qps" "$(awk "BEGIN{print $lat*1000000}")" "$lost"
	eval "${1}_qps=$qps ${1}_lat=$lat"
}

go build -o "$work/mxlb-dns" ./bench/dns
"$work/mxlb-dns" -addr "127.0.0.1:$MXLB_PORT" >"$work/mxlb.log" 2>&1 &
pids+=($!)
wait_port "$MXLB_PORT"
perf mxlb "$MXLB_PORT"

"$NSD" -d -c "$work/nsd.conf" >"$work/nsd.out" 2>&1 &
pids+=($!)
wait_port "$NSD_PORT"
perf nsd "$NSD_PORT"

echo "nproc $(nproc), GOMAXPROCS ${GOMAXPROCS:-default}, nsd server-count $NSD_SERVERS, dnsperf -c $CLIENTS -q 200 -l $DURATION"
awk "BEGIN{printf \"mxlb/nsd: qps %.2f  latency %.2f\\n\", $mxlb_qps/$nsd_qps, $mxlb_lat/$nsd_lat}"

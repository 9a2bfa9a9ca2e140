#!/usr/bin/env bash
# Regenerates exim.log from a real Exim run. Exim and Postfix conflict as Debian packages, so
# the exim4 .debs are downloaded and unpacked (dpkg -x), never installed, and run in a private
# mount namespace whose /etc/passwd copy has the compiled-in Debian-exim user. Exim listens on
# 127.0.0.1; its "internet" is three smtp-sinks: accept, tempfail every RCPT (retry rule of
# seconds so the address times out: `**` with retry timeout), reject every RCPT. Needs root,
# apt-get, smtp-sink, swaks. Loopback only; never port 25.
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)/exim.log
base=$(mktemp -d /var/tmp/mxlb-trace-exim.XXXXXX); chmod 755 "$base"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$base"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PE=$(port); SOK=$(port); SD=$(port); SB=$(port)
(cd "$base" && apt-get download -q exim4-daemon-light exim4-base libidn12 >/dev/null 2>&1)
for f in "$base"/*.deb; do dpkg -x "$f" "$base/root"; done
uid=64123
cp /etc/passwd "$base/passwd"; cp /etc/group "$base/group"
echo "Debian-exim:x:$uid:$uid::$base:/usr/sbin/nologin" >> "$base/passwd"
echo "Debian-exim:x:$uid:" >> "$base/group"
mkdir -p "$base/spool" "$base/log"; chown -R $uid:$uid "$base/spool" "$base/log"
cat > "$base/exim.conf" <<EOT
primary_hostname = exim.mxlb.test
keep_environment =
spool_directory = $base/spool
log_file_path = $base/log/%slog
log_selector = +incoming_port +outgoing_port +received_recipients +smtp_confirmation +deliver_time +queue_time
daemon_smtp_ports = $PE
local_interfaces = 127.0.0.1
never_users = nobody
host_lookup =
rfc1413_hosts =
acl_smtp_rcpt = acl_check_rcpt
begin acl
acl_check_rcpt:
  deny message = relay not permitted
       !domains = ok.test : defer.test : bounce.test
  accept
begin routers
ok:
  driver = manualroute
  domains = ok.test
  transport = remote_ok
  route_list = * 127.0.0.1
  self = send
defer:
  driver = manualroute
  domains = defer.test
  transport = remote_defer
  route_list = * 127.0.0.1
  self = send
bounce:
  driver = manualroute
  domains = bounce.test
  transport = remote_bounce
  route_list = * 127.0.0.1
  self = send
begin transports
remote_ok:
  driver = smtp
  port = $SOK
  allow_localhost
  hosts_avoid_tls = *
remote_defer:
  driver = smtp
  port = $SD
  allow_localhost
  hosts_avoid_tls = *
remote_bounce:
  driver = smtp
  port = $SB
  allow_localhost
  hosts_avoid_tls = *
begin retry
defer.test * F,4s,2s
* * F,2h,15m
EOT
cat > "$base/run.sh" <<EOT
#!/bin/bash
mount --bind $base/passwd /etc/passwd
mount --bind $base/group /etc/group
# Exim re-executes itself as /usr/sbin/exim4 (compiled in) with a clean environment: lay the
# unpacked binary and its libidn over the system's folders, in this namespace only.
mount -t overlay overlay -o lowerdir=$base/root/usr/sbin:/usr/sbin /usr/sbin
mount -t overlay overlay -o lowerdir=$base/root/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu
exec $base/root/usr/sbin/exim4 -C $base/exim.conf "\$@"
EOT
chmod +x "$base/run.sh"
smtp-sink -u nobody 127.0.0.1:$SOK 10 & pids+=($!)
smtp-sink -u nobody -r RCPT 127.0.0.1:$SD 10 & pids+=($!)
smtp-sink -u nobody -f RCPT 127.0.0.1:$SB 10 & pids+=($!)
unshare -m "$base/run.sh" -bdf -odf & pids+=($!)
for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PE) 2>/dev/null && break; sleep 0.1; done
sw() { swaks -s 127.0.0.1 -p "$PE" "$@" --h-Subject trace-fixture --body fixture >/dev/null 2>&1 || true; }
sw -f alice@ok.test -t bob@ok.test,carol@ok.test        # => then ->
sw -f alice@ok.test -t dave@ok.test,erin@defer.test     # => and ==
sw -f alice@ok.test -t frank@bounce.test                # ** and a bounce message <= <>
sw -f mallory@ok.test -t victim@elsewhere.example       # rejected RCPT
sleep 6
unshare -m "$base/run.sh" -qff; sleep 2                 # defer.test past its retry limit: **
kill "${pids[3]}" 2>/dev/null || true; wait "${pids[3]}" 2>/dev/null || true
# "lost privilege" lines come from running with -C as root (a harness artefact); some of
# them land without a line break, so the lines are split on the date first.
sed -E "s#$base#/var/spool/exim4#g; s#([^\n])(20[0-9]{2}-[0-9]{2}-[0-9]{2} )#\1\n\2#g" "$base/log/mainlog" | grep -v "lost privilege for using -C" > "$out"
echo "wrote $(wc -l < "$out") lines to $out"

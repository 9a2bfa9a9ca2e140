#!/usr/bin/env bash
# Regenerates postfix.log: a private Postfix "A" on 127.0.0.1 relays to a second private
# Postfix "B" (a real `queued as` link), to an smtp-sink that tempfails every RCPT (deferred,
# then expired) and to one that rejects (bounced + non-delivery notification); smtpd rejects
# a relay attempt (NOQUEUE) and postscreen rejects a listed client. Needs root, postfix,
# smtp-sink, swaks. Loopback only; never port 25.
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)/postfix.log
base=$(mktemp -d /var/tmp/mxlb-trace-pf.XXXXXX); chmod 755 "$base"
pids=()
cleanup() {
  for d in A B; do [ -d "$base/$d" ] && postfix -c "$base/$d/conf" stop >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$base"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PA=$(port); PS=$(port); PB=$(port); SD=$(port); SB=$(port)
mk() { # name port extra-main-lines...
  local n=$1 p=$2; shift 2; local d=$base/$n
  mkdir -p "$d/conf" "$d/queue" "$d/data"; chown postfix "$d/data"
  sed -E "s/^smtp +inet .*/127.0.0.1:$p inet n - n - - smtpd/" /etc/postfix/master.cf.proto > "$d/conf/master.cf"
  cat > "$d/conf/main.cf" <<EOT
compatibility_level = 3.6
queue_directory = $d/queue
data_directory = $d/data
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = $n.mxlb.test
mydestination =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
maillog_file = $d/maillog
maillog_file_prefixes = $base
smtpd_client_port_logging = yes
smtp_tls_security_level = none
EOT
  printf '%s\n' "$@" >> "$d/conf/main.cf"
}
printf 'ok.test discard:\npipe.test mypipe:\n' > "$base/transportB"
mk B "$PB" "relay_domains = ok.test, pipe.test" "transport_maps = texthash:$base/transportB" "default_transport = discard" "smtpd_relay_restrictions = permit_mynetworks, reject"
printf 'mypipe unix - n n - - pipe\n  flags=q user=nobody argv=/bin/true\n' >> "$base/B/conf/master.cf"
printf 'ok.test smtp:[127.0.0.1]:%s\npipe.test smtp:[127.0.0.1]:%s\ndefer.test smtp:[127.0.0.1]:%s\nbounce.test smtp:[127.0.0.1]:%s\n' "$PB" "$PB" "$SD" "$SB" > "$base/transport"
echo "127.0.0.3 reject" > "$base/psacl"
mk A "$PA" "relay_domains = ok.test, pipe.test, defer.test, bounce.test" "transport_maps = texthash:$base/transport" \
  "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination" \
  "smtpd_recipient_restrictions = reject_unauth_destination" \
  "smtp_skip_5xx_greeting = no" "bounce_queue_lifetime = 0" "maximal_queue_lifetime = 0" \
  "postscreen_access_list = permit_mynetworks, cidr:$base/psacl" "postscreen_blacklist_action = enforce"
# A also listens through postscreen on a second port.
printf '127.0.0.1:%s inet n - n - 1 postscreen\nsmtpd pass - - n - - smtpd\ndnsblog unix - - n - 0 dnsblog\ntlsproxy unix - - n - 0 tlsproxy\n' "$PS" >> "$base/A/conf/master.cf"
# postscreen's permit_mynetworks would let 127.0.0.3 pass; list it first.
sed -i "s|^postscreen_access_list = .*|postscreen_access_list = cidr:$base/psacl, permit_mynetworks|" "$base/A/conf/main.cf"
smtp-sink -u nobody -r RCPT 127.0.0.1:$SD 10 & pids+=($!)
smtp-sink -u nobody -f RCPT 127.0.0.1:$SB 10 & pids+=($!)
for d in B A; do script -qc "postfix -c $base/$d/conf start" /dev/null; done
for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PA) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$PB) 2>/dev/null && break; sleep 0.1; done
sw() { swaks -s 127.0.0.1 -p "$@" --h-Subject trace-fixture --body "fixture" >/dev/null 2>&1 || true; }
# delivered, relayed to B (queued as ...), two recipients in one message
sw "$PA" -f alice@ok.test -t bob@ok.test,carol@ok.test
# relayed to B, which hands it to a pipe(8) transport
sw "$PA" -f alice@ok.test -t zed@pipe.test
# one recipient delivered, one tempfailed (deferred; expired at the next queue run)
sw "$PA" -f alice@ok.test -t dave@ok.test,erin@defer.test
# rejected by the remote: bounced, notification to the sender (relayed to B)
sw "$PA" -f alice@ok.test -t frank@bounce.test
# smtpd refuses to relay: NOQUEUE reject
sw "$PA" -f mallory@ok.test -t victim@elsewhere.example
# postscreen refuses a listed client
sw "$PS" --local-interface 127.0.0.3 -f spam@ok.test -t bob@ok.test
sleep 3
postqueue -c "$base/A/conf" -f; sleep 3
cat "$base/A/maillog" "$base/B/maillog" | sed -E "s#$base#/var/spool#g" > "$out"
echo "wrote $(wc -l < "$out") lines to $out"

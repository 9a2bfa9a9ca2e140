#!/usr/bin/env bash
# Installs what `make test` and `make bench` need. As root it installs the Debian packages
# (real peers for the integration tests and benchmarks); otherwise it says what is missing
# and the tests that need them skip. Go tools are installed into $(go env GOPATH)/bin.
set -euo pipefail

pkgs=(postfix swaks haproxy dnsutils iproute2 strace procps keepalived tcpdump iputils-arping util-linux libnet-ssleay-perl nginx-light libnginx-mod-mail)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "deps: installing ${need[*]}"
    # Postfix must not start a daemon on port 25 or ask questions.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || true
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
    # The package may start haproxy/postfix services; the tests run their own instances.
    (systemctl stop haproxy postfix keepalived nginx 2>/dev/null || service haproxy stop 2>/dev/null || true) >/dev/null 2>&1
    pkill -x haproxy 2>/dev/null || true
    pkill -x nginx 2>/dev/null || true
    pkill -x keepalived 2>/dev/null || true
  else
    echo "deps: not root, not installing ${need[*]}: integration tests that need them will skip"
  fi
fi

gobin=$(go env GOPATH)/bin
if [ ! -x "$gobin/staticcheck" ]; then
  echo "deps: installing staticcheck"
  go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi

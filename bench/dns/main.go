// Command dns serves a fixed mxlb DNS state for bench/dns/run.sh: zone bench.test. with a
// pool record of 8 healthy backends, an MX and a static A record; rate limiting off.
// It serves until SIGINT/SIGTERM. Not part of mxlb.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/dnsrr"
	"github.com/mxlb/mxlb/pool"
)

const spec = `
pools:
  - name: mx
    health: {disabled: true}
    backends:
      - {address: 198.18.1.1:25}
      - {address: 198.18.1.2:25}
      - {address: 198.18.1.3:25}
      - {address: 198.18.1.4:25}
      - {address: 198.18.1.5:25}
      - {address: 198.18.1.6:25}
      - {address: 198.18.1.7:25}
      - {address: 198.18.1.8:25}
frontends:
  - {name: mx, listen: 198.18.0.100:25, pool: mx}
dns:
  listen: 127.0.0.1:53
  rate_limit: 0
  zones:
    - name: bench.test.
      ttl: 30
      ns: [ns1]
      records:
        - {name: mx-rr, pool: mx}
        - {name: "@", type: MX, preference: 10, exchange: mx-rr}
        - {name: ns1, type: A, values: [198.18.0.53]}
`

func main() {
	addr := flag.String("addr", "127.0.0.1:5300", "UDP and TCP address to serve")
	flag.Parse()
	if err := run(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "bench/dns:", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	s, err := config.ParseSpec("bench", []byte(spec))
	if err != nil {
		return err
	}
	tab := pool.NewTable(nil)
	tab.SetSpec(*s)
	srv := dnsrr.New(dnsrr.Options{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Ready:  func(udp, _ net.Addr) { fmt.Println("ready", udp) },
	})
	if err := srv.Update(dnsrr.State{Spec: *s, View: tab.View(), Now: time.Now()}); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return srv.ListenAndServe(ctx, addr)
}

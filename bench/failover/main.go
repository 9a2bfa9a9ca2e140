// Command failover measures how long a floating VIP is unreachable after the node holding
// it crashes (SIGKILL and its link down), for keepalived (VRRP, advert_int 1) and for mxlb
// at two failover budgets, in the same network-namespace lab: a bridge, lb1..lb3
// (198.18.0.11-13), a client (198.18.0.2) that connects to 198.18.0.100:25 every 20 ms,
// and smtp-sink backends. It prints the median and range of -runs kills per contender.
// The BGP rows (bgp.go; with bird2 installed) put the VIP in mode bgp behind a bird2
// router, with BFD and on the hold time alone, and also time a crashed node's return.
// Needs root, ip, smtp-sink and keepalived; every namespace it makes is removed at exit.
//
//	go build -o bin/mxlb ./cmd/mxlb && go run ./bench/failover -mxlb bin/mxlb
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	vip      = "198.18.0.100"
	frontend = vip + ":25"
	nodes    = 3
)

// clientNS is where probes come from: cl on the nodes' segment, bc behind the router.
var clientNS = "cl"

var prefix = fmt.Sprintf("mxfo%d", os.Getpid()%10000)

func main() {
	mxlb := flag.String("mxlb", "bin/mxlb", "mxlb binary")
	runs := flag.Int("runs", 5, "kills per contender")
	budgets := flag.String("budgets", "1s,0.3s", "mxlb failover budgets to measure, comma-separated")
	noKeepalived := flag.Bool("no-keepalived", false, "measure mxlb only")
	bgpRows := flag.String("bgp", "200ms,", "BGP rows: BFD intervals, comma-separated; an empty item is the hold time (3s) alone; \"off\" skips them")
	flag.Parse()
	if os.Geteuid() != 0 {
		fail("needs root (network namespaces)")
	}
	for _, tool := range []string{"ip", "keepalived", "/usr/sbin/smtp-sink"} {
		if _, err := exec.LookPath(tool); err != nil {
			fail("needs %s (make deps)", tool)
		}
	}
	tmp, err := os.MkdirTemp("", "mxlb-failover-")
	check(err)
	os.Chmod(tmp, 0o755)
	if os.Getenv("FAILOVER_KEEP") == "" {
		defer os.RemoveAll(tmp)
	}
	fmt.Println("work dir", tmp)
	defer cleanup()
	setupLab()

	type row struct {
		name string
		outs []time.Duration
	}
	var rows []row
	if !*noKeepalived {
		rows = append(rows, row{"keepalived advert_int 1", measureKeepalived(tmp, *runs)})
	}
	for _, b := range strings.Split(*budgets, ",") {
		if b != "" {
			rows = append(rows, row{"mxlb failover_budget " + b, measureMxlb(tmp, *mxlb, b, *runs)})
		}
	}
	var returns []row
	if _, err := exec.LookPath("bird"); err != nil && *bgpRows != "off" {
		fmt.Println("no bird (bird2): BGP rows skipped")
	} else if *bgpRows != "off" {
		for _, b := range strings.Split(*bgpRows, ",") {
			name := "mxlb bgp, hold_time 3s"
			if b != "" {
				name = "mxlb bgp, BFD " + b + " x 3"
			}
			outs, back := measureBGP(tmp, *mxlb, b, *runs)
			rows = append(rows, row{name, outs})
			returns = append(returns, row{name, back})
		}
	}
	fmt.Printf("\nVIP outage after SIGKILL + link down of the holder (client connects every 20 ms), %d runs each\n", *runs)
	fmt.Println("(bgp rows: link down, then SIGKILL, of one of the three announcing nodes; the outage is what the clients hashed to it see)")
	fmt.Printf("%-28s %10s %10s %10s  %s\n", "contender", "median", "min", "max", "runs")
	base := median(rows[0].outs)
	for _, r := range rows {
		var all []string
		for _, o := range r.outs {
			all = append(all, ms(o))
		}
		ratio := ""
		if !*noKeepalived {
			ratio = fmt.Sprintf("  (%.2fx keepalived)", float64(median(r.outs))/float64(base))
		}
		fmt.Printf("%-28s %10s %10s %10s  %s%s\n", r.name, ms(median(r.outs)), ms(slices.Min(r.outs)),
			ms(slices.Max(r.outs)), strings.Join(all, " "), ratio)
	}
	if len(returns) > 0 {
		fmt.Printf("\nBGP: from the crashed node's restart to its next hop back at the router\n")
		for _, r := range returns {
			var all []string
			for _, o := range r.outs {
				all = append(all, ms(o))
			}
			fmt.Printf("%-28s %10s %10s %10s  %s\n", r.name, ms(median(r.outs)), ms(slices.Min(r.outs)), ms(slices.Max(r.outs)), strings.Join(all, " "))
		}
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func fail(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "failover: "+f+"\n", a...)
	cleanup()
	os.Exit(1)
}

func check(err error) {
	if err != nil {
		fail("%v", err)
	}
}

func ns(name string) string { return prefix + "-" + name }

func ip(args ...string) {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		fail("ip %s: %v %s", strings.Join(args, " "), err, out)
	}
}

var procs []*exec.Cmd

// spawn starts a command inside namespace n in its own process group.
func spawn(n string, logf string, name string, args ...string) *exec.Cmd {
	c := exec.Command("ip", append([]string{"netns", "exec", ns(n), name}, args...)...)
	if logf != "" {
		f, err := os.Create(logf)
		check(err)
		c.Stdout, c.Stderr = f, f
	}
	// No Pdeathsig: it fires when the spawning OS thread exits, and inNS discards threads.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	check(c.Start())
	procs = append(procs, c)
	return c
}

func kill(c *exec.Cmd) {
	syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
	c.Wait()
}

func cleanup() {
	for _, c := range procs {
		if c.ProcessState == nil {
			syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			c.Wait()
		}
	}
	procs = nil
	for _, h := range []string{"sw", "cl", "be", "lb1", "lb2", "lb3", "rt", "bc"} {
		exec.Command("ip", "netns", "del", ns(h)).Run()
	}
}

func setupLab() {
	ip("netns", "add", ns("sw"))
	ip("-n", ns("sw"), "link", "add", "br0", "type", "bridge", "forward_delay", "0")
	ip("-n", ns("sw"), "link", "set", "br0", "up")
	host := func(name string, addrs ...string) {
		ip("netns", "add", ns(name))
		ip("-n", ns("sw"), "link", "add", "v"+name, "type", "veth", "peer", "name", "eth0", "netns", ns(name))
		ip("-n", ns("sw"), "link", "set", "v"+name, "master", "br0", "up")
		exec.Command("ip", "netns", "exec", ns(name), "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1").Run()
		for _, a := range addrs {
			ip("-n", ns(name), "addr", "add", a, "dev", "eth0")
		}
		ip("-n", ns(name), "link", "set", "lo", "up")
		ip("-n", ns(name), "link", "set", "eth0", "up")
	}
	host("cl", "198.18.0.2/24")
	host("be", "198.18.0.21/24")
	for i := 1; i <= nodes; i++ {
		host(fmt.Sprintf("lb%d", i), fmt.Sprintf("198.18.0.%d/24", 10+i))
	}
	spawn("be", "", "/usr/sbin/smtp-sink", "-u", "nobody", "198.18.0.21:25", "256")
}

// inNS runs f on a thread switched into namespace n (sockets it opens stay there).
func inNS(n string, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread is discarded
		h, err := netns.GetFromName(ns(n))
		if err != nil {
			return // the lab is being torn down
		}
		defer h.Close()
		if netns.Set(h) == nil {
			f()
		}
	}()
	<-done
}

// probe connects to the VIP from the client and reads the greeting, within 300 ms.
func probe() bool {
	ok := false
	inNS(clientNS, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", frontend)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(300 * time.Millisecond))
		line, err := bufio.NewReader(c).ReadString('\n')
		ok = err == nil && strings.HasPrefix(line, "220")
	})
	return ok
}

// holders lists the lb hosts whose eth0 has the VIP.
func holders() []int {
	var out []int
	for i := 1; i <= nodes; i++ {
		h, err := netns.GetFromName(ns(fmt.Sprintf("lb%d", i)))
		check(err)
		nh, err := netlink.NewHandleAt(h)
		h.Close()
		check(err)
		l, err := nh.LinkByName("eth0")
		check(err)
		as, err := nh.AddrList(l, netlink.FAMILY_V4)
		check(err)
		nh.Close()
		if slices.ContainsFunc(as, func(a netlink.Addr) bool { return a.IP.String() == vip }) {
			out = append(out, i)
		}
	}
	return out
}

func waitFor(d time.Duration, what string, cond func() bool) {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			fail("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// res is one probe's result: when it was started and whether it succeeded.
type res struct {
	at time.Time
	ok bool
}

// startProbes starts a client probe every 20 ms (each on its own goroutine, so a slow
// failure does not delay the next) until stop is called.
func startProbes() (<-chan res, func()) {
	results := make(chan res, 4096)
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case at := <-t.C:
				go func() { results <- res{at, probe()} }()
			}
		}
	}()
	return results, func() { close(done) }
}

// outage kills the single holder (kill, then link down) and returns the time until the
// client's probes, started every 20 ms, succeed again and keep succeeding for 1 s.
func outage(killHolder func(i int)) (time.Duration, int) {
	var h []int
	waitFor(20*time.Second, "one VIP holder", func() bool { h = holders(); return len(h) == 1 })
	waitFor(10*time.Second, "the VIP answering", probe)
	results, stop := startProbes()
	killed := time.Now()
	killHolder(h[0])
	ip("-n", ns(fmt.Sprintf("lb%d", h[0])), "link", "set", "eth0", "down")
	// Probes finish out of order (a failed one after its 300 ms timeout, a good one at
	// once), so collect them all and decide at the end: the outage ends at the first good
	// probe started after the last failed one.
	var all []res
	for {
		r := <-results
		if r.at.Before(killed) {
			continue
		}
		all = append(all, r)
		if time.Since(killed) > 30*time.Second {
			fail("the VIP did not come back within 30s")
		}
		if r.ok && time.Since(r.at) < 100*time.Millisecond && time.Since(killed) > 3*time.Second {
			break // well past any failover: settled
		}
	}
	lastFail, firstOK := time.Time{}, time.Time{}
	for _, r := range all {
		if !r.ok && r.at.After(lastFail) {
			lastFail = r.at
		}
	}
	for _, r := range all {
		if r.ok && r.at.After(lastFail) && (firstOK.IsZero() || r.at.Before(firstOK)) {
			firstOK = r.at
		}
	}
	stop()
	if os.Getenv("FAILOVER_VERBOSE") != "" {
		fmt.Printf("  killed %s, last failed probe %s, first good probe %s\n", killed.UTC().Format("15:04:05.000"),
			lastFail.UTC().Format("15:04:05.000"), firstOK.UTC().Format("15:04:05.000"))
	}
	if lastFail.IsZero() {
		fmt.Println("  warning: no probe failed after the kill (was the killed node serving the VIP?)")
		return 0, h[0]
	}
	return firstOK.Sub(killed), h[0]
}

func measureKeepalived(tmp string, runs int) []time.Duration {
	cmds := map[int]*exec.Cmd{}
	startK := func(i int) {
		conf := filepath.Join(tmp, fmt.Sprintf("keepalived%d.conf", i))
		os.WriteFile(conf, []byte(fmt.Sprintf(`global_defs {
  router_id lb%d
  enable_script_security
}
vrrp_instance mx {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority %d
  nopreempt
  advert_int 1
  virtual_ipaddress {
    %s/24 dev eth0
  }
}
`, i, 200-10*i, vip)), 0o644)
		cmds[i] = spawn(fmt.Sprintf("lb%d", i), filepath.Join(tmp, fmt.Sprintf("keepalived%d.log", i)), "keepalived",
			"-n", "-l", "-P", "-f", conf, "-p", filepath.Join(tmp, fmt.Sprintf("k%d.pid", i)),
			"-r", filepath.Join(tmp, fmt.Sprintf("k%d-vrrp.pid", i)))
	}
	var sinks []*exec.Cmd
	for i := 1; i <= nodes; i++ {
		// What answers on the VIP at each node (mxlb's place): a sink on every address.
		sinks = append(sinks, spawn(fmt.Sprintf("lb%d", i), "", "/usr/sbin/smtp-sink", "-u", "nobody", "0.0.0.0:25", "256"))
		startK(i)
	}
	var outs []time.Duration
	for r := 0; r < runs; r++ {
		d, killed := outage(func(i int) { kill(cmds[i]) })
		fmt.Printf("keepalived run %d: holder lb%d killed, outage %s\n", r+1, killed, ms(d))
		outs = append(outs, d)
		// A killed keepalived leaves its VIP configured.
		exec.Command("ip", "-n", ns(fmt.Sprintf("lb%d", killed)), "addr", "del", vip+"/24", "dev", "eth0").Run()
		ip("-n", ns(fmt.Sprintf("lb%d", killed)), "link", "set", "eth0", "up")
		startK(killed)
		// nopreempt (like mxlb's default): the restarted node stays backup.
		logf := filepath.Join(tmp, fmt.Sprintf("keepalived%d.log", killed))
		waitFor(20*time.Second, "keepalived settled", func() bool {
			b, _ := os.ReadFile(logf)
			h := holders()
			return strings.Contains(string(b), "Entering BACKUP STATE") && len(h) == 1 && h[0] != killed && probe()
		})
	}
	for _, c := range cmds {
		kill(c)
	}
	for _, c := range sinks {
		kill(c)
	}
	for i := 1; i <= nodes; i++ { // SIGKILLed keepalived leaves the VIP behind
		exec.Command("ip", "-n", ns(fmt.Sprintf("lb%d", i)), "addr", "del", vip+"/24", "dev", "eth0").Run()
	}
	waitFor(10*time.Second, "keepalived gone", func() bool { return len(holders()) == 0 })
	return outs
}

func measureMxlb(tmp, bin, budget string, runs int) []time.Duration {
	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(tmp, "cluster.key")
	check(os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o644))
	cmds := map[int]*exec.Cmd{}
	startN := func(i int) {
		dir := filepath.Join(tmp, fmt.Sprintf("mxlb-%s-lb%d", budget, i))
		os.MkdirAll(dir, 0o755)
		var join []string
		for j := 1; j <= nodes; j++ {
			if j != i {
				join = append(join, fmt.Sprintf("198.18.0.%d:7946", 10+j))
			}
		}
		cfg := fmt.Sprintf(`node:
  name: lb%d
  cluster_addr: 198.18.0.%d:7946
  admin_addr: 127.0.0.1:8025
  state_dir: %s/state
  drain_timeout: 2s
cluster:
  join: [%s]
  key_file: %s
  failover_budget: %s
spec:
  pools:
    - name: mx
      health: {interval: 1s, timeout: 1s, rise: 1, fall: 3, helo: bench.example}
      backends:
        - {address: "198.18.0.21:25"}
  frontends:
    - {name: mx, listen: %q, pool: mx}
  vips:
    - {address: %s/24}
`, i, 10+i, dir, strings.Join(join, ", "), keyFile, budget, frontend, vip)
		check(os.WriteFile(filepath.Join(dir, "mxlb.yaml"), []byte(cfg), 0o644))
		cmds[i] = spawn(fmt.Sprintf("lb%d", i), filepath.Join(dir, "log"), bin, "serve", "--config", filepath.Join(dir, "mxlb.yaml"))
	}
	for i := 1; i <= nodes; i++ {
		startN(i)
	}
	var outs []time.Duration
	for r := 0; r < runs; r++ {
		d, killed := outage(func(i int) { kill(cmds[i]) })
		fmt.Printf("mxlb %s run %d: holder lb%d killed, outage %s\n", budget, r+1, killed, ms(d))
		outs = append(outs, d)
		ip("-n", ns(fmt.Sprintf("lb%d", killed)), "link", "set", "eth0", "up")
		startN(killed) // removes its stale VIP, rejoins
		// Let the restarted node rejoin before the next kill (its stale VIP gone, one holder).
		logf := filepath.Join(tmp, fmt.Sprintf("mxlb-%s-lb%d", budget, killed), "log")
		waitFor(20*time.Second, "the restarted node rejoined", func() bool {
			b, _ := os.ReadFile(logf)
			h := holders()
			return strings.Count(string(b), "joined the cluster\"") >= 1 && len(h) == 1 && h[0] != killed && probe()
		})
	}
	for _, c := range cmds {
		syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
		c.Wait()
	}
	waitFor(10*time.Second, "mxlb gone", func() bool { return len(holders()) == 0 })
	return outs
}

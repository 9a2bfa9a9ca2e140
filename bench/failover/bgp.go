package main

// The BGP rows: the same three nodes announce the VIP as a /32 to bird2 in namespace rt
// (198.18.0.1), which routes a client of its own (namespace bc, 198.19.0.2) to it by
// ECMP. A crash here is the machine dying: its link goes down first, then the process
// is killed (a process killed with its link up closes its BGP sessions at once, which
// a dead machine does not). The outage is what the clients hashed to the dead node see:
// probes every 20 ms from new source ports, until the router has dropped its next hop.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const bgpBird = `router id 198.18.0.1;
log "%s" all;
protocol device { scan time 10; }
protocol kernel { ipv4 { import none; export all; }; merge paths on; }
protocol bfd { interface "eth0" { min rx interval %[2]s; min tx interval %[2]s; multiplier 3; }; }
template bgp lb { local 198.18.0.1 as 65000; hold time 3; connect retry time 1; error wait time 1, 5; %[3]s ipv4 { import all; export none; }; }
protocol bgp lb1 from lb { neighbor 198.18.0.11 as 65001; }
protocol bgp lb2 from lb { neighbor 198.18.0.12 as 65001; }
protocol bgp lb3 from lb { neighbor 198.18.0.13 as 65001; }
`

var bgpLabUp bool

// setupBGPLab adds the router and its client to the lab (once).
func setupBGPLab() {
	if bgpLabUp {
		return
	}
	bgpLabUp = true
	ip("netns", "add", ns("rt"))
	ip("-n", ns("sw"), "link", "add", "vrt", "type", "veth", "peer", "name", "eth0", "netns", ns("rt"))
	ip("-n", ns("sw"), "link", "set", "vrt", "master", "br0", "up")
	ip("-n", ns("rt"), "addr", "add", "198.18.0.1/24", "dev", "eth0")
	ip("netns", "add", ns("bc"))
	ip("-n", ns("rt"), "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", ns("bc"))
	ip("-n", ns("rt"), "addr", "add", "198.19.0.1/24", "dev", "eth1")
	ip("-n", ns("bc"), "addr", "add", "198.19.0.2/24", "dev", "eth0")
	for _, h := range []string{"rt", "bc"} {
		exec.Command("ip", "netns", "exec", ns(h), "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1").Run()
		ip("-n", ns(h), "link", "set", "lo", "up")
		ip("-n", ns(h), "link", "set", "eth0", "up")
	}
	ip("-n", ns("rt"), "link", "set", "eth1", "up")
	ip("-n", ns("bc"), "route", "add", "default", "via", "198.19.0.1")
	for _, k := range []string{"net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1"} {
		if out, err := exec.Command("ip", "netns", "exec", ns("rt"), "sysctl", "-qw", k).CombinedOutput(); err != nil {
			fail("sysctl %s: %v %s", k, err, out)
		}
	}
	for i := 1; i <= nodes; i++ {
		ip("-n", ns(fmt.Sprintf("lb%d", i)), "route", "add", "198.19.0.0/24", "via", "198.18.0.1")
	}
}

// nextHops are the gateways of the VIP's route in rt's main table.
func nextHops() []string {
	h, err := netns.GetFromName(ns("rt"))
	check(err)
	nh, err := netlink.NewHandleAt(h)
	h.Close()
	check(err)
	defer nh.Close()
	dst := &net.IPNet{IP: net.ParseIP(vip).To4(), Mask: net.CIDRMask(32, 32)}
	rs, err := nh.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: dst, Table: 254}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	check(err)
	var out []string
	for _, r := range rs {
		if r.Gw != nil {
			out = append(out, r.Gw.String())
		}
		for _, p := range r.MultiPath {
			out = append(out, p.Gw.String())
		}
	}
	slices.Sort(out)
	return out
}

// measureBGP is one BGP row: bfd is the BFD interval ("" for none: the hold time alone).
// It returns the outages and the times from a killed node's restart to its next hop back.
func measureBGP(tmp, bin, bfd string, runs int) (outs, back []time.Duration) {
	setupBGPLab()
	clientNS = "bc"
	defer func() { clientNS = "cl" }()
	name := "hold"
	if bfd != "" {
		name = "bfd" + bfd
	}
	dir := filepath.Join(tmp, "bgp-"+name)
	check(os.MkdirAll(dir, 0o755))
	birdBFD, birdIvl, peerBFD := "", "300 ms", ""
	if bfd != "" {
		d, err := time.ParseDuration(bfd)
		check(err)
		birdBFD, birdIvl = "bfd on;", fmt.Sprintf("%d ms", d.Milliseconds())
		peerBFD = fmt.Sprintf(", bfd: {enabled: true, interval: %s, multiplier: 3}", bfd)
	}
	conf := filepath.Join(dir, "bird.conf")
	check(os.WriteFile(conf, fmt.Appendf(nil, bgpBird, filepath.Join(dir, "bird.log"), birdIvl, birdBFD), 0o644))
	bird := spawn("rt", filepath.Join(dir, "bird.out"), "bird", "-f", "-c", conf, "-s", filepath.Join(dir, "bird.ctl"),
		"-P", filepath.Join(dir, "bird.pid"))
	cmds := map[int]*exec.Cmd{}
	startN := func(i int) {
		nd := filepath.Join(dir, fmt.Sprintf("lb%d", i))
		os.MkdirAll(nd, 0o755)
		cfg := fmt.Sprintf(`node:
  name: lb%d
  admin_addr: 127.0.0.1:8025
  state_dir: %s/state
  drain_timeout: 2s
  bgp: {router_id: 198.18.0.%d, source: 198.18.0.%d}
spec:
  pools:
    - name: mx
      health: {interval: 1s, timeout: 1s, rise: 1, fall: 3, helo: bench.example}
      backends:
        - {address: "198.18.0.21:25"}
  frontends:
    - {name: mx, listen: %q, pool: mx}
  vips:
    - {address: %s/32, mode: bgp}
  bgp:
    asn: 65001
    peers:
      - {address: 198.18.0.1, asn: 65000, hold_time: 3s%s}
`, i, nd, 10+i, 10+i, frontend, vip, peerBFD)
		check(os.WriteFile(filepath.Join(nd, "mxlb.yaml"), []byte(cfg), 0o644))
		cmds[i] = spawn(fmt.Sprintf("lb%d", i), filepath.Join(nd, "log"), bin, "serve", "--config", filepath.Join(nd, "mxlb.yaml"))
	}
	for i := 1; i <= nodes; i++ {
		startN(i)
	}
	all := []string{"198.18.0.11", "198.18.0.12", "198.18.0.13"}
	for r := 0; r < runs; r++ {
		victim := r%nodes + 1
		waitFor(30*time.Second, "three next hops at the router", func() bool { return slices.Equal(nextHops(), all) })
		waitFor(10*time.Second, "the VIP answering", probe)
		d := outageOf(func() {
			ip("-n", ns(fmt.Sprintf("lb%d", victim)), "link", "set", "eth0", "down")
			kill(cmds[victim])
		}, func() bool { return !slices.Contains(nextHops(), all[victim-1]) })
		fmt.Printf("mxlb bgp %s run %d: lb%d crashed, outage %s\n", name, r+1, victim, ms(d))
		outs = append(outs, d)
		ip("-n", ns(fmt.Sprintf("lb%d", victim)), "link", "set", "eth0", "up")
		// The link going down took the route back to the client with it.
		ip("-n", ns(fmt.Sprintf("lb%d", victim)), "route", "replace", "198.19.0.0/24", "via", "198.18.0.1")
		t := time.Now()
		startN(victim)
		waitFor(30*time.Second, "the restarted node's next hop", func() bool { return slices.Equal(nextHops(), all) })
		b := time.Since(t)
		fmt.Printf("mxlb bgp %s run %d: lb%d restarted, back in the ECMP set after %s\n", name, r+1, victim, ms(b))
		back = append(back, b)
	}
	for _, c := range cmds {
		kill(c)
	}
	kill(bird)
	return outs, back
}

// outageOf crashes a node and returns the time until the client's probes (every 20 ms,
// each from a new source port, so spread over the next hops) succeed again for good:
// the first good probe after the last failed one. It stops once gone() holds (the
// router dropped the node) and half a second of probes after it.
func outageOf(crash func(), gone func() bool) time.Duration {
	results, stop := startProbes()
	killed := time.Now()
	crash()
	var all []res
	var goneAt time.Time
	for {
		select {
		case r := <-results:
			if !r.at.Before(killed) {
				all = append(all, r)
			}
		case <-time.After(10 * time.Millisecond):
		}
		if goneAt.IsZero() && gone() {
			goneAt = time.Now()
		}
		if !goneAt.IsZero() && time.Since(goneAt) > 500*time.Millisecond {
			break
		}
		if time.Since(killed) > 30*time.Second {
			fail("the router kept the crashed node for 30s")
		}
	}
	stop()
	lastFail, firstOK := time.Time{}, time.Time{}
	for _, r := range all {
		if !r.ok && r.at.After(lastFail) {
			lastFail = r.at
		}
	}
	if lastFail.IsZero() {
		return 0
	}
	for _, r := range all {
		if r.ok && r.at.After(lastFail) && (firstOK.IsZero() || r.at.Before(firstOK)) {
			firstOK = r.at
		}
	}
	return firstOK.Sub(killed)
}

package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/vip/bgp"
)

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func printStatus(w io.Writer, st admin.Status) {
	state := "active"
	if st.Draining {
		state = "DRAINING"
	}
	fmt.Fprintf(w, "node %s (mxlb %s), %s\n\n", st.Node, st.Version, state)
	if len(st.SpecDrift) > 0 {
		fmt.Fprintln(w, "SPEC DRIFT: this node's file (spec:) differs from the cluster's spec, which is in force")
		fmt.Fprintln(w, "(`mxlb spec export` shows the cluster's; `mxlb spec apply -f FILE` adopts the file's):")
		for _, l := range st.SpecDrift {
			fmt.Fprintln(w, "  "+l)
		}
		fmt.Fprintln(w)
	}
	if len(st.Frontends) > 0 {
		tw := newTable(w)
		fmt.Fprintln(tw, "FRONTEND\tLISTEN\tMODE\tPOOL\tOPEN\tLISTENING")
		for _, f := range st.Frontends {
			l := listening(f.Listening, f.Error)
			if f.Removed {
				l = "removed (sessions finishing)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.Name, f.Listen, orDash(f.Mode), f.Pool, openConns(f), l)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	if d := st.DNS; d != nil {
		fmt.Fprintf(w, "dns %s: %s\n\n", d.Listen, listening(d.Listening, d.Error))
	}
	printBackends(w, st.Pools)
	if len(st.Disagree) > 0 {
		fmt.Fprintln(w)
		printDisagree(w, st.Disagree)
	}
	if len(st.Members) > 0 {
		fmt.Fprintln(w)
		printMembers(w, st.Members)
	}
	if len(st.VIPs) > 0 {
		fmt.Fprintln(w)
		tw := newTable(w)
		fmt.Fprintln(tw, "VIP\tOWNER\tHELD HERE")
		for _, v := range st.VIPs {
			fmt.Fprintf(tw, "%s\t%s\t%v\n", v.Address, vipOwner(v), v.Held)
		}
		tw.Flush()
	}
	if b := st.BGP; b != nil {
		fmt.Fprintln(w)
		printBGP(w, b)
	}
}

// printDisagree lists the backends another node sees differently from this one.
func printDisagree(w io.Writer, ops []admin.Opinion) {
	fmt.Fprintln(w, "NODES DISAGREE (another node's health check sees these differently):")
	tw := newTable(w)
	fmt.Fprintln(tw, "POOL\tBACKEND\tNODE\tTHERE\tHERE")
	for _, o := range ops {
		there, here := "down", "up"
		if o.Up {
			there, here = "up", "down"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", oneLine(o.Pool), oneLine(o.Backend), oneLine(o.Node), there, here)
	}
	tw.Flush()
}

// vipOwner is a VIP's OWNER column: its holder, or for a VIP in mode bgp (announced by
// every eligible node) this node's route.
func vipOwner(v admin.VIPState) string {
	if v.Mode == "bgp" {
		return "bgp: " + orDash(v.Route)
	}
	return orDash(v.Owner)
}

// printBGP shows the BGP sessions and routes, with each problem in words.
func printBGP(w io.Writer, b *bgp.Status) {
	if b.Error != "" {
		fmt.Fprintf(w, "BGP: not running: %s\n", b.Error)
	} else {
		fmt.Fprintf(w, "BGP: AS %d, router id %s\n", b.ASN, b.RouterID)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "PEER\tAS\tSTATE\tBFD\tSINCE\tFLAPS")
	for _, p := range b.Peers {
		since := "-"
		if !p.Since.IsZero() {
			since = time.Since(p.Since).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\n", p.Address, p.ASN, p.State, orDash(p.BFD), since, p.Flaps)
	}
	tw.Flush()
	for _, p := range b.Peers {
		if p.Problem != "" {
			fmt.Fprintf(w, "  %s: %s\n", p.Address, p.Problem)
		}
	}
	tw = newTable(w)
	fmt.Fprintln(tw, "ROUTE\tSTATE\tSESSIONS\tWHY")
	for _, r := range b.Routes {
		why := r.Reason
		if r.Error != "" {
			why = "error: " + r.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", r.Prefix, r.State, r.Sessions, orDash(why))
	}
	tw.Flush()
}

func printPools(w io.Writer, pools []admin.PoolStatus) {
	tw := newTable(w)
	fmt.Fprintln(tw, "POOL\tFALLBACK\tPROXY\tBACKENDS\tUSABLE\tACTIVE\tSPILLED\tREFUSED")
	for _, p := range pools {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", p.Name, orDash(p.Fallback), p.Proxy, len(p.Backends), p.Usable, p.Active, p.Spilled, p.Refused)
	}
	tw.Flush()
}

func printBackends(w io.Writer, pools []admin.PoolStatus) {
	tw := newTable(w)
	fmt.Fprintln(tw, "POOL\tNAME\tBACKEND\tADMIN\tHEALTH\tWEIGHT\tEFFECTIVE\tACTIVE\tTOTAL\tQUEUE\tDISK\tLOAD\tPROBE\tNOTE")
	for _, p := range pools {
		for _, b := range p.Backends {
			health := "down"
			switch {
			case b.Admin == "maint":
				health = "-" // not probed: the last verdict is stale (top and the page say so too)
			case b.Up:
				health = "up"
			case !b.Checked:
				health = "init"
			}
			q := "-"
			if b.Queue >= 0 && b.Agent != "" {
				q = strconv.FormatInt(b.Queue, 10)
			}
			disk, load := "-", "-"
			if b.Agent != "" && (b.Disk >= 0 || b.Inodes >= 0) {
				disk = hostPct(b.Disk) + "/" + hostPct(b.Inodes) // space/inodes
			}
			if b.Agent != "" && b.Load1 >= 0 {
				load = strconv.FormatFloat(b.Load1, 'f', 2, 64)
			}
			note := b.WeightReason
			if !b.Up && b.Reason != "" {
				note = b.Reason
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%.0f\t%d\t%d\t%s\t%s\t%s\t%.1fms\t%s\n", p.Name, orDash(b.Name), b.Address, b.Admin, health,
				b.Weight, b.EffectiveWeight, b.Active, b.Total, q, disk, load, b.ProbeMillis, oneLine(note))
		}
	}
	tw.Flush()
}

// hostPct prints an agent's percentage, "-" when it did not report it.
func hostPct(n int) string {
	if n < 0 {
		return "-"
	}
	return strconv.Itoa(n) + "%"
}

func printMembers(w io.Writer, ms []admin.Member) {
	tw := newTable(w)
	fmt.Fprintln(tw, "NODE\tADDRESS\tSTATE\tVIPS\tVERSION")
	for _, m := range ms {
		state := m.State // alive, unreachable, dead or left, from nodes that report it
		if state == "" {
			state = "alive"
			if !m.Alive {
				state = "dead"
			}
		}
		if m.Drained {
			if state == "alive" {
				state = "drained"
			} else {
				state += ", drained"
			}
		}
		name := m.Name
		if m.Self {
			name += " (this)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, orDash(m.Addr), state, orDash(strings.Join(m.VIPs, ",")), m.Version)
	}
	tw.Flush()
}

// listening says whether a listener is bound, or why not (the node retries).
func listening(ok bool, err string) string {
	switch {
	case ok:
		return "yes"
	case err != "":
		return "NO: " + oneLine(err) + " (retrying)"
	}
	return "no"
}

// openConns is a frontend's open sessions, against its maxconn when it has one ("12/20"),
// plus those still finishing on its previous server ("12/20+3 retiring").
func openConns(f admin.FrontendStatus) string {
	if f.Removed { // gone from the spec: only its retiring sessions are left
		return fmt.Sprintf("%d retiring", f.Retiring)
	}
	s := fmt.Sprint(f.Serving())
	if f.MaxConn > 0 {
		s += fmt.Sprintf("/%d", f.MaxConn)
	}
	if f.Retiring > 0 {
		s += fmt.Sprintf("+%d retiring", f.Retiring)
	}
	return s
}

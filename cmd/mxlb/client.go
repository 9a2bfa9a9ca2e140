package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
)

// client talks to a node's admin API.
type client struct {
	base   string
	token  string
	output string
	http   *http.Client
}

// Exit codes of the client commands.
const (
	exitFailure = 1 // the request was refused (bad input, not found, conflict)
	exitUsage   = 2 // bad flags or arguments
	exitConnect = 3 // the node could not be reached
)

func addClientCommands(root *cobra.Command) {
	c := &client{http: &http.Client{Timeout: 10 * time.Second}}
	pf := root.PersistentFlags()
	pf.StringVar(&c.base, "admin", envOr("MXLB_ADMIN", "http://127.0.0.1:8025"), "admin API of a node (env MXLB_ADMIN)")
	pf.StringVar(&c.token, "token-file", os.Getenv("MXLB_TOKEN_FILE"), "file with the admin bearer token (env MXLB_TOKEN_FILE)")
	pf.StringVarP(&c.output, "output", "o", "table", "output format: table, json or yaml")

	root.AddCommand(&cobra.Command{
		Use: "status", Short: "Show the node's pools, backends, members and VIPs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st admin.Status
			if err := c.do("GET", "/api/v1/status", nil, &st); err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), st, func(w io.Writer) { printStatus(w, st) })
		},
	})

	backend := &cobra.Command{Use: "backend", Short: "List and change backends (MTAs)"}
	backend.AddCommand(&cobra.Command{
		Use: "list [POOL]", Short: "List backends", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var st admin.Status
			if err := c.do("GET", "/api/v1/status", nil, &st); err != nil {
				return err
			}
			pools := st.Pools[:0:0]
			for _, p := range st.Pools {
				if len(args) == 0 || p.Name == args[0] {
					pools = append(pools, p)
				}
			}
			if len(args) == 1 && len(pools) == 0 {
				return &exitError{exitFailure, fmt.Errorf("no pool %q", args[0])}
			}
			return c.print(cmd.OutOrStdout(), pools, func(w io.Writer) { printBackends(w, pools) })
		},
	})
	var weight, maxconn int
	var agentAddr, state string
	add := &cobra.Command{
		Use: "add POOL ADDR", Short: "Add a backend (ADDR is ip:port) to a pool", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			b := config.Backend{Address: args[1], MaxConn: maxconn, Agent: agentAddr, State: state}
			if cmd.Flags().Changed("weight") {
				b.Weight = &weight
			}
			if err := c.do("POST", "/api/v1/pools/"+url.PathEscape(args[0])+"/backends", b, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added %s to pool %s\n", args[1], args[0])
			return nil
		},
	}
	add.Flags().IntVar(&weight, "weight", config.DefaultWeight, "weight 0..1000")
	add.Flags().IntVar(&maxconn, "maxconn", 0, "most open connections (0: unlimited)")
	add.Flags().StringVar(&agentAddr, "agent", "", "agent address when not the backend's host at the pool's agent port")
	add.Flags().StringVar(&state, "state", "", "enabled (default), drain or maint")
	backend.AddCommand(add)
	backend.AddCommand(&cobra.Command{
		Use: "remove POOL ADDR", Short: "Remove a backend", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := c.do("DELETE", backendPath(args[0], args[1]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s from pool %s\n", args[1], args[0])
			return nil
		},
	})
	for _, st := range []struct{ verb, state, short string }{
		{"drain", "drain", "No new connections; open ones finish; probes go on"},
		{"maint", "maint", "Out of rotation; probes stop"},
		{"enable", "enabled", "Back into rotation"},
	} {
		backend.AddCommand(&cobra.Command{
			Use: st.verb + " POOL ADDR", Short: st.short, Args: cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := c.do("PUT", backendPath(args[0], args[1])+"/state", map[string]string{"state": st.state}, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s in pool %s\n", st.state, args[1], args[0])
				return nil
			},
		})
	}
	backend.AddCommand(&cobra.Command{
		Use: "weight POOL ADDR N", Short: "Set a backend's weight (0..1000; 0: no new connections)", Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := strconv.Atoi(args[2])
			if err != nil {
				return &exitError{exitUsage, fmt.Errorf("weight %q is not a number", args[2])}
			}
			if err := c.do("PUT", backendPath(args[0], args[1])+"/weight", map[string]int{"weight": w}, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "weight of %s in pool %s is %d\n", args[1], args[0], w)
			return nil
		},
	})
	root.AddCommand(backend)

	poolCmd := &cobra.Command{Use: "pool", Short: "List, add and remove pools"}
	poolCmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List pools", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var pools []admin.PoolStatus
			if err := c.do("GET", "/api/v1/pools", nil, &pools); err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), pools, func(w io.Writer) { printPools(w, pools) })
		},
	})
	var fallback, proxy string
	padd := &cobra.Command{
		Use: "add NAME", Short: "Add an empty pool", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := config.Pool{Name: args[0], Fallback: fallback, ProxyProtocol: proxy, Backends: []config.Backend{}}
			if err := c.do("POST", "/api/v1/pools", p, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added pool %s\n", args[0])
			return nil
		},
	}
	padd.Flags().StringVar(&fallback, "fallback", "", "pool that takes the traffic when this one cannot")
	padd.Flags().StringVar(&proxy, "proxy-protocol", "", "none, v1 or v2")
	poolCmd.AddCommand(padd)
	poolCmd.AddCommand(&cobra.Command{
		Use: "remove NAME", Short: "Remove a pool", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := c.do("DELETE", "/api/v1/pools/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed pool %s\n", args[0])
			return nil
		},
	})
	root.AddCommand(poolCmd)

	nodeCmd := &cobra.Command{Use: "node", Short: "List, drain and undrain balancer nodes"}
	nodeCmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List cluster members", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ms []admin.Member
			if err := c.do("GET", "/api/v1/nodes", nil, &ms); err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), ms, func(w io.Writer) { printMembers(w, ms) })
		},
	})
	for _, d := range []struct {
		verb  string
		short string
	}{{"drain", "Give up VIPs and take no new sessions; open ones finish"}, {"undrain", "Take VIPs and sessions again"}} {
		nodeCmd.AddCommand(&cobra.Command{
			Use: d.verb + " [NODE]", Short: d.short + " (default: the node --admin points at)", Args: cobra.MaximumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				name := "self"
				if len(args) == 1 {
					name = args[0]
				}
				if err := c.do("POST", "/api/v1/nodes/"+url.PathEscape(name)+"/"+d.verb, nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%sed %s\n", d.verb, name)
				return nil
			},
		})
	}
	root.AddCommand(nodeCmd)

	vipCmd := &cobra.Command{Use: "vip", Short: "Floating VIPs"}
	vipCmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List VIPs and their holders", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var vs []admin.VIPState
			if err := c.do("GET", "/api/v1/vips", nil, &vs); err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), vs, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VIP\tOWNER\tHELD HERE\tINTERFACE")
				for _, v := range vs {
					fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", v.Address, orDash(v.Owner), v.Held, orDash(v.Iface))
				}
				tw.Flush()
			})
		},
	})
	vipCmd.AddCommand(newVIPCleanupCmd())
	root.AddCommand(vipCmd)

	specCmd := &cobra.Command{Use: "spec", Short: "Export or apply the cluster-wide spec"}
	specCmd.AddCommand(&cobra.Command{
		Use: "export", Short: "Print the spec (YAML unless -o json)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var s config.Spec
			if err := c.do("GET", "/api/v1/spec", nil, &s); err != nil {
				return err
			}
			if c.output == "table" {
				c.output = "yaml"
			}
			return c.print(cmd.OutOrStdout(), s, nil)
		},
	})
	var file string
	apply := &cobra.Command{
		Use: "apply -f FILE", Short: "Replace the spec with FILE (YAML: a spec, or a node file's spec: section)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return &exitError{exitUsage, errors.New("spec apply needs -f FILE")}
			}
			s, err := config.LoadSpec(file)
			if err != nil {
				return &exitError{exitFailure, err}
			}
			if err := c.do("PUT", "/api/v1/spec", s, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "applied %s (%d pools, %d frontends)\n", file, len(s.Pools), len(s.Frontends))
			return nil
		},
	}
	apply.Flags().StringVarP(&file, "file", "f", "", "spec file")
	specCmd.AddCommand(apply)
	root.AddCommand(specCmd)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func backendPath(pool, addr string) string {
	return "/api/v1/pools/" + url.PathEscape(pool) + "/backends/" + url.PathEscape(addr)
}

// do sends one request; in is sent as JSON, out decoded from JSON.
func (c *client) do(method, path string, in, out any) error {
	if c.output != "table" && c.output != "json" && c.output != "yaml" {
		return &exitError{exitUsage, fmt.Errorf("-o %q: use table, json or yaml", c.output)}
	}
	base := c.base
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, strings.TrimRight(base, "/")+path, body)
	if err != nil {
		return &exitError{exitUsage, fmt.Errorf("--admin %q: %w", c.base, err)}
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		t, err := admin.ReadToken(c.token)
		if err != nil {
			return &exitError{exitUsage, err}
		}
		req.Header.Set("Authorization", "Bearer "+t)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &exitError{exitConnect, fmt.Errorf("cannot reach the admin API at %s (is mxlb serve running? set --admin or MXLB_ADMIN): %w", c.base, err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return &exitError{exitConnect, err}
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &exitError{exitFailure, fmt.Errorf("%s (HTTP %d)", e.Error, resp.StatusCode)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return &exitError{exitFailure, fmt.Errorf("bad answer from %s: %w", c.base, err)}
		}
	}
	return nil
}

// print writes v in the chosen format; table uses tbl.
func (c *client) print(w io.Writer, v any, tbl func(io.Writer)) error {
	switch {
	case c.output == "json" || (c.output == "table" && tbl == nil):
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case c.output == "yaml":
		// Through JSON so that the yaml keys are the json tags (durations as strings), into
		// a yaml.Node so that fields keep their order, in block style.
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return err
		}
		blockStyle(&doc)
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		return enc.Encode(&doc)
	}
	tbl(w)
	return nil
}

// blockStyle turns JSON's flow style ({...}, [...]) into YAML's block style, keeping
// empty collections inline.
func blockStyle(n *yaml.Node) {
	if (n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode) && len(n.Content) > 0 {
		n.Style = 0
	}
	if n.Kind == yaml.ScalarNode && n.Style == yaml.DoubleQuotedStyle {
		n.Style = 0 // the encoder quotes where YAML needs it
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printStatus(w io.Writer, st admin.Status) {
	state := "active"
	if st.Draining {
		state = "DRAINING"
	}
	fmt.Fprintf(w, "node %s (mxlb %s), %s\n\n", st.Node, st.Version, state)
	if len(st.Frontends) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FRONTEND\tLISTEN\tMODE\tPOOL")
		for _, f := range st.Frontends {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Name, f.Listen, orDash(f.Mode), f.Pool)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	printBackends(w, st.Pools)
	if len(st.Members) > 0 {
		fmt.Fprintln(w)
		printMembers(w, st.Members)
	}
	if len(st.VIPs) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VIP\tOWNER\tHELD HERE")
		for _, v := range st.VIPs {
			fmt.Fprintf(tw, "%s\t%s\t%v\n", v.Address, orDash(v.Owner), v.Held)
		}
		tw.Flush()
	}
}

func printPools(w io.Writer, pools []admin.PoolStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tFALLBACK\tPROXY\tBACKENDS\tUSABLE\tACTIVE\tSPILLED\tREFUSED")
	for _, p := range pools {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", p.Name, orDash(p.Fallback), p.Proxy, len(p.Backends), p.Usable, p.Active, p.Spilled, p.Refused)
	}
	tw.Flush()
}

func printBackends(w io.Writer, pools []admin.PoolStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tBACKEND\tADMIN\tHEALTH\tWEIGHT\tEFFECTIVE\tACTIVE\tTOTAL\tQUEUE\tPROBE\tNOTE")
	for _, p := range pools {
		for _, b := range p.Backends {
			health := "down"
			switch {
			case b.Up:
				health = "up"
			case !b.Checked:
				health = "init"
			}
			q := "-"
			if b.Queue >= 0 && b.Agent != "" {
				q = strconv.FormatInt(b.Queue, 10)
			}
			note := b.WeightReason
			if !b.Up && b.Reason != "" {
				note = b.Reason
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%.0f\t%d\t%d\t%s\t%.1fms\t%s\n", p.Name, b.Address, b.Admin, health,
				b.Weight, b.EffectiveWeight, b.Active, b.Total, q, b.ProbeMillis, note)
		}
	}
	tw.Flush()
}

func printMembers(w io.Writer, ms []admin.Member) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tSTATE\tVIPS\tVERSION")
	for _, m := range ms {
		state := "alive"
		if !m.Alive {
			state = "dead"
		} else if m.Drained {
			state = "drained"
		}
		name := m.Name
		if m.Self {
			name += " (this)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, orDash(m.Addr), state, orDash(strings.Join(m.VIPs, ",")), m.Version)
	}
	tw.Flush()
}

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/internal/tokenfile"
)

// client talks to a node's admin API.
type client struct {
	base   string
	token  string
	output string
	http   *http.Client
}

func newClient() *client {
	// Its own transport, so that run can close its idle connections when the command ends.
	return &client{http: &http.Client{Timeout: 10 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()}}
}

// maxAnswer bounds what is read of one admin answer.
const maxAnswer = 64 << 20

func addClientCommands(root *cobra.Command, c *client) {
	pf := root.PersistentFlags()
	pf.StringVar(&c.base, "admin", envOr("MXLB_ADMIN", "http://127.0.0.1:8025"), "admin API of a node (env MXLB_ADMIN)")
	pf.StringVar(&c.token, "token-file", os.Getenv("MXLB_TOKEN_FILE"), "file with the admin bearer token (env MXLB_TOKEN_FILE)")

	root.AddCommand(printsData(&cobra.Command{
		Use: "status", Short: "Show the node's pools, backends, members, VIPs and spec drift", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st admin.Status
			raw, err := c.get("/api/v1/status", &st)
			if err != nil {
				return err
			}
			if st.Node == "" { // every node names itself
				return &exitError{exitConnect, fmt.Errorf("%s is not an mxlb admin API, or not one this CLI understands: its status names no node", c.base)}
			}
			return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { printStatus(w, st) })
		},
	}))
	root.AddCommand(newEventsCmd(c))
	root.AddCommand(newTraceCmd(c))
	root.AddCommand(newTopCmd(c))

	backend := &cobra.Command{Use: "backend", Short: "List and change backends (MTAs)"}
	backend.AddCommand(printsData(&cobra.Command{
		Use: "list [POOL]", Short: "List backends", Args: cobra.MaximumNArgs(1),
		ValidArgsFunction: c.completePools(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var st admin.Status
			if _, err := c.get("/api/v1/status", &st); err != nil {
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
	}))
	var weight, maxconn int
	var agentAddr, state, name string
	add := printsData(&cobra.Command{
		Use: "add POOL ADDR", Short: "Add a backend (ADDR is ip:port) to a pool", Args: cobra.ExactArgs(2),
		ValidArgsFunction: c.completePools(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b := config.Backend{Address: args[1], Name: name, MaxConn: maxconn, Agent: agentAddr, State: state}
			if cmd.Flags().Changed("weight") {
				if err := weightRange(weight); err != nil {
					return err
				}
				b.Weight = &weight
			}
			return c.change(cmd, "POST", "/api/v1/pools/"+url.PathEscape(args[0])+"/backends", b,
				fmt.Sprintf("added %s to pool %s", args[1], args[0]))
		},
	})
	add.Flags().IntVar(&weight, "weight", config.DefaultWeight, "weight 0..1000")
	add.Flags().IntVar(&maxconn, "maxconn", 0, "most open connections (0: unlimited)")
	add.Flags().StringVar(&agentAddr, "agent", "", "agent address when not the backend's host at the pool's agent port")
	add.Flags().StringVar(&state, "state", "", "enabled (default), drain or maint")
	add.Flags().StringVar(&name, "name", "", "what status and top call it, unique in the pool (letters, digits, . _ -); usable instead of ADDR")
	add.RegisterFlagCompletionFunc("state", cobra.FixedCompletions([]string{"enabled", "drain", "maint"}, cobra.ShellCompDirectiveNoFileComp))
	backend.AddCommand(add)
	backend.AddCommand(printsData(&cobra.Command{
		Use: "remove POOL ADDR|NAME", Short: "Remove a backend", Args: cobra.ExactArgs(2),
		ValidArgsFunction: c.completeBackends,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.change(cmd, "DELETE", backendPath(args[0], args[1]), nil, fmt.Sprintf("removed %s from pool %s", args[1], args[0]))
		},
	}))
	for _, st := range []struct {
		verb, state, short string
		aliases            []string
	}{
		{"drain", "drain", "No new connections; open ones finish; probes go on", nil},
		{"maint", "maint", "Out of rotation; probes stop", nil},
		// undrain as for nodes; ready as HAProxy's `set server state ready`.
		{"enable", "enabled", "Back into rotation (from drain or maint)", []string{"undrain", "ready"}},
	} {
		backend.AddCommand(printsData(&cobra.Command{
			Use: st.verb + " POOL ADDR|NAME", Short: st.short, Args: cobra.ExactArgs(2), Aliases: st.aliases,
			ValidArgsFunction: c.completeBackends,
			RunE: func(cmd *cobra.Command, args []string) error {
				return c.change(cmd, "PUT", backendPath(args[0], args[1])+"/state", map[string]string{"state": st.state},
					fmt.Sprintf("%s %s in pool %s", st.state, args[1], args[0]))
			},
		}))
	}
	backend.AddCommand(newWeightCmd(c))
	root.AddCommand(backend)

	poolCmd := &cobra.Command{Use: "pool", Short: "List, add and remove pools"}
	poolCmd.AddCommand(printsData(&cobra.Command{
		Use: "list", Short: "List pools", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var pools []admin.PoolStatus
			raw, err := c.get("/api/v1/pools", &pools)
			if err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { printPools(w, pools) })
		},
	}))
	var fallback, proxy string
	padd := printsData(&cobra.Command{
		Use: "add NAME", Short: "Add an empty pool", Args: cobra.ExactArgs(1),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, args []string) error {
			p := config.Pool{Name: args[0], Fallback: fallback, ProxyProtocol: proxy, Backends: []config.Backend{}}
			return c.change(cmd, "POST", "/api/v1/pools", p, "added pool "+args[0])
		},
	})
	padd.Flags().StringVar(&fallback, "fallback", "", "pool that takes the traffic when this one cannot")
	padd.Flags().StringVar(&proxy, "proxy-protocol", "", "none, v1, v2 or xclient")
	padd.RegisterFlagCompletionFunc("fallback", c.completePools(-1))
	padd.RegisterFlagCompletionFunc("proxy-protocol", cobra.FixedCompletions([]string{"none", "v1", "v2", "xclient"}, cobra.ShellCompDirectiveNoFileComp))
	poolCmd.AddCommand(padd)
	poolCmd.AddCommand(printsData(&cobra.Command{
		Use: "remove NAME", Short: "Remove a pool", Args: cobra.ExactArgs(1),
		ValidArgsFunction: c.completePools(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.change(cmd, "DELETE", "/api/v1/pools/"+url.PathEscape(args[0]), nil, "removed pool "+args[0])
		},
	}))
	root.AddCommand(poolCmd)

	nodeCmd := &cobra.Command{Use: "node", Short: "List, drain and undrain balancer nodes"}
	nodeCmd.AddCommand(printsData(&cobra.Command{
		Use: "list", Short: "List cluster members", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ms []admin.Member
			raw, err := c.get("/api/v1/nodes", &ms)
			if err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { printMembers(w, ms) })
		},
	}))
	for _, d := range []struct {
		verb  string
		short string
	}{{"drain", "Give up VIPs and take no new sessions; open ones finish"}, {"undrain", "Take VIPs and sessions again"}} {
		nodeCmd.AddCommand(printsData(&cobra.Command{
			Use: d.verb + " [NODE]", Short: d.short + " (default: the node --admin points at)", Args: cobra.MaximumNArgs(1),
			ValidArgsFunction: c.completeNodes,
			RunE: func(cmd *cobra.Command, args []string) error {
				name := "self"
				if len(args) == 1 {
					name = args[0]
				}
				raw, err := c.send("POST", "/api/v1/nodes/"+url.PathEscape(name)+"/"+d.verb, nil, nil)
				if err != nil {
					return err
				}
				var ans struct {
					Node string `json:"node"`
				}
				if json.Unmarshal(raw, &ans) == nil && ans.Node != "" && ans.Node != "self" {
					name = ans.Node // "drained lb1", not "drained self"
				}
				return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { fmt.Fprintln(w, d.verb+"ed "+name) })
			},
		}))
	}
	root.AddCommand(nodeCmd)

	vipCmd := &cobra.Command{Use: "vip", Short: "Floating VIPs"}
	vipCmd.AddCommand(printsData(&cobra.Command{
		Use: "list", Short: "List VIPs and their holders", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var vs []admin.VIPState
			raw, err := c.get("/api/v1/vips", &vs)
			if err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) {
				tw := newTable(w)
				fmt.Fprintln(tw, "VIP\tOWNER\tHELD HERE\tINTERFACE")
				for _, v := range vs {
					fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", v.Address, vipOwner(v), v.Held, orDash(v.Iface))
				}
				tw.Flush()
			})
		},
	}))
	vipCmd.AddCommand(newVIPCleanupCmd())
	root.AddCommand(vipCmd)
	root.AddCommand(newSpecCmd(c))
}

// newWeightCmd is `backend weight POOL ADDR N`. Its flags are parsed here rather than by
// cobra so that a negative N reaches the range check instead of being read as flags.
func newWeightCmd(c *client) *cobra.Command {
	return printsData(&cobra.Command{
		Use: "weight POOL ADDR|NAME N", Short: "Set a backend's weight (0..1000; 0: no new connections)",
		DisableFlagParsing: true,
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			args, help, err := parseWithNegatives(cmd, args)
			if err != nil || help || len(args) >= 2 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return c.completeBackends(cmd, args, toComplete)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			args, help, err := parseWithNegatives(cmd, args)
			switch {
			case err != nil:
				return cmd.FlagErrorFunc()(cmd, err)
			case help:
				return cmd.Help()
			case len(args) != 3:
				return usageErr("accepts 3 arg(s), received %d (usage: %s)", len(args), cmd.UseLine())
			}
			if err := c.checkOutput(cmd); err != nil {
				return err
			}
			w, err := strconv.Atoi(args[2])
			if err != nil {
				return usageErr("weight %q is not a number (usage: %s)", args[2], cmd.UseLine())
			}
			if err := weightRange(w); err != nil {
				return err
			}
			return c.change(cmd, "PUT", backendPath(args[0], args[1])+"/weight", map[string]int{"weight": w},
				fmt.Sprintf("weight of %s in pool %s is %d", args[1], args[0], w))
		},
	})
}

// weightRange checks a weight as the API would, so that the answer names the range.
func weightRange(w int) error {
	if w < 0 || w > 1000 {
		return &exitError{exitFailure, fmt.Errorf("weight %d is out of range: use 0..1000 (0: no new connections)", w)}
	}
	return nil
}

// negPrefix stands in for the "-" of a negative number while flags are parsed.
const negPrefix = "\x00neg"

// parseWithNegatives parses cmd's flags from args, keeping tokens like -1 as arguments.
func parseWithNegatives(cmd *cobra.Command, args []string) (rest []string, help bool, err error) {
	in := make([]string, len(args))
	for i, a := range args {
		if len(a) > 1 && a[0] == '-' && a[1] >= '0' && a[1] <= '9' {
			a = negPrefix + a[1:]
		}
		in[i] = a
	}
	cmd.InheritedFlags() // merges the persistent flags into cmd.Flags()
	if err := cmd.Flags().Parse(in); err != nil {
		return nil, false, err
	}
	help, _ = cmd.Flags().GetBool("help")
	for _, a := range cmd.Flags().Args() {
		if n, ok := strings.CutPrefix(a, negPrefix); ok {
			a = "-" + n
		}
		rest = append(rest, a)
	}
	return rest, help, nil
}

func newSpecCmd(c *client) *cobra.Command {
	specCmd := &cobra.Command{Use: "spec", Short: "Export or apply the cluster-wide spec"}
	specCmd.AddCommand(printsData(&cobra.Command{
		Use: "export", Short: "Print the spec (YAML unless -o json)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var s config.Spec
			if _, err := c.get("/api/v1/spec", &s); err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), s, nil)
		},
	}))
	var file string
	var dryRun, force bool
	apply := printsData(&cobra.Command{
		Use:   "apply -f FILE [--dry-run] [--force]",
		Short: "Replace the spec with FILE (YAML: a spec, or a node file's spec: section), showing the diff",
		Long: `Replace the cluster's spec with FILE: a spec alone, or a node file whose spec: section
is taken. The difference to the running spec is printed first, one line per key.

A change that removes a frontend, a pool, a VIP or a DNS zone, or takes more than a quarter
of a pool's backends out of rotation (removed, drain, maint or weight 0), is refused
unless --force. --dry-run prints the difference (and what would be refused) and changes
nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageErr("spec apply needs -f FILE")
			}
			s, err := config.LoadSpec(file)
			if err != nil {
				return &exitError{exitFailure, err}
			}
			q := url.Values{}
			if dryRun {
				q.Set("dry_run", "1")
			}
			if force {
				q.Set("force", "1")
			}
			path := "/api/v1/spec"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			var ans admin.SpecAnswer
			raw, err := c.send("PUT", path, s, &ans)
			var he *httpError
			if errors.As(err, &he) && he.status == http.StatusConflict && json.Unmarshal(he.body, &ans) == nil {
				// Refused as destructive: show what would have changed and why, with the
				// flag to give (the API's error names its query parameter, force=1).
				why := ans.Error
				if len(ans.Refused) > 0 {
					why = "refused: the change " + strings.Join(ans.Refused, "; ") + " (--force to apply it anyway)"
				}
				raw, err = he.body, &exitError{exitFailure, fmt.Errorf("%s: %s", file, why)}
				_ = c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { printSpecAnswer(w, ans, dryRun) })
				return err
			}
			if err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) {
				printSpecAnswer(w, ans, dryRun)
				switch {
				case ans.Applied:
					fmt.Fprintf(w, "applied %s (%d pools, %d frontends)\n", file, len(s.Pools), len(s.Frontends))
				case dryRun && len(ans.Diff) == 0:
					// Not just "nothing applied": that reads as if something would be.
					fmt.Fprintf(w, "dry run: no changes: %s matches the cluster's spec\n", file)
				case dryRun:
					fmt.Fprintf(w, "dry run: nothing applied\n")
				default:
					fmt.Fprintf(w, "no changes: %s matches the cluster's spec\n", file)
				}
			})
		},
	})
	apply.Flags().StringVarP(&file, "file", "f", "", "spec file")
	apply.Flags().BoolVar(&dryRun, "dry-run", false, "print the difference only")
	apply.Flags().BoolVar(&force, "force", false, "apply even a destructive change")
	specCmd.AddCommand(apply)
	return specCmd
}

func printSpecAnswer(w io.Writer, ans admin.SpecAnswer, dryRun bool) {
	for _, l := range ans.Diff {
		fmt.Fprintln(w, l)
	}
	if len(ans.Refused) == 0 {
		return
	}
	if dryRun {
		fmt.Fprintln(w, "would be refused without --force:")
	} else {
		fmt.Fprintln(w, "refused (nothing changed; --force to apply anyway):")
	}
	for _, r := range ans.Refused {
		fmt.Fprintln(w, "  "+r)
	}
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

// httpError is an answer with a status of 300 or more, with its body.
type httpError struct {
	status int
	msg    string
	body   []byte
}

func (e *httpError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.msg, e.status) }

// get is send("GET", path, nil, out).
func (c *client) get(path string, out any) (json.RawMessage, error) {
	return c.send("GET", path, nil, out)
}

// change sends an edit; it prints the answer with -o json|yaml, done otherwise.
func (c *client) change(cmd *cobra.Command, method, path string, in any, done string) error {
	raw, err := c.send(method, path, in, nil)
	if err != nil {
		return err
	}
	return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { fmt.Fprintln(w, done) })
}

// send sends one request (in as JSON) and returns the answer's JSON, decoded into out too
// when out is not nil. An answer that is not JSON is not from an mxlb node: it says so.
func (c *client) send(method, path string, in, out any) (json.RawMessage, error) {
	base := c.base
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, strings.TrimRight(base, "/")+path, body)
	if err != nil {
		return nil, usageErr("--admin %q: %w", c.base, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		// A file that cannot be read (or holds no token) is a failure, not a usage error:
		// the command line was right (README, CLI: exit 2 is for the command line).
		t, err := tokenfile.Read(c.token)
		if err != nil {
			return nil, &exitError{exitFailure, fmt.Errorf("--token-file: %w", err)}
		}
		req.Header.Set("Authorization", "Bearer "+t)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// Not the URL: its query can hold a trace's recipient or sender (personal data,
		// which must not land in a terminal's scrollback or a cron mail); the base says where.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, &exitError{exitConnect, fmt.Errorf("cannot reach the admin API at %s (is mxlb serve running? set --admin or MXLB_ADMIN): %w", c.base, err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, &exitError{exitConnect, fmt.Errorf("reading the answer of %s: %w", c.base, err)}
	}
	if len(b) > maxAnswer {
		return nil, &exitError{exitFailure, fmt.Errorf("the answer of %s is larger than %d bytes", c.base, maxAnswer)}
	}
	// Every answer of the admin API, errors included, is JSON. Anything else is some other
	// server (or an mxlb too old for this request, answering 404 for an unknown path).
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if ct != "application/json" || !json.Valid(b) {
		return nil, &exitError{exitConnect, fmt.Errorf("%s is not an mxlb admin API (or an mxlb too old for %s %s): it answered HTTP %d, %s: %s",
			c.base, method, path, resp.StatusCode, orDash(ct), excerpt(b))}
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = excerpt(b)
		}
		if resp.StatusCode == http.StatusUnauthorized {
			// Say what to do: the node's answer alone does not.
			if c.token == "" {
				e.Error += ": give the node's admin token with --token-file FILE (or MXLB_TOKEN_FILE)"
			} else {
				e.Error += fmt.Sprintf(": the token in %s is not the one %s uses (rotated? the node reads its admin_token_file on SIGHUP)", c.token, c.base)
			}
		}
		return nil, &exitError{exitFailure, &httpError{resp.StatusCode, e.Error, b}}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return nil, &exitError{exitConnect, fmt.Errorf("%s is not an mxlb admin API, or not one this CLI understands: %s %s: %w", c.base, method, path, err)}
		}
	}
	return b, nil
}

// excerpt is the start of an answer body, on one line, for an error message.
func excerpt(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	if s == "" {
		return "(empty)"
	}
	return strconv.Quote(s)
}

// print writes v in the chosen format; table uses tbl, or YAML when tbl is nil. v may be
// an answer as it came (json.RawMessage), so that -o json shows every field.
func (c *client) print(w io.Writer, v any, tbl func(io.Writer)) error {
	switch {
	case c.output == "json":
		var buf bytes.Buffer
		b, ok := v.(json.RawMessage)
		if !ok {
			var err error
			if b, err = json.Marshal(v); err != nil {
				return err
			}
		}
		if err := json.Indent(&buf, b, "", "  "); err != nil {
			return err
		}
		buf.WriteByte('\n')
		_, err := w.Write(buf.Bytes())
		return err
	case c.output == "yaml" || tbl == nil:
		// Through JSON so that the yaml keys are the json tags (durations as strings), into
		// a yaml.Node so that fields keep their order, in block style.
		b, ok := v.(json.RawMessage)
		if !ok {
			var err error
			if b, err = json.Marshal(v); err != nil {
				return err
			}
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

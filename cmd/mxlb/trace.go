package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/trace/farm"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

type traceAnswer struct {
	Node      string            `json:"node"`
	Records   []lbrecord.Record `json:"records"`
	Truncated bool              `json:"truncated"`
}

func newTraceCmd(c *client) *cobra.Command {
	var rcpt, sender, msgid, clientIP, queueID, since, until, status string
	var limit int
	var thisNode, jsonl bool
	cmd := printsData(&cobra.Command{
		Use:   "trace (--rcpt ADDR | --from ADDR | --msgid ID | --queue-id ID | --client IP) [--since 24h] [--until TIME] [--status deferred|bounced]",
		Short: "What happened to a message, farm-wide: balancer, MTA, queue ids, every delivery attempt, final status",
		Long: `Trace mail across the farm. The node (--admin) asks every cluster node for its transaction
records and every backend's agent for its MTA records, at once and within a deadline, and
joins them: one timeline per message and recipient, from where it was received (node,
frontend, client, backend) through every MTA hop (a relay to a fallback-pool MTA continues
in that MTA's record, by its queue id) with every delivery attempt (time, relay, dsn, status,
the remote reply), to the final status: sent, deferred, bounced, expired, queued (no
attempt known yet, or that MTA's agent did not answer) or rejected (refused in the SMTP
session). Sources that did not answer are listed: their part is missing. An MTA that health
checks hold down, and whose queue agent is silent too, is not asked (it would cost the
whole deadline): it is listed as skipped.

Exit status: 0 the answer is complete (whether or not anything matched), 4 the answer is
printed but partial (a source is unreachable or was skipped as down: its records are
missing), 1 the query failed, 2 usage, 3 the node could not be reached.

--since and --until take a duration back from now (90s, 15m, 2h) or an RFC 3339 time.
--this-node shows the asked node's own transaction records instead (no join).
--jsonl prints one timeline per line (for Loki, Elasticsearch or ClickHouse pipelines).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			filters := map[string]string{"rcpt": rcpt, "msgid": msgid, "client": clientIP, "queue_id": queueID}
			if thisNode {
				filters["sender"] = sender
				if msgid != "" {
					return usageErr("--msgid: a node's records have no message-id; drop --this-node")
				}
			} else {
				filters["from"] = sender
			}
			for k, v := range filters {
				if v != "" {
					q.Set(k, v)
				}
			}
			if len(q) == 0 {
				return usageErr("give --rcpt, --from, --msgid, --queue-id or --client")
			}
			now := time.Now()
			for k, v := range map[string]string{"since": since, "until": until} {
				if v == "" {
					continue
				}
				t, err := parseSince(v, now)
				if err != nil {
					return usageErr("--%s %w", k, err)
				}
				q.Set(k, t.UTC().Format(time.RFC3339Nano))
			}
			switch status {
			case "", "sent", "deferred", "bounced", "expired", "queued", "rejected", "abandoned":
				if status != "" {
					q.Set("status", status)
				}
			default:
				return usageErr("--status %q: one of sent, deferred, bounced, expired, queued, rejected, abandoned", status)
			}
			if status != "" && thisNode {
				return usageErr("--status needs the farm-wide trace; drop --this-node")
			}
			if limit < 1 || limit > 1000 {
				return usageErr("--limit %d: out of range: use 1..1000", limit)
			}
			q.Set("limit", strconv.Itoa(limit))
			if thisNode {
				q.Set("scope", "node")
				var ans traceAnswer
				raw, err := c.get("/api/v1/trace?"+q.Encode(), &ans)
				if err != nil {
					return err
				}
				return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { printTrace(w, ans) })
			}
			var ans farm.Answer
			raw, err := c.get("/api/v1/trace?"+q.Encode(), &ans)
			if err != nil {
				return err
			}
			if jsonl {
				err = printJSONLines(cmd.OutOrStdout(), ans)
			} else {
				err = c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { printTimelines(w, ans) })
			}
			if err != nil {
				return err
			}
			return partialErr(ans)
		},
	})
	f := cmd.Flags()
	f.StringVar(&rcpt, "rcpt", "", "recipient address")
	f.StringVar(&sender, "from", "", "envelope sender")
	f.StringVar(&sender, "sender", "", "envelope sender (same as --from)")
	f.StringVar(&msgid, "msgid", "", "Message-ID header")
	f.StringVar(&clientIP, "client", "", "client IP address")
	f.StringVar(&queueID, "queue-id", "", "an MTA's queue id")
	f.StringVar(&since, "since", "24h", "from: a duration back from now or an RFC 3339 time")
	f.StringVar(&until, "until", "", "to: a duration back from now or an RFC 3339 time")
	f.StringVar(&status, "status", "", "only messages whose final status is this (sent, deferred, bounced, expired, queued, rejected, abandoned)")
	f.IntVar(&limit, "limit", 100, "at most this many records per source (1..1000)")
	f.BoolVar(&thisNode, "this-node", false, "the asked node's own transaction records, not the farm-wide timeline")
	f.BoolVar(&jsonl, "jsonl", false, "one JSON timeline per line")
	_ = cmd.RegisterFlagCompletionFunc("status", cobra.FixedCompletions([]string{"sent", "deferred", "bounced", "expired", "queued", "rejected", "abandoned"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// partialErr is exitPartial when some source's records are missing from ans (the answer
// itself is printed already), so that a script cannot take a partial answer for a whole one.
func partialErr(ans farm.Answer) error {
	if !ans.Partial() {
		return nil
	}
	var parts []string
	if n := len(ans.Unreachable); n > 0 {
		parts = append(parts, fmt.Sprintf("%d source(s) did not answer", n))
	}
	if n := len(ans.Skipped); n > 0 {
		parts = append(parts, fmt.Sprintf("%d MTA(s) skipped as down", n))
	}
	return &exitError{exitPartial, fmt.Errorf("partial answer: %s; their records are missing", strings.Join(parts, ", "))}
}

// printJSONLines writes each timeline as one line, then each unreachable source as one
// line with "unreachable": true and each skipped one with "skipped": true, so a pipeline
// sees what is missing.
func printJSONLines(w io.Writer, ans farm.Answer) error {
	enc := json.NewEncoder(w)
	for _, m := range ans.Messages {
		if err := enc.Encode(m); err != nil {
			return err
		}
	}
	for _, u := range ans.Unreachable {
		if err := enc.Encode(struct {
			Unreachable bool   `json:"unreachable"`
			Kind        string `json:"kind"`
			Name        string `json:"name"`
			Addr        string `json:"addr,omitempty"`
			Error       string `json:"error"`
		}{true, u.Kind, u.Name, u.Addr, u.Error}); err != nil {
			return err
		}
	}
	for _, s := range ans.Skipped {
		if err := enc.Encode(struct {
			Skipped bool   `json:"skipped"`
			Kind    string `json:"kind"`
			Name    string `json:"name"`
			Addr    string `json:"addr,omitempty"`
			Reason  string `json:"reason"`
		}{true, s.Kind, s.Name, s.Addr, s.Reason}); err != nil {
			return err
		}
	}
	return nil
}

// printTimelines writes one block per message and recipient: where it was received, then
// each hop's MTA and queue id with its attempts below.
func printTimelines(w io.Writer, ans farm.Answer) {
	for _, u := range ans.Unreachable {
		fmt.Fprintf(w, "UNREACHABLE %s %s %s: %s (its records are missing below)\n", u.Kind, u.Name, u.Addr, oneLine(u.Error))
	}
	for _, s := range ans.Skipped {
		fmt.Fprintf(w, "SKIPPED %s %s %s: %s (not asked; its records are missing below)\n", s.Kind, s.Name, s.Addr, oneLine(s.Reason))
	}
	if len(ans.NotTraced) > 0 {
		fmt.Fprintf(w, "not traced: pool %s (no agent.trace_port: the MTAs' side is not shown)\n", oneLine(strings.Join(ans.NotTraced, ", ")))
	}
	if len(ans.Messages) == 0 {
		fmt.Fprintf(w, "no messages (asked %d node(s), %d agent(s))\n", ans.Nodes, ans.Agents)
	}
	for i, m := range ans.Messages {
		if i > 0 || len(ans.Unreachable)+len(ans.Skipped)+len(ans.NotTraced) > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s  %s  from <%s>", orDash(m.Recipient), strings.ToUpper(string(m.FinalStatus)), m.Sender)
		if m.MessageID != "" {
			fmt.Fprintf(w, "  %s", m.MessageID)
		}
		fmt.Fprintln(w)
		tw := newTable(w)
		r := m.Received
		where := "received"
		if r.Node != "" {
			where += " by " + r.Node
		}
		if r.Frontend != "" {
			where += "/" + r.Frontend
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", stamp(r.Time), where, "-", orDash(r.Outcome), "client "+orDash(r.Client), "-> "+orDash(r.Backend))
		for _, a := range r.Tried {
			fmt.Fprintf(tw, "  %s\t  tried\t-\t-\t%s\t%s\n", stamp(a.Time), a.Backend, oneLine(a.Reply))
		}
		for _, h := range m.Hops {
			mta := orDash(h.MTA)
			if h.Backend != "" {
				mta += " (" + h.Backend + ")"
			}
			via := ""
			if h.Via != nil {
				via = "via " + h.Via.Node + "/" + h.Via.Frontend
			}
			note := orDash(via)
			if len(h.Attempts) == 0 {
				note = strings.TrimSpace(via + " no record of this MTA")
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", stamp(h.Time), mta, orDash(h.QueueID), "-", "from "+orDash(h.Client), note)
			for _, a := range h.Attempts {
				fmt.Fprintf(tw, "  %s\t  %s\t%s\t%s\t%s\t%s\n", stamp(a.Time), a.Status, orDash(a.QueuedAs), orDash(a.DSN), orDash(a.Relay), oneLine(a.Reply))
			}
		}
		tw.Flush()
	}
	if ans.Truncated {
		fmt.Fprintln(w, "(more records match: narrow the time range or raise --limit)")
	}
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// printTrace writes one row per record and one indented row per backend attempt.
func printTrace(w io.Writer, ans traceAnswer) {
	tw := newTable(w)
	fmt.Fprintln(tw, "TIME\tNODE\tCLIENT\tSENDER\tRECIPIENTS\tBACKEND\tQUEUE ID\tOUTCOME")
	for _, r := range ans.Records {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Local().Format("2006-01-02 15:04:05"),
			orDash(r.Node), orDash(r.Client), orDash(r.Sender), orDash(strings.Join(r.Recipients, ",")),
			orDash(r.Backend), orDash(r.QueueID), oneLine(r.Outcome))
		for _, a := range r.Attempts {
			fmt.Fprintf(tw, "\t\t\t\t  tried\t%s\t%s\t%s\n", orDash(a.Backend), orDash(a.QueueID), oneLine(a.Reply))
		}
	}
	tw.Flush()
	if ans.Truncated {
		fmt.Fprintln(w, "(more records match: narrow the time range or raise --limit)")
	}
}

package main

import (
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/trace/lbrecord"
)

type traceAnswer struct {
	Node      string            `json:"node"`
	Records   []lbrecord.Record `json:"records"`
	Truncated bool              `json:"truncated"`
}

func newTraceCmd(c *client) *cobra.Command {
	var rcpt, sender, clientIP, queueID, since, until string
	var limit int
	cmd := printsData(&cobra.Command{
		Use:   "trace (--rcpt ADDR | --sender ADDR | --client IP | --queue-id ID) [--since 24h] [--until TIME]",
		Short: "Find a node's transactions: client, sender, recipients, every backend tried, its reply and queue id",
		Long: `Find the transactions this node (--admin) proxied: in smtp mode one record per transaction
(client, HELO, TLS, sender, recipients, size, every backend tried with its reply, and the
queue id of the backend that took it: look that id up in the MTA's log, or in its agent's
/trace); in tcp mode one per connection. Each node answers for itself.

--since and --until take a duration back from now (90s, 15m, 2h) or an RFC 3339 time.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"rcpt": rcpt, "sender": sender, "client": clientIP, "queue_id": queueID} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if len(q) == 0 {
				return usageErr("give --rcpt, --sender, --client or --queue-id")
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
			if limit < 1 || limit > 1000 {
				return usageErr("--limit %d: out of range: use 1..1000", limit)
			}
			q.Set("limit", strconv.Itoa(limit))
			var ans traceAnswer
			raw, err := c.get("/api/v1/trace?"+q.Encode(), &ans)
			if err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { printTrace(w, ans) })
		},
	})
	f := cmd.Flags()
	f.StringVar(&rcpt, "rcpt", "", "recipient address")
	f.StringVar(&sender, "sender", "", "envelope sender")
	f.StringVar(&clientIP, "client", "", "client IP address")
	f.StringVar(&queueID, "queue-id", "", "a backend's queue id")
	f.StringVar(&since, "since", "24h", "from: a duration back from now or an RFC 3339 time")
	f.StringVar(&until, "until", "", "to: a duration back from now or an RFC 3339 time")
	f.IntVar(&limit, "limit", 100, "at most this many records (1..1000)")
	return cmd
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

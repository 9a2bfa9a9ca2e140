package main

import (
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/events"
)

type eventList struct {
	Events []events.Event `json:"events"`
}

func newEventsCmd(c *client) *cobra.Command {
	var since string
	cmd := printsData(&cobra.Command{
		Use:   "events [--since DURATION|TIME]",
		Short: "List the cluster's events: admin changes, health flaps, saturation, VIP moves, members",
		Long: `List the events a node keeps: every admin change (CLI, API, spec apply, drain) with the
node it went through, the peer address and token name, and its diff; health flaps,
saturation, VIP moves and members joining, leaving and failing.

--since takes a duration back from now (90s, 15m, 2h) or a time in RFC 3339
(2026-12-01T21:00:00Z).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/api/v1/events"
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return usageErr("--since %w", err)
				}
				path += "?since=" + url.QueryEscape(t.UTC().Format(time.RFC3339Nano))
			}
			var el eventList
			raw, err := c.get(path, &el)
			if err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { printEvents(w, el.Events) })
		},
	})
	cmd.Flags().StringVar(&since, "since", "", "only events after this: a duration back from now (15m) or an RFC 3339 time")
	cmd.RegisterFlagCompletionFunc("since", cobra.FixedCompletions([]string{"5m", "1h", "24h"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// parseSince reads --since: a positive duration before now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("%q: give a positive duration, e.g. 15m", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (15m, 2h) nor an RFC 3339 time (2026-12-01T21:00:00Z)", s)
}

// printEvents writes one row per event, its diff lines below it in the message column.
func printEvents(w io.Writer, evs []events.Event) {
	tw := newTable(w)
	fmt.Fprintln(tw, "TIME\tNODE\tKIND\tACTOR\tSOURCE\tMESSAGE")
	for _, e := range evs {
		when := e.Time.Local().Format("2006-01-02 15:04:05")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", when, orDash(e.Node), orDash(e.Kind), orDash(e.Actor), orDash(e.Source), oneLine(e.Message))
		for _, d := range e.Diff {
			fmt.Fprintf(tw, "\t\t\t\t\t  %s\n", oneLine(d))
		}
	}
	tw.Flush()
}

// oneLine keeps a table row on one line whatever a message holds, and shows its other
// control characters as '?' (an MTA's reply in a health reason must not drive the terminal).
func oneLine(s string) string {
	return printable(strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' || r == '\t' }), " "))
}

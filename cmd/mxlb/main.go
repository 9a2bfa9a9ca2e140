// Command mxlb is the SMTP-aware load balancer and floating-VIP manager for mail farms:
// `mxlb serve` runs a balancer node, `mxlb agent` runs on MTA hosts, `mxlb demo` shows the
// job on one machine, and the other commands talk to a node's admin API. This package only
// wires: flags, config, components, output.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=..."; a build from a git
// checkout adds its commit (withRevision), so that the nodes of a rolling upgrade tell
// the old binary from the new in `mxlb status` (every build said 0.1.0-dev).
var version = withRevision(baseVersion, buildSettings())

const baseVersion = "0.1.0-dev"

func buildSettings() []debug.BuildSetting {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.Settings
	}
	return nil
}

// withRevision appends the VCS revision the binary was built from (12 characters, and
// "-dirty" for uncommitted changes) to v when the build recorded one.
func withRevision(v string, settings []debug.BuildSetting) string {
	var rev string
	var dirty bool
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return v
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return v + "+" + rev
}

// Exit codes (README, CLI).
const (
	exitOK      = 0
	exitFailure = 1 // the request was refused (bad input, not found, conflict) or failed
	exitUsage   = 2 // unknown command, bad flags or arguments
	exitConnect = 3 // the node could not be reached, or what answered is not an mxlb node
	// exitPartial: the answer is printed but some of it is missing (mxlb trace: a node or
	// agent did not answer, or was not asked because it is down), so a script can tell a
	// complete "no such message" from one that may be wrong.
	exitPartial = 4
)

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{exitUsage, fmt.Errorf(format, args...)}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line and returns its exit code; errors go to stderr.
func run(args []string, stdout, stderr io.Writer) int {
	root, c := newRoot()
	defer c.http.CloseIdleConnections()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "mxlb:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}

// outputAnnotation marks the commands that print data and so honour -o json|yaml; every
// other command refuses them.
const outputAnnotation = "mxlb-output"

func printsData(c *cobra.Command) *cobra.Command {
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[outputAnnotation] = "yes"
	return c
}

func newRoot() (*cobra.Command, *client) {
	c := newClient()
	root := &cobra.Command{
		Use:           "mxlb",
		Short:         "SMTP-aware load balancer and floating-VIP manager for mail farms",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return c.checkOutput(cmd)
		},
	}
	root.PersistentFlags().StringVarP(&c.output, "output", "o", "table", "output format: table, json or yaml")
	root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	root.AddCommand(newServeCmd(), newDemoCmd(), newVersionCmd(c), newConfigCmd(c), newKeygenCmd(c), newAgentCmd(), newUpgradeCmd(c))
	addClientCommands(root, c)
	// Made here rather than in Execute so that they get the usage rules below too.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	usageErrors(root)
	return root, c
}

// checkOutput refuses an unknown -o, and -o json|yaml on a command that prints no data.
func (c *client) checkOutput(cmd *cobra.Command) error {
	switch c.output {
	case "table":
		return nil
	case "json", "yaml":
	default:
		return usageErr("-o %q: use table, json or yaml", c.output)
	}
	if cmd.Annotations[outputAnnotation] == "" {
		return usageErr("-o %s: %s prints no data to format", c.output, cmd.CommandPath())
	}
	return nil
}

func newVersionCmd(c *client) *cobra.Command {
	return printsData(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.print(cmd.OutOrStdout(), map[string]string{"version": version}, func(w io.Writer) {
				fmt.Fprintln(w, "mxlb", version)
			})
		},
	})
}

// usageErrors makes wrong arguments and flags exit with exitUsage (2), with the usage
// line, and makes a command that only groups others (mxlb backend) refuse an unknown
// subcommand or none, instead of printing help and exiting 0.
func usageErrors(c *cobra.Command) {
	c.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageErr("%w (usage: %s)", err, cmd.UseLine())
	})
	if c.HasSubCommands() && !c.Runnable() {
		c.Args = cobra.ArbitraryArgs // no legacy check in Find: the RunE below answers
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				cmd.SetOut(cmd.ErrOrStderr())
				_ = cmd.Usage()
				return usageErr("%s needs a command (see %s --help)", cmd.CommandPath(), cmd.CommandPath())
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			if cmd.SuggestionsMinimumDistance <= 0 {
				cmd.SuggestionsMinimumDistance = 2 // cobra's default, set only on its own path
			}
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += "; did you mean " + strings.Join(s, " or ") + "?"
			}
			names := []string{}
			for _, sub := range cmd.Commands() {
				if sub.IsAvailableCommand() {
					names = append(names, sub.Name())
				}
			}
			return usageErr("%s (commands: %s)", msg, strings.Join(names, ", "))
		}
	} else if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return usageErr("%w (usage: %s)", err, cmd.UseLine())
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		usageErrors(sub)
	}
}

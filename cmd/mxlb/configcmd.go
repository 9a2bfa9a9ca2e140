package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/node"
)

func newConfigCmd(c *client) *cobra.Command {
	cc := &cobra.Command{Use: "config", Short: "Work with node files"}
	cc.AddCommand(printsData(&cobra.Command{
		Use:   "validate FILE",
		Short: "Check a node file; prints every error with file, line and field, exits 1 on any",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// -o json|yaml answers in that format also when the file is refused (a CI
			// step reads stdout): ok false and the errors, besides the text on stderr.
			refuse := func(err error, errs []validateError) error {
				if c.output == "json" || c.output == "yaml" {
					res := struct {
						File   string          `json:"file"`
						OK     bool            `json:"ok"`
						Errors []validateError `json:"errors"`
					}{args[0], false, errs}
					if perr := c.print(cmd.OutOrStdout(), res, nil); perr != nil {
						return perr
					}
				}
				return &exitError{exitFailure, err}
			}
			f, err := config.Load(args[0])
			if err != nil {
				var ce *config.Errors
				if !errors.As(err, &ce) {
					return refuse(err, []validateError{{File: args[0], Message: err.Error()}})
				}
				var errs []validateError
				for _, fe := range ce.List {
					errs = append(errs, validateError{File: fe.File, Line: fe.Line, Field: fe.Path, Message: fe.Msg})
				}
				return refuse(err, errs)
			}
			// The files it names, as the node reads them at start.
			if errs := node.CheckFiles(f); len(errs) > 0 {
				var ves []validateError
				for _, e := range errs {
					ves = append(ves, validateError{File: args[0], Message: e.Error()})
				}
				return refuse(fmt.Errorf("%s: %w", args[0], errors.Join(errs...)), ves)
			}
			// Secret files other users may read: valid, but said (stderr; "warnings" in
			// -o json|yaml), exit 0.
			warnings := node.FileWarnings(f)
			for _, w := range warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: warning: %s\n", args[0], w)
			}
			res := struct {
				File      string   `json:"file"`
				OK        bool     `json:"ok"`
				HasSpec   bool     `json:"has_spec"`
				Pools     int      `json:"pools"`
				Frontends int      `json:"frontends"`
				VIPs      int      `json:"vips"`
				Warnings  []string `json:"warnings,omitempty"`
			}{args[0], true, f.HasSpec, len(f.Spec.Pools), len(f.Spec.Frontends), len(f.Spec.VIPs), warnings}
			return c.print(cmd.OutOrStdout(), res, func(w io.Writer) {
				if !f.HasSpec {
					fmt.Fprintf(w, "%s: ok (no spec: this node takes the cluster's)\n", args[0])
					return
				}
				fmt.Fprintf(w, "%s: ok (%d pools, %d frontends, %d vips)\n", args[0], res.Pools, res.Frontends, res.VIPs)
			})
		},
	}))
	return cc
}

// validateError is one problem of `config validate -o json|yaml`.
type validateError struct {
	File    string `json:"file"`
	Line    int    `json:"line,omitempty"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func newKeygenCmd(c *client) *cobra.Command {
	return printsData(&cobra.Command{
		Use:   "keygen",
		Short: "Print a new random 32-byte gossip key (base64) for cluster.key_file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k := make([]byte, 32)
			if _, err := rand.Read(k); err != nil {
				return err
			}
			key := base64.StdEncoding.EncodeToString(k)
			return c.print(cmd.OutOrStdout(), map[string]string{"key": key}, func(w io.Writer) { fmt.Fprintln(w, key) })
		},
	})
}

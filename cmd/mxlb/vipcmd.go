package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/vip"
)

// newVIPCleanupCmd removes every VIP address mxlb added on this host (the labelled ones).
// For the systemd unit's ExecStopPost: a node killed with its link up must not keep
// answering for a VIP another node took over.
func newVIPCleanupCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cleanup",
		Short: "Remove every VIP address mxlb added on this host (run after mxlb serve exits)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := vip.NewKernel()
			if err != nil {
				return err
			}
			defer k.Close()
			addrs, err := k.List(vip.DefaultLabel)
			if err != nil {
				return err
			}
			var errs []error
			for _, a := range addrs {
				if err := k.Del(a.Interface, a.Prefix, vip.DefaultLabel); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s from %s\n", a.Prefix, a.Interface)
			}
			return errors.Join(errs...)
		},
	}
}

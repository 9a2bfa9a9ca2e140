package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/vip"
	"github.com/mxlb/mxlb/vip/bgp"
)

// newVIPCleanupCmd removes every VIP address mxlb added on this host (the labelled ones,
// and those of mode bgp).
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
			// The VIPs of mode bgp, on mxlb's dummy interface (or labelled on lo).
			bk := &bgp.Kernel{}
			ps, err := bk.List()
			errs = append(errs, err)
			for _, p := range ps {
				if err := bk.Del(p); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s (bgp)\n", p)
			}
			return errors.Join(errs...)
		},
	}
}

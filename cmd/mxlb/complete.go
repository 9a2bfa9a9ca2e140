package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/admin"
)

// Shell completion (cobra's `mxlb completion bash|zsh|fish`, through the hidden
// `mxlb __complete`) offers pool, backend and node names from the admin API that --admin
// points at. Completion must never fail loudly: when the node cannot be asked it offers
// nothing (and no file names).

// completePools completes the first n arguments with pool names; n < 0: a flag's value.
func (c *client) completePools(n int) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if n >= 0 && len(args) >= n {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var st admin.Status
		if _, err := c.get("/api/v1/status", &st); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, p := range st.Pools {
			if strings.HasPrefix(p.Name, toComplete) {
				out = append(out, cobra.CompletionWithDesc(p.Name, fmt.Sprintf("%d backends", len(p.Backends))))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeBackends completes POOL ADDR|NAME: pool names, then the backends of that pool.
func (c *client) completeBackends(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return c.completePools(1)(cmd, args, toComplete)
	}
	if len(args) > 1 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var st admin.Status
	if _, err := c.get("/api/v1/status", &st); err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, p := range st.Pools {
		if p.Name != args[0] {
			continue
		}
		for _, b := range p.Backends {
			if strings.HasPrefix(b.Address, toComplete) {
				out = append(out, cobra.CompletionWithDesc(b.Address, fmt.Sprintf("%s, weight %d", b.Admin, b.Weight)))
			}
			if b.Name != "" && strings.HasPrefix(b.Name, toComplete) {
				out = append(out, cobra.CompletionWithDesc(b.Name, fmt.Sprintf("%s, %s, weight %d", b.Address, b.Admin, b.Weight)))
			}
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeNodes completes NODE with the cluster's member names.
func (c *client) completeNodes(_ *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var ms []admin.Member
	if _, err := c.get("/api/v1/nodes", &ms); err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, m := range ms {
		if strings.HasPrefix(m.Name, toComplete) {
			desc := m.State
			if desc == "" && m.Alive {
				desc = "alive"
			}
			if m.Self {
				desc += ", this node"
			}
			out = append(out, cobra.CompletionWithDesc(m.Name, strings.TrimPrefix(desc, ", ")))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

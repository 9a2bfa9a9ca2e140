package node

import (
	"fmt"
	"strings"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
)

// CheckFiles reads the token files a node file names, as New and the trace would, and
// returns what is wrong with each: `mxlb config validate` passed a token that serve then
// refused at start. (config.Load checks the gossip key file itself.)
func CheckFiles(f *config.File) []error {
	var errs []error
	if f.Node.AdminTokenFile != "" {
		if _, err := admin.ReadToken(f.Node.AdminTokenFile); err != nil {
			errs = append(errs, fmt.Errorf("node.admin_token_file: %s", strings.TrimPrefix(err.Error(), "admin: ")))
		}
	}
	if f.Node.TraceTokenFile != "" {
		if _, err := admin.ReadToken(f.Node.TraceTokenFile); err != nil {
			errs = append(errs, fmt.Errorf("node.trace_token_file: %s", strings.TrimPrefix(err.Error(), "admin: ")))
		}
	}
	return errs
}

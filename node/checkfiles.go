package node

import (
	"fmt"
	"os"
	"strings"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/internal/tokenfile"
)

// CheckFiles reads the token files a node file names, as New and the trace would, and
// returns what is wrong with each: `mxlb config validate` passed a token that serve then
// refused at start. (config.Load checks the gossip key file itself.)
func CheckFiles(f *config.File) []error {
	var errs []error
	if f.Node.AdminTokenFile != "" {
		if _, err := tokenfile.Read(f.Node.AdminTokenFile); err != nil {
			errs = append(errs, fmt.Errorf("node.admin_token_file: %w", err))
		}
	}
	if f.Node.TraceTokenFile != "" {
		if _, err := tokenfile.Read(f.Node.TraceTokenFile); err != nil {
			errs = append(errs, fmt.Errorf("node.trace_token_file: %w", err))
		}
	}
	return errs
}

// FileWarnings names the secret files f names that other users of the host may read or
// change: the admin token administers the whole cluster, the gossip key joins it, the
// trace token reads personal data. Warnings, not errors: a node that ran with such a file
// must still start (an upgrade re-reads the file), and the mode is the operator's call.
// Group read is left alone (packaging/mxlb.service reads the key through its group).
func FileWarnings(f *config.File) []string {
	type secret struct{ field, path string }
	files := []secret{{"node.admin_token_file", f.Node.AdminTokenFile}, {"node.trace_token_file", f.Node.TraceTokenFile},
		{"cluster.key_file", f.Cluster.KeyFile}}
	for i, fe := range f.Spec.Frontends {
		if fe.TLS != nil {
			files = append(files, secret{fmt.Sprintf("spec.frontends[%d].tls.key_file", i), fe.TLS.KeyFile})
		}
	}
	if b := f.Spec.BGP; b != nil {
		for i, p := range b.Peers {
			files = append(files, secret{fmt.Sprintf("spec.bgp.peers[%d].password_file", i), p.PasswordFile})
		}
	}
	var out []string
	for _, s := range files {
		if s.path == "" {
			continue
		}
		fi, err := os.Stat(s.path)
		if err != nil {
			continue // CheckFiles and config.Load report what cannot be read
		}
		var who []string
		if m := fi.Mode().Perm(); m&0o004 != 0 {
			who = append(who, "readable by every user")
		}
		if m := fi.Mode().Perm(); m&0o022 != 0 {
			who = append(who, "writable by others than its owner")
		}
		if len(who) > 0 {
			out = append(out, fmt.Sprintf("%s: %s is %s (mode %04o): chmod o-rwx,g-w %s", s.field, s.path,
				strings.Join(who, " and "), fi.Mode().Perm(), s.path))
		}
	}
	return out
}

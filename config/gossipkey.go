package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
)

// ParseGossipKeys reads a cluster.key_file: one base64 key (16, 24 or 32 bytes) a line,
// blank lines and lines starting with # left out. The first key is the one the node
// encrypts with; the others are accepted too, which is how a key is rotated without
// splitting the cluster (add the new key as a second line everywhere, then make it the
// first everywhere, then drop the old one; each step a restart or `mxlb upgrade` per
// node).
func ParseGossipKeys(b []byte) ([][]byte, error) {
	lines := bytes.Split(b, []byte("\n"))
	n := 0
	for i, l := range lines {
		if lines[i] = bytes.TrimSpace(l); len(lines[i]) > 0 && lines[i][0] != '#' {
			n++
		}
	}
	var keys [][]byte
	for i, line := range lines {
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		where := "" // a file of one key is the file
		if n > 1 {
			where = fmt.Sprintf("line %d ", i+1)
		}
		k, err := base64.StdEncoding.DecodeString(string(line))
		if err != nil {
			return nil, fmt.Errorf("%sis not base64 (make a key with `mxlb keygen`)", where)
		}
		if l := len(k); l != 16 && l != 24 && l != 32 {
			return nil, fmt.Errorf("%sholds a %d-byte key; it must be 16, 24 or 32 bytes (make one with `mxlb keygen`)", where, l)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("holds no key (make one with `mxlb keygen`)")
	}
	return keys, nil
}

package node

import (
	"encoding/json"
)

// meta is what a node publishes about itself to every other node (cluster.SetMeta carries
// it as opaque bytes). Encoded it must fit in memberlist's 512 bytes.
type meta struct {
	Drain bool     `json:"drain,omitempty"`
	VIPs  []string `json:"vips,omitempty"`
	// Ineligible lists the VIPs this node cannot serve now (no healthy backend behind
	// them from where it stands): another node that can should hold them.
	Ineligible []string `json:"ineligible,omitempty"`
	Admin      string   `json:"admin,omitempty"`
	// Down is which backends this node sees down, per pool (downView in history.go): the
	// other nodes' pages show where they disagree.
	Down    map[string]string `json:"down,omitempty"`
	Version string            `json:"version,omitempty"`
}

// maxMeta is memberlist's limit on a node's metadata.
const maxMeta = 512

func (m meta) encode() []byte {
	b, _ := json.Marshal(m)                // strings and bools only: cannot fail
	if len(b) > maxMeta && m.Down != nil { // the opinion is what can go: VIP ownership needs the rest
		m.Down = nil
		b, _ = json.Marshal(m)
	}
	return b
}

// decodeMeta reads a member's metadata; what does not decode is empty (an older or
// broken peer publishes nothing this node can use).
func decodeMeta(b []byte) meta {
	var m meta
	if len(b) > 0 && json.Unmarshal(b, &m) != nil {
		return meta{}
	}
	return m
}

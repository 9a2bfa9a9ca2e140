package node

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mxlb/mxlb/admin"
)

// TestClusterMetrics: a VIP held here, one held elsewhere and one nobody can hold; members
// by state (one of the four is 1).
func TestClusterMetrics(t *testing.T) {
	c := newClusterMetrics(func() []admin.Member {
		return []admin.Member{{Name: "lb1", Alive: true, State: "alive"}, {Name: "lb2", State: "unreachable"}}
	}, func() []admin.VIPState {
		return []admin.VIPState{{Address: "198.18.0.100", Owner: "lb1", Held: true}, {Address: "198.18.0.101", Owner: "lb2"},
			{Address: "198.18.0.102"}}
	})
	want := `
# HELP mxlb_vip_held 1 while this node holds the VIP; summed over the nodes it is 1 when all is well, 0 when no node holds it.
# TYPE mxlb_vip_held gauge
mxlb_vip_held{vip="198.18.0.100"} 1
mxlb_vip_held{vip="198.18.0.101"} 0
mxlb_vip_held{vip="198.18.0.102"} 0
# HELP mxlb_vip_owned 1 when this node sees a live, eligible node that should hold the VIP; 0: no node can (all drained, dead or without quorum).
# TYPE mxlb_vip_owned gauge
mxlb_vip_owned{vip="198.18.0.100"} 1
mxlb_vip_owned{vip="198.18.0.101"} 1
mxlb_vip_owned{vip="198.18.0.102"} 0
# HELP mxlb_cluster_member_state 1 for the state this node sees the member in (alive, unreachable, dead, left), 0 for the others.
# TYPE mxlb_cluster_member_state gauge
mxlb_cluster_member_state{member="lb1",state="alive"} 1
mxlb_cluster_member_state{member="lb1",state="dead"} 0
mxlb_cluster_member_state{member="lb1",state="left"} 0
mxlb_cluster_member_state{member="lb1",state="unreachable"} 0
mxlb_cluster_member_state{member="lb2",state="alive"} 0
mxlb_cluster_member_state{member="lb2",state="dead"} 0
mxlb_cluster_member_state{member="lb2",state="left"} 0
mxlb_cluster_member_state{member="lb2",state="unreachable"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

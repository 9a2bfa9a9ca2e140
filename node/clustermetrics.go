package node

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/admin"
)

// memberStates are the states mxlb_cluster_member_state enumerates (cluster.MemberState).
var memberStates = []string{"alive", "unreachable", "dead", "left"}

// clusterMetrics exports what this node sees of the cluster and its VIPs, for alerts that
// need every node's view: a VIP no node holds, a member that stopped answering. It reads
// the same functions as the admin API at scrape time.
type clusterMetrics struct {
	members func() []admin.Member
	vips    func() []admin.VIPState

	held, owned, member *prometheus.Desc
}

func newClusterMetrics(members func() []admin.Member, vips func() []admin.VIPState) *clusterMetrics {
	return &clusterMetrics{members: members, vips: vips,
		held: prometheus.NewDesc("mxlb_vip_held",
			"1 while this node holds the VIP; summed over the nodes it is 1 when all is well, 0 when no node holds it.", []string{"vip"}, nil),
		owned: prometheus.NewDesc("mxlb_vip_owned",
			"1 when this node sees a live, eligible node that should hold the VIP; 0: no node can (all drained, dead or without quorum).", []string{"vip"}, nil),
		member: prometheus.NewDesc("mxlb_cluster_member_state",
			"1 for the state this node sees the member in (alive, unreachable, dead, left), 0 for the others.", []string{"member", "state"}, nil),
	}
}

func (m *clusterMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.held
	ch <- m.owned
	ch <- m.member
}

func (m *clusterMetrics) Collect(ch chan<- prometheus.Metric) {
	for _, v := range m.vips() {
		ch <- prometheus.MustNewConstMetric(m.held, prometheus.GaugeValue, b2f(v.Held), v.Address)
		ch <- prometheus.MustNewConstMetric(m.owned, prometheus.GaugeValue, b2f(v.Owner != ""), v.Address)
	}
	for _, mb := range m.members() {
		state := mb.State
		if state == "" {
			state = "dead"
			if mb.Alive {
				state = "alive"
			}
		}
		for _, s := range memberStates {
			ch <- prometheus.MustNewConstMetric(m.member, prometheus.GaugeValue, b2f(s == state), mb.Name, s)
		}
	}
}

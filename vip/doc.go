// Package vip holds this node's share of the cluster's floating VIPs: which node owns
// which VIP (Owners: a pure function every node computes from the same member list, with
// no election), the addresses on the interfaces (netlink, behind the Addresser seam, each
// marked with a label so nothing else is touched), the gratuitous ARP and unsolicited
// neighbour advertisements that move clients' caches (behind Announcer), and a reconcile
// loop (Manager) that adds what this node owns, removes what it does not, and puts back an
// address someone removed. It knows nothing about SMTP; the node feeds it the spec's VIPs
// and the members as the cluster sees them.
package vip

// Package bgp announces this node's VIPs in mode bgp to the cluster's routers: every
// eligible node announces each such VIP as a /32 (/128) route, so the routers spread
// connections over the nodes by ECMP (anycast), and the address sits on a dummy
// interface of mxlb's own so the node accepts the traffic.
//
// Manager decides (per VIP: announced, de-preferred while a drain lets sessions end,
// withdrawn, held down after a withdrawal so a flapping MTA does not flap the route) and
// drives two seams: Speaker (a BGP speaker; GoBGP embeds github.com/osrg/gobgp/v4 with
// BFD) and Addresser (the dummy interface; Kernel over netlink). It knows nothing of
// SMTP or of the cluster: the node feeds it, per VIP, whether this node may serve it and
// how many sessions are open on it.
package bgp

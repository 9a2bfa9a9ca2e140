package vip

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

const (
	etherTypeARP  = 0x0806
	etherTypeIPv6 = 0x86dd
)

var (
	allNodes    = netip.MustParseAddr("ff02::1")
	allNodesMAC = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
)

// garpFrame builds a gratuitous ARP as an Ethernet frame: a request with
// sender = target = ip, sender hardware = mac, target hardware zero, to the
// broadcast address. Linux treats a request whose sender and target IP are
// equal as gratuitous (arp_is_garp) and, with the default arp_accept=0,
// updates an existing neighbour entry with it, ignoring the locktime.
func garpFrame(mac net.HardwareAddr, ip netip.Addr) ([]byte, error) {
	if !ip.Is4() {
		return nil, fmt.Errorf("vip: gratuitous ARP needs an IPv4 address, not %s", ip)
	}
	p, err := arp.NewPacket(arp.OperationRequest, mac, ip, ethernet.Broadcast, ip)
	if err != nil {
		return nil, fmt.Errorf("vip: ARP packet: %w", err)
	}
	// Request form: the target hardware address is unknown, so zero (RFC 5227 announcement).
	p.TargetHardwareAddr = make(net.HardwareAddr, len(mac))
	pb, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("vip: ARP packet: %w", err)
	}
	f := &ethernet.Frame{
		Destination: ethernet.Broadcast,
		Source:      mac,
		EtherType:   etherTypeARP,
		Payload:     pb,
	}
	b, err := f.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("vip: ARP frame: %w", err)
	}
	return b, nil
}

// naFrame builds an unsolicited neighbour advertisement as an Ethernet frame:
// from ip to ff02::1, hop limit 255, flags Override (not Solicited, not
// Router), target ip, option target link-layer address mac. A Linux receiver
// with an entry for ip replaces its link-layer address (override) and marks it
// STALE; one without an entry ignores it (unless accept_untracked_na).
func naFrame(mac net.HardwareAddr, ip netip.Addr) ([]byte, error) {
	if !ip.Is6() || ip.Is4In6() {
		return nil, fmt.Errorf("vip: neighbour advertisement needs an IPv6 address, not %s", ip)
	}
	na := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: ip,
		Options: []ndp.Option{&ndp.LinkLayerAddress{
			Direction: ndp.Target,
			Addr:      mac,
		}},
	}
	icmp, err := ndp.MarshalMessageChecksum(na, ip, allNodes)
	if err != nil {
		return nil, fmt.Errorf("vip: neighbour advertisement: %w", err)
	}
	pkt := make([]byte, 40+len(icmp))
	pkt[0] = 6 << 4 // version 6, traffic class 0, flow label 0
	binary.BigEndian.PutUint16(pkt[4:6], uint16(len(icmp)))
	pkt[6] = 58  // next header: ICMPv6
	pkt[7] = 255 // hop limit: RFC 4861 requires 255
	src, dst := ip.As16(), allNodes.As16()
	copy(pkt[8:24], src[:])
	copy(pkt[24:40], dst[:])
	copy(pkt[40:], icmp)
	f := &ethernet.Frame{
		Destination: allNodesMAC,
		Source:      mac,
		EtherType:   etherTypeIPv6,
		Payload:     pkt,
	}
	b, err := f.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("vip: NA frame: %w", err)
	}
	return b, nil
}

// announceFrame builds the frame that announces ip at mac, and its EtherType.
func announceFrame(mac net.HardwareAddr, ip netip.Addr) ([]byte, int, error) {
	if len(mac) != 6 {
		return nil, 0, fmt.Errorf("vip: interface has no Ethernet address (hardware address %q); VIPs need an Ethernet link", mac)
	}
	if ip.Is4() {
		b, err := garpFrame(mac, ip)
		return b, etherTypeARP, err
	}
	b, err := naFrame(mac, ip)
	return b, etherTypeIPv6, err
}

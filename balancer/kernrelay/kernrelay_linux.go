//go:build linux

package kernrelay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// MaxSockets bounds the sockets in the relay at once (two per session); a join past it
// fails and the session stays in the engine's relay.
const MaxSockets = 1 << 17

// Kernel is the loaded relay: two sockhashes, the verdict program and its counters.
//
// targets maps a socket's cookie to its PEER: where that socket's bytes go. relay holds
// the sockets whose incoming bytes the program handles (the program is attached to it),
// keyed by their own cookie. A join fills targets before relay: once a socket is in
// relay its bytes are redirected at once, and its peer must be there to take them (a
// redirect to a missing socket drops the bytes, which TCP has acknowledged already).
// Both maps are emptied of a socket by its close.
type Kernel struct {
	targets *ebpf.Map
	relay   *ebpf.Map
	trims   *ebpf.Map // one trimCounters
	prog    *ebpf.Program
}

// trimCounters is the program's count of the old bytes it cut off (the trims map's one
// value): skbs and bytes trimmed, and the skbs it could not trim (dropped) with their
// old bytes.
type trimCounters struct {
	Skbs, Bytes, Failed, FailedBytes uint64
}

// SK_SKB verdicts.
const (
	skDrop = 0
	skPass = 1
)

// Offsets in struct __sk_buff (the program's context). For an SK_SKB program cb[0] is
// the first word of the skb's own control block, which TCP's receive path left there:
// TCP_SKB_CB(skb)->seq, the sequence number of the skb's first byte.
const (
	skbLen = 0
	skbCB0 = 48
	skbSk  = 168
)

// bpf_skb_adjust_room takes at most 0xfff bytes off an sk_skb per call; maxPulls of
// them (1 MiB) are more than one skb can hold.
const (
	maxPull  = 0xfff
	maxPulls = 256
)

// program is the stream verdict:
//
//	if skb->len == 0: return SK_DROP      // an empty FIN skb: the engine forwards the FIN
//	old = tcp_sk(sk)->copied_seq - TCP_SKB_CB(skb)->seq
//	if old > 0:                           // the skb starts with bytes taken already
//	    cut old bytes off its front (bpf_skb_adjust_room), count them
//	    (if that fails: count it, return SK_DROP)
//	key = bpf_get_socket_cookie(skb)
//	return bpf_sk_redirect_hash(skb, targets, &key, 0)   // 0: to the peer's send path
//
// The trim is why the relay can be trusted with a lossy network: TCP queues a
// retransmitted segment that overlaps bytes it has received already (the sender cut it
// at other bounds than the first time) whole, with its old bytes in front, and hands the
// program each skb from its first byte (tcp_read_skb does not skip to the read
// position, as tcp_recvmsg and tcp_read_sock do), so without it those bytes went out a
// second time (TestRelayTrimsAnOverlappingRetransmission). copied_seq is where the
// relay has taken the socket's stream to: the engine's reads before the join, then each
// skb's length after the verdict (tcp_eat_skb), which the trim makes exact. It also
// covers an skb the engine had read part of before the join.
//
// A socket whose cookie is missing from targets (it cannot be: targets is filled first)
// gets SK_DROP from the helper.
func program(targets, trims *ebpf.Map, copiedSeq int16) asm.Instructions {
	count := func(label string, off int16, by asm.Register) asm.Instructions {
		return asm.Instructions{
			asm.StoreImm(asm.RFP, -16, 0, asm.Word).WithSymbol(label),
			asm.LoadMapPtr(asm.R1, trims.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -16),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, label+"_done"),
			asm.Mov.Imm(asm.R1, 1),
			asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, off),
			asm.AddAtomic.Mem(asm.R0, by, asm.DWord, off+8),
			asm.Mov.Imm(asm.R0, 0).WithSymbol(label + "_done"),
		}
	}
	adjust := func() asm.Instructions { // R2: the length difference
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Imm(asm.R3, 0),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnSkbAdjustRoom.Call(),
			asm.JNE.Imm(asm.R0, 0, "failed"),
		}
	}
	var p asm.Instructions
	p = append(p,
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skbLen, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "data"),
		asm.Mov.Imm(asm.R0, skDrop),
		asm.Return(),
		// R7 = old = copied_seq - seq (32-bit sequence arithmetic); R8 keeps it.
		asm.LoadMem(asm.R1, asm.R6, skbSk, asm.DWord).WithSymbol("data"),
		asm.JEq.Imm(asm.R1, 0, "redirect"),
		asm.FnSkcToTcpSock.Call(),
		asm.JEq.Imm(asm.R0, 0, "redirect"),
		asm.LoadMem(asm.R7, asm.R0, copiedSeq, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, skbCB0, asm.Word),
		asm.Sub.Reg32(asm.R7, asm.R2),
		asm.JSLE.Imm32(asm.R7, 0, "redirect"), // the common case: nothing old
		asm.Mov.Reg(asm.R8, asm.R7),
		asm.LoadMem(asm.R2, asm.R6, skbLen, asm.Word),
		asm.JGE.Reg(asm.R7, asm.R2, "failed"), // all old: TCP drops such a segment before
		asm.Mov.Imm(asm.R9, 0),
		asm.JLE.Imm(asm.R7, maxPull, "last").WithSymbol("trim"),
		asm.Mov.Imm(asm.R2, -maxPull),
	)
	p = append(p, adjust()...)
	p = append(p,
		asm.Sub.Imm(asm.R7, maxPull),
		asm.Add.Imm(asm.R9, 1),
		asm.JLT.Imm(asm.R9, maxPulls, "trim"),
		asm.Ja.Label("failed"),
		asm.Mov.Imm(asm.R2, 0).WithSymbol("last"),
		asm.Sub.Reg(asm.R2, asm.R7),
	)
	p = append(p, adjust()...)
	p = append(p, count("trimmed", 0, asm.R8)...)
	p = append(p, asm.Ja.Label("redirect"))
	p = append(p, count("failed", 16, asm.R8)...)
	p = append(p,
		asm.Mov.Imm(asm.R0, skDrop),
		asm.Return(),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("redirect"),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, targets.FD()),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -8),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkRedirectHash.Call(),
		asm.Return(),
	)
	return p
}

// copiedSeqOffset finds tcp_sock.copied_seq in the kernel's BTF.
func copiedSeqOffset() (int16, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return 0, err
	}
	var ts *btf.Struct
	if err := spec.TypeByName("tcp_sock", &ts); err != nil {
		return 0, err
	}
	if off, ok := memberOffset(ts, "copied_seq"); ok {
		return int16(off), nil
	}
	return 0, errors.New("no tcp_sock.copied_seq in the kernel's BTF")
}

// memberOffset is the byte offset of the member name in t, also inside anonymous
// structs and unions.
func memberOffset(t btf.Type, name string) (uint32, bool) {
	var ms []btf.Member
	switch t := t.(type) {
	case *btf.Struct:
		ms = t.Members
	case *btf.Union:
		ms = t.Members
	default:
		return 0, false
	}
	for _, m := range ms {
		if m.Name == name {
			return m.Offset.Bytes(), true
		}
		if m.Name == "" {
			if off, ok := memberOffset(btf.UnderlyingType(m.Type), name); ok {
				return m.Offset.Bytes() + off, true
			}
		}
	}
	return 0, false
}

// Load creates the maps and the program and attaches it. The error says what is missing
// (CAP_BPF and CAP_NET_ADMIN, typically).
func Load() (*Kernel, error) {
	mk := func(name string) (*ebpf.Map, error) {
		return ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.SockHash, KeySize: 8, ValueSize: 4, MaxEntries: MaxSockets})
	}
	copied, err := copiedSeqOffset()
	if err != nil {
		return nil, fmt.Errorf("kernel relay: read the kernel's BTF: %w", err)
	}
	// Reading the kernel's BTF for one offset allocated about 4 MB (an index of every
	// type's name), garbage at once; the runtime gives such pages back to the system only
	// slowly, and the process carried them (peak private memory 7.2 -> 10.6 MB in the
	// bench). Once per process: collect and give them back now.
	debug.FreeOSMemory()
	k := &Kernel{}
	if k.targets, err = mk("mxlb_targets"); err != nil {
		return nil, explain("create sockhash", err)
	}
	if k.relay, err = mk("mxlb_relay"); err != nil {
		k.targets.Close()
		return nil, explain("create sockhash", err)
	}
	if k.trims, err = ebpf.NewMap(&ebpf.MapSpec{Name: "mxlb_trims", Type: ebpf.Array, KeySize: 4,
		ValueSize: uint32(binary.Size(trimCounters{})), MaxEntries: 1}); err != nil {
		k.targets.Close()
		k.relay.Close()
		return nil, explain("create the counters", err)
	}
	k.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "mxlb_verdict", Type: ebpf.SkSKB,
		AttachType: ebpf.AttachSkSKBStreamVerdict, License: "GPL", Instructions: program(k.targets, k.trims, copied)})
	if err != nil {
		k.closeMaps()
		return nil, explain("load the verdict program", err)
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: k.relay.FD(), Program: k.prog,
		Attach: ebpf.AttachSkSKBStreamVerdict}); err != nil {
		k.prog.Close()
		k.closeMaps()
		return nil, explain("attach the verdict program", err)
	}
	return k, nil
}

// Trims reads the program's counters.
func (k *Kernel) Trims() (skbs, bytes, failed uint64, err error) {
	var c trimCounters
	if err := k.trims.Lookup(uint32(0), &c); err != nil {
		return 0, 0, 0, err
	}
	return c.Skbs, c.Bytes, c.Failed, nil
}

func explain(what string, err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("kernel relay: %s: %w (needs CAP_BPF and CAP_NET_ADMIN)", what, err)
	}
	return fmt.Errorf("kernel relay: %s: %w", what, err)
}

func (k *Kernel) closeMaps() {
	k.targets.Close()
	k.relay.Close()
	k.trims.Close()
}

// Close detaches the program and closes the maps; sockets still in them stay connected
// and go back to the plain TCP path.
func (k *Kernel) Close() error {
	err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: k.relay.FD(), Program: k.prog,
		Attach: ebpf.AttachSkSKBStreamVerdict})
	k.prog.Close()
	k.closeMaps()
	return err
}

func cookie(fd int) (uint64, error) {
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("kernel relay: SO_COOKIE: %w", err)
	}
	return v, nil
}

// Join implements Relay. Its order is the relay's safety: nothing unread in either
// socket, then targets (both), then relay (a, then b), then the kick. A failure before
// a's relay entry undoes the targets and leaves the sockets as they were; a failure of
// b's relay entry (b got a FIN in the meantime) leaves a->b in the relay and b->a to the
// caller.
//
// Nothing unread: the psock takes a socket's queued skbs whole. tcp_read_skb hands the
// program each skb from its first byte, not from the socket's read position, so the
// part of the head skb that the caller had read already would be relayed a second time
// (TestJoinRefusesAPartlyReadSocket). With nothing unread (SIOCINQ 0) the read position
// is at the end of the queue, and what arrives until the inserts is whole skbs, which
// the kick relays from their start. (The program's trim would cut a read front off too;
// the check keeps the join from resting on it.)
func (k *Kernel) Join(a, b int) (ab, ba bool, err error) {
	for _, fd := range [2]int{a, b} {
		n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
		if err != nil {
			return false, false, fmt.Errorf("kernel relay: SIOCINQ: %w", err)
		}
		if n != 0 {
			return false, false, ErrUnread
		}
	}
	if joinChecked != nil {
		joinChecked()
	}
	ca, err := cookie(a)
	if err != nil {
		return false, false, err
	}
	cb, err := cookie(b)
	if err != nil {
		return false, false, err
	}
	if err := k.targets.Update(ca, uint32(b), ebpf.UpdateNoExist); err != nil {
		return false, false, fmt.Errorf("kernel relay: insert: %w", err)
	}
	if err := k.targets.Update(cb, uint32(a), ebpf.UpdateNoExist); err != nil {
		k.targets.Delete(ca)
		return false, false, fmt.Errorf("kernel relay: insert: %w", err)
	}
	if err := k.relay.Update(ca, uint32(a), ebpf.UpdateNoExist); err != nil {
		k.targets.Delete(ca)
		k.targets.Delete(cb)
		return false, false, fmt.Errorf("kernel relay: insert: %w", err)
	}
	kick(a)
	if err := k.relay.Update(cb, uint32(b), ebpf.UpdateNoExist); err != nil {
		return true, false, nil
	}
	kick(b)
	return true, true, nil
}

// joinChecked, when set (tests), runs in Join between the check for unread bytes and the
// inserts: bytes that arrive then wait in the queue for the kick.
var joinChecked func()

// kick makes the program see the bytes that were queued on fd before it joined: setting
// SO_RCVLOWAT runs the socket's data-ready callback (the psock's) when bytes wait.
func kick(fd int) { unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1) }

// Leave implements Relay: closing the sockets takes them out of both maps.
func (k *Kernel) Leave(a, b int) {}

// Entries counts the entries of the two maps (tests: nothing is left after the sessions).
func (k *Kernel) Entries() (targets, relay int, err error) {
	count := func(m *ebpf.Map) (int, error) {
		n := 0
		var key uint64
		var prev any // nil: the first key
		for {
			err := m.NextKey(prev, &key)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, nil
			}
			if err != nil {
				return n, err
			}
			n++
			k := key
			prev = &k
		}
	}
	if targets, err = count(k.targets); err != nil {
		return
	}
	relay, err = count(k.relay)
	return
}

//go:build linux

package kernrelay

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// MaxSockets bounds the sockets in the relay at once (two per session); a join past it
// fails and the session stays in the engine's relay.
const MaxSockets = 1 << 17

// Kernel is the loaded relay: two sockhashes and the verdict program.
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
	prog    *ebpf.Program
}

// SK_SKB verdicts.
const (
	skDrop = 0
	skPass = 1
)

// program is the stream verdict:
//
//	if skb->len == 0: return SK_DROP      // an empty FIN skb: the engine forwards the FIN
//	key = bpf_get_socket_cookie(skb)
//	return bpf_sk_redirect_hash(skb, targets, &key, 0)   // 0: to the peer's send path
//
// A socket whose cookie is missing from targets (it cannot be: targets is filled first)
// gets SK_DROP from the helper.
func program(targets *ebpf.Map) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // __sk_buff.len
		asm.JNE.Imm(asm.R2, 0, "data"),
		asm.Mov.Imm(asm.R0, skDrop),
		asm.Return(),
		asm.FnGetSocketCookie.Call().WithSymbol("data"),
		asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, targets.FD()),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -8),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkRedirectHash.Call(),
		asm.Return(),
	}
}

// Load creates the maps and the program and attaches it. The error says what is missing
// (CAP_BPF and CAP_NET_ADMIN, typically).
func Load() (*Kernel, error) {
	mk := func(name string) (*ebpf.Map, error) {
		return ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.SockHash, KeySize: 8, ValueSize: 4, MaxEntries: MaxSockets})
	}
	k := &Kernel{}
	var err error
	if k.targets, err = mk("mxlb_targets"); err != nil {
		return nil, explain("create sockhash", err)
	}
	if k.relay, err = mk("mxlb_relay"); err != nil {
		k.targets.Close()
		return nil, explain("create sockhash", err)
	}
	k.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "mxlb_verdict", Type: ebpf.SkSKB,
		AttachType: ebpf.AttachSkSKBStreamVerdict, License: "GPL", Instructions: program(k.targets)})
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

func explain(what string, err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("kernel relay: %s: %w (needs CAP_BPF and CAP_NET_ADMIN)", what, err)
	}
	return fmt.Errorf("kernel relay: %s: %w", what, err)
}

func (k *Kernel) closeMaps() {
	k.targets.Close()
	k.relay.Close()
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
// the kick relays from their start.
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

package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/mxlb/mxlb/config"
)

// TestSecondNodeOnOneStateDirRefused: a second node on a state_dir in use is refused with
// the holder's PID (it used to start, fight over the transaction records and overwrite the
// first node's history on stop); once the first has stopped, the state_dir is free.
func TestSecondNodeOnOneStateDirRefused(t *testing.T) {
	first := startTestNode(t, Options{})
	yaml := fmt.Sprintf(nodeYAML, freeAddr(t), first.dir, freeAddr(t))
	f, err := config.Parse("t2.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	o := Options{NoVIPs: true, Logger: slog.New(slog.DiscardHandler)}
	_, err = New(f, o)
	if err == nil {
		t.Fatal("a second node started on a state_dir in use")
	}
	if want := fmt.Sprintf("in use by pid %d", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Fatalf("refusal %q does not say %q", err, want)
	}

	// An upgrade hands the locked file over: a copy of it (what the successor inherits)
	// holds the lock too, also after the first node closes its own.
	var handed *os.File
	if err := first.Handover(context.Background(), func(network, addr string, c syscall.Conn) error {
		if network == "file" && addr == StateLockName {
			fd, err := syscall.Dup(int(c.(*os.File).Fd()))
			if err != nil {
				return err
			}
			handed = os.NewFile(uintptr(fd), addr)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	first.HandoverFailed(fmt.Errorf("test"))
	if handed == nil {
		t.Fatal("Handover did not give state_dir's lock file")
	}
	succ, err := lockStateDir(first.dir, handed)
	if err != nil {
		t.Fatalf("the handed-over lock file is refused: %v", err)
	}
	defer succ.Close()
	first.lock.Close() // the predecessor exits
	if _, err := New(f, o); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("with only the successor holding it, a second node got: %v", err)
	}
	succ.Close()
	n, err := New(f, o)
	if err != nil {
		t.Fatalf("state_dir still locked after its holders closed it: %v", err)
	}
	n.lock.Close()
}

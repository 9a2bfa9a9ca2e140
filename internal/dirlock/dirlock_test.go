package dirlock

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A second Lock of a held file is refused naming the holder's PID (flock locks belong to
// the open file, so a second open in one process conflicts like another process's);
// closing the holder frees it.
func TestLockBusyAndFree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	f, err := Lock(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := WritePID(f); err != nil {
		t.Fatal(err)
	}
	_, err = Lock(path, nil)
	var busy *BusyError
	if !errors.As(err, &busy) || busy.PID != os.Getpid() || busy.Path != path {
		t.Fatalf("second lock: %v", err)
	}
	f.Close()
	g, err := Lock(path, nil)
	if err != nil {
		t.Fatalf("after the holder closed: %v", err)
	}
	g.Close()
}

// An inherited open file of the lock (an upgrade's hand-over) locks again at once while
// the first descriptor still holds it: the lock is the open file's.
func TestLockInherited(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	f, err := Lock(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dup, err := os.OpenFile("/proc/self/fd/"+itoa(int(f.Fd())), os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	// Re-opening through /proc makes a new open file, which must be refused...
	if _, err := Lock(path, dup); err == nil {
		t.Fatal("a new open file of a held lock was not refused")
	}
	// ...while the same open file (what tableflip hands over, via a dup) locks at once.
	same := os.NewFile(uintptr(dupFD(t, int(f.Fd()))), path)
	g, err := Lock(path, same)
	if err != nil {
		t.Fatalf("the same open file: %v", err)
	}
	g.Close()
}

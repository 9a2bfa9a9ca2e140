package bgp

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain checks for leaked goroutines like goleak.VerifyTestMain, but gives the
// embedded gobgp servers up to 15 s to wind down: on a loaded box their goroutines (FSM,
// BFD, the listeners) outlived goleak's own 2 s of retries now and then after a clean Stop.
// A goroutine still there after 15 s is a leak.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		var err error
		for deadline := time.Now().Add(15 * time.Second); ; {
			if err = goleak.Find(); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

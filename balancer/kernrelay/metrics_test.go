package kernrelay

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The counters reach the status snapshot and the metrics; mxlb_kernel_relay_available is
// absent until a frontend asks for the relay.
func TestCollector(t *testing.T) {
	Entered()
	Entered()
	Left()
	FellBack()
	s := Snapshot()
	if s.Tried || s.Sessions != 1 || s.HandedOver != 2 || s.Fallbacks != 1 {
		t.Fatalf("snapshot %+v", s)
	}
	want := `
# HELP mxlb_kernel_relay_fallbacks_total Sessions that qualified for the kernel relay and stayed in the user-space relay (relay unavailable, or the join failed).
# TYPE mxlb_kernel_relay_fallbacks_total counter
mxlb_kernel_relay_fallbacks_total 1
# HELP mxlb_kernel_relay_handed_over_total Sessions handed to the kernel relay (frontends[].kernel_relay_after).
# TYPE mxlb_kernel_relay_handed_over_total counter
mxlb_kernel_relay_handed_over_total 2
# HELP mxlb_kernel_relay_repeated_bytes_total Bytes found delivered twice at the end of a session in the kernel relay (its destination's peer acknowledged more than its source received); should stay 0.
# TYPE mxlb_kernel_relay_repeated_bytes_total counter
mxlb_kernel_relay_repeated_bytes_total 0
# HELP mxlb_kernel_relay_sessions Sessions whose bytes the kernel relay moves now.
# TYPE mxlb_kernel_relay_sessions gauge
mxlb_kernel_relay_sessions 1
# HELP mxlb_kernel_relay_trim_failures_total Received data the kernel relay could not trim and dropped (no memory to pull its front): a gap in that session's stream.
# TYPE mxlb_kernel_relay_trim_failures_total counter
mxlb_kernel_relay_trim_failures_total 0
# HELP mxlb_kernel_relay_trimmed_bytes_total Bytes the kernel relay cut off the front of received data because it had relayed them already (retransmissions that overlap what came before; each would have been delivered twice).
# TYPE mxlb_kernel_relay_trimmed_bytes_total counter
mxlb_kernel_relay_trimmed_bytes_total 0
`
	if err := testutil.CollectAndCompare(NewCollector(), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	Left()
}

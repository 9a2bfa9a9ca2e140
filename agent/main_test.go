package agent

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if benchQueueDir != "" { // the generated 100k-file queue, shared by the benchmarks
			_ = os.RemoveAll(benchQueueDir)
		}
		os.Exit(code)
	}))
}

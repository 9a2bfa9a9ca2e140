package lazyre

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNew(t *testing.T) {
	re := New(`^a+$`)
	first := re()
	if !first.MatchString("aaa") || first.MatchString("ab") {
		t.Fatalf("%v does not match as ^a+$", first)
	}
	if re() != first {
		t.Fatal("a second call compiled the expression again")
	}
}

// TestNewCompilesOnFirstUse: making the function allocates only its closure; the
// expression's allocations come with the first call.
func TestNewCompilesOnFirstUse(t *testing.T) {
	made := testing.AllocsPerRun(10, func() { _ = New(`^(?:[0-9A-F]{6,20}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,20}z[0-9A-Za-z]{1,12})$`) })
	compiled := testing.AllocsPerRun(10, func() { _ = New(`^(?:[0-9A-F]{6,20}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,20}z[0-9A-Za-z]{1,12})$`)() })
	if made > 4 || compiled < 10*made {
		t.Fatalf("New allocates %v times, New and a first call %v: the expression is not compiled lazily", made, compiled)
	}
}

func TestNewPanicsOnBadPattern(t *testing.T) {
	re := New(`(`)
	defer func() {
		if recover() == nil {
			t.Fatal("a bad pattern did not panic on first use")
		}
	}()
	re()
}

package frontend

import "testing"

// Descriptors held outside sessions (idle backend connections) take at most three
// quarters of the budget, and come back with Release.
func TestBudgetHold(t *testing.T) {
	b := NewBudget(func() int { return 1000 }) // available 744, of which 558 may be held
	n := 0
	for b.Hold(1) {
		n++
		if n > 1000 {
			t.Fatal("Hold never refused")
		}
	}
	if n != 558 || b.Used() != 558 {
		t.Fatalf("held %d (used %d), want 558", n, b.Used())
	}
	if !b.fits(744 - 558) {
		t.Fatal("what Hold leaves is not left to sessions")
	}
	b.Release(558)
	if b.Used() != 0 || !b.Hold(1) {
		t.Fatalf("after Release: used %d", b.Used())
	}
}

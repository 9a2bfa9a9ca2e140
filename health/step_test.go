package health

import "testing"

func TestStep(t *testing.T) {
	type step struct {
		ok      bool
		want    State
		changed bool
	}
	up := func(n int) State { return State{Up: true, Checked: true, Count: n} }
	down := func(n int) State { return State{Up: false, Checked: true, Count: n} }
	tests := []struct {
		name       string
		start      State
		rise, fall int
		steps      []step
	}{
		{"first success decides at once", State{}, 2, 3, []step{{true, up(0), true}, {true, up(0), false}}},
		{"first failure decides at once", State{}, 2, 3, []step{{false, down(0), true}, {false, down(0), false}}},
		{"first success decides whatever rise", State{}, 10, 10, []step{{true, up(0), true}, {false, up(1), false}}},
		{"first failure decides whatever fall", State{}, 10, 10, []step{{false, down(0), true}, {true, down(1), false}}},
		{"after a first failure rise applies", State{}, 2, 3, []step{
			{false, down(0), true}, {true, down(1), false}, {true, up(0), true},
		}},
		{"after a first success fall applies", State{}, 2, 3, []step{
			{true, up(0), true}, {false, up(1), false}, {false, up(2), false}, {false, down(0), true},
		}},
		{"a count in an unchecked state is ignored", State{Count: 5}, 2, 3, []step{{false, down(0), true}}},
		{"fall 3 failures to go down", up(0), 2, 3, []step{
			{false, up(1), false}, {false, up(2), false}, {false, down(0), true}, {false, down(0), false},
		}},
		{"a success resets the fall count", up(0), 2, 3, []step{
			{false, up(1), false}, {false, up(2), false}, {true, up(0), false},
			{false, up(1), false}, {false, up(2), false}, {false, down(0), true},
		}},
		{"rise 2 successes to go up", down(0), 2, 3, []step{{true, down(1), false}, {true, up(0), true}}},
		{"a failure resets the rise count", down(0), 2, 3, []step{
			{true, down(1), false}, {false, down(0), false}, {true, down(1), false}, {true, up(0), true},
		}},
		{"rise and fall 1 flip on every change", up(0), 1, 1, []step{
			{false, down(0), true}, {true, up(0), true}, {true, up(0), false},
		}},
		{"rise and fall below 1 count as 1", down(0), 0, -5, []step{{true, up(0), true}, {false, down(0), true}}},
		{"full cycle", State{}, 3, 2, []step{
			{true, up(0), true},
			{false, up(1), false}, {false, down(0), true},
			{true, down(1), false}, {true, down(2), false}, {true, up(0), true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.start
			for i, st := range tt.steps {
				next, changed := Step(s, st.ok, tt.rise, tt.fall)
				if next != st.want || changed != st.changed {
					t.Fatalf("step %d: Step(%+v, %v, %d, %d) = %+v, %v; want %+v, %v",
						i, s, st.ok, tt.rise, tt.fall, next, changed, st.want, st.changed)
				}
				s = next
			}
		})
	}
}

package signame

import (
	"syscall"
	"testing"
)

func TestName_MatchesGoOnAmd64(t *testing.T) {
	for n := 1; n < 32; n++ {
		if got, want := Name(n), syscall.Signal(n).String(); got != want {
			t.Errorf("signal %d: %q, want %q", n, got, want)
		}
	}
}

func TestNumberRoundTrip(t *testing.T) {
	for n := 1; n < 70; n++ {
		if got := Number(Name(n)); got != n {
			t.Errorf("Number(Name(%d)) = %d (%q)", n, got, Name(n))
		}
	}
	for _, bad := range []string{"", "nope", "signal x", "signal -3", "signal 0"} {
		if Number(bad) != 0 {
			t.Errorf("Number(%q) != 0", bad)
		}
	}
}

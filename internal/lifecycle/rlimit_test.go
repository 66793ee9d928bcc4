package lifecycle

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRaiseFileLimit(t *testing.T) {
	eperm := errors.New("operation not permitted")
	cases := []struct {
		name          string
		cur           unix.Rlimit
		nrOpen        uint64
		privileged    bool
		envd, child   unix.Rlimit
		wantSetCalled int
	}{
		// The kernel's init limits, root in a VM.
		{"init as root", unix.Rlimit{Cur: 4095, Max: 4096}, 1 << 20, true, unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}, unix.Rlimit{Cur: 1024, Max: 524288}, 1},
		// A smaller nr_open caps envd and its children.
		{"small nr_open", unix.Rlimit{Cur: 4095, Max: 4096}, 65536, true, unix.Rlimit{Cur: 65536, Max: 65536}, unix.Rlimit{Cur: 1024, Max: 65536}, 1},
		// A larger nr_open is capped at 1<<20; a larger given hard limit is kept.
		{"large nr_open", unix.Rlimit{Cur: 1024, Max: 4096}, 1 << 30, true, unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}, unix.Rlimit{Cur: 1024, Max: 524288}, 1},
		{"large given hard", unix.Rlimit{Cur: 1 << 21, Max: 1 << 21}, 1 << 22, true, unix.Rlimit{Cur: 1 << 21, Max: 1 << 21}, unix.Rlimit{Cur: 1024, Max: 1 << 21}, 1},
		// Without CAP_SYS_RESOURCE: the hard limit stays, the soft one reaches it.
		{"no capability", unix.Rlimit{Cur: 4095, Max: 4096}, 1 << 20, false, unix.Rlimit{Cur: 4096, Max: 4096}, unix.Rlimit{Cur: 1024, Max: 4096}, 2},
		{"no capability, tiny hard", unix.Rlimit{Cur: 511, Max: 512}, 1 << 20, false, unix.Rlimit{Cur: 512, Max: 512}, unix.Rlimit{Cur: 512, Max: 512}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			var got unix.Rlimit
			sys := rlimitSys{
				get:    func(l *unix.Rlimit) error { *l = c.cur; return nil },
				nrOpen: func() (uint64, error) { return c.nrOpen, nil },
				set: func(l *unix.Rlimit) error {
					calls++
					if l.Max > c.cur.Max && !c.privileged {
						return eperm
					}
					got = *l
					return nil
				},
			}
			log, _ := testLog()
			lim, ok := raiseFileLimit(log, sys)
			if !ok || got != c.envd || lim.Envd != c.envd || lim.Children != c.child || calls != c.wantSetCalled {
				t.Fatalf("ok %v, set %+v, limits %+v after %d calls; want envd %+v children %+v", ok, got, lim, calls, c.envd, c.child)
			}
		})
	}
	// Nothing can be set: Go's own handling stays.
	sys := rlimitSys{
		get:    func(l *unix.Rlimit) error { *l = unix.Rlimit{Cur: 1, Max: 2}; return nil },
		nrOpen: func() (uint64, error) { return 0, errors.New("no /proc") },
		set:    func(*unix.Rlimit) error { return eperm },
	}
	log, _ := testLog()
	if _, ok := raiseFileLimit(log, sys); ok {
		t.Fatal("reported a limit it could not set")
	}
}

package process

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestEndOf(t *testing.T) {
	cases := []struct {
		ws   unix.WaitStatus
		want End
	}{
		{0, End{ExitCode: 0, Exited: true, Status: "exit status 0"}},
		{2 << 8, End{ExitCode: 2, Exited: true, Status: "exit status 2", Error: "exit status 2", HasError: true}},
		{127 << 8, End{ExitCode: 127, Exited: true, Status: "exit status 127", Error: "exit status 127", HasError: true}},
		{9, End{ExitCode: -1, Status: "signal: killed", Error: "signal: killed", HasError: true}},
		{15, End{ExitCode: -1, Status: "signal: terminated", Error: "signal: terminated", HasError: true}},
		{11 | 0x80, End{ExitCode: -1, Status: "signal: segmentation fault (core dumped)", Error: "signal: segmentation fault (core dumped)", HasError: true}},
		{40, End{ExitCode: -1, Status: "signal: signal 40", Error: "signal: signal 40", HasError: true}},
	}
	for _, c := range cases {
		if got := endOf(c.ws); got != c.want {
			t.Errorf("%#x: got %+v want %+v", int(c.ws), got, c.want)
		}
	}
}

package processrpc

import (
	"strconv"
	"testing"

	"github.com/envd/envd/internal/process"
)

func TestParseOffsets(t *testing.T) {
	good := map[string]process.Offsets{
		"":                                 {},
		"  ":                               {},
		"stdout=5":                         {5, 0, 0},
		"stdout=5,stderr=7":                {5, 7, 0},
		" stderr = 7 , stdout=0 ":          {0, 7, 0},
		"pty=18446744073709551615":         {0, 0, 18446744073709551615},
		"stdout=1,stderr=2,pty=3":          {1, 2, 3},
		"stdout=0000000000000000000000012": {12, 0, 0},
	}
	for in, want := range good {
		got, err := parseOffsets(in)
		if err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, err, want)
		}
	}
	bad := map[string]string{
		"stdout":                      `"stdout" is not <stream>=<offset>`,
		"stdin=1":                     `unknown stream "stdin" (want stdout, stderr or pty)`,
		"stdout=1,stdout=2":           "stream stdout given twice",
		"stdout=-1":                   `offset of stdout: "-1" is not a non-negative integer`,
		"stdout=18446744073709551616": `offset of stdout: "18446744073709551616" is not a non-negative integer`,
		"stdout=1,":                   `"" is not <stream>=<offset>`,
		"stdout=0x10":                 `offset of stdout: "0x10" is not a non-negative integer`,
	}
	for in, msg := range bad {
		if _, err := parseOffsets(in); err == nil || err.Error() != msg {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
}

func TestFormatOffsets(t *testing.T) {
	o := process.Offsets{1, 0, 3}
	if got := formatOffsets(o, false, false); got != "stdout=1,stderr=0" {
		t.Error(got)
	}
	if got := formatOffsets(o, false, true); got != "stdout=1" {
		t.Error(got)
	}
	if got := formatOffsets(o, true, false); got != "pty=3" {
		t.Error(got)
	}
	if got := formatOffsets(process.Offsets{}, true, true); got != "" {
		t.Error(got)
	}
}

func FuzzParseOffsets(f *testing.F) {
	for _, s := range []string{"", "stdout=1,stderr=2", "pty=9", " stdout = 3 ", "stdout=1,stdout=1", "x=y", ",,,", "stderr=99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := parseOffsets(s)
		if err != nil {
			return
		}
		// Whatever parses survives a round trip through the canonical form.
		canon := "stdout=" + strconv.FormatUint(o[process.Stdout], 10) + ",stderr=" + strconv.FormatUint(o[process.Stderr], 10) +
			",pty=" + strconv.FormatUint(o[process.PTY], 10)
		back, err := parseOffsets(canon)
		if err != nil || back != o {
			t.Fatalf("%q parsed to %v; canonical %q gives %v, %v", s, o, canon, back, err)
		}
	})
}

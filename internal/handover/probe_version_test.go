package handover

import "testing"

func TestIsVersion(t *testing.T) {
	for s, want := range map[string]bool{
		"0.6.13": true, "10.0.0": true, "0.0.0": true,
		"": false, "0.6": false, "0.6.13.1": false, "0..1": false, "v0.6.1": false,
		"0.6.1 ": false, "0.6.x": false, "0.6.-1": false, "1.2.3\n": false,
	} {
		if got := isVersion(s); got != want {
			t.Errorf("isVersion(%q) = %v, want %v", s, got, want)
		}
	}
}

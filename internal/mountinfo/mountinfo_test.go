package mountinfo

import "testing"

func TestParse(t *testing.T) {
	data := []byte(`22 1 0:21 / /proc rw,nosuid - proc proc rw
23 1 0:22 / /my\040dir rw - tmpfs tmpfs rw
24 1 0:23 / /back\134slash rw - tmpfs tmpfs rw
bad line
`)
	mp := Parse(data)
	for _, p := range []string{"/proc", "/my dir", `/back\slash`} {
		if !mp[p] {
			t.Errorf("%q missing from %v", p, mp)
		}
	}
	if len(mp) != 3 {
		t.Fatalf("got %v", mp)
	}
	if !IsMountPoint(Self, "/proc") || IsMountPoint(Self, "/definitely/not/mounted") || IsMountPoint("/nonexistent", "/") {
		t.Fatal("IsMountPoint on the live table")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("1 2 3 4 /a\\040b rest\n"))
	f.Fuzz(func(t *testing.T, data []byte) { _ = Parse(data) })
}

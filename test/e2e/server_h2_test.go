package e2e

import (
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/envd/envd/internal/envdtest"
	"github.com/envd/envd/internal/server"
)

// h2Frame is one HTTP/2 frame header and payload.
type h2Frame struct {
	typ     byte
	flags   byte
	stream  uint32
	payload []byte
}

func readH2Frame(t *testing.T, r io.Reader) h2Frame {
	t.Helper()
	var hdr [9]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		t.Fatal(err)
	}
	n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	f := h2Frame{typ: hdr[3], flags: hdr[4], stream: binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff, payload: make([]byte, n)}
	if _, err := io.ReadFull(r, f.payload); err != nil {
		t.Fatal(err)
	}
	return f
}

// The receive windows envd advertises over h2c are the ones it bounds its
// buffering by (server.H2ConnWindow, H2StreamWindow): what one connection
// can make envd hold before any handler reads is the connection window.
func TestServer_H2ReceiveWindowsAdvertised(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(e.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// The client preface and an empty SETTINGS frame.
	if _, err := c.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	var streamWindow, connIncrement int64 = -1, -1
	for streamWindow < 0 || connIncrement < 0 {
		f := readH2Frame(t, c)
		switch {
		case f.typ == 4 && f.flags&1 == 0: // SETTINGS
			for p := f.payload; len(p) >= 6; p = p[6:] {
				if binary.BigEndian.Uint16(p) == 4 { // SETTINGS_INITIAL_WINDOW_SIZE
					streamWindow = int64(binary.BigEndian.Uint32(p[2:]))
				}
			}
		case f.typ == 8 && f.stream == 0: // WINDOW_UPDATE of the connection
			connIncrement = int64(binary.BigEndian.Uint32(f.payload) & 0x7fffffff)
		}
	}
	if streamWindow != server.H2StreamWindow {
		t.Fatalf("stream window %d, want %d", streamWindow, server.H2StreamWindow)
	}
	if conn := connIncrement + 65535; conn != server.H2ConnWindow {
		t.Fatalf("connection window %d, want %d", conn, server.H2ConnWindow)
	}
	if server.H2ConnWindow > 2<<20 {
		t.Fatalf("connection window %d: with %d host connections envd could be made to hold %d GiB", server.H2ConnWindow, server.HostConns, server.H2ConnWindow*server.HostConns>>30)
	}
}

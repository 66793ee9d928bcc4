package ports

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// BenchmarkForwarder_Throughput measures one proxied connection carrying
// b.N bytes one way (reported as MB/s), against the direct connection
// (sub-benchmark "direct") on the same machine.
func BenchmarkForwarder_Throughput(b *testing.B) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	f := New(Options{Interval: 20 * time.Millisecond, External: func() netip.Addr { return testExternal }}, slog.New(slog.DiscardHandler))
	f.Start()
	defer f.Stop()
	for {
		if c, err := net.Dial("tcp", extAddr(port)); err == nil {
			c.Close()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	buf := make([]byte, 256<<10)
	for _, c := range []struct{ name, addr string }{
		{"direct", "127.0.0.1:" + strconv.Itoa(port)},
		{"proxied", extAddr(port)},
	} {
		b.Run(c.name, func(b *testing.B) {
			conn, err := net.Dial("tcp", c.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := conn.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

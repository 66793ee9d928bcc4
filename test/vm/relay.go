package vm

import (
	"io"
	"net"
	"os"
	"sync"
)

// RelayEnv names the environment variable that turns the test binary into
// the MMDS relay: QEMU's guestfwd "cmd:" rule runs one process per guest
// connection with the connection on stdin/stdout, and the relay joins it to
// the host-side fake metadata server at the address in this variable.
const RelayEnv = "ENVD_VM_MMDS_RELAY"

// Relay copies between stdin/stdout and a TCP connection to addr until both
// directions end, propagating half-closes. It returns the exit code.
func Relay(addr string) int {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return 1
	}
	defer conn.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(conn, os.Stdin)
		_ = conn.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(os.Stdout, conn)
	_ = os.Stdout.Close()
	wg.Wait()
	return 0
}

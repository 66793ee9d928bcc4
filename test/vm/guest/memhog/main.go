// Command memhog is a guest-side helper of the VM test: it allocates
// memory in 16 MiB steps, touching every page so that it is really
// resident, up to the size given in MiB (default: without end), printing the
// total after each step. The test uses it to run a process past its
// cgroup's memory.max and watch the OOM killer end it.
package main

import (
	"fmt"
	"os"
	"strconv"
)

func main() {
	limit := -1
	if len(os.Args) > 1 {
		n, err := strconv.Atoi(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "usage: memhog [MiB]")
			os.Exit(2)
		}
		limit = n
	}
	const step = 16 << 20
	var keep [][]byte
	for mib := 0; limit < 0 || mib < limit; mib += step >> 20 {
		b := make([]byte, step)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
		fmt.Printf("%d MiB\n", mib+step>>20)
	}
	fmt.Println("done", len(keep))
}

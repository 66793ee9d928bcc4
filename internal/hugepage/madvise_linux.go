package hugepage

import "golang.org/x/sys/unix"

// kernelAdvisor calls madvise(2) on envd's own memory.
type kernelAdvisor struct{}

// hugepage clears a "no huge pages" marking and makes the region eligible
// whatever the system's THP mode; the marking stays afterwards.
func (kernelAdvisor) hugepage(r region) {
	_, _, _ = unix.Syscall(unix.SYS_MADVISE, r.start, r.end-r.start, unix.MADV_HUGEPAGE)
}

// collapse gathers one window into a huge page (Linux ≥ 6.1). Windows go one
// at a time because a call over a whole region gives up at the first window
// that cannot be collapsed.
func (kernelAdvisor) collapse(start, length uintptr) bool {
	_, _, errno := unix.Syscall(unix.SYS_MADVISE, start, length, unix.MADV_COLLAPSE)
	return errno == 0
}

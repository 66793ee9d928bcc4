// Package vm is the microVM test of envd: it boots envd as PID 1 in a QEMU
// microvm (the stand-in for Firecracker where KVM is unavailable), drives it
// through the forwarded port with the generated Connect clients, and
// snapshots and restores it again and again. The test files carry the
// build tag "vm" (run them with make vm-test); docs/vm-testing.md explains
// the setup.
package vm

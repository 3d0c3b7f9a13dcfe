//go:build !linux

package chaos

import "syscall"

// childProcAttr: no parent-death signal outside Linux; the test's cleanup
// kills the server.
func childProcAttr() *syscall.SysProcAttr { return nil }

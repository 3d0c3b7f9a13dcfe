//go:build !linux

package chaos

import "syscall"

// childProcAttr: no parent-death signal outside Linux; the test's cleanup
// kills the server.
func childProcAttr() *syscall.SysProcAttr { return nil }

// nodeProcAttr: a process group of its own (no parent-death signal outside
// Linux).
func nodeProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// devClusterProcAttr: a process group of its own (no parent-death signal
// outside Linux).
func devClusterProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

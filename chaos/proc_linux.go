package chaos

import "syscall"

// childProcAttr makes the kernel SIGKILL the server when the test process
// goes away, so that a test killed by a timeout leaves no server behind.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

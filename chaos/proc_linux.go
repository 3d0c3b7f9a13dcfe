package chaos

import "syscall"

// childProcAttr makes the kernel SIGKILL the server when the test process
// goes away, so that a test killed by a timeout leaves no server behind.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// nodeProcAttr is childProcAttr in a process group of its own: a Ctrl-C
// in the terminal reaches the harness, which stops the nodes itself.
func nodeProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}

// devClusterProcAttr gives `strata dev cluster` a process group of its own
// and SIGTERM when the harness goes away: it then stops its nodes.
func devClusterProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
}

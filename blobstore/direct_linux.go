package blobstore

import (
	"os"
	"syscall"
)

// openDirect creates path for writing with O_DIRECT: the writes go from the
// caller's memory to the device, bypassing the page cache.
func openDirect(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_DIRECT, 0o644)
}

// setDirect turns O_DIRECT on for f, open for reading: its reads then go
// from the device to the caller's memory, bypassing the page cache. A
// filesystem that cannot do direct I/O refuses it (EINVAL).
func setDirect(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	err = rc.Control(func(fd uintptr) {
		flags, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
		if e == 0 {
			_, _, e = syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_SETFL, flags|syscall.O_DIRECT)
		}
		errno = e
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

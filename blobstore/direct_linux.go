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

// openDirectRead opens path for reading with O_DIRECT.
func openDirectRead(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
}

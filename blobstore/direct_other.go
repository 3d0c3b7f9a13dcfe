//go:build !linux

package blobstore

import (
	"errors"
	"os"
)

// openDirect: direct I/O is only used on Linux; elsewhere shards are
// written through the page cache.
func openDirect(string) (*os.File, error) { return nil, errors.ErrUnsupported }

func setDirect(*os.File) error { return errors.ErrUnsupported }

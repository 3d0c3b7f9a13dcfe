package metastore

import (
	"errors"
	"fmt"
)

// Sentinel errors returned by Apply and the queries. They are matched with
// errors.Is; the HTTP layer maps them to OCI error codes. Each has a stable
// code so that a result can cross the wire when a proposal is forwarded.
var (
	ErrUploadUnknown       = errors.New("metastore: upload unknown")
	ErrUploadNotStarted    = errors.New("metastore: upload not started") // never recorded, never ended: a deferred session not written yet (see api), or an id nobody issued
	ErrUploadOffset        = errors.New("metastore: upload offset mismatch")
	ErrBlobUnknown         = errors.New("metastore: blob unknown")
	ErrSizeInvalid         = errors.New("metastore: size invalid")
	ErrManifestUnknown     = errors.New("metastore: manifest unknown")
	ErrManifestBlobUnknown = errors.New("metastore: manifest references unknown content")
	ErrRepoUnknown         = errors.New("metastore: repository unknown")
	ErrTagUnknown          = errors.New("metastore: tag unknown")
	ErrTagImmutable        = errors.New("metastore: tag is immutable")
	ErrCommandInvalid      = errors.New("metastore: command invalid")
	ErrCorrupt             = errors.New("metastore: stored record corrupt")
	ErrNodeUnknown         = errors.New("metastore: node unknown")
	ErrShardMoved          = errors.New("metastore: shard is not where the command expected")
	ErrNodeNotEmpty        = errors.New("metastore: node still holds shards")
)

var errorCodes = map[string]error{
	"UPLOAD_UNKNOWN":        ErrUploadUnknown,
	"UPLOAD_NOT_STARTED":    ErrUploadNotStarted,
	"UPLOAD_OFFSET":         ErrUploadOffset,
	"BLOB_UNKNOWN":          ErrBlobUnknown,
	"SIZE_INVALID":          ErrSizeInvalid,
	"MANIFEST_UNKNOWN":      ErrManifestUnknown,
	"MANIFEST_BLOB_UNKNOWN": ErrManifestBlobUnknown,
	"REPO_UNKNOWN":          ErrRepoUnknown,
	"TAG_UNKNOWN":           ErrTagUnknown,
	"TAG_IMMUTABLE":         ErrTagImmutable,
	"COMMAND_INVALID":       ErrCommandInvalid,
	"CORRUPT":               ErrCorrupt,
}

// ErrorCode returns the stable code of err's metastore sentinel, or "" if err
// wraps none.
func ErrorCode(err error) string {
	for code, s := range errorCodes {
		if errors.Is(err, s) {
			return code
		}
	}
	return ""
}

// codedError is an error rebuilt from a code and its message.
type codedError struct {
	sentinel error
	msg      string
}

func (e *codedError) Error() string { return e.msg }
func (e *codedError) Unwrap() error { return e.sentinel }

// ErrorFromCode rebuilds an error from ErrorCode's code and the original
// message. An unknown code yields a plain error carrying the message.
func ErrorFromCode(code, msg string) error {
	if code == "" {
		return nil
	}
	if s, ok := errorCodes[code]; ok {
		return &codedError{sentinel: s, msg: msg}
	}
	return fmt.Errorf("metastore: %s: %s", code, msg)
}

package blobcache

import (
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
)

var (
	// ErrStorage reports that the store cannot write (or read back) what it was asked to
	// keep. The cache is then not usable for this request: callers should go to upstream.
	ErrStorage = fmt.Errorf("blobcache storage failure: %w", errdefs.ErrUnavailable)

	// ErrFillFailed reports that a fill failed for a reason that may not recur: the upstream
	// body was cut, corrupt, or the fill this call joined could not start. Callers may retry
	// once; a retry starts a fresh fill.
	ErrFillFailed = fmt.Errorf("blobcache fill failed: %w", errdefs.ErrAborted)

	// errClosed is returned by operations on a closed store; it is a storage failure so that
	// callers in flight during shutdown bypass the cache rather than fail.
	errClosed = fmt.Errorf("blobcache store closed: %w", ErrStorage)
)

// StorageError is the error a fill's reader gets when the fill file could not be written
// (ENOSPC, EROFS, EIO...) or read back. Every byte below Offset was delivered to the reader,
// so a caller can continue the same response from upstream with a Range request starting
// at Offset. It matches errors.Is(err, ErrStorage).
type StorageError struct {
	Offset int64
	Err    error
}

func (e *StorageError) Error() string {
	return fmt.Sprintf("blobcache storage failure at offset %d: %v", e.Offset, e.Err)
}

func (e *StorageError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrStorage}
	}
	return []error{ErrStorage, e.Err}
}

// fillFailed builds an ErrFillFailed error. The cause is kept as text only: callers must not
// mistake a failure of someone else's upstream request (a 401 with other credentials, a
// cancelled context) for one of their own.
func fillFailed(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrFillFailed)
}

// storageFailed wraps err as a storage failure, keeping err inspectable (errors.Is(err,
// syscall.ENOSPC)).
func storageFailed(what string, err error) error {
	return fmt.Errorf("%s: %w: %w", what, ErrStorage, err)
}

var errNilBody = errors.New("fetch returned no body")

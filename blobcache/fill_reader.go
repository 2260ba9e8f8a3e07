package blobcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

// NewReader streams the fill from offset.
//
// Read blocks while no bytes past the reader's position are written, until ctx is done
// (then it returns ctx.Err()). It returns io.EOF only once the whole blob was received and
// its digest and announced size verified; when the size is known, the last byte is held
// back until then, so a reader never sees a complete body that is not verified.
//
// When the fill fails, Read first returns the bytes already written, then the failure: an
// error wrapping ErrFillFailed when upstream was cut, corrupt or too long (or the store
// closed), or a *StorageError (errors.Is ErrStorage) whose Offset is where writing the fill
// file failed, or the reader's own offset if that is larger. A failure to commit a verified
// fill does not affect readers. NewReader itself returns that failure (a *StorageError then
// at offset) once the fill failed and its last reader closed. After a successful fill, it
// falls back to the committed blob.
func (f *Fill) NewReader(ctx context.Context, offset int64) (io.ReadCloser, error) {
	if offset < 0 {
		return nil, fmt.Errorf("negative offset %d: %w", offset, errdefs.ErrInvalidArgument)
	}
	if f.size >= 0 && offset > f.size {
		return nil, fmt.Errorf("offset %d past size %d: %w", offset, f.size, errdefs.ErrOutOfRange)
	}
	f.mu.Lock()
	if f.file == nil {
		// The fill is over and every reader closed its file.
		err, done := f.err, f.done
		f.mu.Unlock()
		var serr *StorageError
		if errors.As(err, &serr) {
			// None of the bytes can be had from the store any more.
			return nil, &StorageError{Offset: offset, Err: serr.Err}
		}
		if err != nil {
			return nil, err
		}
		if done {
			return f.openCommitted(ctx, offset)
		}
		return nil, fillFailed("fill of %s is over", f.dgst)
	}
	f.refs++
	f.mu.Unlock()
	return &fillReader{f: f, ctx: ctx, off: offset}, nil
}

// openCommitted serves a reader that came after the fill ended from the committed blob.
func (f *Fill) openCommitted(ctx context.Context, offset int64) (io.ReadCloser, error) {
	file, _, err := f.store.OpenBlob(ctx, f.dgst)
	if err != nil {
		return nil, fillFailed("fill of %s ended without a committed blob (%v)", f.dgst, err)
	}
	if _, err := file.Seek(offset, io.SeekStart); err != nil {
		file.Close()
		return nil, &StorageError{Offset: offset, Err: err}
	}
	return file, nil
}

type fillReader struct {
	f      *Fill
	ctx    context.Context
	off    int64
	closed bool // guarded by f.mu
}

func (r *fillReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	f := r.f
	for {
		f.mu.Lock()
		if r.closed {
			f.mu.Unlock()
			return 0, os.ErrClosed
		}
		limit := f.written
		if !f.done && f.size >= 0 && limit >= f.size {
			limit = f.size - 1
		}
		if r.off < limit {
			file := f.file
			f.mu.Unlock()
			want := min(int64(len(p)), limit-r.off)
			n, err := file.ReadAt(p[:want], r.off)
			r.off += int64(n)
			if n > 0 {
				return n, nil
			}
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, &StorageError{Offset: r.off, Err: err}
		}
		if f.err != nil {
			err := f.err
			f.mu.Unlock()
			// A reader that started past the failure point has all it asked for below its
			// own position: that is where it continues from.
			var serr *StorageError
			if errors.As(err, &serr) && serr.Offset < r.off {
				return 0, &StorageError{Offset: r.off, Err: serr.Err}
			}
			return 0, err
		}
		if f.done {
			f.mu.Unlock()
			return 0, io.EOF
		}
		changed := f.changed
		f.mu.Unlock()

		select {
		case <-changed:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

func (r *fillReader) Close() error {
	r.f.mu.Lock()
	if r.closed {
		r.f.mu.Unlock()
		return nil
	}
	r.closed = true
	r.f.mu.Unlock()
	r.f.release()
	return nil
}

// HasOrFilling reports whether dgst is committed or a fill of it is running: either way its
// bytes are (or are on their way) in the store, and a second copy need not be written (see
// WaitFill).
func (s *Store) HasOrFilling(dgst digest.Digest) bool {
	s.mu.Lock()
	_, filling := s.fills[dgst]
	s.mu.Unlock()
	if filling {
		return true
	}
	ok, err := s.present(dgst)
	return err == nil && ok
}

// WaitFill waits until the fill of dgst that is running, if any, is over: committed (Info
// then finds the blob) or failed. It returns ctx's error when ctx ends first.
func (s *Store) WaitFill(ctx context.Context, dgst digest.Digest) error {
	s.mu.Lock()
	f, ok := s.fills[dgst]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	select {
	case <-f.finished:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

package blobcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// fillBufferSize is the copy buffer of a fill: large enough to keep syscalls and reader
// wake-ups few, small enough that readers see progress often.
const fillBufferSize = 512 << 10

// Upstream is an opened upstream body.
type Upstream struct {
	Body io.ReadCloser
	// Size is the announced length, or -1 when unknown. A known size is enforced.
	Size      int64
	MediaType string
	// Origin names where the body comes from when that is not the registry (the mirror's
	// cluster tier sets it); Fill.Origin reports it to every client of the fill.
	Origin string
}

// FetchFunc opens the upstream body of a blob. ctx governs the whole download, body
// included; it is cancelled when the store closes, not when the client that started the
// fill goes away.
type FetchFunc func(ctx context.Context) (Upstream, error)

// FillMeta describes the blob being filled, as the caller knows it.
type FillMeta struct {
	// MediaType is recorded at commit; when empty, Upstream.MediaType is used.
	MediaType string
	// Source is recorded at commit as where the blob was obtained.
	Source Source
}

// Fill is one download of a blob into the store, shared by every client that asks for the
// blob while it runs.
type Fill struct {
	store *Store
	dgst  digest.Digest

	// started is closed once the starter's fetch returned; startErr, size and mediaType are
	// set before and read-only after.
	started   chan struct{}
	startErr  error
	size      int64
	mediaType string
	origin    string

	// finished is closed when the background copy and the commit are over (tests wait on
	// it to observe the committed state).
	finished chan struct{}

	mu sync.Mutex
	// written is how many bytes of the file are written and may be read.
	written int64
	// done is set once all bytes are received and verified: readers then reach io.EOF.
	done bool
	// err is set when the fill failed: readers get it after the bytes below written.
	err error
	// changed is closed and replaced whenever written, done or err change.
	changed chan struct{}
	// file is shared by the copy goroutine and every reader (ReadAt), so that readers keep
	// working after the rename at commit or the removal at failure. refs counts its users.
	file *os.File
	refs int
}

// Fill joins the fill of dgst that is in progress, or starts one.
//
// When dgst is already committed it returns an error wrapping errdefs.ErrAlreadyExists: open
// it with OpenBlob. When starting, Fill creates the fill file (a failure returns ErrStorage
// and fetch is not called), then calls fetch in the caller's goroutine with a context that
// outlives ctx and ends with the store. A fetch error is returned unchanged; clients that
// joined meanwhile get ErrFillFailed. When joining, Fill waits for the starter's fetch to
// return. Only the starter's meta is recorded: a joiner obtained nothing from upstream
// itself, so its Source proves nothing.
func (s *Store) Fill(ctx context.Context, dgst digest.Digest, meta FillMeta, fetch FetchFunc) (*Fill, error) {
	if err := validateDigest(dgst); err != nil {
		return nil, err
	}
	if fetch == nil {
		return nil, fmt.Errorf("nil fetch func: %w", errdefs.ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// The map lookup, the committed check and the insertion happen under one lock, and a
	// fill leaves the map only after it is recorded or failed: so a caller either joins a
	// fill or finds the blob committed, never starts a second download of the same blob.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errClosed
	}
	if f, ok := s.fills[dgst]; ok {
		s.mu.Unlock()
		if s.testHookJoin != nil {
			s.testHookJoin()
		}
		return f.join(ctx)
	}
	present, err := s.present(dgst)
	if err != nil {
		s.mu.Unlock()
		return nil, storageFailed("check blob "+dgst.String(), err)
	}
	if present {
		s.mu.Unlock()
		return nil, fmt.Errorf("blob %s: %w", dgst, errdefs.ErrAlreadyExists)
	}
	f := &Fill{
		store:    s,
		dgst:     dgst,
		started:  make(chan struct{}),
		finished: make(chan struct{}),
		size:     -1,
		changed:  make(chan struct{}),
	}
	s.fills[dgst] = f
	s.wg.Add(1)
	s.mu.Unlock()

	return s.start(ctx, f, meta, fetch)
}

func (f *Fill) join(ctx context.Context) (*Fill, error) {
	select {
	case <-f.started:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if f.startErr != nil {
		return nil, fillFailed("joined fill of %s could not start (%v)", f.dgst, f.startErr)
	}
	return f, nil
}

// start runs the starter's part of a fill: fill file, fetch, and the hand-off to the copy
// goroutine.
func (s *Store) start(ctx context.Context, f *Fill, meta FillMeta, fetch FetchFunc) (*Fill, error) {
	file, err := os.CreateTemp(s.fillsPath(), f.dgst.Encoded()+"-*")
	if err != nil {
		err = storageFailed("create fill file for "+f.dgst.String(), err)
		s.abandon(f, err)
		return nil, err
	}

	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(s.ctx, cancel)
	cleanup := func(err error) {
		stop()
		cancel()
		file.Close()
		os.Remove(file.Name())
		s.abandon(f, err)
	}

	up, err := fetch(fctx)
	if err == nil && up.Body == nil {
		err = errNilBody
	}
	if err != nil {
		if up.Body != nil {
			up.Body.Close()
		}
		cleanup(err)
		return nil, err
	}
	if fctx.Err() != nil {
		// The store was closed while fetch ran.
		up.Body.Close()
		cleanup(errClosed)
		return nil, errClosed
	}

	f.size = up.Size
	if f.size < 0 {
		f.size = -1
	}
	f.mediaType = meta.MediaType
	if f.mediaType == "" {
		f.mediaType = up.MediaType
	}
	f.origin = up.Origin
	// Under the lock: FillStats reads file and refs of fills that are still starting.
	f.mu.Lock()
	f.file = file
	f.refs = 1 // the copy goroutine's
	f.mu.Unlock()
	close(f.started)

	var w io.WriterAt = file
	if s.wrapFillFile != nil {
		w = s.wrapFillFile(file)
	}
	go func() {
		defer s.wg.Done()
		defer close(f.finished)
		defer stop()
		defer cancel()
		s.run(fctx, f, file, up.Body, w, meta.Source)
	}()
	return f, nil
}

// abandon ends a fill whose fetch did not succeed. It leaves the map before joiners wake, so
// that their retry starts afresh instead of joining it again.
func (s *Store) abandon(f *Fill, err error) {
	s.forget(f)
	f.startErr = err
	close(f.started)
	close(f.finished)
	s.wg.Done()
}

func (s *Store) forget(f *Fill) {
	s.mu.Lock()
	if s.fills[f.dgst] == f {
		delete(s.fills, f.dgst)
	}
	s.mu.Unlock()
}

// run copies body into the fill file, verifies it and commits it.
func (s *Store) run(ctx context.Context, f *Fill, file *os.File, body io.ReadCloser, w io.WriterAt, src Source) {
	defer body.Close()
	logger := log.G(ctx).WithField("digest", f.dgst)

	failWith := func(err error) {
		logger.WithError(err).Warn("fill failed")
		// The file goes before readers learn of the failure, so that nothing half-written
		// is left behind once they see the error.
		if rerr := os.Remove(file.Name()); rerr != nil {
			logger.WithError(rerr).Warn("cannot remove fill file")
		}
		s.forget(f)
		f.fail(err)
		f.release()
	}

	buf := make([]byte, fillBufferSize)
	h := f.dgst.Algorithm().Hash()
	wb := writeback{file: file}
	var off int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if f.size >= 0 && off+int64(n) > f.size {
				failWith(fillFailed("fill of %s: upstream sent more than the announced %d bytes", f.dgst, f.size))
				return
			}
			if _, werr := w.WriteAt(buf[:n], off); werr != nil {
				failWith(&StorageError{Offset: off, Err: werr})
				return
			}
			h.Write(buf[:n])
			off += int64(n)
			f.publish(off)
			wb.written(off)
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			failWith(fillFailed("fill of %s: upstream read at offset %d (%v)", f.dgst, off, rerr))
			return
		}
	}
	if f.size >= 0 && off != f.size {
		failWith(fillFailed("fill of %s: upstream sent %d of the announced %d bytes", f.dgst, off, f.size))
		return
	}
	if got := digest.NewDigest(f.dgst.Algorithm(), h); got != f.dgst {
		failWith(fillFailed("fill of %s: upstream sent content with digest %s", f.dgst, got))
		return
	}

	// Verified: readers may finish now, without waiting for fsync and the index.
	if !f.complete() {
		// Failed meanwhile by Close; nothing may be committed after the store closed.
		os.Remove(file.Name())
		s.forget(f)
		f.release()
		return
	}
	// The fill stays in the map during commit, so that a late caller joins it rather than
	// missing both the fill and the blob.
	if err := s.commit(ctx, file, f.dgst, off, f.mediaType, src); err != nil {
		// Readers already have verified bytes; only the cache entry is lost.
		logger.WithError(err).Warn("cannot commit verified fill, dropping it")
		os.Remove(file.Name())
	} else {
		logger.WithField("size", off).Debug("fill committed")
	}
	s.forget(f)
	f.release()
}

func (f *Fill) broadcastLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *Fill) publish(off int64) {
	f.mu.Lock()
	f.written = off
	f.broadcastLocked()
	f.mu.Unlock()
}

// complete marks the fill verified unless it failed already, and reports which happened.
func (f *Fill) complete() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false
	}
	f.done = true
	f.broadcastLocked()
	return true
}

// fail records the first failure of a running fill; a verified fill cannot fail any more.
func (f *Fill) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil || f.done {
		return
	}
	f.err = err
	f.broadcastLocked()
}

func (f *Fill) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refs--
	if f.refs == 0 {
		f.file.Close()
		f.file = nil
	}
}

// Size returns the size upstream announced, or -1 when it is unknown.
func (f *Fill) Size() int64 { return f.size }

// MediaType returns the media type of the blob being filled.
func (f *Fill) MediaType() string { return f.mediaType }

// Origin is the Upstream.Origin the fill was started with ("" for the registry).
func (f *Fill) Origin() string { return f.origin }

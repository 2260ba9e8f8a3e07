package blobcache

import (
	"context"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
)

const (
	// maxOpenReaders bounds the files kept open for Reader: enough for the layers of the
	// images being unpacked at once.
	maxOpenReaders = 64
	// readerIdle is how long an open reader nobody uses stays open (and its blob pinned).
	readerIdle = 10 * time.Second
	// touchEvery is how often a blob read through a shared reader has its access time
	// recorded (in memory; the flusher writes it), instead of at every read.
	touchEvery = time.Second
)

// Reader is a committed blob opened for random reads, shared by every caller that reads the
// same digest: containerd's proxy content client reads a layer 32 KiB per call, and each call
// would otherwise cost an index look-up and a file open. It is opened like OpenBlob (its
// record and file checked, an unverified blob hashed first) and pinned while it is open, so
// eviction does not remove it. The file stays open for a while after the last Close, until
// it is idle for readerIdle, evicted, or the store closes.
type Reader struct {
	e    *readerEntry
	c    *readerCache
	once sync.Once
}

// ReadAt reads from the blob file.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) { return r.e.blob.ReadAt(p, off) }

// Size is the blob's size.
func (r *Reader) Size() int64 { return r.e.info.Size }

// Info is the blob's record as it was when the file was opened.
func (r *Reader) Info() BlobInfo { return r.e.info }

// Close gives the reader back; the shared file stays open until it is idle.
func (r *Reader) Close() error {
	r.once.Do(func() { r.c.release(r.e) })
	return nil
}

type readerEntry struct {
	blob     *Blob
	info     BlobInfo
	users    int
	lastUsed time.Time
	touched  time.Time
	// dropped entries are out of the map: the last user closes the file.
	dropped bool
}

// readerCache holds the shared readers by digest.
type readerCache struct {
	mu      sync.Mutex
	entries map[digest.Digest]*readerEntry
	closed  bool
}

// OpenReader returns a shared reader of dgst (see Reader); the caller closes it. A cached
// reader costs no index look-up and no open; its access time is recorded at most once per
// touchEvery.
func (s *Store) OpenReader(ctx context.Context, dgst digest.Digest) (*Reader, error) {
	c := &s.readers
	now := time.Now()
	// A cached digest was validated when it was opened.
	if r, touch := c.get(dgst, now); r != nil {
		if touch {
			s.touch(dgst, now.UTC())
		}
		return r, nil
	}
	b, info, err := s.OpenBlob(ctx, dgst)
	if err != nil {
		return nil, err
	}
	e := &readerEntry{blob: b, info: info, users: 1, lastUsed: now, touched: now}
	c.mu.Lock()
	if c.entries == nil {
		c.entries = make(map[digest.Digest]*readerEntry)
	}
	if old, ok := c.entries[dgst]; ok {
		// Opened by another caller meanwhile: share that one.
		old.users++
		c.mu.Unlock()
		b.Close()
		return &Reader{e: old, c: c}, nil
	}
	var idle []*Blob
	if c.closed {
		e.dropped = true
	} else {
		c.entries[dgst] = e
		if len(c.entries) > maxOpenReaders {
			idle = c.dropLocked(func(d digest.Digest, e *readerEntry) bool { return d != dgst }, 1)
		}
	}
	c.mu.Unlock()
	closeAll(idle)
	return &Reader{e: e, c: c}, nil
}

func (c *readerCache) get(dgst digest.Digest, now time.Time) (*Reader, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[dgst]
	if !ok {
		return nil, false
	}
	e.users++
	e.lastUsed = now
	touch := now.Sub(e.touched) >= touchEvery
	if touch {
		e.touched = now
	}
	return &Reader{e: e, c: c}, touch
}

func (c *readerCache) release(e *readerEntry) {
	c.mu.Lock()
	e.users--
	e.lastUsed = time.Now()
	last := e.dropped && e.users == 0
	c.mu.Unlock()
	if last {
		e.blob.Close()
	}
}

// dropLocked takes out of the map up to limit (0: no limit) idle entries that match, least
// recently used first, and returns their files for the caller to close after unlocking
// (closing unpins, which takes the store's lock).
func (c *readerCache) dropLocked(match func(digest.Digest, *readerEntry) bool, limit int) []*Blob {
	var out []*Blob
	for limit == 0 || len(out) < limit {
		var oldest digest.Digest
		var oe *readerEntry
		for d, e := range c.entries {
			if e.users == 0 && match(d, e) && (oe == nil || e.lastUsed.Before(oe.lastUsed)) {
				oldest, oe = d, e
			}
		}
		if oe == nil {
			break
		}
		out = append(out, c.removeLocked(oldest, oe))
	}
	return out
}

// removeLocked takes e out of the map and returns its file when nobody uses it, for the
// caller to close once unlocked; a busy one is closed by its last user instead.
func (c *readerCache) removeLocked(d digest.Digest, e *readerEntry) *Blob {
	delete(c.entries, d)
	e.dropped = true
	if e.users == 0 {
		return e.blob
	}
	return nil
}

// drop closes the idle shared readers of dgsts (before an eviction removes them) and takes
// the busy ones out of the map, so that they close with their last user and nobody opens
// them again from the cache.
func (c *readerCache) drop(dgsts []digest.Digest) {
	c.mu.Lock()
	var idle []*Blob
	for _, d := range dgsts {
		if e, ok := c.entries[d]; ok {
			idle = append(idle, c.removeLocked(d, e))
		}
	}
	c.mu.Unlock()
	closeAll(idle)
}

// closeIdle closes the shared readers unused since before.
func (c *readerCache) closeIdle(before time.Time) {
	c.mu.Lock()
	idle := c.dropLocked(func(_ digest.Digest, e *readerEntry) bool { return e.lastUsed.Before(before) }, 0)
	c.mu.Unlock()
	closeAll(idle)
}

// close closes every idle shared reader and lets the busy ones close with their last user.
func (c *readerCache) close() {
	c.mu.Lock()
	c.closed = true
	var idle []*Blob
	for d, e := range c.entries {
		idle = append(idle, c.removeLocked(d, e))
	}
	c.mu.Unlock()
	closeAll(idle)
}

func closeAll(blobs []*Blob) {
	for _, b := range blobs {
		if b != nil {
			b.Close()
		}
	}
}

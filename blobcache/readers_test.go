package blobcache

import (
	"bytes"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// TestSharedReaders: readers of one digest share one open file and one pin; an open reader
// keeps its blob from eviction, an idle one does not; the number of idle open files is
// bounded, and idle ones close after readerIdle.
func TestSharedReaders(t *testing.T) {
	s := newTestStore(t)
	dgsts := putN(t, s, maxOpenReaders+3, 100, 1)
	d := dgsts[0]

	r1, err := s.OpenReader(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.OpenReader(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if r1.e != r2.e {
		t.Error("two readers of one digest opened two files")
	}
	s.mu.Lock()
	pins := s.pins[d]
	s.mu.Unlock()
	if pins != 1 {
		t.Errorf("pins = %d, want 1 for the shared file", pins)
	}
	buf := make([]byte, 100)
	if n, err := r2.ReadAt(buf, 0); n != 100 || !bytes.Equal(buf[1:], bytes.Repeat([]byte{1}, 99)) {
		t.Errorf("ReadAt: %d, %v", n, err)
	}
	r1.Close()
	if res, _ := s.Remove(t.Context(), dgsts[:1]); res.Blobs != 0 || res.InUse != 1 {
		t.Errorf("removal while a reader is open: %+v", res)
	}
	// The busy reader left the cache for the removal: a new reader opens afresh.
	r2.Close()
	if res, _ := s.Remove(t.Context(), dgsts[:1]); res.Blobs != 1 {
		t.Errorf("removal once the readers closed: %+v", res)
	}
	if _, err := s.OpenReader(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Errorf("reader of a removed blob: %v", err)
	}

	for _, d := range dgsts[1:] {
		r, err := s.OpenReader(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
	}
	s.readers.mu.Lock()
	n := len(s.readers.entries)
	s.readers.mu.Unlock()
	if n > maxOpenReaders {
		t.Errorf("%d idle readers open, bound %d", n, maxOpenReaders)
	}
	s.readers.closeIdle(time.Now().Add(time.Second))
	s.mu.Lock()
	pinned := len(s.pins)
	s.mu.Unlock()
	if pinned != 0 {
		t.Errorf("%d blobs still pinned after the idle readers closed", pinned)
	}
}

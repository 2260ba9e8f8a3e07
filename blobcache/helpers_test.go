package blobcache

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

func newTestStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.Context(), Options{Root: t.TempDir()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// testBlob returns n deterministic pseudo-random bytes (seeded by n) and their digest.
func testBlob(n int) ([]byte, digest.Digest) {
	b := make([]byte, n)
	rand.New(rand.NewSource(int64(n))).Read(b)
	return b, digest.SHA256.FromBytes(b)
}

// countingFetch counts its calls and serves data as a body of announced size size.
type countingFetch struct {
	calls atomic.Int32
	data  []byte
	size  int64
}

func (c *countingFetch) fetch(ctx context.Context) (Upstream, error) {
	c.calls.Add(1)
	return Upstream{Body: io.NopCloser(bytes.NewReader(c.data)), Size: c.size, MediaType: "application/octet-stream"}, nil
}

// pipeUpstream is an upstream body the test writes into; Read blocks until it does, so the
// test decides when each byte reaches the fill.
type pipeUpstream struct {
	calls atomic.Int32
	size  int64
	pr    *io.PipeReader
	pw    *io.PipeWriter
}

func newPipeUpstream(size int64) *pipeUpstream {
	pr, pw := io.Pipe()
	return &pipeUpstream{size: size, pr: pr, pw: pw}
}

func (p *pipeUpstream) fetch(ctx context.Context) (Upstream, error) {
	p.calls.Add(1)
	// Like a net/http body, reads fail once the request context is cancelled.
	context.AfterFunc(ctx, func() { p.pw.CloseWithError(ctx.Err()) })
	return Upstream{Body: p.pr, Size: p.size}, nil
}

// write hands b to the fill; it returns once the fill has read it all.
func (p *pipeUpstream) write(t *testing.T, b []byte) {
	t.Helper()
	if _, err := p.pw.Write(b); err != nil {
		t.Fatalf("upstream write: %v", err)
	}
}

func mustFill(t *testing.T, s *Store, dgst digest.Digest, meta FillMeta, fetch FetchFunc) *Fill {
	t.Helper()
	f, err := s.Fill(t.Context(), dgst, meta, fetch)
	if err != nil {
		t.Fatalf("Fill: %v", err)
	}
	return f
}

func mustReader(t *testing.T, f *Fill, off int64) io.ReadCloser {
	t.Helper()
	r, err := f.NewReader(t.Context(), off)
	if err != nil {
		t.Fatalf("NewReader(%d): %v", off, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// waitFinished waits until the fill's background work (copy, verification, commit) is over.
func waitFinished(t *testing.T, f *Fill) {
	t.Helper()
	select {
	case <-f.finished:
	case <-t.Context().Done():
		t.Fatal("fill did not finish")
	}
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func assertFillsEmpty(t *testing.T, s *Store) {
	t.Helper()
	if names := dirEntries(t, filepath.Join(s.Root(), "fills")); len(names) > 0 {
		t.Errorf("fills/ not empty: %v", names)
	}
}

// readFill reads f from off to the end. A failure of NewReader is returned like one of Read:
// a fill that failed before the reader was made fails there.
func readFill(t *testing.T, f *Fill, off int64) ([]byte, error) {
	t.Helper()
	r, err := f.NewReader(t.Context(), off)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

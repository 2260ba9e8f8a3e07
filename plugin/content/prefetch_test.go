package content

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
)

// fakePrefetcher stands for the mirror: it "fills" the blobs it lists into the store.
type fakePrefetcher struct {
	cache  *blobcache.Store
	listed map[digest.Digest][]byte
	// fail answers every listed digest with this error instead.
	fail error
	// block waits for the caller's context to end.
	block bool

	mu    sync.Mutex
	calls int
}

func (p *fakePrefetcher) Prefetch(ctx context.Context, dgst digest.Digest) (bool, error) {
	p.mu.Lock()
	p.calls++
	p.mu.Unlock()
	data, ok := p.listed[dgst]
	switch {
	case !ok:
		return false, nil
	case p.block:
		<-ctx.Done()
		return false, ctx.Err()
	case p.fail != nil:
		return false, p.fail
	}
	if err := p.cache.PutBlob(ctx, dgst, "application/octet-stream", blobcache.Source{Registry: "r", Repository: "x"}, data); err != nil {
		return false, err
	}
	return true, nil
}

func (p *fakePrefetcher) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

func TestInfoFillsAListedBlob(t *testing.T) {
	s := newServed(t)
	ctx := t.Context()
	data, d := testBlob(4000)
	_, unknown := testBlob(5)
	p := &fakePrefetcher{cache: s.cache, listed: map[digest.Digest][]byte{d: data}}
	s.svc.Store().SetPrefetcher(p, time.Minute)

	info, err := s.client.Info(ctx, d)
	if err != nil || info.Size != int64(len(data)) {
		t.Fatalf("Info of a listed blob: %+v %v", info, err)
	}
	if !held(t, s.cache, d) {
		t.Error("a blob Info answered for is not held")
	}
	if _, err := s.client.Info(ctx, unknown); !errdefs.IsNotFound(err) {
		t.Errorf("Info of an unknown blob: %v, want not found", err)
	}
	// The stored blob is answered without asking again.
	before := p.count()
	if _, err := s.client.Info(ctx, d); err != nil || p.count() != before {
		t.Errorf("Info of the stored blob: %v, %d more prefetches", err, p.count()-before)
	}
}

func TestInfoOfAFailedPrefetchIsNotFound(t *testing.T) {
	s := newServed(t)
	data, d := testBlob(4000)
	s.svc.Store().SetPrefetcher(&fakePrefetcher{cache: s.cache, listed: map[digest.Digest][]byte{d: data}, fail: errors.New("upstream answered 500")}, time.Minute)
	if _, err := s.client.Info(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Fatalf("Info when the fill fails: %v, want not found", err)
	}
	if _, err := s.cache.Info(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Errorf("a blob whose fill failed is in the store: %v", err)
	}
}

func TestInfoWaitsForAPrefetchAtMostItsBound(t *testing.T) {
	s := newServed(t)
	data, d := testBlob(4000)
	s.svc.Store().SetPrefetcher(&fakePrefetcher{cache: s.cache, listed: map[digest.Digest][]byte{d: data}, block: true}, 50*time.Millisecond)
	if _, err := s.client.Info(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Fatalf("Info when the fill does not finish in time: %v, want not found", err)
	}
}

func TestInfoFillTurnedOff(t *testing.T) {
	s := newServed(t)
	data, d := testBlob(4000)
	p := &fakePrefetcher{cache: s.cache, listed: map[digest.Digest][]byte{d: data}}
	s.svc.Store().SetPrefetcher(p, 0)
	if _, err := s.client.Info(t.Context(), d); !errdefs.IsNotFound(err) || p.count() != 0 {
		t.Fatalf("Info with content.info_fill_wait 0: %v, %d prefetches", err, p.count())
	}
}

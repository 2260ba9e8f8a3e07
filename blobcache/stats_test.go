package blobcache

import (
	"context"
	"io"
	"testing"
	"time"
)

func TestIndexStats(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	var total int64
	for i := 1; i <= 3; i++ {
		data, d := testBlob(100 * i)
		if err := s.PutBlob(ctx, d, "", Source{}, data); err != nil {
			t.Fatal(err)
		}
		total += int64(len(data))
	}
	_, d := testBlob(100)
	if err := s.PutTag(ctx, "r.example", "a/b", "v1", TagRecord{Digest: d, FetchedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hold(ctx, d); err != nil {
		t.Fatal(err)
	}
	st, err := s.IndexStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st != (IndexStats{Blobs: 3, Bytes: total, HeldBlobs: 1, Tags: 1}) {
		t.Fatalf("stats %+v, want 3 blobs of %d bytes, 1 held, 1 tag", st, total)
	}
}

func TestFillStatsCountsReaders(t *testing.T) {
	s := newTestStore(t)
	data, d := testBlob(4096)
	up := newPipeUpstream(int64(len(data)))
	f := mustFill(t, s, d, FillMeta{}, up.fetch)
	r1 := mustReader(t, f, 0)
	r2 := mustReader(t, f, 0)
	r3 := mustReader(t, f, 0)
	if st := s.FillStats(); st != (FillStats{InFlight: 1, Readers: 3, Waiters: 2}) {
		t.Fatalf("during fill: %+v", st)
	}
	up.write(t, data)
	up.pw.Close()
	for _, r := range []io.ReadCloser{r1, r2, r3} {
		if _, err := io.Copy(io.Discard, r); err != nil {
			t.Fatal(err)
		}
		r.Close()
	}
	waitFinished(t, f)
	if st := s.FillStats(); st != (FillStats{}) {
		t.Fatalf("after fill: %+v", st)
	}
}

package blobcache

import (
	"encoding/json"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestSourceRecordsWithoutAnonymousFlagReadPrivate: records written before the "anonymous"
// flag existed cannot prove their content public, so they read as private (the mirror then
// checks the client upstream before serving). New records keep "private" for older readers.
func TestSourceRecordsWithoutAnonymousFlagReadPrivate(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	data, d := testBlob(512)
	if err := s.PutBlob(ctx, d, "application/octet-stream", Source{Registry: "r.example", Repository: "pub"}, data); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSource(ctx, d, Source{Registry: "r.example", Repository: "priv", Private: true}); err != nil {
		t.Fatal(err)
	}
	var raw blobRecord
	if err := s.idx.db.View(func(tx *bolt.Tx) error {
		b, err := subBucket(tx, bucketBlobs)
		if err != nil {
			return err
		}
		return json.Unmarshal(b.Get([]byte(d)), &raw)
	}); err != nil {
		t.Fatal(err)
	}
	if len(raw.Sources) != 2 || !raw.Sources[0].Anonymous || raw.Sources[0].Private || raw.Sources[1].Anonymous || !raw.Sources[1].Private {
		t.Fatalf("written sources %+v", raw.Sources)
	}

	// An old record: {"registry","repository"} without any flag.
	old := `{"size":512,"createdAt":"2026-01-01T00:00:00Z","lastAccess":"2026-01-01T00:00:00Z","sources":[{"registry":"r.example","repository":"old"}]}`
	if err := s.idx.db.Update(func(tx *bolt.Tx) error {
		b, err := subBucket(tx, bucketBlobs)
		if err != nil {
			return err
		}
		return b.Put([]byte(d), []byte(old))
	}); err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, d)
	if err != nil || len(info.Sources) != 1 || !info.Sources[0].Private {
		t.Fatalf("old record read as %+v, %v; want private", info.Sources, err)
	}
	// Obtained anonymously again: the flag is upgraded to public.
	if err := s.AddSource(ctx, d, Source{Registry: "r.example", Repository: "old"}); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Info(ctx, d); info.Sources[0].Private {
		t.Fatalf("anonymous source did not make it public: %+v", info.Sources)
	}
}

package blobcache

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

// writeUnrecorded puts a blob file into blobs/sha256 the way containerd's local store writer
// commits it: renamed into place, with no index record.
func writeUnrecorded(t *testing.T, s *Store, data []byte) digest.Digest {
	t.Helper()
	d := digest.SHA256.FromBytes(data)
	tmp := filepath.Join(s.Root(), "ingest-tmp")
	if err := os.WriteFile(tmp, data, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.blobPath(d)); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestHoldAdoptsUnrecordedFile(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	data, _ := testBlob(300)
	d := writeUnrecorded(t, s, data)
	if _, err := s.Info(ctx, d); !errdefs.IsNotFound(err) {
		t.Fatalf("Info before Hold: %v, want not found (no record yet)", err)
	}

	info, err := s.Hold(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Held || info.Size != int64(len(data)) || info.Digest != d {
		t.Fatalf("Hold = %+v", info)
	}
	// The mirror's read path finds it now.
	f, got, err := s.OpenBlob(ctx, d)
	if err != nil {
		t.Fatalf("OpenBlob of an adopted blob: %v", err)
	}
	f.Close()
	if !got.Held {
		t.Errorf("OpenBlob info = %+v, want held", got)
	}
	// A fill of it is not started: it is committed.
	up := &countingFetch{data: data, size: int64(len(data))}
	if _, err := s.Fill(ctx, d, FillMeta{}, up.fetch); !errdefs.IsAlreadyExists(err) {
		t.Errorf("Fill of an adopted blob: %v, want already exists", err)
	}
	if up.calls.Load() != 0 {
		t.Error("upstream asked for a blob on disk")
	}
}

func TestHoldMissingBlob(t *testing.T) {
	s := newTestStore(t)
	_, d := testBlob(10)
	if _, err := s.Hold(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Fatalf("Hold of a missing blob: %v", err)
	}
	if err := s.Release(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Fatalf("Release of a missing blob: %v", err)
	}
	held, err := s.HeldBlobs(t.Context())
	if err != nil || len(held) != 0 {
		t.Fatalf("HeldBlobs = %v, %v", held, err)
	}
	if _, err := s.Info(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Fatalf("Hold of a missing blob left a record: %v", err)
	}
}

func TestHoldDamagedFile(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	data, d := testBlob(100)
	if err := s.PutBlob(ctx, d, "", Source{}, data); err != nil {
		t.Fatal(err)
	}
	p := s.blobPath(d)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hold(ctx, d); !errdefs.IsNotFound(err) {
		t.Fatalf("Hold of a truncated blob: %v, want not found", err)
	}
}

func TestReleaseKeepsBlob(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	data, d := testBlob(200)
	other, d2 := testBlob(201)
	for _, b := range [][]byte{data, other} {
		if err := s.PutBlob(ctx, digest.SHA256.FromBytes(b), "application/octet-stream", Source{Registry: "r", Repository: "x"}, b); err != nil {
			t.Fatal(err)
		}
	}
	if held, _ := s.HeldBlobs(ctx); len(held) != 0 {
		t.Fatalf("mirror-filled blobs are held: %v", held)
	}
	if _, err := s.Hold(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLabels(ctx, d, map[string]string{"a": "1"}); err != nil {
		t.Fatal(err)
	}
	if held, _ := s.HeldBlobs(ctx); !slices.Equal(held, []digest.Digest{d}) {
		t.Fatalf("HeldBlobs = %v, want [%s]", held, d)
	}

	if err := s.Release(ctx, d); err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, d)
	if err != nil {
		t.Fatalf("Info after Release: %v", err)
	}
	if info.Held || info.MediaType != "application/octet-stream" || len(info.Sources) != 1 {
		t.Errorf("after Release: %+v, want the record kept, not held", info)
	}
	if labels, _ := s.Labels(ctx, d); labels != nil {
		t.Errorf("labels kept after Release: %v", labels)
	}
	if held, _ := s.HeldBlobs(ctx); len(held) != 0 {
		t.Errorf("HeldBlobs after Release = %v", held)
	}
	f, _, err := s.OpenBlob(ctx, d)
	if err != nil {
		t.Fatalf("blob gone after Release: %v", err)
	}
	f.Close()
	// Releasing what is not held is no error.
	if err := s.Release(ctx, d2); err != nil {
		t.Errorf("Release of a blob never held: %v", err)
	}
}

func TestHoldSurvivesCommitAndReopen(t *testing.T) {
	root := t.TempDir()
	s, err := Open(t.Context(), Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	data, _ := testBlob(500)
	d := writeUnrecorded(t, s, data)
	if _, err := s.Hold(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateLabels(ctx, d, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	// The mirror records the same blob again (a PutBlob of a present blob merges).
	src := Source{Registry: "docker.io", Repository: "library/x"}
	if err := s.PutBlob(ctx, d, "application/octet-stream", src, data); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(ctx, Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	info, err := s.Info(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Held || !slices.Equal(info.Sources, []Source{src}) || info.MediaType != "application/octet-stream" {
		t.Errorf("after reopen: %+v", info)
	}
	if labels, _ := s.Labels(ctx, d); !maps.Equal(labels, map[string]string{"k": "v"}) {
		t.Errorf("labels after reopen: %v", labels)
	}
}

func TestLabels(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	data, d := testBlob(50)
	if err := s.SetLabels(ctx, d, map[string]string{"a": "1"}); !errdefs.IsNotFound(err) {
		t.Fatalf("SetLabels of a missing blob: %v", err)
	}
	if err := s.PutBlob(ctx, d, "", Source{}, data); err != nil {
		t.Fatal(err)
	}
	if labels, err := s.Labels(ctx, d); err != nil || labels != nil {
		t.Fatalf("Labels of a new blob = %v, %v", labels, err)
	}
	if err := s.SetLabels(ctx, d, map[string]string{"a": "1", "b": "2"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.UpdateLabels(ctx, d, map[string]string{"a": "", "c": "3"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"b": "2", "c": "3"}
	if !maps.Equal(got, want) {
		t.Errorf("UpdateLabels returned %v, want %v", got, want)
	}
	if labels, _ := s.Labels(ctx, d); !maps.Equal(labels, want) {
		t.Errorf("Labels = %v, want %v", labels, want)
	}
	// Set replaces everything.
	if err := s.SetLabels(ctx, d, map[string]string{"z": "9"}); err != nil {
		t.Fatal(err)
	}
	if labels, _ := s.Labels(ctx, d); !maps.Equal(labels, map[string]string{"z": "9"}) {
		t.Errorf("Labels after Set = %v", labels)
	}
	// Labels do not hold a blob by themselves.
	if info, _ := s.Info(ctx, d); info.Held {
		t.Error("SetLabels held the blob")
	}
	// The returned map is a copy.
	got["z"] = "changed"
	if labels, _ := s.Labels(ctx, d); labels["z"] != "9" {
		t.Error("caller's map aliases the record")
	}
}

func TestHoldsOnClosedStore(t *testing.T) {
	s, err := Open(t.Context(), Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := testBlob(20)
	d := writeUnrecorded(t, s, data)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hold(t.Context(), d); err == nil {
		t.Error("Hold on a closed store succeeded")
	}
	if err := s.Release(t.Context(), d); err == nil {
		t.Error("Release on a closed store succeeded")
	}
}

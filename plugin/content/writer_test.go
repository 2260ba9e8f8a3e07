package content

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
)

// startPipeFill starts a fill of dgst whose upstream body is the returned pipe writer.
func startPipeFill(t *testing.T, s *served, data []byte, dgst digest.Digest) (*io.PipeWriter, *blobcache.Fill) {
	t.Helper()
	pr, pw := io.Pipe()
	f, err := s.cache.Fill(t.Context(), dgst, blobcache.FillMeta{}, func(context.Context) (blobcache.Upstream, error) {
		return blobcache.Upstream{Body: pr, Size: int64(len(data))}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pw.CloseWithError(errors.New("test over")) })
	return pw, f
}

// ingestBytes is how many bytes the content API's ingests hold on disk.
func ingestBytes(t *testing.T, root string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(filepath.Join(root, "ingest"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && d.Name() == "data" {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// TestWriteOfFillingBlobNotWrittenTwice: containerd writing, through the content API, a blob
// the mirror is filling (a cold pull in proxy mode) writes nothing to disk; its Commit waits
// for the fill and holds the store's copy.
func TestWriteOfFillingBlobNotWrittenTwice(t *testing.T) {
	data, d := testBlob(3 << 20)
	t.Run("expected digest", func(t *testing.T) {
		testWriteOfFillingBlob(t, data, d, content.WithRef("pull-"+d.Encoded()), content.WithDescriptor(desc(d, data)))
	})
	// containerd's metadata store opens the backend's writer without the expected digest;
	// the ref it passes names the blob (remotes.MakeRefKey, prefixed by the metadata store).
	t.Run("digest in ref", func(t *testing.T) {
		testWriteOfFillingBlob(t, data, d, content.WithRef("1-ns-layer-"+d.String()), content.WithDescriptor(ocispec.Descriptor{Size: int64(len(data))}))
	})
}

func testWriteOfFillingBlob(t *testing.T, data []byte, d digest.Digest, opts ...content.WriterOpt) {
	s := newServed(t)
	upstream, _ := startPipeFill(t, s, data, d)

	w, err := content.OpenWriter(t.Context(), s.client, opts...)
	if err != nil {
		t.Fatalf("OpenWriter: %v", err)
	}
	if _, err := io.Copy(w, bytes.NewReader(data)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if st, err := w.Status(); err != nil || st.Offset != int64(len(data)) {
		t.Errorf("status after writing: %+v %v", st, err)
	}
	if n := ingestBytes(t, s.cache.Root()); n != 0 {
		t.Errorf("the ingest holds %d bytes of a blob the store is filling", n)
	}
	committed := make(chan error, 1)
	go func() { committed <- w.Commit(t.Context(), int64(len(data)), d) }()
	if _, err := upstream.Write(data); err != nil {
		t.Fatal(err)
	}
	upstream.Close()
	if err := <-committed; err != nil {
		t.Fatalf("Commit: %v", err)
	}
	w.Close()
	info, err := s.cache.Info(t.Context(), d)
	if err != nil || !info.Held || info.Size != int64(len(data)) {
		t.Errorf("after the commit: %+v %v, want held", info, err)
	}
	got, err := content.ReadBlob(t.Context(), s.client, desc(d, data))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("read back: %d bytes, %v", len(got), err)
	}
	if n := ingestBytes(t, s.cache.Root()); n != 0 {
		t.Errorf("ingest left: %d bytes", n)
	}
	if entries, _ := os.ReadDir(filepath.Join(s.cache.Root(), "ingest")); len(entries) != 0 {
		t.Errorf("ingest directories left: %d", len(entries))
	}
}

// TestWriteOfFillingBlobFillFails: when the fill whose bytes a writer discarded fails, the
// Commit fails as unavailable (the caller writes it again) and nothing is stored.
func TestWriteOfFillingBlobFillFails(t *testing.T) {
	s := newServed(t)
	data, d := testBlob(1 << 20)
	upstream, _ := startPipeFill(t, s, data, d)
	w, err := content.OpenWriter(t.Context(), s.client, content.WithRef("pull-"+d.Encoded()), content.WithDescriptor(desc(d, data)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := io.Copy(w, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	upstream.CloseWithError(errors.New("connection reset"))
	if err := w.Commit(t.Context(), int64(len(data)), d); !errdefs.IsUnavailable(err) {
		t.Errorf("Commit after the fill failed: %v, want unavailable", err)
	}
	if _, err := s.cache.Info(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Errorf("blob stored after a failed fill: %v", err)
	}
}

// TestWriteOfFillingBlobWrongSize: a commit of another size than was written fails, as it
// does with the local store.
func TestWriteOfFillingBlobWrongSize(t *testing.T) {
	s := newServed(t)
	data, d := testBlob(100 << 10)
	startPipeFill(t, s, data, d)
	w, err := content.OpenWriter(t.Context(), s.client, content.WithRef("pull-"+d.Encoded()), content.WithDescriptor(desc(d, data)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write(data[:1000]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context(), int64(len(data)), d); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Commit of a short write: %v, want failed precondition", err)
	}
}

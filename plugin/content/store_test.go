package content

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
)

func testBlob(n int) ([]byte, digest.Digest) {
	b := make([]byte, n)
	rand.New(rand.NewSource(int64(n))).Read(b)
	return b, digest.SHA256.FromBytes(b)
}

func desc(d digest.Digest, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{Digest: d, Size: int64(len(data))}
}

// walked lists what the content API's List shows.
func walked(t *testing.T, cs content.Store) []digest.Digest {
	t.Helper()
	var out []digest.Digest
	if err := cs.Walk(t.Context(), func(info content.Info) error {
		out = append(out, info.Digest)
		return nil
	}); err != nil {
		t.Fatalf("Walk: %v", err)
	}
	slices.Sort(out)
	return out
}

func held(t *testing.T, cache *blobcache.Store, d digest.Digest) bool {
	t.Helper()
	info, err := cache.Info(t.Context(), d)
	if err != nil {
		t.Fatalf("blobcache Info %s: %v", d, err)
	}
	return info.Held
}

// blobFiles lists blobs/sha256 and checks that no ingest is left.
func blobFiles(t *testing.T, root string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func assertNoIngest(t *testing.T, root string) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, "ingest"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(entries) > 0 {
		t.Errorf("ingests left: %d", len(entries))
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func blobPath(root string, d digest.Digest) string {
	return filepath.Join(root, "blobs", "sha256", d.Encoded())
}

// A blob written through the content API is held, listed, recorded for the mirror, and
// readable back through the API.
func TestWriteHoldsAndRecords(t *testing.T) {
	s := newServed(t)
	ctx := t.Context()
	data, d := testBlob(3 << 20)
	if err := content.WriteBlob(ctx, s.client, "w1", bytes.NewReader(data), desc(d, data)); err != nil {
		t.Fatal(err)
	}
	if !held(t, s.cache, d) {
		t.Error("committed blob is not held")
	}
	if got := walked(t, s.client); !slices.Equal(got, []digest.Digest{d}) {
		t.Errorf("List = %v, want [%s]", got, d)
	}
	// The mirror's hit path serves held blobs.
	f, info, err := s.cache.OpenBlob(ctx, d)
	if err != nil {
		t.Fatalf("mirror read of a committed blob: %v", err)
	}
	got, _ := io.ReadAll(f)
	f.Close()
	if !bytes.Equal(got, data) || info.Size != int64(len(data)) {
		t.Errorf("mirror read %d bytes, info %+v", len(got), info)
	}
	back, err := content.ReadBlob(ctx, s.client, desc(d, data))
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("API read back %d bytes: %v", len(back), err)
	}
	assertNoIngest(t, s.cache.Root())
}

// Delete drops the hold and keeps the blob as cache; Info still answers, so that containerd's
// next pull commits without fetching; a new write of the same bytes re-holds the blob without
// rewriting its file.
func TestDeleteKeepsBlobAsCache(t *testing.T) {
	s := newServed(t)
	ctx := t.Context()
	data, d := testBlob(100 << 10)
	labels := map[string]string{"containerd.io/gc.root": "x"}
	w, err := content.OpenWriter(ctx, s.client, content.WithRef("w1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, int64(len(data)), d, content.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	path := blobPath(s.cache.Root(), d)
	ino := inode(t, path)

	if err := s.client.Delete(ctx, d); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if got := walked(t, s.client); len(got) != 0 {
		t.Errorf("List after Delete = %v, want nothing", got)
	}
	if held(t, s.cache, d) {
		t.Error("blob still held after Delete")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("blob file removed by Delete: %v", err)
	}
	f, _, err := s.cache.OpenBlob(ctx, d)
	if err != nil {
		t.Fatalf("mirror lost the blob after Delete: %v", err)
	}
	f.Close()

	// containerd's second pull: Writer with the digest, as remotes.FetchHandler opens it.
	if _, err := s.client.Writer(ctx, content.WithRef("w2"), content.WithDescriptor(desc(d, data))); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Writer for a cached blob: %v, want already exists", err)
	}
	if !held(t, s.cache, d) {
		t.Error("Writer's already-exists answer did not re-hold the blob")
	}
	info, err := s.client.Info(ctx, d)
	if err != nil || info.Size != int64(len(data)) {
		t.Fatalf("Info after re-hold = %+v, %v", info, err)
	}
	if len(info.Labels) != 0 {
		t.Errorf("labels survived Delete: %v", info.Labels)
	}
	if got := inode(t, path); got != ino {
		t.Errorf("blob file rewritten: inode %d -> %d", ino, got)
	}
	assertNoIngest(t, s.cache.Root())
}

// containerd's metadata store opens writers without the digest and commits with it: the
// commit of bytes the store has re-holds the blob and keeps the stored file.
func TestCommitOfCachedBlobReholds(t *testing.T) {
	s := newServed(t)
	ctx := t.Context()
	data, d := testBlob(64 << 10)
	if err := s.cache.PutBlob(ctx, d, "application/octet-stream", blobcache.Source{Registry: "r", Repository: "x"}, data); err != nil {
		t.Fatal(err)
	}
	path := blobPath(s.cache.Root(), d)
	ino := inode(t, path)

	for _, expected := range []digest.Digest{d, ""} {
		if err := s.client.Delete(ctx, d); err != nil {
			t.Fatal(err)
		}
		w, err := content.OpenWriter(ctx, s.client, content.WithRef("c-"+string(expected)), content.WithDescriptor(ocispec.Descriptor{Size: int64(len(data))}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		err = w.Commit(ctx, int64(len(data)), expected)
		w.Close()
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("commit (expected %q) of a cached blob: %v, want already exists", expected, err)
		}
		if !held(t, s.cache, d) {
			t.Errorf("commit (expected %q) did not hold the blob", expected)
		}
	}
	if got := inode(t, path); got != ino {
		t.Errorf("blob file rewritten: inode %d -> %d", ino, got)
	}
	if files := blobFiles(t, s.cache.Root()); len(files) != 1 {
		t.Errorf("blobs/sha256 holds %v, want one file", files)
	}
	info, _ := s.cache.Info(ctx, d)
	if len(info.Sources) != 1 || info.MediaType != "application/octet-stream" {
		t.Errorf("mirror's record lost: %+v", info)
	}
	assertNoIngest(t, s.cache.Root())
}

// Info answers for blobs only the mirror fetched (and holds them from then on); List does not
// show them until then, so containerd's collector never deletes what it never had.
func TestMirrorFilledBlobs(t *testing.T) {
	s := newServed(t)
	ctx := t.Context()
	a, da := testBlob(1000)
	b, db := testBlob(2000)
	for _, blob := range [][]byte{a, b} {
		d := digest.SHA256.FromBytes(blob)
		if err := s.cache.PutBlob(ctx, d, "application/octet-stream", blobcache.Source{Registry: "r", Repository: "x"}, blob); err != nil {
			t.Fatal(err)
		}
	}
	if got := walked(t, s.client); len(got) != 0 {
		t.Fatalf("List shows mirror-only blobs: %v", got)
	}
	info, err := s.client.Info(ctx, da)
	if err != nil || info.Size != int64(len(a)) || info.Digest != da {
		t.Fatalf("Info of a mirror-filled blob = %+v, %v", info, err)
	}
	if got := walked(t, s.client); !slices.Equal(got, []digest.Digest{da}) {
		t.Errorf("List after Info = %v, want [%s]", got, da)
	}
	if held(t, s.cache, db) {
		t.Error("a blob containerd never asked about is held")
	}
	got, err := content.ReadBlob(ctx, s.client, desc(db, b))
	if err != nil || !bytes.Equal(got, b) {
		t.Errorf("API read of a mirror-filled blob: %d bytes, %v", len(got), err)
	}
}

// A blob written through the API and then asked for through the mirror is not fetched
// again, and the other way round the API write does not store a second copy.
func TestDedupeBetweenMirrorAndAPI(t *testing.T) {
	s := newServed(t)
	ctx := t.Context()
	root := s.cache.Root()

	apiFirst, d1 := testBlob(300 << 10)
	if err := content.WriteBlob(ctx, s.client, "api", bytes.NewReader(apiFirst), desc(d1, apiFirst)); err != nil {
		t.Fatal(err)
	}
	fetches := 0
	_, err := s.cache.Fill(ctx, d1, blobcache.FillMeta{}, func(context.Context) (blobcache.Upstream, error) {
		fetches++
		return blobcache.Upstream{Body: io.NopCloser(bytes.NewReader(apiFirst)), Size: int64(len(apiFirst))}, nil
	})
	if !errdefs.IsAlreadyExists(err) || fetches != 0 {
		t.Fatalf("mirror fill of an API-written blob: %v (%d fetches), want already exists", err, fetches)
	}

	mirrorFirst, d2 := testBlob(200 << 10)
	if err := s.cache.PutBlob(ctx, d2, "application/octet-stream", blobcache.Source{Registry: "r", Repository: "x"}, mirrorFirst); err != nil {
		t.Fatal(err)
	}
	ino := inode(t, blobPath(root, d2))
	// content.WriteBlob takes already-exists as success, as containerd's fetch does.
	if err := content.WriteBlob(ctx, s.client, "mirror", bytes.NewReader(mirrorFirst), desc(d2, mirrorFirst)); err != nil {
		t.Fatal(err)
	}
	if inode(t, blobPath(root, d2)) != ino {
		t.Error("API write replaced the mirror's file")
	}
	if !held(t, s.cache, d2) {
		t.Error("API write of a mirror-filled blob did not hold it")
	}
	files := blobFiles(t, root)
	slices.Sort(files)
	want := []string{d1.Encoded(), d2.Encoded()}
	slices.Sort(want)
	if !slices.Equal(files, want) {
		t.Errorf("blobs/sha256 = %v, want %v", files, want)
	}
	assertNoIngest(t, root)
}

// Labels set through Update live in the bbolt index and survive a restart of the daemon.
func TestLabelsPersist(t *testing.T) {
	root := t.TempDir()
	ctx := t.Context()
	s, err := serve(ctx, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, d := testBlob(4096)
	if err := content.WriteBlob(ctx, s.client, "l", bytes.NewReader(data), desc(d, data), content.WithLabels(map[string]string{"a": "1"})); err != nil {
		t.Fatal(err)
	}
	if _, err := s.client.Update(ctx, content.Info{Digest: d, Labels: map[string]string{"b": "2", "a": ""}}, "labels.a", "labels.b"); err != nil {
		t.Fatal(err)
	}
	if labels, _ := s.cache.Labels(ctx, d); len(labels) != 1 || labels["b"] != "2" {
		t.Errorf("index labels = %v, want b=2", labels)
	}
	if err := s.close(ctx); err != nil {
		t.Fatal(err)
	}

	s, err = serve(ctx, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close(context.Background())
	info, err := s.client.Info(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Labels) != 1 || info.Labels["b"] != "2" {
		t.Errorf("labels after restart = %v", info.Labels)
	}
	if got := walked(t, s.client); !slices.Equal(got, []digest.Digest{d}) {
		t.Errorf("hold lost over restart: List = %v", got)
	}
	// List filters work on labels, as with containerd's own store.
	var filtered []digest.Digest
	if err := s.client.Walk(ctx, func(info content.Info) error {
		filtered = append(filtered, info.Digest)
		return nil
	}, `labels.b==3`); err != nil {
		t.Fatal(err)
	}
	if len(filtered) != 0 {
		t.Errorf("filter labels.b==3 matched %v", filtered)
	}
}

// What containerd's garbage collector does: walk the backend, delete what it does not
// reference. Afterwards nothing is listed and every blob is still on disk.
func TestCollectorLeavesCache(t *testing.T) {
	s := newServed(t)
	ctx := t.Context()
	var all []digest.Digest
	for i := range 5 {
		data, d := testBlob(1000 + i)
		if err := content.WriteBlob(ctx, s.client, d.String(), bytes.NewReader(data), desc(d, data)); err != nil {
			t.Fatal(err)
		}
		all = append(all, d)
	}
	if err := s.client.Walk(ctx, func(info content.Info) error {
		return s.client.Delete(ctx, info.Digest)
	}); err != nil {
		t.Fatalf("collector walk: %v", err)
	}
	if got := walked(t, s.client); len(got) != 0 {
		t.Errorf("List after collection = %v", got)
	}
	if files := blobFiles(t, s.cache.Root()); len(files) != len(all) {
		t.Errorf("%d blob files after collection, want %d", len(files), len(all))
	}
}

func TestNotFoundAndInvalid(t *testing.T) {
	s := newServed(t)
	ctx := t.Context()
	_, missing := testBlob(7)
	if _, err := s.client.Info(ctx, missing); !errdefs.IsNotFound(err) {
		t.Errorf("Info of a missing blob: %v", err)
	}
	if err := s.client.Delete(ctx, missing); !errdefs.IsNotFound(err) {
		t.Errorf("Delete of a missing blob: %v", err)
	}
	if _, err := s.client.Update(ctx, content.Info{Digest: missing, Labels: map[string]string{"a": "b"}}); !errdefs.IsNotFound(err) {
		t.Errorf("Update of a missing blob: %v", err)
	}
	if _, err := s.client.ReaderAt(ctx, ocispec.Descriptor{Digest: missing}); !errdefs.IsNotFound(err) {
		t.Errorf("ReaderAt of a missing blob: %v", err)
	}
	sha512 := digest.NewDigestFromEncoded(digest.SHA512, strings.Repeat("a", 128))
	if _, err := s.client.Info(ctx, sha512); !errdefs.IsNotFound(err) {
		t.Errorf("Info of a sha512 digest: %v, want not found", err)
	}
	// A mirror-filled blob that is not held can be deleted: nothing to drop.
	data, d := testBlob(9)
	if err := s.cache.PutBlob(ctx, d, "", blobcache.Source{}, data); err != nil {
		t.Fatal(err)
	}
	if err := s.client.Delete(ctx, d); err != nil {
		t.Errorf("Delete of a cache-only blob: %v", err)
	}
	if _, _, err := s.cache.OpenBlob(ctx, d); err != nil {
		t.Errorf("cache-only blob gone after Delete: %v", err)
	}
}

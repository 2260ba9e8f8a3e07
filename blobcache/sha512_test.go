package blobcache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

// TestSHA512Blobs: a sha512 blob is filled, verified with sha512, stored under
// blobs/sha512/<hex>, served, evicted, and found again (unverified, then hashed) when the
// index is rebuilt; a sha512 fill whose bytes do not match is not committed.
func TestSHA512Blobs(t *testing.T) {
	root := t.TempDir()
	s, err := Open(t.Context(), Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := testBlob(300 << 10)
	d := digest.SHA512.FromBytes(data)
	up := &countingFetch{data: data, size: int64(len(data))}
	f := mustFill(t, s, d, FillMeta{Source: Source{Registry: "r", Repository: "x"}}, up.fetch)
	got, err := readFill(t, f, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read fill: %d bytes, %v", len(got), err)
	}
	waitFinished(t, f)
	path := filepath.Join(root, "blobs", "sha512", d.Encoded())
	if fi, err := os.Stat(path); err != nil || fi.Size() != int64(len(data)) {
		t.Fatalf("blob file %s: %v %v", path, fi, err)
	}
	b, info, err := s.OpenBlob(t.Context(), d)
	if err != nil || info.Size != int64(len(data)) {
		t.Fatalf("OpenBlob: %+v %v", info, err)
	}
	b.Close()

	// The same bytes named by sha256 are another blob; a wrong sha512 is never committed.
	wrong := digest.NewDigestFromEncoded(digest.SHA512, strings.Repeat("0", 128))
	f = mustFill(t, s, wrong, FillMeta{}, (&countingFetch{data: data, size: int64(len(data))}).fetch)
	if _, err := readFill(t, f, 0); !errors.Is(err, ErrFillFailed) {
		t.Errorf("fill with bytes of another sha512: %v, want ErrFillFailed", err)
	}
	waitFinished(t, f)
	if _, err := s.Info(t.Context(), wrong); !errdefs.IsNotFound(err) {
		t.Errorf("mismatching sha512 fill recorded: %v", err)
	}
	small := []byte("manifest")
	if err := s.PutBlob(t.Context(), digest.SHA512.FromBytes(small), "", Source{}, small); err != nil {
		t.Fatalf("PutBlob sha512: %v", err)
	}
	if err := s.PutBlob(t.Context(), digest.SHA512.FromBytes(small), "", Source{}, []byte("other")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("PutBlob with bytes of another digest: %v", err)
	}

	rep, err := s.Verify(t.Context(), nil, nil)
	if err != nil || rep.Checked != 2 || len(rep.Corrupt)+len(rep.Missing)+len(rep.Orphans) != 0 {
		t.Errorf("verify: %+v %v", rep, err)
	}

	// Index lost: the sha512 files are found again, and hashed with sha512 before serving.
	s.Close()
	if err := os.Remove(filepath.Join(root, indexFile)); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, Options{Root: root})
	if n, _, _ := s.Totals(); n != int64(len(data)+len(small)) {
		t.Errorf("rebuilt index holds %d bytes, want %d", n, len(data)+len(small))
	}
	b, _, err = s.OpenBlob(t.Context(), d)
	if err != nil {
		t.Fatalf("OpenBlob after rebuild: %v", err)
	}
	got, _ = io.ReadAll(b)
	b.Close()
	if !bytes.Equal(got, data) {
		t.Error("rebuilt sha512 blob served other bytes")
	}
	if rec, _ := s.idx.blob(d); rec == nil || rec.Unverified {
		t.Errorf("sha512 blob not verified at first open: %+v", rec)
	}

	res, err := s.EvictTo(t.Context(), 0)
	if err != nil || res.Blobs != 2 {
		t.Errorf("evict: %+v %v", res, err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("evicted sha512 blob file still there: %v", err)
	}
	assertConsistent(t, s)
}

// TestSHA512CorruptQuarantined: a rebuilt sha512 record whose file does not hash to its name
// is quarantined, not served, and verify finds a corrupt sha512 blob.
func TestSHA512CorruptQuarantined(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, Options{Root: root})
	data, _ := testBlob(1000)
	d := digest.SHA512.FromBytes(data)
	if err := s.PutBlob(t.Context(), d, "", Source{}, data); err != nil {
		t.Fatal(err)
	}
	other, _ := testBlob(1001)
	od := digest.SHA512.FromBytes(other)
	if err := s.PutBlob(t.Context(), od, "", Source{}, other); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, p := range []string{s.blobPath(d), s.blobPath(od)} {
		os.Chmod(p, 0o644)
		if err := os.WriteFile(p, bytes.Repeat([]byte{'x'}, 1000), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(root, indexFile)); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, Options{Root: root})
	if _, _, err := s.OpenBlob(context.Background(), d); !errdefs.IsNotFound(err) {
		t.Errorf("corrupt rebuilt sha512 blob: %v, want not found", err)
	}
	if _, err := os.Stat(filepath.Join(root, quarantineDir, d.Encoded())); err != nil {
		t.Errorf("corrupt sha512 blob not quarantined: %v", err)
	}
	rep, err := s.Verify(t.Context(), nil, nil)
	if err != nil || len(rep.Corrupt) != 1 || rep.Corrupt[0] != od {
		t.Errorf("verify: %+v %v, want %s corrupt", rep, err, od)
	}
}

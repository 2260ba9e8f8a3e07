package blobcache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

func TestOpenRemovesLeftoverFills(t *testing.T) {
	root := t.TempDir()
	s, err := Open(t.Context(), Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// What a kill -9 leaves behind: a half-written fill and a stray directory.
	fills := filepath.Join(root, "fills")
	if err := os.WriteFile(filepath.Join(fills, "abc-123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(fills, "dir", "sub"), 0o700); err != nil {
		t.Fatal(err)
	}

	s, err = Open(t.Context(), Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	assertFillsEmpty(t, s)
	if s.Root() != root {
		t.Errorf("Root() = %q, want %q", s.Root(), root)
	}
	if fi, err := os.Stat(filepath.Join(root, "index.db")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("index.db: %v, %v", fi, err)
	}
}

func TestSecondOpenFailsQuickly(t *testing.T) {
	s := newTestStore(t)
	// A fill of the running store must survive the failed second Open.
	inProgress := filepath.Join(s.Root(), "fills", "in-progress")
	if err := os.WriteFile(inProgress, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	s2, err := Open(t.Context(), Options{Root: s.Root()})
	elapsed := time.Since(start)
	if err == nil {
		s2.Close()
		t.Fatal("second Open of the same root succeeded")
	}
	if elapsed > 3*time.Second {
		t.Errorf("second Open took %s", elapsed)
	}
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "another") {
		t.Errorf("unclear error: %v", err)
	}
	if _, err := os.Stat(inProgress); err != nil {
		t.Errorf("second Open removed the running store's fill: %v", err)
	}
}

func TestOpenEmptyRoot(t *testing.T) {
	if _, err := Open(t.Context(), Options{}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Open with empty root: %v", err)
	}
}

func TestInvalidDigestRejected(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	for _, d := range []digest.Digest{
		"",
		"sha256:abc",
		"sha256:" + digest.Digest(strings.Repeat("G", 64)),
		"sha512:" + digest.Digest(strings.Repeat("a", 64)), // a sha256 length
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		digest.NewDigestFromEncoded(digest.SHA384, strings.Repeat("a", 96)), // well-formed, not stored
	} {
		t.Run(string(d), func(t *testing.T) {
			checks := map[string]error{}
			_, checks["Fill"] = s.Fill(ctx, d, FillMeta{}, func(context.Context) (Upstream, error) {
				t.Error("fetch called for an invalid digest")
				return Upstream{}, errors.New("unreachable")
			})
			_, _, checks["OpenBlob"] = s.OpenBlob(ctx, d)
			_, checks["Info"] = s.Info(ctx, d)
			checks["AddSource"] = s.AddSource(ctx, d, Source{Registry: "r", Repository: "x"})
			checks["PutBlob"] = s.PutBlob(ctx, d, "", Source{}, []byte("x"))
			checks["PutTag"] = s.PutTag(ctx, "r", "x", "t", TagRecord{Digest: d})
			_, checks["Hold"] = s.Hold(ctx, d)
			checks["Release"] = s.Release(ctx, d)
			_, checks["Labels"] = s.Labels(ctx, d)
			checks["SetLabels"] = s.SetLabels(ctx, d, nil)
			_, checks["UpdateLabels"] = s.UpdateLabels(ctx, d, nil)
			for name, err := range checks {
				if !errdefs.IsInvalidArgument(err) {
					t.Errorf("%s: got %v, want invalid argument", name, err)
				}
			}
		})
	}
}

func TestTags(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	_, d1 := testBlob(10)
	_, d2 := testBlob(11)
	fetched := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

	rec := TagRecord{Digest: d1, MediaType: "application/vnd.oci.image.index.v1+json", Size: 10, FetchedAt: fetched}
	if err := s.PutTag(ctx, "docker.io", "library/alpine", "3", rec); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetTag(ctx, "docker.io", "library/alpine", "3")
	if err != nil || got != rec || !got.FetchedAt.Equal(fetched) {
		t.Fatalf("GetTag = %+v, %v; want %+v", got, err, rec)
	}
	// Overwrite.
	rec2 := rec
	rec2.Digest = d2
	if err := s.PutTag(ctx, "docker.io", "library/alpine", "3", rec2); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetTag(ctx, "docker.io", "library/alpine", "3"); got.Digest != d2 {
		t.Errorf("after overwrite got %s", got.Digest)
	}

	for _, k := range [][3]string{
		{"docker.io", "library/alpine", "4"},
		{"ghcr.io", "library/alpine", "3"},
		{"docker.io", "library/alpin", "3"},
	} {
		if _, err := s.GetTag(ctx, k[0], k[1], k[2]); !errdefs.IsNotFound(err) {
			t.Errorf("GetTag(%q): %v, want not found", k, err)
		}
	}
	for _, k := range [][3]string{
		{"", "library/alpine", "3"},
		{"docker.io", "", "3"},
		{"docker.io", "library/alpine", ""},
		{"docker.io", "library\x00alpine", "3"},
	} {
		if err := s.PutTag(ctx, k[0], k[1], k[2], rec); !errdefs.IsInvalidArgument(err) {
			t.Errorf("PutTag(%q): %v, want invalid argument", k, err)
		}
		if _, err := s.GetTag(ctx, k[0], k[1], k[2]); !errdefs.IsInvalidArgument(err) {
			t.Errorf("GetTag(%q): %v, want invalid argument", k, err)
		}
	}
}

func TestPutBlob(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	data := []byte(`{"schemaVersion":2}`)
	d := digest.SHA256.FromBytes(data)
	srcA := Source{Registry: "docker.io", Repository: "library/alpine"}
	srcB := Source{Registry: "ghcr.io", Repository: "x/alpine", Private: true}

	if err := s.PutBlob(ctx, d, "", srcA, append(data, ' ')); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("PutBlob with wrong data: %v", err)
	}
	if _, err := s.Info(ctx, d); !errdefs.IsNotFound(err) {
		t.Fatalf("mismatching PutBlob stored something: %v", err)
	}

	if err := s.PutBlob(ctx, d, "", srcA, data); err != nil {
		t.Fatal(err)
	}
	// Present: records the source and fills in the media type left empty.
	const mt = "application/vnd.oci.image.manifest.v1+json"
	if err := s.PutBlob(ctx, d, mt, srcB, data); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBlob(ctx, d, "text/plain", srcB, data); err != nil {
		t.Fatal(err)
	}
	f, info, err := s.OpenBlob(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, _ := io.ReadAll(f)
	if !bytes.Equal(got, data) {
		t.Errorf("content = %q", got)
	}
	if info.MediaType != mt || info.Size != int64(len(data)) || !slices.Equal(info.Sources, []Source{srcA, srcB}) {
		t.Errorf("info = %+v", info)
	}
	assertFillsEmpty(t, s)
}

func TestAddSource(t *testing.T) {
	pub := Source{Registry: "docker.io", Repository: "library/alpine"}
	priv := Source{Registry: "docker.io", Repository: "library/alpine", Private: true}
	other := Source{Registry: "docker.io", Repository: "library/busybox", Private: true}
	tests := []struct {
		name  string
		first Source
		add   []Source
		want  []Source
	}{
		{"same source twice", pub, []Source{pub}, []Source{pub}},
		{"public wins over private", priv, []Source{pub}, []Source{pub}},
		{"public sticks", pub, []Source{priv}, []Source{pub}},
		{"other repository is another source", priv, []Source{other, pub}, []Source{pub, other}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			ctx := t.Context()
			data := []byte(tc.name)
			d := digest.SHA256.FromBytes(data)
			if err := s.PutBlob(ctx, d, "", tc.first, data); err != nil {
				t.Fatal(err)
			}
			for _, src := range tc.add {
				if err := s.AddSource(ctx, d, src); err != nil {
					t.Fatal(err)
				}
			}
			info, err := s.Info(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(info.Sources, tc.want) {
				t.Errorf("sources = %+v, want %+v", info.Sources, tc.want)
			}
		})
	}

	s := newTestStore(t)
	_, d := testBlob(3)
	if err := s.AddSource(t.Context(), d, pub); !errdefs.IsNotFound(err) {
		t.Errorf("AddSource on a missing blob: %v", err)
	}
	if err := s.AddSource(t.Context(), d, Source{}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("AddSource with an empty source: %v", err)
	}
}

func TestOpenBlobIgnoresDamagedFile(t *testing.T) {
	tests := []struct {
		name   string
		damage func(path string) error
	}{
		{"missing", os.Remove},
		{"truncated", func(p string) error {
			if err := os.Chmod(p, 0o644); err != nil {
				return err
			}
			return os.Truncate(p, 1)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			ctx := t.Context()
			data, d := testBlob(100)
			if err := s.PutBlob(ctx, d, "", Source{}, data); err != nil {
				t.Fatal(err)
			}
			if err := tc.damage(s.blobPath(d)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.OpenBlob(ctx, d); !errdefs.IsNotFound(err) {
				t.Errorf("OpenBlob: %v, want not found", err)
			}
			// The damaged blob is fetched again and healed.
			up := &countingFetch{data: data, size: int64(len(data))}
			f := mustFill(t, s, d, FillMeta{}, up.fetch)
			waitFinished(t, f)
			rc, _, err := s.OpenBlob(ctx, d)
			if err != nil {
				t.Fatalf("OpenBlob after refill: %v", err)
			}
			rc.Close()
		})
	}
}

func TestClosedStore(t *testing.T) {
	s, err := Open(t.Context(), Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	data, d := testBlob(10)
	up := &countingFetch{data: data, size: 10}
	if _, err := s.Fill(t.Context(), d, FillMeta{}, up.fetch); !errors.Is(err, ErrStorage) {
		t.Errorf("Fill on closed store: %v, want ErrStorage", err)
	}
	if err := s.PutBlob(t.Context(), d, "", Source{}, data); !errors.Is(err, ErrStorage) {
		t.Errorf("PutBlob on closed store: %v, want ErrStorage", err)
	}
	if up.calls.Load() != 0 {
		t.Error("fetch called on a closed store")
	}
}

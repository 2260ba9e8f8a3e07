package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// untar reads a tar into its headers and bodies by name.
func untar(t *testing.T, data []byte) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	headers, bodies := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		headers[h.Name], bodies[h.Name] = h, b
	}
	return headers, bodies
}

// readArchive unpacks an oci-archive into its files, checking every blob's digest.
func readArchive(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	_, files := untar(t, data)
	for name, b := range files {
		if hex, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && hex != "" {
			if got := digest.FromBytes(b).Encoded(); got != hex {
				t.Errorf("blob %s has digest %s", hex, got)
			}
		}
	}
	return files
}

func blobOf(t *testing.T, files map[string][]byte, d ocispec.Descriptor) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+d.Digest.Encoded()]
	if !ok || int64(len(b)) != d.Size {
		t.Fatalf("blob %s (%d bytes) missing or of another size", d.Digest, d.Size)
	}
	return b
}

func TestBuildArchive(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "containerd-blobcache")
	payload := bytes.Repeat([]byte("not really an ELF binary "), 4096)
	if err := os.WriteFile(bin, payload, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := Options{Binary: bin, Name: "registry.example/containerd-blobcache:v1", Arch: "arm64", Version: "v1", Created: time.Unix(1_700_000_000, 0)}
	build := func() []byte {
		img, err := Build(opts)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := img.WriteArchive(&out); err != nil {
			t.Fatal(err)
		}
		return out.Bytes()
	}
	data := build()
	if !bytes.Equal(data, build()) {
		t.Error("two builds of the same binary differ")
	}
	files := readArchive(t, data)
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(files[ocispec.ImageLayoutFile], &layout); err != nil || layout.Version != ocispec.ImageLayoutVersion {
		t.Fatalf("oci-layout: %s (%v)", files[ocispec.ImageLayoutFile], err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(files[ocispec.ImageIndexFile], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %s (%v)", files[ocispec.ImageIndexFile], err)
	}
	md := index.Manifests[0]
	if md.Annotations[ContainerdImageName] != opts.Name || md.Annotations[ocispec.AnnotationRefName] != opts.Name || md.Platform == nil || md.Platform.Architecture != "arm64" {
		t.Errorf("index entry: %+v", md)
	}
	var manifest ocispec.Manifest
	if err := json.Unmarshal(blobOf(t, files, md), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(blobOf(t, files, manifest.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "65532:65532" || len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != BinaryPath || cfg.OS != "linux" || cfg.Architecture != "arm64" {
		t.Errorf("config: %+v", cfg.Config)
	}

	layer := blobOf(t, files, manifest.Layers[0])
	gz, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(gz)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.RootFS.DiffIDs) != 1 || digest.FromBytes(raw) != cfg.RootFS.DiffIDs[0] {
		t.Fatalf("diff ID %v, uncompressed layer %s", cfg.RootFS.DiffIDs, digest.FromBytes(raw))
	}
	entries, bodies := untar(t, raw)
	if h := entries[BinaryPath[1:]]; h == nil || h.Mode != 0o755 || !bytes.Equal(bodies[BinaryPath[1:]], payload) {
		t.Errorf("binary entry %+v", h)
	}
	if !strings.Contains(string(bodies["etc/passwd"]), "blobcache:x:65532:65532:") {
		t.Errorf("/etc/passwd: %q", bodies["etc/passwd"])
	}
	for _, dir := range []string{"var/lib/containerd-blobcache/", "run/containerd-blobcache/"} {
		if h := entries[dir]; h == nil || h.Uid != UID || h.Gid != GID || h.Typeflag != tar.TypeDir {
			t.Errorf("%s: %+v, want a directory of the user", dir, h)
		}
	}

	if _, err := Build(Options{Binary: filepath.Dir(bin), Name: "x"}); err == nil {
		t.Error("a directory accepted as the binary")
	}
	if _, err := Build(Options{Binary: bin}); err == nil {
		t.Error("no name accepted")
	}
}

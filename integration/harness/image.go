package harness

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// BusyboxPath is where Debian's busybox-static puts its static binary.
const BusyboxPath = "/bin/busybox"

// busyboxApplets get a symlink to busybox in the busybox layer.
var busyboxApplets = []string{"sh", "ls", "cat", "echo", "true", "false", "sleep", "env", "id", "sha256sum", "wc", "head", "tail", "mkdir", "rm", "cp", "mv", "ln", "touch", "grep", "sed", "ps", "wget", "uname", "date", "test", "["}

// layerEpoch is the timestamp of every tar entry and image config, so that the same spec
// always gives the same digests.
var layerEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// LayerSpec describes one layer: Files files of FileSize seeded pseudo-random bytes under
// Dir, or (Busybox) a busybox rootfs. The same spec always produces the same bytes, so two
// images with an equal LayerSpec share that layer.
type LayerSpec struct {
	Seed     uint64
	Files    int
	FileSize int64
	// Dir is the directory of the files inside the layer; default "data/<seed>".
	Dir string
	// Busybox makes a layer holding bin/busybox (from BusyboxPath) and applet symlinks.
	Busybox bool
	// Entries, when set, are the layer's tar entries, written in order (see TarEntry).
	Entries []TarEntry
}

// ImageSpec describes an image: its layers, platform (default linux/amd64) and config
// labels (which make otherwise equal images distinct).
type ImageSpec struct {
	Layers   []LayerSpec
	Platform *ocispec.Platform
	Labels   map[string]string
}

// Layer is a built layer: its descriptor, the digest of the uncompressed tar, and the file
// holding its compressed bytes.
type Layer struct {
	Descriptor ocispec.Descriptor
	DiffID     digest.Digest
	Path       string
}

// Image is a built single-platform image.
type Image struct {
	Platform      ocispec.Platform
	Manifest      ocispec.Descriptor // carries Platform, as in an index
	ManifestBytes []byte
	Config        ocispec.Descriptor
	ConfigBytes   []byte
	Layers        []Layer
}

// LayerDigests lists the layer digests in manifest order.
func (im *Image) LayerDigests() []digest.Digest {
	out := make([]digest.Digest, len(im.Layers))
	for i, l := range im.Layers {
		out[i] = l.Descriptor.Digest
	}
	return out
}

// Blobs lists the config and layer descriptors (everything fetched by /blobs/).
func (im *Image) Blobs() []ocispec.Descriptor {
	out := []ocispec.Descriptor{im.Config}
	for _, l := range im.Layers {
		out = append(out, l.Descriptor)
	}
	return out
}

// Size is the total size of the layers.
func (im *Image) Size() int64 {
	var n int64
	for _, l := range im.Layers {
		n += l.Descriptor.Size
	}
	return n
}

// Index is a built multi-platform image index.
type Index struct {
	Descriptor ocispec.Descriptor
	Bytes      []byte
	Images     []*Image
}

// ForPlatform returns the image of the given architecture, or nil.
func (ix *Index) ForPlatform(os, arch string) *Image {
	for _, im := range ix.Images {
		if im.Platform.OS == os && im.Platform.Architecture == arch {
			return im
		}
	}
	return nil
}

// BuildImage builds the layers (streamed to files in a temporary directory), config and
// manifest of spec.
func BuildImage(t testing.TB, spec ImageSpec) *Image {
	t.Helper()
	im, err := buildImage(t.TempDir(), spec)
	if err != nil {
		// buildImage wraps the open error with %w: os.IsNotExist would not see through it.
		if spec.usesBusybox() && errors.Is(err, fs.ErrNotExist) {
			Unavailable(t, "the busybox layer needs %s: %v: %s", BusyboxPath, err, debianHint("busybox-static"))
		}
		t.Fatalf("build image: %v", err)
	}
	return im
}

// BuildIndex builds one image per spec and an OCI index over them; each spec must have a
// distinct platform.
func BuildIndex(t testing.TB, specs ...ImageSpec) *Index {
	t.Helper()
	ix := &Index{}
	for _, s := range specs {
		ix.Images = append(ix.Images, BuildImage(t, s))
	}
	idx := ocispec.Index{
		Versioned: specsVersioned(),
		MediaType: ocispec.MediaTypeImageIndex,
	}
	for _, im := range ix.Images {
		idx.Manifests = append(idx.Manifests, im.Manifest)
	}
	b, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	ix.Bytes = b
	ix.Descriptor = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(b), Size: int64(len(b))}
	return ix
}

// DefaultPlatform is linux/amd64, the platform images are built for unless told otherwise.
func DefaultPlatform() ocispec.Platform {
	return ocispec.Platform{OS: "linux", Architecture: "amd64"}
}

func (s ImageSpec) usesBusybox() bool {
	for _, l := range s.Layers {
		if l.Busybox {
			return true
		}
	}
	return false
}

func specsVersioned() specs.Versioned { return specs.Versioned{SchemaVersion: 2} }

func buildImage(dir string, spec ImageSpec) (*Image, error) {
	platform := DefaultPlatform()
	if spec.Platform != nil {
		platform = *spec.Platform
	}
	im := &Image{Platform: platform}
	var diffIDs []digest.Digest
	hasBusybox := false
	for i, ls := range spec.Layers {
		l, err := buildLayer(filepath.Join(dir, fmt.Sprintf("layer-%d.tar.gz", i)), ls)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		im.Layers = append(im.Layers, l)
		diffIDs = append(diffIDs, l.DiffID)
		hasBusybox = hasBusybox || ls.Busybox
	}
	created := layerEpoch
	cfg := ocispec.Image{
		Created:  &created,
		Platform: platform,
		Config: ocispec.ImageConfig{
			Env:    []string{"PATH=/bin"},
			Labels: spec.Labels,
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
	if hasBusybox {
		cfg.Config.Cmd = []string{"/bin/sh"}
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	im.ConfigBytes = cb
	im.Config = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cb), Size: int64(len(cb))}
	m := ocispec.Manifest{
		Versioned: specsVersioned(),
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    im.Config,
	}
	for _, l := range im.Layers {
		m.Layers = append(m.Layers, l.Descriptor)
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	im.ManifestBytes = mb
	p := platform
	im.Manifest = ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest,
		Digest:    digest.FromBytes(mb),
		Size:      int64(len(mb)),
		Platform:  &p,
	}
	return im, nil
}

// buildLayer writes the tar+gzip of spec to path, hashing the tar (diff ID) and the gzip
// stream (blob digest) on the way, so the layer is never held in memory.
func buildLayer(path string, spec LayerSpec) (_ Layer, retErr error) {
	f, err := os.Create(path)
	if err != nil {
		return Layer{}, err
	}
	defer func() {
		if cerr := f.Close(); retErr == nil && cerr != nil {
			retErr = cerr
		}
	}()
	blobHash := sha256.New()
	counter := &countWriter{}
	bw := bufio.NewWriterSize(io.MultiWriter(f, blobHash, counter), 1<<20)
	gz, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return Layer{}, err
	}
	diffHash := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, diffHash))
	switch {
	case spec.Busybox:
		err = writeBusybox(tw)
	case spec.Entries != nil:
		err = writeEntries(tw, spec.Entries)
	default:
		err = writeRandomFiles(tw, spec)
	}
	if err != nil {
		return Layer{}, err
	}
	if err := tw.Close(); err != nil {
		return Layer{}, err
	}
	if err := gz.Close(); err != nil {
		return Layer{}, err
	}
	if err := bw.Flush(); err != nil {
		return Layer{}, err
	}
	return Layer{
		Descriptor: ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageLayerGzip,
			Digest:    digest.NewDigest(digest.SHA256, blobHash),
			Size:      counter.n,
		},
		DiffID: digest.NewDigest(digest.SHA256, diffHash),
		Path:   path,
	}, nil
}

func tarDir(tw *tar.Writer, name string) error {
	return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: layerEpoch})
}

func writeRandomFiles(tw *tar.Writer, spec LayerSpec) error {
	dir := spec.Dir
	if dir == "" {
		dir = fmt.Sprintf("data/%d", spec.Seed)
	}
	// Parent directories first, as a real layer has them.
	var parents []string
	for d := filepath.Clean(dir); d != "." && d != "/"; d = filepath.Dir(d) {
		parents = append([]string{d}, parents...)
	}
	for _, d := range parents {
		if err := tarDir(tw, d); err != nil {
			return err
		}
	}
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], spec.Seed)
	copy(seed[8:], "containerd-blobcache-layer")
	rng := rand.NewChaCha8(seed)
	for i := 0; i < spec.Files; i++ {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     fmt.Sprintf("%s/file-%04d.bin", dir, i),
			Mode:     0o644,
			Size:     spec.FileSize,
			ModTime:  layerEpoch,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.CopyN(tw, rng, spec.FileSize); err != nil {
			return err
		}
	}
	return nil
}

func writeBusybox(tw *tar.Writer) error {
	f, err := os.Open(BusyboxPath)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	for _, d := range []string{"bin", "etc", "tmp"} {
		if err := tarDir(tw, d); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: fi.Size(), ModTime: layerEpoch}); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, f, fi.Size()); err != nil {
		return err
	}
	for _, a := range busyboxApplets {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: layerEpoch}); err != nil {
			return err
		}
	}
	passwd := []byte("root:x:0:0:root:/:/bin/sh\n")
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd)), ModTime: layerEpoch}); err != nil {
		return err
	}
	_, err = tw.Write(passwd)
	return err
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	return len(b), nil
}

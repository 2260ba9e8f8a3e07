package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "crypto/sha256" // go-digest's SHA256 needs the hash registered
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The image's layout: where the binary goes and who runs it.
const (
	BinaryPath = "/usr/local/bin/containerd-blobcache"
	// UID and GID of the unprivileged user the image runs as (mirror mode needs no root;
	// proxy mode and install run as root by the pod's securityContext).
	UID      = 65532
	GID      = 65532
	UserName = "blobcache"
	// ContainerdImageName is the annotation containerd's importer names images by.
	ContainerdImageName = "io.containerd.image.name"
)

// Options say what to build.
type Options struct {
	// Binary is the daemon, built static (CGO_ENABLED=0): the image has no libc.
	Binary string
	// Name is the image reference ("ghcr.io/containerd-blobcache/containerd-blobcache:v1").
	Name string
	// Arch is the GOARCH the binary was built for (the host's when empty).
	Arch string
	// Version goes into the image's labels.
	Version string
	// Created is the creation time recorded, and every file's time: fixed (for example
	// from SOURCE_DATE_EPOCH) so that the same binary always gives the same digests.
	Created time.Time
}

// Image is what was built: its manifest's descriptor and the blobs by digest.
type Image struct {
	Manifest ocispec.Descriptor
	Config   ocispec.Image
	blobs    []blob
}

type blob struct {
	desc ocispec.Descriptor
	data []byte
}

// Build makes the image in memory (a few tens of MB: the binary, compressed).
func Build(opts Options) (*Image, error) {
	if opts.Binary == "" || opts.Name == "" {
		return nil, fmt.Errorf("binary and name are required: %w", errdefs.ErrInvalidArgument)
	}
	if opts.Arch == "" {
		opts.Arch = runtime.GOARCH
	}
	created := opts.Created.UTC()
	layer, diffID, err := buildLayer(opts.Binary, created)
	if err != nil {
		return nil, err
	}
	img := &Image{}
	layerDesc := img.add(ocispec.MediaTypeImageLayerGzip, layer)
	img.Config = ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{OS: "linux", Architecture: opts.Arch},
		Config: ocispec.ImageConfig{
			// Numeric, so that runtimes (and Kubernetes' runAsNonRoot) need no /etc/passwd
			// lookup to know it is not root.
			User:       fmt.Sprintf("%d:%d", UID, GID),
			Entrypoint: []string{BinaryPath},
			Cmd:        []string{"serve"},
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			WorkingDir: "/",
			StopSignal: "SIGTERM",
			Labels: map[string]string{
				ocispec.AnnotationTitle:   "containerd-blobcache",
				ocispec.AnnotationVersion: opts.Version,
				ocispec.AnnotationSource:  "https://github.com/containerd-blobcache/containerd-blobcache",
			},
		},
		RootFS:  ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
		History: []ocispec.History{{Created: &created, CreatedBy: "containerd-blobcache internal/ociimage", Comment: "static binary, passwd, state directories"}},
	}
	cfgJSON, err := json.Marshal(img.Config)
	if err != nil {
		return nil, err
	}
	cfgDesc := img.add(ocispec.MediaTypeImageConfig, cfgJSON)
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    cfgDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	})
	if err != nil {
		return nil, err
	}
	img.Manifest = img.add(ocispec.MediaTypeImageManifest, manifest)
	img.Manifest.Platform = &img.Config.Platform
	img.Manifest.Annotations = map[string]string{
		ContainerdImageName:       opts.Name,
		ocispec.AnnotationRefName: opts.Name,
	}
	return img, nil
}

func (img *Image) add(mediaType string, data []byte) ocispec.Descriptor {
	d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	img.blobs = append(img.blobs, blob{desc: d, data: data})
	return d
}

// layerFile is one entry of the layer.
type layerFile struct {
	name     string
	mode     int64
	uid, gid int
	body     []byte
	dir      bool
}

func baseFiles() []layerFile {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:containerd-blobcache:/var/lib/containerd-blobcache:/sbin/nologin\n", UserName, UID, GID)
	group := fmt.Sprintf("root:x:0:\n%s:x:%d:\n", UserName, GID)
	return []layerFile{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, body: []byte(passwd)},
		{name: "etc/group", mode: 0o644, body: []byte(group)},
		{name: "etc/containerd-blobcache/", mode: 0o755, dir: true},
		{name: "run/", mode: 0o755, dir: true},
		// The daemon's defaults (root, admin socket) work as the user without volumes.
		{name: "run/containerd-blobcache/", mode: 0o750, uid: UID, gid: GID, dir: true},
		{name: "tmp/", mode: 0o1777, dir: true},
		{name: "usr/", mode: 0o755, dir: true},
		{name: "usr/local/", mode: 0o755, dir: true},
		{name: "usr/local/bin/", mode: 0o755, dir: true},
		{name: "var/", mode: 0o755, dir: true},
		{name: "var/lib/", mode: 0o755, dir: true},
		{name: "var/lib/containerd-blobcache/", mode: 0o750, uid: UID, gid: GID, dir: true},
	}
}

// buildLayer writes the layer tar, gzip-compressed, and returns it with its diff ID (the
// digest of the uncompressed tar).
func buildLayer(binary string, mtime time.Time) ([]byte, digest.Digest, error) {
	f, err := os.Open(binary)
	if err != nil {
		return nil, "", fmt.Errorf("binary: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, "", err
	}
	if !st.Mode().IsRegular() {
		return nil, "", fmt.Errorf("binary %s is not a regular file: %w", binary, errdefs.ErrInvalidArgument)
	}
	var compressed bytes.Buffer
	gz, err := gzip.NewWriterLevel(&compressed, gzip.BestCompression)
	if err != nil {
		return nil, "", err
	}
	diffID := digest.SHA256.Digester()
	tw := tar.NewWriter(io.MultiWriter(gz, diffID.Hash()))
	hdr := func(lf layerFile, size int64) *tar.Header {
		h := &tar.Header{Name: lf.name, Mode: lf.mode, Uid: lf.uid, Gid: lf.gid, Size: size, ModTime: mtime, Format: tar.FormatPAX, Typeflag: tar.TypeReg}
		if lf.dir {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		return h
	}
	for _, lf := range baseFiles() {
		if err := tw.WriteHeader(hdr(lf, int64(len(lf.body)))); err != nil {
			return nil, "", err
		}
		if _, err := tw.Write(lf.body); err != nil {
			return nil, "", err
		}
	}
	bin := layerFile{name: BinaryPath[1:], mode: 0o755}
	if err := tw.WriteHeader(hdr(bin, st.Size())); err != nil {
		return nil, "", err
	}
	if n, err := io.Copy(tw, f); err != nil || n != st.Size() {
		return nil, "", fmt.Errorf("copy binary (%d of %d bytes): %v", n, st.Size(), err)
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	if err := gz.Close(); err != nil {
		return nil, "", err
	}
	return compressed.Bytes(), diffID.Digest(), nil
}

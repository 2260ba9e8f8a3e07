package ociimage

import (
	"archive/tar"
	"encoding/json"
	"io"
	"time"

	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// WriteArchive writes the image as an oci-archive: the OCI image layout (oci-layout,
// index.json naming the image, blobs/sha256/...) in a tar.
func (img *Image) WriteArchive(w io.Writer) error {
	mtime := time.Unix(0, 0)
	if img.Config.Created != nil {
		mtime = *img.Config.Created
	}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{img.Manifest},
	})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	file := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, ModTime: mtime, Typeflag: tar.TypeDir}); err != nil {
			return err
		}
	}
	for _, b := range img.blobs {
		if err := file("blobs/sha256/"+b.desc.Digest.Encoded(), b.data); err != nil {
			return err
		}
	}
	if err := file(ocispec.ImageLayoutFile, layout); err != nil {
		return err
	}
	if err := file(ocispec.ImageIndexFile, index); err != nil {
		return err
	}
	return tw.Close()
}

// Command image builds the daemon's OCI image (an oci-archive tarball) from a static binary,
// without a container engine: `make image`.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/internal/ociimage"
)

func main() {
	binary := flag.String("binary", "", "the daemon, built with CGO_ENABLED=0")
	name := flag.String("name", "", "image reference, e.g. ghcr.io/containerd-blobcache/containerd-blobcache:v0.1.0")
	out := flag.String("out", "", "oci-archive tarball to write")
	arch := flag.String("arch", "", "GOARCH of the binary (default: this machine's)")
	version := flag.String("version", "dev", "version label")
	flag.Parse()
	if err := run(*binary, *name, *out, *arch, *version); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(binary, name, out, arch, version string) error {
	if out == "" {
		return fmt.Errorf("--out is required")
	}
	// SOURCE_DATE_EPOCH (reproducible-builds.org) fixes the times; else the Unix epoch, so
	// that one binary always gives one digest.
	created := time.Unix(0, 0)
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q: %v", s, err)
		}
		created = time.Unix(sec, 0)
	}
	img, err := ociimage.Build(ociimage.Options{Binary: binary, Name: name, Arch: arch, Version: version, Created: created})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := img.WriteArchive(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	fmt.Printf("%s: %s (%s)\n", out, name, img.Manifest.Digest)
	return nil
}

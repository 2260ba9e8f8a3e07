package blobcachetest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
)

// SeedRecords adds n made-up blob records (no files) of 1 MiB each to the index of the store
// at root. It exists to measure start-up and memory with a big index (the BenchmarkOpen
// benchmarks, the start-up measurement of the real daemon); a store seeded with it reports
// every record as missing in Verify.
func SeedRecords(ctx context.Context, root string, n int) error {
	base := time.Now().UTC().Add(-time.Duration(n) * time.Second)
	blobs := make([]blobcache.ImportedBlob, 0, n)
	for i := range n {
		var seed [8]byte
		binary.BigEndian.PutUint64(seed[:], uint64(i))
		sum := sha256.Sum256(seed[:])
		blobs = append(blobs, blobcache.ImportedBlob{
			Digest:     digest.NewDigestFromBytes(digest.SHA256, sum[:]),
			Size:       1 << 20,
			MediaType:  "application/vnd.oci.image.layer.v1.tar+gzip",
			Source:     blobcache.Source{Registry: "registry.example", Repository: "seed/repo"},
			LastAccess: base.Add(time.Duration(i) * time.Second),
		})
	}
	return importInto(ctx, root, blobs)
}

// SeedBlobs writes n blob files of size bytes (distinct pseudo-random content) with their
// records into the store at root and returns their digests, least recently used first. It
// exists for eviction measurements, where committing thousands of blobs one by one would
// take most of the time.
func SeedBlobs(ctx context.Context, root string, n, size int) ([]digest.Digest, error) {
	dir := filepath.Join(root, "blobs", string(digest.SHA256))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	base := time.Now().UTC().Add(-time.Duration(n) * time.Second)
	blobs := make([]blobcache.ImportedBlob, 0, n)
	out := make([]digest.Digest, 0, n)
	buf := make([]byte, size)
	for i := range n {
		for j := 0; j+8 <= len(buf); j += 32 {
			binary.BigEndian.PutUint64(buf[j:], uint64(i)*2654435761+uint64(j))
		}
		dgst := digest.SHA256.FromBytes(buf)
		if err := os.WriteFile(filepath.Join(dir, dgst.Encoded()), buf, 0o444); err != nil {
			return nil, fmt.Errorf("seed blobs: %w", err)
		}
		blobs = append(blobs, blobcache.ImportedBlob{
			Digest: dgst, Size: int64(size), MediaType: "application/octet-stream",
			LastAccess: base.Add(time.Duration(i) * time.Second),
		})
		out = append(out, dgst)
	}
	return out, importInto(ctx, root, blobs)
}

func importInto(ctx context.Context, root string, blobs []blobcache.ImportedBlob) error {
	s, err := blobcache.Open(ctx, blobcache.Options{Root: root})
	if err != nil {
		return err
	}
	err = s.Import(ctx, blobs)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

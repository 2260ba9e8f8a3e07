package blobcache

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"time"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// SeedRecords adds n made-up blob records (no files) to the index of the store at root, in
// large transactions. It exists to measure start-up and memory with a big index (the
// BenchmarkOpen benchmarks, the start-up measurement of the real daemon); a store seeded
// with it reports every record as missing in Verify.
func SeedRecords(ctx context.Context, root string, n int) error {
	s, err := Open(ctx, Options{Root: root})
	if err != nil {
		return err
	}
	defer s.Close()
	base := time.Now().UTC().Add(-time.Duration(n) * time.Second)
	const batch = 20000
	for done := 0; done < n; {
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i := 0; i < batch && done < n; i, done = i+1, done+1 {
				var seed [8]byte
				binary.BigEndian.PutUint64(seed[:], uint64(done))
				sum := sha256.Sum256(seed[:])
				dgst := digest.NewDigestFromBytes(digest.SHA256, sum[:])
				at := base.Add(time.Duration(done) * time.Second)
				rec := &blobRecord{
					Size: 1 << 20, MediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
					CreatedAt: at, LastAccess: at,
					Sources: []sourceRecord{{Registry: "registry.example", Repository: "seed/repo"}},
				}
				if err := putBlob(tx, dgst, rec); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("seed index: %w", err)
		}
	}
	return nil
}

// SeedBlobs writes n blob files of size bytes (distinct pseudo-random content) with their
// records into the store at root, in large transactions, and returns their digests, least
// recently used first. It exists for eviction measurements, where committing thousands of
// blobs one by one would take most of the time.
func SeedBlobs(ctx context.Context, root string, n, size int) ([]digest.Digest, error) {
	s, err := Open(ctx, Options{Root: root})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	base := time.Now().UTC().Add(-time.Duration(n) * time.Second)
	out := make([]digest.Digest, 0, n)
	buf := make([]byte, size)
	const batch = 1000
	for done := 0; done < n; {
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i := 0; i < batch && done < n; i, done = i+1, done+1 {
				for j := 0; j+8 <= len(buf); j += 32 {
					binary.BigEndian.PutUint64(buf[j:], uint64(done)*2654435761+uint64(j))
				}
				dgst := digest.SHA256.FromBytes(buf)
				if err := os.WriteFile(s.blobPath(dgst), buf, 0o444); err != nil {
					return err
				}
				at := base.Add(time.Duration(done) * time.Second)
				if err := putBlob(tx, dgst, &blobRecord{Size: int64(size), MediaType: "application/octet-stream", CreatedAt: at, LastAccess: at}); err != nil {
					return err
				}
				out = append(out, dgst)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("seed blobs: %w", err)
		}
	}
	return out, nil
}

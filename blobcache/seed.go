package blobcache

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
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

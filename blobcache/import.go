package blobcache

import (
	"context"
	"fmt"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// importBatch is how many records one transaction of Import writes.
const importBatch = 20000

// ImportedBlob is a blob record for Import.
type ImportedBlob struct {
	Digest     digest.Digest
	Size       int64
	MediaType  string
	Source     Source
	LastAccess time.Time
}

// Import records blobs in large transactions without committing files: the caller has put
// each file in place (root/blobs/<algorithm>/<encoded>, read-only), or means the records
// to stand alone (Verify then reports them missing). It exists for tools and tests that
// build large stores (start-up and eviction measurements, see blobcachetest), where
// committing blob by blob would take most of the time. Records already there are replaced.
func (s *Store) Import(ctx context.Context, blobs []ImportedBlob) error {
	for _, b := range blobs {
		if err := validateDigest(b.Digest); err != nil {
			return err
		}
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.wg.Done()
	for len(blobs) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch := blobs[:min(importBatch, len(blobs))]
		blobs = blobs[len(batch):]
		recs := make(map[digest.Digest]*blobRecord, len(batch))
		for _, b := range batch {
			at := b.LastAccess.UTC()
			rec := &blobRecord{Size: b.Size, MediaType: b.MediaType, CreatedAt: at, LastAccess: at}
			rec.addSource(b.Source)
			recs[b.Digest] = rec
		}
		if err := s.idx.putBlobs(recs); err != nil {
			return fmt.Errorf("import records: %w", err)
		}
	}
	return nil
}

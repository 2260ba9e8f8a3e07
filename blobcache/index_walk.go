package blobcache

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// The transactions on tags and the walks over the whole index (admin and metrics); none of
// them runs on a request path, except tag reads and writes.

// indexCounts is what one walk over the records and tags counts.
type indexCounts struct {
	blobs, bytes, held, manifests, tags int64
}

// count walks the records, decoding only the fields it counts.
func (x *index) count() (indexCounts, error) {
	var c indexCounts
	err := x.db.View(func(tx *bolt.Tx) error {
		blobs, err := subBucket(tx, bucketBlobs)
		if err != nil {
			return err
		}
		if err := blobs.ForEach(func(k, v []byte) error {
			var rec struct {
				Size      int64  `json:"size"`
				MediaType string `json:"mediaType"`
				Held      bool   `json:"held"`
			}
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode blob record %s: %w", k, errdefs.ErrDataLoss)
			}
			c.blobs++
			c.bytes += rec.Size
			if rec.Held {
				c.held++
			}
			if IsManifest(rec.MediaType) {
				c.manifests++
			}
			return nil
		}); err != nil {
			return err
		}
		tags, err := subBucket(tx, bucketTags)
		if err != nil {
			return err
		}
		c.tags = int64(tags.Stats().KeyN)
		return nil
	})
	return c, err
}

// held lists the held blobs in digest order, decoding only the flag.
func (x *index) held() ([]digest.Digest, error) {
	var held []digest.Digest
	err := x.db.View(func(tx *bolt.Tx) error {
		b, err := subBucket(tx, bucketBlobs)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var rec struct {
				Held bool `json:"held"`
			}
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode blob record %s: %w", k, errdefs.ErrDataLoss)
			}
			if rec.Held {
				held = append(held, digest.Digest(k))
			}
			return nil
		})
	})
	return held, err
}

// digests lists every recorded digest.
func (x *index) digests() ([]digest.Digest, error) {
	var out []digest.Digest
	err := x.db.View(func(tx *bolt.Tx) error {
		blobs, err := subBucket(tx, bucketBlobs)
		if err != nil {
			return err
		}
		return blobs.ForEach(func(k, _ []byte) error {
			out = append(out, digest.Digest(k))
			return nil
		})
	})
	return out, err
}

// putTag records a tag.
func (x *index) putTag(key []byte, rec tagRecord) error {
	return x.db.Update(func(tx *bolt.Tx) error { return putTagRecord(tx, key, rec) })
}

// tag returns a tag, or an error wrapping errdefs.ErrNotFound.
func (x *index) tag(key []byte) (tagRecord, error) {
	var rec tagRecord
	err := x.db.View(func(tx *bolt.Tx) error {
		b, err := subBucket(tx, bucketTags)
		if err != nil {
			return err
		}
		v := b.Get(key)
		if v == nil {
			return errdefs.ErrNotFound
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode tag record: %w", errdefs.ErrDataLoss)
		}
		return nil
	})
	return rec, err
}

// deleteTag removes a tag and reports whether it existed.
func (x *index) deleteTag(key []byte) (bool, error) {
	var found bool
	err := x.db.Update(func(tx *bolt.Tx) error {
		var err error
		found, err = deleteTagRecord(tx, key)
		return err
	})
	return found, err
}

// forEachTag calls fn for every tag in key order.
func (x *index) forEachTag(fn func(registry, repository, tag string, rec tagRecord) error) error {
	return x.db.View(func(tx *bolt.Tx) error {
		tags, err := subBucket(tx, bucketTags)
		if err != nil {
			return err
		}
		return tags.ForEach(func(k, v []byte) error {
			parts := strings.SplitN(string(k), "\x00", 3)
			if len(parts) != 3 {
				return nil
			}
			var rec tagRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode tag record: %w", errdefs.ErrDataLoss)
			}
			return fn(parts[0], parts[1], parts[2], rec)
		})
	})
}

// removeSource drops the tags of the (registry, repository) pairs match accepts and those
// sources from every record, in one transaction. It returns the blobs left with no source
// (for the caller to remove, files included) and how many tags went.
func (x *index) removeSource(match func(registry, repository string) bool) ([]digest.Digest, int, error) {
	var doomed []digest.Digest
	tagsDropped := 0
	err := x.db.Update(func(tx *bolt.Tx) error {
		doomed, tagsDropped = nil, 0
		tags, err := subBucket(tx, bucketTags)
		if err != nil {
			return err
		}
		var tagKeys [][]byte
		if err := tags.ForEach(func(k, _ []byte) error {
			parts := strings.SplitN(string(k), "\x00", 3)
			if len(parts) == 3 && match(parts[0], parts[1]) {
				tagKeys = append(tagKeys, []byte(string(k)))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range tagKeys {
			if _, err := deleteTagRecord(tx, k); err != nil {
				return err
			}
			tagsDropped++
		}
		blobs, err := subBucket(tx, bucketBlobs)
		if err != nil {
			return err
		}
		changes := map[digest.Digest]*blobRecord{}
		if err := blobs.ForEach(func(k, v []byte) error {
			var rec blobRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return nil
			}
			kept := rec.Sources[:0:0]
			for _, src := range rec.Sources {
				if !match(src.Registry, src.Repository) {
					kept = append(kept, src)
				}
			}
			switch {
			case len(kept) == len(rec.Sources):
			case len(kept) == 0:
				doomed = append(doomed, digest.Digest(k))
			default:
				rec.Sources = kept
				changes[digest.Digest(k)] = &rec
			}
			return nil
		}); err != nil {
			return err
		}
		for d, rec := range changes {
			if err := putBlob(tx, d, rec); err != nil {
				return err
			}
		}
		return nil
	})
	return doomed, tagsDropped, err
}

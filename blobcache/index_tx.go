package blobcache

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// The transactions on blob records, the access order and the intents: one method, one
// transaction. Callers (the Store) hold whatever lock the change needs (commitMu for
// changes that go with a file operation).

// blob returns the record of dgst, or nil when there is none.
func (x *index) blob(dgst digest.Digest) (*blobRecord, error) {
	var rec *blobRecord
	err := x.db.View(func(tx *bolt.Tx) error {
		var err error
		rec, err = getBlob(tx, dgst)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	return rec, nil
}

// modifyBlob reads the record of dgst (nil when there is none) and hands it to fn, which
// returns the record to write, or nil to write nothing; an error from fn aborts the
// transaction and is returned as is. With clearIntent, the intent of dgst is dropped in the
// same transaction (whatever fn returns).
func (x *index) modifyBlob(dgst digest.Digest, clearIntent bool, fn func(*blobRecord) (*blobRecord, error)) error {
	return x.db.Update(func(tx *bolt.Tx) error {
		rec, err := getBlob(tx, dgst)
		if err != nil {
			return err
		}
		next, err := fn(rec)
		if err != nil {
			return err
		}
		if next != nil {
			if err := putBlob(tx, dgst, next); err != nil {
				return err
			}
		}
		if clearIntent {
			return deleteIntent(tx, dgst)
		}
		return nil
	})
}

// putBlobs writes the given records in one transaction (rebuilds and bulk imports).
func (x *index) putBlobs(recs map[digest.Digest]*blobRecord) error {
	return x.db.Update(func(tx *bolt.Tx) error {
		for dgst, rec := range recs {
			if err := putBlob(tx, dgst, rec); err != nil {
				return err
			}
		}
		return nil
	})
}

// deleteBlobIf removes the record of dgst (and its tags) when gone reports true inside the
// transaction, and reports whether a record was removed.
func (x *index) deleteBlobIf(dgst digest.Digest, gone func() bool) (bool, error) {
	var removed bool
	err := x.db.Update(func(tx *bolt.Tx) error {
		if !gone() {
			return nil
		}
		rec, _, err := deleteBlob(tx, dgst)
		removed = rec != nil
		return err
	})
	return removed, err
}

// putIntent records that a file operation on dgst is about to happen (see bucketIntents).
func (x *index) putIntent(dgst digest.Digest) error {
	return x.db.Update(func(tx *bolt.Tx) error { return putIntent(tx, dgst) })
}

// deleteIntents drops the intents of dgsts.
func (x *index) deleteIntents(dgsts []digest.Digest) error {
	return x.db.Update(func(tx *bolt.Tx) error {
		for _, d := range dgsts {
			if err := deleteIntent(tx, d); err != nil {
				return err
			}
		}
		return nil
	})
}

// removeWithIntent removes the records of dgsts that exist and are not held, with their
// tags, and writes an intent for each, in one transaction; the caller then removes the
// files. It returns the digests removed and what was removed.
func (x *index) removeWithIntent(dgsts []digest.Digest, skipHeld bool) ([]digest.Digest, EvictResult, error) {
	var gone []digest.Digest
	var res EvictResult
	err := x.db.Update(func(tx *bolt.Tx) error {
		gone, res = gone[:0], EvictResult{}
		for _, d := range dgsts {
			rec, err := getBlob(tx, d)
			if err != nil {
				return err
			}
			if rec == nil {
				continue
			}
			if skipHeld && rec.Held {
				res.Held++
				continue
			}
			_, tags, err := deleteBlob(tx, d)
			if err != nil {
				return err
			}
			if err := putIntent(tx, d); err != nil {
				return err
			}
			gone = append(gone, d)
			res.Tags += tags
			res.Blobs++
			res.Bytes += rec.Size
		}
		return nil
	})
	return gone, res, err
}

// finishIntents calls orphaned for every intent whose digest has no record, inside the
// transaction that then drops every intent; an error from orphaned aborts it.
func (x *index) finishIntents(orphaned func(digest.Digest) error) error {
	return x.db.Update(func(tx *bolt.Tx) error {
		b, err := subBucket(tx, bucketIntents)
		if err != nil {
			return err
		}
		var pending []digest.Digest
		if err := b.ForEach(func(k, _ []byte) error {
			pending = append(pending, digest.Digest(k))
			return nil
		}); err != nil {
			return err
		}
		for _, dgst := range pending {
			rec, err := getBlob(tx, dgst)
			if err != nil {
				return err
			}
			if rec == nil {
				if err := orphaned(dgst); err != nil {
					return err
				}
			}
			if err := b.Delete([]byte(dgst)); err != nil {
				return err
			}
		}
		return nil
	})
}

// totals returns the size in bytes and the number of the recorded blobs.
func (x *index) totals() (size, count int64, err error) {
	err = x.db.View(func(tx *bolt.Tx) error {
		size, count, err = totals(tx)
		return err
	})
	return size, count, err
}

// writeAccess records the access times that are later than the recorded ones.
func (x *index) writeAccess(touched map[digest.Digest]time.Time) error {
	return x.db.Update(func(tx *bolt.Tx) error {
		for dgst, at := range touched {
			rec, err := getBlob(tx, dgst)
			if err != nil {
				return err
			}
			if rec == nil || !at.After(rec.LastAccess) {
				continue
			}
			rec.LastAccess = at
			if err := putBlob(tx, dgst, rec); err != nil {
				return err
			}
		}
		return nil
	})
}

// scanLRU returns up to evictBatch blobs after cursor in access order, enough to free need
// bytes, skipping held blobs (counted), and the cursor to continue from.
func (x *index) scanLRU(cursor []byte, need int64) ([]digest.Digest, []byte, int, error) {
	var cands []digest.Digest
	held := 0
	next := cursor
	err := x.db.View(func(tx *bolt.Tx) error {
		atime, err := subBucket(tx, bucketAtime)
		if err != nil {
			return err
		}
		c := atime.Cursor()
		var k []byte
		if cursor == nil {
			k, _ = c.First()
		} else if k, _ = c.Seek(cursor); k != nil && bytes.Equal(k, cursor) {
			k, _ = c.Next()
		}
		var sum int64
		for ; k != nil && len(cands) < evictBatch && sum < need; k, _ = c.Next() {
			next = bytes.Clone(k)
			if len(k) <= 8 {
				continue
			}
			dgst := digest.Digest(k[8:])
			rec, err := getBlob(tx, dgst)
			if err != nil {
				return err
			}
			if rec == nil {
				continue
			}
			if rec.Held {
				held++
				continue
			}
			cands = append(cands, dgst)
			sum += rec.Size
		}
		return nil
	})
	return cands, next, held, err
}

// forEachBlob calls fn for every record, in digest order, in one read transaction.
func (x *index) forEachBlob(fn func(digest.Digest, *blobRecord) error) error {
	return x.db.View(func(tx *bolt.Tx) error {
		blobs, err := subBucket(tx, bucketBlobs)
		if err != nil {
			return err
		}
		return blobs.ForEach(func(k, v []byte) error {
			var rec blobRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode blob record %s: %w", k, errdefs.ErrDataLoss)
			}
			return fn(digest.Digest(k), &rec)
		})
	})
}

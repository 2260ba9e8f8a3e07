package blobcache

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// The index keeps, next to the records, what eviction and start-up need without reading
// every record:
//
//   - atime:   (last access as 8 big-endian bytes of Unix nanoseconds | digest) -> nothing.
//     A cursor from the first key walks blobs least recently used first; nothing about
//     the order is held in memory.
//   - meta:    the store's total bytes and blob count, updated in the transaction that
//     changes a record, so that start-up reads two keys instead of the whole index.
//   - tagrefs: (digest | 0x00 | tag key) -> nothing: the tags pointing at a digest, so that
//     removing a manifest drops them in the same transaction.
//   - intents: digest -> nothing, written before a blob file is renamed in or removed and
//     dropped with the record change that follows. A crash in between leaves the intent,
//     and start-up removes a file whose record does not exist: the index and the files
//     never disagree for long.
var (
	bucketAtime   = []byte("atime")
	bucketMeta    = []byte("meta")
	bucketTagRefs = []byte("tagrefs")
	bucketIntents = []byte("intents")

	metaBytes  = []byte("bytes")
	metaCount  = []byte("count")
	metaSchema = []byte("schema")
)

// indexSchema is the layout version of the v1 bucket: 2 added atime, meta, tagrefs and
// intents. An index of schema 1 (or none) is brought up to date once at Open.
const indexSchema = 2

func atimeKey(t time.Time, dgst digest.Digest) []byte {
	k := make([]byte, 8, 8+len(dgst))
	binary.BigEndian.PutUint64(k, uint64(max(t.UnixNano(), 0)))
	return append(k, dgst...)
}

func putAtime(tx *bolt.Tx, t time.Time, dgst digest.Digest) error {
	b, err := subBucket(tx, bucketAtime)
	if err != nil {
		return err
	}
	return b.Put(atimeKey(t, dgst), nil)
}

func deleteAtime(tx *bolt.Tx, t time.Time, dgst digest.Digest) error {
	b, err := subBucket(tx, bucketAtime)
	if err != nil {
		return err
	}
	return b.Delete(atimeKey(t, dgst))
}

func getInt(b *bolt.Bucket, key []byte) int64 {
	v := b.Get(key)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

func putInt(b *bolt.Bucket, key []byte, n int64) error {
	v := make([]byte, 8)
	binary.BigEndian.PutUint64(v, uint64(n))
	return b.Put(key, v)
}

func addTotals(tx *bolt.Tx, bytes, count int64) error {
	if bytes == 0 && count == 0 {
		return nil
	}
	b, err := subBucket(tx, bucketMeta)
	if err != nil {
		return err
	}
	if err := putInt(b, metaBytes, getInt(b, metaBytes)+bytes); err != nil {
		return err
	}
	return putInt(b, metaCount, getInt(b, metaCount)+count)
}

// totals returns the recorded size and number of blobs.
func totals(tx *bolt.Tx) (bytes, count int64, err error) {
	b, err := subBucket(tx, bucketMeta)
	if err != nil {
		return 0, 0, err
	}
	return getInt(b, metaBytes), getInt(b, metaCount), nil
}

// deleteBlob removes the record of dgst, its place in the access order, and every tag that
// points at it, and reports the record removed (nil when there was none).
func deleteBlob(tx *bolt.Tx, dgst digest.Digest) (*blobRecord, int, error) {
	rec, err := getBlob(tx, dgst)
	if err != nil || rec == nil {
		return nil, 0, err
	}
	b, err := subBucket(tx, bucketBlobs)
	if err != nil {
		return nil, 0, err
	}
	if err := b.Delete([]byte(dgst)); err != nil {
		return nil, 0, err
	}
	if err := deleteAtime(tx, rec.LastAccess, dgst); err != nil {
		return nil, 0, err
	}
	if err := addTotals(tx, -rec.Size, -1); err != nil {
		return nil, 0, err
	}
	tags, err := deleteTagsOf(tx, dgst)
	return rec, tags, err
}

func tagRefKey(dgst digest.Digest, tagKey []byte) []byte {
	k := make([]byte, 0, len(dgst)+1+len(tagKey))
	k = append(k, dgst...)
	k = append(k, 0)
	return append(k, tagKey...)
}

// deleteTagsOf removes the tags that point at dgst and returns how many there were.
func deleteTagsOf(tx *bolt.Tx, dgst digest.Digest) (int, error) {
	refs, err := subBucket(tx, bucketTagRefs)
	if err != nil {
		return 0, err
	}
	tags, err := subBucket(tx, bucketTags)
	if err != nil {
		return 0, err
	}
	prefix := append([]byte(dgst), 0)
	var keys [][]byte
	c := refs.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	n := 0
	for _, k := range keys {
		tk := k[len(prefix):]
		// Only a tag that still points here goes: the ref may be older than a re-tag.
		if v := tags.Get(tk); v != nil {
			var tr tagRecord
			if json.Unmarshal(v, &tr) == nil && tr.Digest == dgst {
				if err := tags.Delete(tk); err != nil {
					return n, err
				}
				n++
			}
		}
		if err := refs.Delete(k); err != nil {
			return n, err
		}
	}
	return n, nil
}

// putTagRecord writes a tag and its back-reference, dropping the back-reference of the
// digest it pointed at before.
func putTagRecord(tx *bolt.Tx, key []byte, rec tagRecord) error {
	tags, err := subBucket(tx, bucketTags)
	if err != nil {
		return err
	}
	refs, err := subBucket(tx, bucketTagRefs)
	if err != nil {
		return err
	}
	if v := tags.Get(key); v != nil {
		var old tagRecord
		if json.Unmarshal(v, &old) == nil && old.Digest != rec.Digest {
			if err := refs.Delete(tagRefKey(old.Digest, key)); err != nil {
				return err
			}
		}
	}
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := tags.Put(key, v); err != nil {
		return err
	}
	return refs.Put(tagRefKey(rec.Digest, key), nil)
}

// deleteTagRecord removes one tag and its back-reference.
func deleteTagRecord(tx *bolt.Tx, key []byte) (bool, error) {
	tags, err := subBucket(tx, bucketTags)
	if err != nil {
		return false, err
	}
	v := tags.Get(key)
	if v == nil {
		return false, nil
	}
	var old tagRecord
	if json.Unmarshal(v, &old) == nil {
		refs, err := subBucket(tx, bucketTagRefs)
		if err != nil {
			return false, err
		}
		if err := refs.Delete(tagRefKey(old.Digest, key)); err != nil {
			return false, err
		}
	}
	return true, tags.Delete(key)
}

func putIntent(tx *bolt.Tx, dgst digest.Digest) error {
	b, err := subBucket(tx, bucketIntents)
	if err != nil {
		return err
	}
	return b.Put([]byte(dgst), nil)
}

func deleteIntent(tx *bolt.Tx, dgst digest.Digest) error {
	b, err := subBucket(tx, bucketIntents)
	if err != nil {
		return err
	}
	return b.Delete([]byte(dgst))
}

// migrateIndex brings an index written before schema 2 up to date: it rebuilds the access
// order, the totals and the tag back-references from the records. It runs once, in one
// transaction, so a crash during it leaves the old schema to be migrated again.
func migrateIndex(tx *bolt.Tx) error {
	meta, err := subBucket(tx, bucketMeta)
	if err != nil {
		return err
	}
	if getInt(meta, metaSchema) == indexSchema {
		return nil
	}
	v1 := tx.Bucket(bucketV1)
	for _, name := range [][]byte{bucketAtime, bucketTagRefs} {
		if err := v1.DeleteBucket(name); err != nil {
			return err
		}
		if _, err := v1.CreateBucket(name); err != nil {
			return err
		}
	}
	blobs, _ := subBucket(tx, bucketBlobs)
	atime, _ := subBucket(tx, bucketAtime)
	var size, count int64
	err = blobs.ForEach(func(k, v []byte) error {
		var rec blobRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode blob record %s: %w", k, errdefs.ErrDataLoss)
		}
		size += rec.Size
		count++
		return atime.Put(atimeKey(rec.LastAccess, digest.Digest(k)), nil)
	})
	if err != nil {
		return err
	}
	tags, _ := subBucket(tx, bucketTags)
	refs, _ := subBucket(tx, bucketTagRefs)
	err = tags.ForEach(func(k, v []byte) error {
		var tr tagRecord
		if err := json.Unmarshal(v, &tr); err != nil {
			return fmt.Errorf("decode tag record: %w", errdefs.ErrDataLoss)
		}
		return refs.Put(tagRefKey(tr.Digest, k), nil)
	})
	if err != nil {
		return err
	}
	if err := putInt(meta, metaBytes, size); err != nil {
		return err
	}
	if err := putInt(meta, metaCount, count); err != nil {
		return err
	}
	return putInt(meta, metaSchema, indexSchema)
}

package blobcache

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// The index lives under one top-level bucket per schema version, so that a future format can
// be migrated next to the old one instead of in place.
var (
	bucketV1    = []byte("v1")
	bucketBlobs = []byte("blobs")
	bucketTags  = []byte("tags")
)

// blobRecord is the on-disk form of a committed blob. It is kept apart from BlobInfo so that
// the API can change without rewriting the index.
type blobRecord struct {
	Size       int64          `json:"size"`
	MediaType  string         `json:"mediaType,omitempty"`
	CreatedAt  time.Time      `json:"createdAt"`
	LastAccess time.Time      `json:"lastAccess"`
	Sources    []sourceRecord `json:"sources,omitempty"`
	// Labels are the content API labels containerd set on the blob (containerd's content
	// store keeps them with the blob); they are dropped with the hold.
	Labels map[string]string `json:"labels,omitempty"`
	// Held is set while containerd holds the blob through the content API: it was written,
	// committed, found or updated through the API and not deleted since. Eviction must
	// leave a held blob alone, because containerd's metadata may refer to it.
	Held bool `json:"held,omitempty"`
	// Unverified is set on records rebuilt from the blob files after the index was lost:
	// the file's name says its digest, but its bytes are hashed before it is served.
	Unverified bool `json:"unverified,omitempty"`
}

// sourceRecord is one (registry, repository) a blob was obtained from. Anonymous is the
// authoritative flag: only a record that says "anonymous": true counts as public. Records
// written before the flag existed (with "private" alone, or nothing) read as private: their
// origin cannot be proven, and a private object is only served after an upstream check of
// the client, so the safe reading costs a HEAD at worst. Private is still written as the
// negation, for older readers.
type sourceRecord struct {
	Registry   string `json:"registry"`
	Repository string `json:"repository"`
	Private    bool   `json:"private,omitempty"`
	Anonymous  bool   `json:"anonymous,omitempty"`
}

func newSourceRecord(s Source) sourceRecord {
	return sourceRecord{Registry: s.Registry, Repository: s.Repository, Private: s.Private, Anonymous: !s.Private}
}

func (r sourceRecord) source() Source {
	return Source{Registry: r.Registry, Repository: r.Repository, Private: !r.Anonymous}
}

type tagRecord struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType,omitempty"`
	Size      int64         `json:"size"`
	FetchedAt time.Time     `json:"fetchedAt"`
}

func (r *blobRecord) info(dgst digest.Digest) BlobInfo {
	info := BlobInfo{
		Digest:    dgst,
		Size:      r.Size,
		MediaType: r.MediaType,
		CreatedAt: r.CreatedAt,
		Held:      r.Held,
	}
	for _, s := range r.Sources {
		info.Sources = append(info.Sources, s.source())
	}
	return info
}

// addSource merges src into r.Sources and reports whether anything changed. One entry is
// kept per registry/repository; once it was obtained anonymously (Private=false) it stays
// public, because that proves anyone may read it there.
func (r *blobRecord) addSource(src Source) bool {
	if src == (Source{}) {
		return false
	}
	for i, s := range r.Sources {
		if s.Registry != src.Registry || s.Repository != src.Repository {
			continue
		}
		if !s.Anonymous && !src.Private {
			r.Sources[i] = newSourceRecord(src)
			return true
		}
		return false
	}
	r.Sources = append(r.Sources, newSourceRecord(src))
	return true
}

// index is the store's bbolt index and the only code that opens its transactions (this file
// and index_*.go): each of its methods is one transaction. The Store decides what changes
// and when (its locks, the files); the index keeps the records, the access order, the totals,
// the tags and the intents in step within each transaction.
type index struct {
	db *bolt.DB
}

// openBolt opens (creating) the index file and brings its buckets up to date, turning a
// panic inside bbolt (which it raises on some corrupt pages) into an error.
func openBolt(path string) (x *index, err error) {
	var db *bolt.DB
	defer func() {
		if r := recover(); r != nil {
			if db != nil {
				db.Close()
			}
			x, err = nil, fmt.Errorf("index unreadable: %v: %w", r, errdefs.ErrDataLoss)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: indexLockTimeout})
	if err != nil {
		return nil, err
	}
	if err := db.Update(initIndex); err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise index: %w", err)
	}
	if err := db.Update(migrateIndex); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate index: %w", err)
	}
	return &index{db: db}, nil
}

func (x *index) close() error { return x.db.Close() }

func initIndex(tx *bolt.Tx) error {
	v1, err := tx.CreateBucketIfNotExists(bucketV1)
	if err != nil {
		return err
	}
	for _, name := range [][]byte{bucketBlobs, bucketTags, bucketAtime, bucketMeta, bucketTagRefs, bucketIntents} {
		if _, err := v1.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

func subBucket(tx *bolt.Tx, name []byte) (*bolt.Bucket, error) {
	v1 := tx.Bucket(bucketV1)
	if v1 == nil {
		return nil, fmt.Errorf("index has no %q bucket: %w", bucketV1, errdefs.ErrDataLoss)
	}
	b := v1.Bucket(name)
	if b == nil {
		return nil, fmt.Errorf("index has no %q bucket: %w", name, errdefs.ErrDataLoss)
	}
	return b, nil
}

// getBlob returns the record of dgst, or nil when there is none.
func getBlob(tx *bolt.Tx, dgst digest.Digest) (*blobRecord, error) {
	b, err := subBucket(tx, bucketBlobs)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(dgst))
	if v == nil {
		return nil, nil
	}
	var rec blobRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("decode blob record %s: %w", dgst, errdefs.ErrDataLoss)
	}
	return &rec, nil
}

// putBlob writes the record of dgst and keeps the access-time order and the store totals
// in step with it, in the same transaction.
func putBlob(tx *bolt.Tx, dgst digest.Digest, rec *blobRecord) error {
	b, err := subBucket(tx, bucketBlobs)
	if err != nil {
		return err
	}
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	old, err := getBlob(tx, dgst)
	if err != nil {
		return err
	}
	delta, count := rec.Size, int64(1)
	if old != nil {
		delta, count = rec.Size-old.Size, 0
		if err := deleteAtime(tx, old.LastAccess, dgst); err != nil {
			return err
		}
	}
	if err := putAtime(tx, rec.LastAccess, dgst); err != nil {
		return err
	}
	if err := addTotals(tx, delta, count); err != nil {
		return err
	}
	return b.Put([]byte(dgst), v)
}

func tagKey(registry, repository, tag string) []byte {
	return []byte(registry + "\x00" + repository + "\x00" + tag)
}

func validateTagKey(registry, repository, tag string) error {
	for _, s := range []string{registry, repository, tag} {
		if s == "" || strings.ContainsRune(s, 0) {
			return fmt.Errorf("invalid tag key %q/%q:%q: %w", registry, repository, tag, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// Package blobcache is the node's content-addressed store: committed blob files in
// containerd's content/local layout (root/blobs/<algorithm>/<hex>), a bbolt index of blob records
// (size, media type, sources, access times) and tags, and fills, which download a missing
// blob once however many clients ask and let each of them stream it while it arrives.
//
// Nothing unverified is ever committed or reported complete: a fill reaches its readers'
// io.EOF only after the digest (and the announced size) has been checked. When the disk fails
// the store says so with ErrStorage, so that callers can serve from upstream instead.
//
// The content API (plugin/content) shares the store: containerd's local store writer commits
// into the same blobs/sha256 (its ingests live in root/ingest/, untouched here), and the index
// records which blobs containerd holds and their content labels. A held blob must not be
// evicted; a released one stays as cache. A blob file without a record (committed by that
// writer) is adopted, with the size of the file, when it is held or labelled.
//
// Files by job: store.go (Open, Close, options), fill.go and fill_reader.go (downloads),
// commit.go (verified files into blobs/), read.go and readers.go (the read path: pins,
// access times, shared readers), evict.go, holds.go (the content API's holds and labels),
// recover.go (crash recovery, index rebuild), maintenance.go (admin: list, remove, verify),
// tags.go, and the index: index.go (schema, the index type), index_order.go (access order,
// totals, tag references, intents within a transaction), index_tx.go and index_walk.go (every
// bbolt transaction, one method each).
//
// sha256 and sha512 digests are stored (blobs/sha256, blobs/sha512); other algorithms are
// refused as invalid arguments. The package knows nothing about HTTP, registries or auth;
// callers hand it a FetchFunc that opens the upstream body.
package blobcache

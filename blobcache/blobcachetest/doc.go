// Package blobcachetest builds large blob stores for tests and benchmarks (start-up with a
// big index, eviction over thousands of blobs) through blobcache.Store.Import, faster than
// committing blob by blob.
package blobcachetest

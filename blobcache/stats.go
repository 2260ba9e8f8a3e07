package blobcache

import (
	"context"
)

// FillStats is a snapshot of the downloads in progress.
type FillStats struct {
	// InFlight is the number of fills whose download is running or committing.
	InFlight int
	// Readers is the number of clients streaming from those fills.
	Readers int
	// Waiters is the number of readers beyond the first of each fill: the clients that a
	// fill saved a download for (coalesced requests).
	Waiters int
}

// FillStats counts the fills in progress and their readers. It takes the store's lock
// briefly and each fill's lock in turn; it is meant for metrics scrapes.
func (s *Store) FillStats() FillStats {
	s.mu.Lock()
	fills := make([]*Fill, 0, len(s.fills))
	for _, f := range s.fills {
		fills = append(fills, f)
	}
	s.mu.Unlock()
	var st FillStats
	for _, f := range fills {
		st.InFlight++
		f.mu.Lock()
		readers := f.refs - 1 // the copy goroutine holds one reference while it runs
		if f.file == nil || readers < 0 {
			readers = 0
		}
		f.mu.Unlock()
		st.Readers += readers
		if readers > 1 {
			st.Waiters += readers - 1
		}
	}
	return st
}

// IndexStats counts what the index records.
type IndexStats struct {
	Blobs int64
	// Bytes is the sum of the committed blobs' sizes.
	Bytes int64
	// HeldBlobs are the blobs containerd holds through the content API.
	HeldBlobs int64
	Tags      int64
}

// IndexStats walks the index in one read transaction. It decodes every blob record, so it
// costs time in proportion to the number of blobs (tens of milliseconds for 100 000): call it
// per metrics scrape, not per request.
func (s *Store) IndexStats(ctx context.Context) (IndexStats, error) {
	if err := s.enter(); err != nil {
		return IndexStats{}, err
	}
	defer s.wg.Done()
	c, err := s.idx.count()
	st := IndexStats{Blobs: c.blobs, Bytes: c.bytes, HeldBlobs: c.held, Tags: c.tags}
	if err != nil {
		return IndexStats{}, storageFailed("read index statistics", err)
	}
	return st, ctx.Err()
}

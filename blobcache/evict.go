package blobcache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

const (
	// flushBatch is how many touched blobs make the access times be written before the
	// flush interval: it bounds the memory they take and the size of one transaction.
	flushBatch = 4096
	// evictBatch is how many blobs one removal transaction deletes.
	evictBatch = 256
)

// EvictResult says what an eviction or removal did.
type EvictResult struct {
	// Blobs and Bytes were removed; Tags pointing at removed manifests were dropped.
	Blobs int   `json:"blobs"`
	Bytes int64 `json:"bytes"`
	Tags  int   `json:"tags"`
	// InUse blobs were skipped because a client was reading them, a fill was writing
	// them or they were used while the eviction ran; they are tried again later.
	InUse int `json:"inUse"`
	// Held blobs were skipped because containerd holds them (content API).
	Held int `json:"held"`
	// Size is the store's size afterwards.
	Size int64 `json:"size"`
}

func (r *EvictResult) add(o EvictResult) {
	r.Blobs += o.Blobs
	r.Bytes += o.Bytes
	r.Tags += o.Tags
	r.InUse += o.InUse
	r.Held += o.Held
}

// background writes access times and keeps the store under its size limit until the
// store closes.
func (s *Store) background(ctx context.Context) {
	defer s.bg.Done()
	flush := time.NewTicker(s.opts.AccessFlushInterval)
	defer flush.Stop()
	retry := time.NewTicker(s.opts.EvictRetryInterval)
	defer retry.Stop()
	idle := time.NewTicker(readerIdle / 2)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-flush.C:
			s.flushLogged(ctx)
		case <-s.flushNow:
			s.flushLogged(ctx)
		case <-s.evictNow:
			s.autoEvict(ctx)
		case <-retry.C:
			s.autoEvict(ctx)
		case now := <-idle.C:
			s.readers.closeIdle(now.Add(-readerIdle))
		}
	}
}

func (s *Store) flushLogged(ctx context.Context) {
	if err := s.flushAccess(); err != nil {
		log.G(ctx).WithError(err).Warn("cannot record access times")
	}
}

// maybeEvict wakes the evictor; it checks the size itself.
func (s *Store) maybeEvict() {
	if s.opts.MaxSize <= 0 {
		return
	}
	select {
	case s.evictNow <- struct{}{}:
	default:
	}
}

// Limits returns the size limit and the high and low marks in bytes (all 0 without limit).
func (s *Store) Limits() (maxSize, high, low int64) {
	if s.opts.MaxSize <= 0 {
		return 0, 0, 0
	}
	return s.opts.MaxSize, s.opts.MaxSize / 100 * int64(s.opts.HighWatermark), s.opts.MaxSize / 100 * int64(s.opts.LowWatermark)
}

func (s *Store) autoEvict(ctx context.Context) {
	_, high, low := s.Limits()
	if high <= 0 {
		return
	}
	size, _, err := s.Totals()
	if err != nil || size <= high {
		return
	}
	start := time.Now()
	res, err := s.EvictTo(ctx, low)
	entry := log.G(ctx).WithFields(log.Fields{
		"blobs": res.Blobs, "bytes": res.Bytes, "tags": res.Tags, "in_use": res.InUse, "held": res.Held,
		"size": res.Size, "low": low, "duration": time.Since(start).Round(time.Millisecond),
	})
	switch {
	case err != nil:
		entry.WithError(err).Warn("eviction failed")
	case res.Size > low:
		entry.Warn("store still over its low mark after eviction: the rest is in use or held")
	default:
		entry.Info("evicted least recently used blobs")
	}
}

// Totals returns the size in bytes and the number of the blobs recorded in the index.
func (s *Store) Totals() (size, count int64, err error) {
	return s.idx.totals()
}

// flushAccess writes the access times kept in memory to the index in one transaction.
func (s *Store) flushAccess() error {
	s.mu.Lock()
	touched := s.touched
	s.touched = make(map[digest.Digest]time.Time)
	s.mu.Unlock()
	if len(touched) == 0 {
		return nil
	}
	return s.idx.writeAccess(touched)
}

// EvictTo removes least recently used blobs until the store's size is at most target
// bytes, or nothing more can be removed. Blobs held by containerd, open for reading, being
// filled or used during the eviction are skipped. Tags pointing at a removed manifest are
// dropped with it.
func (s *Store) EvictTo(ctx context.Context, target int64) (EvictResult, error) {
	var res EvictResult
	if err := s.enter(); err != nil {
		return res, err
	}
	defer s.wg.Done()
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	if err := s.flushAccess(); err != nil {
		return res, storageFailed("record access times", err)
	}

	var cursor []byte
	for ctx.Err() == nil {
		size, _, err := s.Totals()
		if err != nil {
			return res, fmt.Errorf("read index: %w", err)
		}
		res.Size = size
		if size <= target {
			break
		}
		var held int
		var cands []digest.Digest
		cands, cursor, held, err = s.idx.scanLRU(cursor, size-target)
		res.Held += held
		if err != nil {
			return res, fmt.Errorf("read index: %w", err)
		}
		if len(cands) == 0 {
			break
		}
		r, err := s.removeBlobs(ctx, cands, true)
		res.add(r)
		if err != nil {
			return res, err
		}
	}
	res.Size, _, _ = s.Totals()
	if res.Blobs > 0 && s.opts.OnEvict != nil {
		s.opts.OnEvict(res.Blobs, res.Bytes)
	}
	return res, ctx.Err()
}

func (s *Store) beingRemoved(dgst digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.evicting[dgst]
	return ok
}

// removeBlobs deletes the given blobs that nobody uses: records, tags pointing at them and
// files. The records go first, with an intent each, in one transaction; the files follow;
// a crash in between leaves intents that the next Open completes. With skipRecent (LRU
// eviction), a blob used since the eviction began is kept too: it is no longer the least
// recently used.
func (s *Store) removeBlobs(ctx context.Context, dgsts []digest.Digest, skipRecent bool) (EvictResult, error) {
	var res EvictResult
	// Shared readers nobody is using keep their blob pinned only as a cache: let them go.
	s.readers.drop(dgsts)
	s.mu.Lock()
	take := make([]digest.Digest, 0, len(dgsts))
	for _, d := range dgsts {
		_, filling := s.fills[d]
		_, touched := s.touched[d]
		if s.pins[d] > 0 || filling || (skipRecent && touched) {
			res.InUse++
			continue
		}
		s.evicting[d] = struct{}{}
		take = append(take, d)
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		for _, d := range take {
			delete(s.evicting, d)
		}
		s.mu.Unlock()
	}()
	if len(take) == 0 {
		return res, nil
	}

	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	gone, r, err := s.idx.removeWithIntent(take, true)
	if err != nil {
		return EvictResult{InUse: res.InUse}, storageFailed("remove blob records", err)
	}
	r.InUse = res.InUse
	res = r
	s.at(fpRemoveRecorded)
	removed := gone[:0:0]
	for _, d := range gone {
		if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.G(ctx).WithError(err).WithField("digest", d).Warn("cannot remove blob file; it is removed at the next start")
			continue
		}
		removed = append(removed, d)
	}
	s.at(fpRemoveUnlinked)
	if err := s.idx.deleteIntents(removed); err != nil {
		log.G(ctx).WithError(err).Warn("cannot clear removal intents; they are completed at the next start")
	}
	return res, nil
}

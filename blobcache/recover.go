package blobcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	bolterrors "go.etcd.io/bbolt/errors"
)

// quarantineDir receives blob files whose bytes do not match their name, for the operator
// to look at; nothing in it is ever served.
const quarantineDir = "quarantine"

// rebuildBatch is how many records one transaction of a rebuild writes.
const rebuildBatch = 1000

// openIndex opens root/index.db. An index that cannot be opened or read (garbage, truncated,
// a panic inside bbolt) is moved aside as index.db.damaged-<time> and a new one is built
// from the blob files, as is a missing index when blob files exist: the daemon starts with
// the blobs it has instead of failing again at every restart. Only a lock held by another
// process is an error. holdRebuilt records the rebuilt blobs as held (Options.HoldRebuilt).
func openIndex(ctx context.Context, root string, holdRebuilt bool) (*index, error) {
	dbPath := filepath.Join(root, indexFile)
	_, statErr := os.Stat(dbPath)
	missing := errors.Is(statErr, fs.ErrNotExist)

	x, err := openBolt(dbPath)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open index %s: locked by another process after %s (is another containerd-blobcache using root %s?): %w",
			dbPath, indexLockTimeout, root, errdefs.ErrUnavailable)
	}
	rebuild := false
	if err != nil {
		aside := fmt.Sprintf("%s.damaged-%s", dbPath, time.Now().UTC().Format("20060102T150405Z"))
		log.G(ctx).WithError(err).WithFields(log.Fields{"index": dbPath, "moved_to": aside}).
			Error("index is damaged; moving it aside and rebuilding it from the blob files")
		if rerr := os.Rename(dbPath, aside); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return nil, fmt.Errorf("move damaged index %s aside: %w", dbPath, rerr)
		}
		if x, err = openBolt(dbPath); err != nil {
			return nil, fmt.Errorf("create new index %s: %w", dbPath, err)
		}
		rebuild = true
	} else if missing {
		for _, alg := range storedAlgorithms {
			rebuild = rebuild || hasBlobFiles(blobDir(root, alg))
		}
		if rebuild {
			log.G(ctx).WithField("index", dbPath).Warn("index is missing but blob files exist; rebuilding it from them")
		}
	}
	if rebuild {
		start := time.Now()
		n, err := rebuildIndex(x, root, holdRebuilt)
		if err != nil {
			x.close()
			return nil, fmt.Errorf("rebuild index %s: %w", dbPath, err)
		}
		log.G(ctx).WithFields(log.Fields{"blobs": n, "held": holdRebuilt, "duration": time.Since(start).Round(time.Millisecond)}).
			Info("index rebuilt from blob files; each blob is hashed before it is first served")
	}
	return x, nil
}

func hasBlobFiles(dir string) bool {
	d, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer d.Close()
	names, _ := d.Readdirnames(1)
	return len(names) > 0
}

// rebuildIndex records every blob file whose name is a digest, with the size of the
// file and marked unverified. Access times are the files' modification times, so the
// oldest are evicted first. Tags, sources and labels are lost (tags are fetched again, a
// blob of unknown source is private until an upstream check); with held, every blob is
// recorded as held, since which ones containerd held is lost too.
func rebuildIndex(x *index, root string, held bool) (int, error) {
	n := 0
	for _, alg := range storedAlgorithms {
		m, err := rebuildAlgorithm(x, root, alg, held)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func rebuildAlgorithm(x *index, root string, alg digest.Algorithm, held bool) (int, error) {
	entries, err := os.ReadDir(blobDir(root, alg))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for len(entries) > 0 {
		batch := entries[:min(rebuildBatch, len(entries))]
		entries = entries[len(batch):]
		recs := make(map[digest.Digest]*blobRecord, len(batch))
		for _, e := range batch {
			dgst := digest.NewDigestFromEncoded(alg, e.Name())
			if !e.Type().IsRegular() || dgst.Validate() != nil {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				continue
			}
			t := fi.ModTime().UTC()
			recs[dgst] = &blobRecord{Size: fi.Size(), CreatedAt: t, LastAccess: t, Unverified: true, Held: held}
		}
		if err := x.putBlobs(recs); err != nil {
			return n, err
		}
		n += len(recs)
	}
	return n, nil
}

// finishIntents completes what a crash interrupted: a blob file renamed in or being removed
// whose record does not exist is removed. There are only as many intents as commits and
// removals were running, so this costs nothing at a normal start.
func (s *Store) finishIntents(ctx context.Context) error {
	return s.idx.finishIntents(func(dgst digest.Digest) error {
		if validateDigest(dgst) != nil {
			return nil
		}
		err := os.Remove(s.blobPath(dgst))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove unrecorded blob %s: %w", dgst, err)
		}
		if err == nil {
			log.G(ctx).WithField("digest", dgst).Info("removed a blob file whose commit or removal a crash interrupted")
		}
		return nil
	})
}

// verifyOpened hashes an unverified blob. A match clears the flag; a mismatch moves the
// file to quarantine and drops the record, and the blob is reported as not found.
func (s *Store) verifyOpened(ctx context.Context, f *os.File, dgst digest.Digest) error {
	got, err := dgst.Algorithm().FromReader(io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return storageFailed("hash blob "+dgst.String(), err)
	}
	if got != dgst {
		log.G(ctx).WithFields(log.Fields{"digest": dgst, "actual": got}).Error("blob file does not match its name; quarantining it")
		if err := s.quarantine(dgst); err != nil {
			log.G(ctx).WithError(err).Warn("cannot quarantine blob")
		}
		return fmt.Errorf("blob %s: file is corrupt: %w", dgst, errdefs.ErrNotFound)
	}
	err = s.updateBlob(dgst, func(rec *blobRecord) bool {
		changed := rec.Unverified
		rec.Unverified = false
		return changed
	})
	if err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).Warn("cannot record blob verification")
	}
	return nil
}

// quarantine moves the file of dgst into root/quarantine and drops its record and tags.
func (s *Store) quarantine(dgst digest.Digest) error {
	s.readers.drop([]digest.Digest{dgst})
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	dir := filepath.Join(s.root, quarantineDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// The intent covers a file without a record too (an orphan being quarantined).
	if err := s.idx.putIntent(dgst); err != nil {
		return err
	}
	if _, _, err := s.idx.removeWithIntent([]digest.Digest{dgst}, false); err != nil {
		return err
	}
	err := os.Rename(s.blobPath(dgst), filepath.Join(dir, dgst.Encoded()))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return s.idx.deleteIntents([]digest.Digest{dgst})
}

package blobcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// What the admin API (plugin/admin) asks of the store. These walk the index; none of them
// runs on a request path.

// BlobEntry is one blob as listed by ListBlobs.
type BlobEntry struct {
	BlobInfo
	LastAccess time.Time
	Unverified bool
}

// IsManifest reports whether the media type is a manifest or an index that a registry
// serves under /manifests/: containerd's OCI and Docker types, and Docker schema 1 (signed,
// and the unsigned variant, which containerd has no constant for).
func IsManifest(mediaType string) bool {
	return images.IsManifestType(mediaType) || images.IsIndexType(mediaType) ||
		mediaType == images.MediaTypeDockerSchema1Manifest ||
		mediaType == "application/vnd.docker.distribution.manifest.v1+json"
}

// TagEntry is one tag as listed by ListTags.
type TagEntry struct {
	Registry   string
	Repository string
	Tag        string
	TagRecord
}

// Summary is the store's state for `stats`.
type Summary struct {
	Size      int64
	Blobs     int64
	Manifests int64
	Tags      int64
	Held      int64
	MaxSize   int64
	High      int64
	Low       int64
}

// Summarize counts what the index holds.
func (s *Store) Summarize(ctx context.Context) (Summary, error) {
	var sum Summary
	sum.MaxSize, sum.High, sum.Low = s.Limits()
	var err error
	if sum.Size, sum.Blobs, err = s.idx.totals(); err != nil {
		return sum, err
	}
	c, err := s.idx.count()
	sum.Manifests, sum.Held, sum.Tags = c.manifests, c.held, c.tags
	return sum, err
}

// ListBlobs calls fn for every blob record, in digest order. Access times not yet written
// to the index are included.
func (s *Store) ListBlobs(ctx context.Context, fn func(BlobEntry) error) error {
	s.mu.Lock()
	touched := make(map[digest.Digest]time.Time, len(s.touched))
	for k, v := range s.touched {
		touched[k] = v
	}
	s.mu.Unlock()
	return s.idx.forEachBlob(func(dgst digest.Digest, rec *blobRecord) error {
		e := BlobEntry{BlobInfo: rec.info(dgst), LastAccess: rec.LastAccess, Unverified: rec.Unverified}
		if t, ok := touched[dgst]; ok && t.After(e.LastAccess) {
			e.LastAccess = t
		}
		return fn(e)
	})
}

// ListTags calls fn for every tag, in registry, repository, tag order.
func (s *Store) ListTags(ctx context.Context, fn func(TagEntry) error) error {
	return s.idx.forEachTag(func(registry, repository, tag string, rec tagRecord) error {
		return fn(TagEntry{Registry: registry, Repository: repository, Tag: tag, TagRecord: TagRecord(rec)})
	})
}

// DeleteTag forgets a tag; the manifest it pointed at stays. It reports whether it existed.
func (s *Store) DeleteTag(ctx context.Context, registry, repository, tag string) (bool, error) {
	if err := validateTagKey(registry, repository, tag); err != nil {
		return false, err
	}
	return s.idx.deleteTag(tagKey(registry, repository, tag))
}

// Remove deletes the given blobs (and the tags pointing at them) unless they are held or in
// use, which the result counts.
func (s *Store) Remove(ctx context.Context, dgsts []digest.Digest) (EvictResult, error) {
	for _, d := range dgsts {
		if err := validateDigest(d); err != nil {
			return EvictResult{}, err
		}
	}
	if err := s.enter(); err != nil {
		return EvictResult{}, err
	}
	defer s.wg.Done()
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	var res EvictResult
	for len(dgsts) > 0 {
		batch := dgsts[:min(evictBatch, len(dgsts))]
		dgsts = dgsts[len(batch):]
		r, err := s.removeBlobs(ctx, batch, false)
		res.add(r)
		if err != nil {
			return res, err
		}
	}
	res.Size, _, _ = s.Totals()
	return res, nil
}

// RemoveSource forgets a registry (repository empty) or one repository of it: its tags go,
// and so do the blobs obtained only from there. A blob also obtained elsewhere stays, without
// this source.
func (s *Store) RemoveSource(ctx context.Context, registry, repository string) (EvictResult, error) {
	if registry == "" {
		return EvictResult{}, fmt.Errorf("registry is required: %w", errdefs.ErrInvalidArgument)
	}
	match := func(reg, repo string) bool {
		return reg == registry && (repository == "" || repo == repository)
	}
	doomed, tagsDropped, err := s.idx.removeSource(match)
	if err != nil {
		return EvictResult{}, fmt.Errorf("update index: %w", err)
	}
	res, err := s.Remove(ctx, doomed)
	res.Tags += tagsDropped
	return res, err
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Checked int   `json:"checked"`
	Bytes   int64 `json:"bytes"`
	// Corrupt blobs did not hash to their digest (or had another size than recorded); they
	// were moved to root/quarantine and their records dropped.
	Corrupt []digest.Digest `json:"corrupt"`
	// Missing blobs had a record but no file; their records were dropped.
	Missing []digest.Digest `json:"missing"`
	// Orphans are blob files without a record (only looked for when verifying all). Those
	// whose bytes match their name were recorded; the others quarantined.
	Orphans []digest.Digest `json:"orphans"`
	// LeftoverFills are files in fills/ that no running fill owns.
	LeftoverFills int `json:"leftoverFills"`
}

// Verify re-hashes the given blobs, or all of them when dgsts is empty, and quarantines
// those that do not match. progress, when set, is called after each blob.
func (s *Store) Verify(ctx context.Context, dgsts []digest.Digest, progress func(done, total int, dgst digest.Digest)) (VerifyReport, error) {
	rep := VerifyReport{Corrupt: []digest.Digest{}, Missing: []digest.Digest{}, Orphans: []digest.Digest{}}
	all := len(dgsts) == 0
	if all {
		var err error
		if dgsts, err = s.idx.digests(); err != nil {
			return rep, fmt.Errorf("read index: %w", err)
		}
	}
	for i, d := range dgsts {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if err := validateDigest(d); err != nil {
			return rep, err
		}
		rec, err := s.idx.blob(d)
		if err != nil {
			return rep, err
		}
		if rec == nil {
			if !all {
				return rep, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
			}
			continue // removed meanwhile
		}
		rep.Checked++
		s.at(fpVerifyRecord)
		switch got, size, err := hashFile(s.blobPath(d), d.Algorithm()); {
		case errors.Is(err, fs.ErrNotExist):
			// Evicted or removed since it was looked up: not missing, just gone.
			if dropped, err := s.dropRecord(d); err != nil {
				return rep, err
			} else if dropped {
				rep.Missing = append(rep.Missing, d)
			}
		case err != nil:
			return rep, storageFailed("hash blob "+d.String(), err)
		case got != d || size != rec.Size:
			log.G(ctx).WithFields(log.Fields{"digest": d, "actual": got, "size": size, "recorded": rec.Size}).Error("blob is corrupt; quarantining it")
			if err := s.quarantine(d); err != nil {
				return rep, storageFailed("quarantine "+d.String(), err)
			}
			rep.Corrupt = append(rep.Corrupt, d)
		default:
			rep.Bytes += size
			if rec.Unverified {
				_ = s.updateBlob(d, func(r *blobRecord) bool { r.Unverified = false; return true })
			}
		}
		if progress != nil {
			progress(i+1, len(dgsts), d)
		}
	}
	if all {
		if err := s.verifyOrphans(ctx, &rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// dropRecord deletes the record of d if its file is still missing under commitMu, and reports
// whether it did: a removal or a new commit may have run since the file was found missing.
func (s *Store) dropRecord(d digest.Digest) (bool, error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	return s.idx.deleteBlobIf(d, func() bool {
		_, err := os.Stat(s.blobPath(d))
		return err != nil // else committed again meanwhile
	})
}

// verifyOrphans looks for blob files without a record and for fill files nobody owns.
func (s *Store) verifyOrphans(ctx context.Context, rep *VerifyReport) error {
	var listed []digest.Digest
	for _, alg := range storedAlgorithms {
		entries, err := os.ReadDir(blobDir(s.root, alg))
		if err != nil {
			return storageFailed("list blobs", err)
		}
		for _, e := range entries {
			if d := digest.NewDigestFromEncoded(alg, e.Name()); e.Type().IsRegular() && d.Validate() == nil {
				listed = append(listed, d)
			}
		}
	}
	s.at(fpVerifyListed)
	for _, d := range listed {
		if err := s.checkOrphan(ctx, d, rep); err != nil {
			return err
		}
	}
	fills, err := os.ReadDir(s.fillsPath())
	if err != nil {
		return storageFailed("list fills", err)
	}
	s.mu.Lock()
	owned := make(map[string]bool, len(s.fills))
	for d := range s.fills {
		owned[d.Encoded()] = true
	}
	s.mu.Unlock()
	for _, e := range fills {
		hex, _, _ := strings.Cut(e.Name(), "-")
		if !owned[hex] {
			rep.LeftoverFills++
		}
	}
	return nil
}

// checkOrphan handles one listed blob file. Under commitMu a commit cannot be between its
// rename and its record, nor a removal between deleting the record and the file; so a file
// that is still there without a record really is an orphan. One that is gone was removed
// (evicted) after the listing: its record went first, and it is no orphan.
func (s *Store) checkOrphan(ctx context.Context, d digest.Digest, rep *VerifyReport) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	rec, err := s.idx.blob(d)
	if err != nil || rec != nil {
		return err
	}
	got, size, err := hashFile(s.blobPath(d), d.Algorithm())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return storageFailed("hash orphan blob "+d.String(), err)
	}
	rep.Orphans = append(rep.Orphans, d)
	if got != d {
		log.G(ctx).WithField("digest", d).Error("orphan blob file is corrupt; quarantining it")
		qdir := filepath.Join(s.root, quarantineDir)
		if err := os.MkdirAll(qdir, 0o700); err != nil {
			return storageFailed("quarantine", err)
		}
		return os.Rename(s.blobPath(d), filepath.Join(qdir, d.Encoded()))
	}
	now := time.Now().UTC()
	log.G(ctx).WithField("digest", d).Info("recording an orphan blob file that matches its name")
	return s.idx.putBlobs(map[digest.Digest]*blobRecord{d: {Size: size, CreatedAt: now, LastAccess: now}})
}

func hashFile(p string, alg digest.Algorithm) (digest.Digest, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := alg.Hash()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", n, err
	}
	return digest.NewDigest(alg, h), n, nil
}

package content

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// refDigest finds the digest in an ingest ref: containerd's fetchers name each ingest after
// the blob (remotes.MakeRefKey: "layer-sha256:…"), and its metadata store keeps that name in
// the ref it opens here (but not the expected digest, which it strips).
var refDigest = regexp.MustCompile(`sha256:[0-9a-f]{64}`)

// digestInRef returns the last sha256 digest in ref, or "".
func digestInRef(ref string) digest.Digest {
	all := refDigest.FindAllString(ref, -1)
	if len(all) == 0 {
		return ""
	}
	return digest.Digest(all[len(all)-1])
}

// writer records what the local store's writer commits (the blob file it renamed into
// blobs/sha256 gets its index record, held), and does not write a blob a second time.
//
// On a cold pull in proxy mode, containerd fetches each blob through the daemon's mirror and
// writes the bytes it receives back through this API: the mirror's fill is already writing
// the same blob into the store. So at its first Write, a writer for a blob the store has or
// is filling (named by the expected digest, or else by its ref) discards what it is sent
// (keeping count, for Status and the offset checks), and its Commit waits for the fill,
// bounded by the caller's context, then holds the store's verified copy. A writer for
// anything else writes through the local store as before.
type writer struct {
	content.Writer
	store *Store
	ref   string
	// blob is the digest the writer is for, when known before its Commit.
	blob digest.Digest

	decided bool
	// discard is set when the store has the blob or is filling it; offset and updated then
	// stand for the local writer's.
	discard bool
	offset  int64
	updated time.Time
}

func (w *writer) Write(p []byte) (int, error) {
	if !w.decided && len(p) > 0 {
		w.decided = true
		if w.blob != "" && w.store.cache.HasOrFilling(w.blob) {
			st, err := w.Writer.Status()
			if err != nil {
				return 0, err
			}
			w.discard, w.offset = true, st.Offset
		}
	}
	if !w.discard {
		return w.Writer.Write(p)
	}
	w.offset += int64(len(p))
	w.updated = time.Now()
	return len(p), nil
}

func (w *writer) Status() (content.Status, error) {
	st, err := w.Writer.Status()
	if err != nil || !w.discard {
		return st, err
	}
	st.Offset, st.UpdatedAt = w.offset, w.updated
	return st, nil
}

func (w *writer) Digest() digest.Digest {
	if w.discard {
		return w.blob
	}
	return w.Writer.Digest()
}

func (w *writer) Truncate(size int64) error {
	if !w.discard {
		return w.Writer.Truncate(size)
	}
	if size != 0 {
		return fmt.Errorf("truncate to %d: only 0 is supported: %w", size, errdefs.ErrNotImplemented)
	}
	w.offset = 0
	return nil
}

func (w *writer) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	if expected != "" && expected.Algorithm() != digest.SHA256 {
		// The local store would re-hash and store it under blobs/<algorithm>, outside the
		// cache's index.
		return fmt.Errorf("commit %s: only sha256 content is stored: %w", expected, errdefs.ErrNotImplemented)
	}
	if w.discard {
		return w.commitFilled(ctx, size, expected, opts...)
	}
	err := w.Writer.Commit(ctx, size, expected, opts...)
	if err != nil && !errdefs.IsAlreadyExists(err) {
		return err
	}
	dgst := expected
	if dgst == "" {
		dgst = w.Writer.Digest()
	}
	// A commit that cannot be held is failed, so that containerd does not rely on a blob
	// eviction may remove; its retry finds the file and holds it then.
	if _, herr := w.store.cache.Hold(ctx, dgst); herr != nil {
		return fmt.Errorf("record committed content %s: %w", dgst, herr)
	}
	if err == nil {
		log.G(ctx).WithField("digest", dgst).Debug("content committed")
	}
	return err
}

// commitFilled commits a blob whose bytes the store's fill wrote: it waits for the fill,
// checks what the caller expects against the store's verified copy, holds it, and drops the
// ingest. Bytes the caller sent were not compared with it: they came from the same fill
// (containerd fetched the blob through the mirror), and the fill verified its digest.
func (w *writer) commitFilled(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	dgst := w.blob
	if expected != "" && expected != dgst {
		return fmt.Errorf("commit %s of a writer opened for %s: %w", expected, dgst, errdefs.ErrFailedPrecondition)
	}
	if size > 0 && size != w.offset {
		return fmt.Errorf("commit of %s: %d bytes written, %d expected: %w", dgst, w.offset, size, errdefs.ErrFailedPrecondition)
	}
	if err := w.store.cache.WaitFill(ctx, dgst); err != nil {
		return fmt.Errorf("commit of %s: waiting for the store's download: %w", dgst, err)
	}
	info, err := w.store.cache.Hold(ctx, dgst)
	if err != nil {
		// The fill failed: the bytes were not kept here, so the caller must send them again.
		return fmt.Errorf("commit of %s: the store's download of it failed, write it again: %v: %w", dgst, err, errdefs.ErrUnavailable)
	}
	if info.Size != w.offset {
		return fmt.Errorf("commit of %s: %d bytes written, the stored blob has %d: %w", dgst, w.offset, info.Size, errdefs.ErrFailedPrecondition)
	}
	var base content.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return err
		}
	}
	if len(base.Labels) > 0 {
		if err := w.store.cache.SetLabels(ctx, dgst, base.Labels); err != nil {
			return fmt.Errorf("commit of %s: labels: %w", dgst, err)
		}
	}
	w.Writer.Close()
	if err := w.store.local.Abort(ctx, w.ref); err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).WithField("ref", w.ref).Warn("cannot remove the ingest of a blob the store filled")
	}
	log.G(ctx).WithField("digest", dgst).Debug("content committed from the store's fill")
	return nil
}

package blobcache

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

func openStore(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// putN stores n distinct blobs of size bytes and returns their digests, oldest first.
func putN(t *testing.T, s *Store, n, size, seed int) []digest.Digest {
	t.Helper()
	var out []digest.Digest
	for i := range n {
		b := bytes.Repeat([]byte{byte(seed + i)}, size)
		b[0] = byte((seed + i) >> 8)
		d := digest.SHA256.FromBytes(b)
		if err := s.PutBlob(t.Context(), d, "application/octet-stream", Source{Registry: "r.example", Repository: "a/b"}, b); err != nil {
			t.Fatalf("PutBlob: %v", err)
		}
		out = append(out, d)
	}
	return out
}

func present(t *testing.T, s *Store, dgsts []digest.Digest) []digest.Digest {
	t.Helper()
	var out []digest.Digest
	for _, d := range dgsts {
		ok, err := s.present(d)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			out = append(out, d)
		}
	}
	return out
}

// TestEvictionOrderAndWatermarks: passing the high mark evicts least recently used blobs
// (a read makes a blob recent) until the store is under the low mark, and no further.
func TestEvictionOrderAndWatermarks(t *testing.T) {
	// OnEvict is called once an eviction has removed its records and files.
	evictions := make(chan int, 8)
	s := openStore(t, Options{Root: t.TempDir(), MaxSize: 1000, HighWatermark: 90, LowWatermark: 50, EvictRetryInterval: time.Hour,
		OnEvict: func(blobs int, _ int64) { evictions <- blobs }})
	b := putN(t, s, 8, 100, 1) // 800 bytes, under the high mark (900)
	time.Sleep(2 * time.Millisecond)
	f, _, err := s.OpenBlob(t.Context(), b[0]) // b[0] becomes the most recently used
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	more := putN(t, s, 1, 100, 100) // 900: at the mark, not over it
	if size, _, _ := s.Totals(); size != 900 {
		t.Fatalf("size %d after 9 blobs of 100 bytes, want 900", size)
	}
	if got := present(t, s, b); len(got) != 8 {
		t.Fatalf("evicted at the high mark: %d of 8 left", len(got))
	}
	more = append(more, putN(t, s, 1, 100, 200)...) // 1000: over the mark
	select {
	case n := <-evictions:
		if n != 5 {
			t.Errorf("one eviction removed %d blobs, want 5", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no eviction 30s after passing the high mark")
	}
	size, count, _ := s.Totals()
	if size != 500 || count != 5 {
		t.Errorf("after eviction: %d bytes in %d blobs, want exactly the low mark: 500 in 5", size, count)
	}
	want := []digest.Digest{b[0], b[6], b[7], more[0], more[1]}
	if got := present(t, s, append(b, more...)); !slices.Equal(sortDigests(got), sortDigests(want)) {
		t.Errorf("kept %v, want the most recently used %v", got, want)
	}
	for _, d := range b[1:6] {
		if _, err := os.Stat(s.blobPath(d)); !os.IsNotExist(err) {
			t.Errorf("evicted blob %s still has its file (%v)", d, err)
		}
	}
}

func sortDigests(d []digest.Digest) []digest.Digest {
	d = slices.Clone(d)
	slices.Sort(d)
	return d
}

// TestEvictionSkipsOpenReaderAndHeld: a blob a client is reading and a blob containerd
// holds are not evicted; the reader gets every byte; once closed the blob goes.
func TestEvictionSkipsOpenReaderAndHeld(t *testing.T) {
	s := openStore(t, Options{Root: t.TempDir(), EvictRetryInterval: time.Hour})
	data, d := testBlob(3 << 20)
	if err := s.PutBlob(t.Context(), d, "application/octet-stream", Source{}, data); err != nil {
		t.Fatal(err)
	}
	heldData, held := testBlob(1000)
	if err := s.PutBlob(t.Context(), held, "application/octet-stream", Source{}, heldData); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hold(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	if err := s.flushAccess(); err != nil {
		t.Fatal(err)
	}

	f, _, err := s.OpenBlob(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	half := make([]byte, len(data)/2)
	if _, err := io.ReadFull(f, half); err != nil {
		t.Fatal(err)
	}
	res, err := s.EvictTo(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Blobs != 0 || res.InUse != 1 || res.Held != 1 {
		t.Errorf("eviction while reading: %+v, want nothing evicted, 1 in use, 1 held", res)
	}
	rest, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(half, rest...), data) {
		t.Error("reader got other bytes than the blob while eviction ran")
	}
	f.Close()
	// Used during the last eviction: still recent until flushed; the next eviction takes it.
	res, err = s.EvictTo(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Blobs != 1 || res.Held != 1 {
		t.Errorf("eviction after the reader closed: %+v, want 1 evicted, 1 held", res)
	}
	if _, _, err := s.OpenBlob(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Errorf("OpenBlob after eviction: %v, want not found", err)
	}
	if ok, _ := s.present(held); !ok {
		t.Error("held blob was evicted")
	}
}

// TestEvictionRacingReaders: readers open and stream blobs while evictions run; every
// read either fails to open (not found) or returns the blob's exact bytes.
func TestEvictionRacingReaders(t *testing.T) {
	s := openStore(t, Options{Root: t.TempDir(), EvictRetryInterval: time.Hour})
	blobs := map[digest.Digest][]byte{}
	for i := range 20 {
		b, d := testBlob(100000 + i)
		blobs[d] = b
		if err := s.PutBlob(t.Context(), d, "", Source{}, b); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	errs := make(chan error, 4)
	for w := range 4 {
		go func() {
			for i := 0; ctx.Err() == nil && i < 500; i++ {
				for d, want := range blobs {
					f, _, err := s.OpenBlob(ctx, d)
					if errdefs.IsNotFound(err) {
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					got, err := io.ReadAll(f)
					f.Close()
					if err != nil || !bytes.Equal(got, want) {
						errs <- err
						if err == nil {
							t.Errorf("worker %d: %s read %d bytes differing from the blob", w, d, len(got))
						}
						return
					}
				}
				runtime.Gosched()
			}
			errs <- nil
		}()
	}
	for range 50 {
		if _, err := s.EvictTo(ctx, 0); err != nil && ctx.Err() == nil {
			t.Fatal(err)
		}
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Errorf("reader: %v", err)
		}
	}
}

// TestEvictionDropsTagsOfManifest: a tag never points at a manifest the store no longer has.
func TestEvictionDropsTagsOfManifest(t *testing.T) {
	s := openStore(t, Options{Root: t.TempDir(), EvictRetryInterval: time.Hour})
	m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	md := digest.SHA256.FromBytes(m)
	if err := s.PutBlob(t.Context(), md, "application/vnd.oci.image.manifest.v1+json", Source{}, m); err != nil {
		t.Fatal(err)
	}
	other := []byte(`{"other":1}`)
	od := digest.SHA256.FromBytes(other)
	if err := s.PutBlob(t.Context(), od, "application/vnd.oci.image.manifest.v1+json", Source{}, other); err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"v1", "latest"} {
		if err := s.PutTag(t.Context(), "r.example", "a/b", tag, TagRecord{Digest: md, Size: int64(len(m))}); err != nil {
			t.Fatal(err)
		}
	}
	// Re-pointed tag: it must survive the removal of the manifest it used to point at.
	if err := s.PutTag(t.Context(), "r.example", "a/b", "moved", TagRecord{Digest: md}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag(t.Context(), "r.example", "a/b", "moved", TagRecord{Digest: od}); err != nil {
		t.Fatal(err)
	}
	res, err := s.Remove(t.Context(), []digest.Digest{md})
	if err != nil {
		t.Fatal(err)
	}
	if res.Blobs != 1 || res.Tags != 2 {
		t.Errorf("remove: %+v, want 1 blob and 2 tags", res)
	}
	for _, tag := range []string{"v1", "latest"} {
		if _, err := s.GetTag(t.Context(), "r.example", "a/b", tag); !errdefs.IsNotFound(err) {
			t.Errorf("tag %s after its manifest was removed: %v, want not found", tag, err)
		}
	}
	if rec, err := s.GetTag(t.Context(), "r.example", "a/b", "moved"); err != nil || rec.Digest != od {
		t.Errorf("re-pointed tag: %+v, %v", rec, err)
	}
}

// TestAccessTimesBatched: a hit does not write the index; the flush writes them all at once.
func TestAccessTimesBatched(t *testing.T) {
	s := openStore(t, Options{Root: t.TempDir(), AccessFlushInterval: time.Hour})
	d := putN(t, s, 1, 10, 1)[0]
	before, _ := s.idx.blob(d)
	for range 100 {
		f, _, err := s.OpenBlob(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	after, _ := s.idx.blob(d)
	if !after.LastAccess.Equal(before.LastAccess) {
		t.Error("a hit wrote its access time to the index at once")
	}
	if err := s.flushAccess(); err != nil {
		t.Fatal(err)
	}
	flushed, _ := s.idx.blob(d)
	if !flushed.LastAccess.After(before.LastAccess) {
		t.Error("flush did not record the access time")
	}
}

// TestCrashIntentsCompleted: a blob file renamed in (or being removed) without its record,
// as a kill -9 between the two leaves it, is removed at the next Open.
func TestCrashIntentsCompleted(t *testing.T) {
	root := t.TempDir()
	s, err := Open(t.Context(), Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	data, d := testBlob(5000)
	if err := os.WriteFile(s.blobPath(d), data, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := s.idx.db.Update(func(tx *boltTx) error { return putIntent(tx, d) }); err != nil {
		t.Fatal(err)
	}
	kept := putN(t, s, 1, 10, 7)[0]
	if err := s.idx.db.Update(func(tx *boltTx) error { return putIntent(tx, kept) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, Options{Root: root})
	if _, err := os.Stat(s.blobPath(d)); !os.IsNotExist(err) {
		t.Errorf("unrecorded blob file with an intent survived Open: %v", err)
	}
	if ok, _ := s.present(kept); !ok {
		t.Error("recorded blob with a stale intent was removed")
	}
	rep, err := s.Verify(t.Context(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Corrupt)+len(rep.Missing)+len(rep.Orphans) != 0 || rep.Checked != 1 {
		t.Errorf("verify after recovery: %+v", rep)
	}
}

// TestCorruptIndexRebuilt: garbage in index.db (or no index.db) does not stop Open: the
// damaged file is moved aside, the blobs are found again from their files and hashed
// before they are served; a corrupt file is quarantined, not served.
func TestCorruptIndexRebuilt(t *testing.T) {
	for _, damage := range []string{"garbage", "truncated", "missing"} {
		t.Run(damage, func(t *testing.T) {
			root := t.TempDir()
			s, err := Open(t.Context(), Options{Root: root})
			if err != nil {
				t.Fatal(err)
			}
			good := putN(t, s, 3, 4096, 10)
			bad := putN(t, s, 1, 4096, 50)[0]
			s.Close()
			// Same size, other bytes: only hashing can tell.
			os.Chmod(s.blobPath(bad), 0o644)
			if err := os.WriteFile(s.blobPath(bad), bytes.Repeat([]byte("x"), 4096), 0o444); err != nil {
				t.Fatal(err)
			}
			dbPath := filepath.Join(root, indexFile)
			switch damage {
			case "garbage":
				junk := bytes.Repeat([]byte("not a bbolt file "), 4096)
				if err := os.WriteFile(dbPath, junk, 0o600); err != nil {
					t.Fatal(err)
				}
			case "truncated":
				if err := os.Truncate(dbPath, 100); err != nil {
					t.Fatal(err)
				}
			case "missing":
				if err := os.Remove(dbPath); err != nil {
					t.Fatal(err)
				}
			}
			s = openStore(t, Options{Root: root})
			size, count, err := s.Totals()
			if err != nil || count != 4 || size != 4*4096 {
				t.Errorf("rebuilt index: %d blobs, %d bytes (%v), want 4, %d", count, size, err, 4*4096)
			}
			for _, d := range good {
				f, _, err := s.OpenBlob(t.Context(), d)
				if err != nil {
					t.Fatalf("OpenBlob %s after rebuild: %v", d, err)
				}
				f.Close()
			}
			if _, _, err := s.OpenBlob(t.Context(), bad); !errdefs.IsNotFound(err) {
				t.Errorf("corrupt blob after rebuild: %v, want not found", err)
			}
			if _, err := os.Stat(filepath.Join(root, quarantineDir, bad.Encoded())); err != nil {
				t.Errorf("corrupt blob not quarantined: %v", err)
			}
			aside, _ := filepath.Glob(dbPath + ".damaged-*")
			if want := damage != "missing"; want != (len(aside) == 1) {
				t.Errorf("damaged index moved aside: %v", aside)
			}
		})
	}
}

// TestRebuildHoldsWhenAsked: the holds are lost with the index; with HoldRebuilt (the daemon
// serves the content API) every rebuilt blob is held, so eviction spares what containerd may
// still refer to, and a Release (containerd's collection) makes it evictable again. Without
// it, nothing is held.
func TestRebuildHoldsWhenAsked(t *testing.T) {
	for _, holdRebuilt := range []bool{true, false} {
		t.Run(fmt.Sprintf("HoldRebuilt=%v", holdRebuilt), func(t *testing.T) {
			root := t.TempDir()
			s := openStore(t, Options{Root: root})
			dgsts := putN(t, s, 3, 1024, 70)
			if _, err := s.Hold(t.Context(), dgsts[0]); err != nil {
				t.Fatal(err)
			}
			s.Close()
			if err := os.Remove(filepath.Join(root, indexFile)); err != nil {
				t.Fatal(err)
			}
			s = openStore(t, Options{Root: root, HoldRebuilt: holdRebuilt})
			held, err := s.HeldBlobs(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if holdRebuilt {
				want = len(dgsts)
			}
			if len(held) != want {
				t.Fatalf("held after rebuild: %v, want %d blobs", held, want)
			}
			if holdRebuilt {
				if err := s.Release(t.Context(), dgsts[1]); err != nil {
					t.Fatal(err)
				}
			}
			res, err := s.EvictTo(t.Context(), 0)
			if err != nil {
				t.Fatal(err)
			}
			left := present(t, s, dgsts)
			if holdRebuilt && (res.Blobs != 1 || !slices.Equal(left, []digest.Digest{dgsts[0], dgsts[2]})) {
				t.Errorf("evict after rebuild with holds: %+v, left %v, want only the released blob gone", res, left)
			}
			if !holdRebuilt && len(left) != 0 {
				t.Errorf("evict after rebuild without holds: left %v, want none", left)
			}
		})
	}
}

// TestMigrateSchema1: an index written before the access order and totals existed gets
// them at Open.
func TestMigrateSchema1(t *testing.T) {
	root := t.TempDir()
	s, err := Open(t.Context(), Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	putN(t, s, 5, 100, 1)
	err = s.idx.db.Update(func(tx *boltTx) error {
		v1 := tx.Bucket(bucketV1)
		for _, name := range [][]byte{bucketAtime, bucketMeta, bucketTagRefs, bucketIntents} {
			if err := v1.DeleteBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, Options{Root: root})
	if size, count, _ := s.Totals(); size != 500 || count != 5 {
		t.Errorf("migrated totals %d bytes %d blobs, want 500, 5", size, count)
	}
	if res, err := s.EvictTo(t.Context(), 200); err != nil || res.Blobs != 3 {
		t.Errorf("evict after migration: %+v %v", res, err)
	}
}

type boltTx = bolt.Tx

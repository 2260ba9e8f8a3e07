package blobcache

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// crash abandons s as a kill -9 would: the goroutines of the store stop, the index is closed
// without writing anything more (no access-time flush, no intent cleared), and the files stay
// as they are.
func crash(t *testing.T, s *Store) {
	t.Helper()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.bg.Wait()
	if err := s.idx.db.Close(); err != nil {
		t.Fatal(err)
	}
}

// runUntilCrash runs op in a goroutine that stops for good at failpoint point, as the process
// would at a kill there, and returns once it stopped (or op returned: the point was never
// reached, which fails the test).
func runUntilCrash(t *testing.T, s *Store, point string, op func()) {
	t.Helper()
	reached := make(chan bool, 1)
	s.failpoint = func(p string) {
		if p == point {
			reached <- true
			runtime.Goexit()
		}
	}
	go func() {
		defer func() { reached <- false }()
		op()
	}()
	if !<-reached {
		t.Fatalf("failpoint %s not reached", point)
	}
}

// assertConsistent checks what verify and the kill loop check: verify finds nothing to
// repair, and the index lists exactly the blob files.
func assertConsistent(t *testing.T, s *Store) {
	t.Helper()
	rep, err := s.Verify(t.Context(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Corrupt)+len(rep.Missing)+len(rep.Orphans)+rep.LeftoverFills != 0 {
		t.Errorf("verify: %+v", rep)
	}
	var recorded, files []digest.Digest
	if err := s.ListBlobs(t.Context(), func(e BlobEntry) error {
		recorded = append(recorded, e.Digest)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, name := range dirEntries(t, filepath.Join(s.Root(), "blobs", "sha256")) {
		files = append(files, digest.NewDigestFromEncoded(digest.SHA256, name))
	}
	slices.Sort(recorded)
	slices.Sort(files)
	if !slices.Equal(recorded, files) {
		t.Errorf("index records %v, blob files %v", recorded, files)
	}
}

// TestCrashBetweenSteps stops a commit and a removal at each step between their index
// transactions and their file operations, as a kill -9 there would, and opens the store
// again: the next start leaves no blob file without a record and no record without a file.
func TestCrashBetweenSteps(t *testing.T) {
	for _, tc := range []struct {
		point string
		op    func(t *testing.T, s *Store, victim digest.Digest, data []byte)
	}{
		{fpCommitRenamed, func(t *testing.T, s *Store, d digest.Digest, data []byte) {
			s.PutBlob(t.Context(), d, "application/octet-stream", Source{}, data)
		}},
		{fpRemoveRecorded, func(t *testing.T, s *Store, d digest.Digest, _ []byte) {
			s.Remove(t.Context(), []digest.Digest{d})
		}},
		{fpRemoveUnlinked, func(t *testing.T, s *Store, d digest.Digest, _ []byte) {
			s.Remove(t.Context(), []digest.Digest{d})
		}},
	} {
		t.Run(tc.point, func(t *testing.T) {
			root := t.TempDir()
			s, err := Open(t.Context(), Options{Root: root})
			if err != nil {
				t.Fatal(err)
			}
			putN(t, s, 3, 100, 1)
			data, d := testBlob(4000)
			if tc.point != fpCommitRenamed {
				if err := s.PutBlob(t.Context(), d, "", Source{}, data); err != nil {
					t.Fatal(err)
				}
			}
			runUntilCrash(t, s, tc.point, func() { tc.op(t, s, d, data) })
			crash(t, s)

			s = openStore(t, Options{Root: root})
			assertConsistent(t, s)
		})
	}
}

// TestVerifyDuringEviction: blobs evicted while verify runs are gone, neither orphans nor
// missing. The kill loop's verify reported blobs evicted after it listed the blob files as
// orphans (their files were gone by the time it checked them); one evicted between its
// record and its file would have been reported missing.
func TestVerifyDuringEviction(t *testing.T) {
	for _, point := range []string{fpVerifyListed, fpVerifyRecord} {
		t.Run(point, func(t *testing.T) {
			s := newTestStore(t)
			dgsts := putN(t, s, 4, 100, 1)
			removed := false
			s.failpoint = func(p string) {
				if p != point || removed {
					return
				}
				removed = true
				if res, err := s.Remove(t.Context(), dgsts); err != nil || res.Blobs != len(dgsts) {
					t.Errorf("Remove: %+v, %v", res, err)
				}
			}
			rep, err := s.Verify(t.Context(), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !removed {
				t.Fatalf("verify never reached %s", point)
			}
			if len(rep.Orphans) != 0 || len(rep.Missing) != 0 {
				t.Errorf("verify reported blobs evicted during its run as orphans %v / missing %v", rep.Orphans, rep.Missing)
			}
			for _, d := range dgsts {
				if _, err := os.Stat(s.blobPath(d)); !os.IsNotExist(err) {
					t.Errorf("removed blob %s has a file: %v", d, err)
				}
			}
			assertConsistent(t, s)
		})
	}
}

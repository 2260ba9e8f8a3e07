package integration

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// assertNoFillsLeft waits until the store's fills/ directory is empty: every download is
// over and nothing partial was kept. The daemon may be running.
func assertNoFillsLeft(t *testing.T, root string) {
	t.Helper()
	harness.WaitFor(t, "no fills left in "+root, 30*time.Second, 50*time.Millisecond, func() error {
		entries, err := os.ReadDir(filepath.Join(root, "fills"))
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		if len(entries) > 0 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			return fmt.Errorf("fills left: %s", strings.Join(names, ", "))
		}
		return nil
	})
}

// assertBlobFilesIntact re-hashes every blob file and checks it against its name. The
// daemon may be running (committed blob files never change).
func assertBlobFilesIntact(t *testing.T, root string) int {
	t.Helper()
	files := blobFiles(t, root)
	for d, path := range files {
		if got, err := hashFile(path); err != nil {
			t.Errorf("blob %s: %v", d, err)
		} else if got != d {
			t.Errorf("blob file %s hashes to %s: corrupt content committed", path, got)
		}
	}
	return len(files)
}

// storeReport is what verifyStoreOffline found.
type storeReport struct {
	Files, Records int
	// Orphans are intact blob files without an index record: what a kill between a
	// commit's rename and its index update leaves. They are never served as such (a
	// request fetches the blob again, and the commit then records the file in place).
	Orphans int
}

// verifyStoreOffline checks a store whose daemon is stopped: no fill left, every blob file
// hashes to its name, every index record has its file with the recorded size, and every
// file has its record; then blobcache.Open must open it and serve each blob. It is the one
// place to switch to the daemon's `verify` command once that exists.
func verifyStoreOffline(t *testing.T, root string) storeReport {
	t.Helper()
	var rep storeReport
	if entries, err := os.ReadDir(filepath.Join(root, "fills")); err == nil && len(entries) > 0 {
		// A daemon killed with -9 leaves its fills; the next start removes them. A
		// stopped daemon that was started again after the kill must not.
		t.Errorf("%d fills left in %s", len(entries), root)
	}
	files := blobFiles(t, root)
	rep.Files = len(files)
	for d, path := range files {
		if got, err := hashFile(path); err != nil {
			t.Errorf("blob %s: %v", d, err)
		} else if got != d {
			t.Errorf("blob file %s hashes to %s", path, got)
		}
	}

	records := map[digest.Digest]int64{}
	db, err := bolt.Open(filepath.Join(root, "index.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open index read-only: %v", err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		v1 := tx.Bucket([]byte("v1"))
		if v1 == nil {
			return fmt.Errorf("no v1 bucket")
		}
		b := v1.Bucket([]byte("blobs"))
		if b == nil {
			return fmt.Errorf("no v1/blobs bucket")
		}
		return b.ForEach(func(k, v []byte) error {
			var rec struct {
				Size int64 `json:"size"`
			}
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("record %s: %w", k, err)
			}
			records[digest.Digest(k)] = rec.Size
			return nil
		})
	})
	db.Close()
	if err != nil {
		t.Fatalf("read index: %v", err)
	}
	rep.Records = len(records)
	for d, size := range records {
		path, ok := files[d]
		if !ok {
			t.Errorf("index records %s (%d bytes) but its file is missing", d, size)
			continue
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() != size {
			t.Errorf("index records %s with %d bytes, file: %v %v", d, size, fi, err)
		}
	}
	for d := range files {
		if _, ok := records[d]; !ok {
			// Intact (hashed above) but unrecorded: the one disagreement a crash may leave.
			rep.Orphans++
			t.Logf("blob file %s has no index record (intact orphan of an interrupted commit)", d)
		}
	}

	ctx := context.Background()
	store, err := blobcache.Open(ctx, blobcache.Options{Root: root})
	if err != nil {
		t.Fatalf("blobcache.Open(%s): %v", root, err)
	}
	defer store.Close()
	for d := range records {
		f, info, err := store.OpenBlob(ctx, d)
		if err != nil {
			t.Errorf("store cannot open recorded blob %s: %v", d, err)
			continue
		}
		got, err := hashReader(f)
		f.Close()
		if err != nil || got != d || info.Size != records[d] {
			t.Errorf("store serves %s as %s (%v), size %d", d, got, err, info.Size)
		}
	}
	return rep
}

func blobFiles(t *testing.T, root string) map[digest.Digest]string {
	t.Helper()
	dir := filepath.Join(root, "blobs", "sha256")
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[digest.Digest]string{}
	for _, e := range entries {
		if e.Type().IsRegular() {
			out[digest.NewDigestFromEncoded(digest.SHA256, e.Name())] = filepath.Join(dir, e.Name())
		} else {
			t.Errorf("unexpected entry %s in %s", e.Name(), dir)
		}
	}
	return out
}

func hashFile(path string) (digest.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return hashReader(f)
}

func hashReader(r io.Reader) (digest.Digest, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return digest.NewDigest(digest.SHA256, h), nil
}

// writeMeasure logs a MEASURE line and appends it to $BLOBCACHE_MEASURE_FILE when set.
func writeMeasure(t *testing.T, format string, args ...any) {
	t.Helper()
	line := "MEASURE " + fmt.Sprintf(format, args...)
	t.Log(line)
	if f := os.Getenv("BLOBCACHE_MEASURE_FILE"); f != "" {
		if err := appendLine(f, line); err != nil {
			t.Errorf("write %s: %v", f, err)
		}
	}
}

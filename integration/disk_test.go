package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// mountTmpfs mounts a tmpfs of the given size ("8m") on a new directory and unmounts it
// when the test ends.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s: %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestDiskFullMidBlob runs the store on an 8 MiB tmpfs and pulls an image with a 12 MB
// layer: the fill runs out of space in the middle of the blob. The pull must succeed
// through the mirror (the daemon continues that response from upstream), nothing partial
// may remain, and once the filesystem has room again the same blob is cached.
func TestDiskFullMidBlob(t *testing.T) {
	harness.RequireRoot(t)
	harness.Tools(t)
	reg := harness.StartRegistry(t)
	o := origin{reg: reg, proxy: harness.StartCountingProxy(t, reg.URL)}
	fs := mountTmpfs(t, "8m")
	root := filepath.Join(fs, "store")
	daemon := harness.StartDaemon(t, harness.DaemonConfig{Root: root, Registries: []string{o.proxy.Host}})
	front := harness.StartCountingProxy(t, daemon.URL)
	hostsDir := t.TempDir()
	if _, err := harness.WriteHostsToml(hostsDir, o.proxy.Host, front.URL); err != nil {
		t.Fatal(err)
	}
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: hostsDir})

	im, ref := o.push(t, "disk/full", "v1", harness.ImageSpec{Layers: []harness.LayerSpec{
		{Seed: 60000, Files: 1, FileSize: 1 << 20},
		{Seed: 60001, Files: 6, FileSize: 2 << 20}, // 12 MB: larger than the filesystem
	}})
	big := im.Layers[1].Descriptor
	ctrd.Pull(t, "full", ref, hostsDir)

	c := o.proxy.Snapshot()
	if d := c.Direct(); len(d.Requests) != 0 {
		t.Errorf("containerd went to the origin itself: the daemon failed instead of bypassing:\n%s", d)
	}
	if daemon.HasBlob(big.Digest, -1) {
		t.Errorf("the 12 MB blob is in an 8 MiB store")
	}
	var bigResult string
	for _, r := range front.Snapshot().Requests {
		if r.Kind == harness.KindBlob && r.Ref == big.Digest.String() && r.Method == http.MethodGet {
			bigResult = r.Result
		}
	}
	if bigResult != harness.ResultBypass && bigResult != harness.ResultMiss {
		t.Errorf("the big blob was answered %q", bigResult)
	}
	assertNoFillsLeft(t, root)
	n := assertBlobFilesIntact(t, root)
	// The small blobs fit and were cached.
	for _, b := range im.Blobs() {
		if b.Digest != big.Digest && !daemon.HasBlob(b.Digest, b.Size) {
			t.Errorf("small blob %s not cached", b.Digest)
		}
	}
	if free := freeBytes(t, fs); free < 1<<20 {
		t.Errorf("only %d bytes free after the failed fill: its partial file was not removed", free)
	}

	// Room again: the daemon caches the big blob on the next pull, without a restart.
	if out, err := exec.Command("mount", "-o", "remount,size=64m", fs).CombinedOutput(); err != nil {
		t.Fatalf("grow tmpfs: %v: %s", err, out)
	}
	ctrd.Pull(t, "full2", ref, hostsDir)
	harness.WaitFor(t, "big blob cached once there is room", 30*time.Second, 50*time.Millisecond, func() error {
		if !daemon.Cached(t, big.Digest, big.Size) {
			return fmt.Errorf("not cached")
		}
		return nil
	})
	assertNoFillsLeft(t, root)
	if err := daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	rep := verifyStoreOffline(t, root)
	writeMeasure(t, "disk full-mid-blob fs=8MiB blob=%dMB first_pull_result=%s blobs_cached_while_full=%d after_growing=%d", big.Size>>20, bigResult, n, rep.Files)
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// TestMirrorReadOnlyStoreResumes extends the read-only store case (see
// TestMirrorReadOnlyStoreBypasses): once the store is writable again, without a restart,
// the next pull is cached, and nothing partial was left by the read-only period.
func TestMirrorReadOnlyStoreResumes(t *testing.T) {
	e := newMirrorEnv(t, 1)
	o := e.origins[0]
	im, ref := o.push(t, "test/readonly-resume", "v1", smallImage(61000))
	undo := harness.MakeReadOnly(t, e.daemon.Config.Root)
	e.ctrd.Pull(t, "ro1", ref, e.hostsDir)
	if d := o.proxy.Snapshot().Direct(); len(d.Requests) != 0 {
		t.Errorf("containerd went to the origin itself with a read-only store:\n%s", d)
	}
	for _, b := range im.Blobs() {
		if e.daemon.HasBlob(b.Digest, -1) {
			t.Errorf("blob %s stored in a read-only store", b.Digest)
		}
	}
	undo()
	e.resetCounts()
	e.ctrd.Pull(t, "ro2", ref, e.hostsDir)
	harness.WaitFor(t, "blobs cached once the store is writable", 30*time.Second, 50*time.Millisecond, func() error {
		for _, b := range im.Blobs() {
			if !e.daemon.Cached(t, b.Digest, b.Size) {
				return fmt.Errorf("%s not cached", b.Digest)
			}
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := im.Layers[0].Descriptor
	r, err := e.daemon.GetBlob(ctx, o.proxy.Host, "test/readonly-resume", l.Digest)
	if err != nil || r.Status != http.StatusOK || r.Digest != l.Digest || r.Result() != harness.ResultHit {
		t.Errorf("GET after the store came back: %v %d %s %q", err, r.Status, r.Digest, r.Result())
	}
	assertNoFillsLeft(t, e.daemon.Config.Root)
	if err := e.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	verifyStoreOffline(t, e.daemon.Config.Root)
}

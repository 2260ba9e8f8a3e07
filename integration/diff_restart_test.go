package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// upperDirEntries counts the entries of dir (relative to a layer's root) in every overlayfs
// snapshot directory of containerd: the applier writes a layer straight into its snapshot's
// upper directory, so a growing count is an Apply in progress.
func upperDirEntries(c *harness.Containerd, dir string) int {
	matches, _ := filepath.Glob(filepath.Join(c.Root, "io.containerd.snapshotter.v1.overlayfs", "snapshots", "*", "fs", dir))
	n := 0
	for _, m := range matches {
		entries, err := os.ReadDir(m)
		if err == nil {
			n += len(entries)
		}
	}
	return n
}

// TestProxyDiffDaemonKilledDuringUnpack kills the daemon (SIGKILL, by PID) while it applies
// the large last layer of an image: the pull fails at once, naming the layer it could not
// extract (no hang: the wait is bounded), the half-written layer is not committed, and once the daemon is
// started again on the same root the next pull succeeds without downloading anything again
// (no blob GET reaches the origin), applies the layer anew, and a container sees all of it.
func TestProxyDiffDaemonKilledDuringUnpack(t *testing.T) {
	e, c := newProxyDiffEnv(t)
	harness.RequireCommand(t, "runc", "runc")
	// Many files: the applier's work per file (create, write, chown, chmod, times) makes the
	// Apply last long enough to be seen in progress.
	const seed, files = 9100, 3000
	spec := harness.ImageSpec{Layers: []harness.LayerSpec{
		{Busybox: true},
		{Seed: seed, Files: files, FileSize: 32 << 10},
	}}
	im, ref := e.push(t, "test/killed", "v1", spec)
	big := im.Layers[1].Descriptor.Digest
	bigDir := fmt.Sprintf("data/%d", seed)
	t.Logf("image %s: %d layers, %d bytes; the last has %d files", ref, len(im.Layers), im.Size(), files)

	e.resetCounts()
	done := pullInBackground(c, "diff", ref, e.hostsDir)
	harness.WaitFor(t, "the daemon applying the large layer", 2*time.Minute, time.Millisecond, func() error {
		select {
		case r := <-done:
			return fmt.Errorf("%w: the pull ended (%v) before the large layer's apply was seen", harness.ErrStopWaiting, r.err)
		default:
		}
		if upperDirEntries(c, bigDir) == 0 {
			return fmt.Errorf("no file of %s in a snapshot yet", bigDir)
		}
		return nil
	})
	pid := e.daemon.Process.PID()
	if err := e.daemon.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	atKill := upperDirEntries(c, bigDir)
	t.Logf("killed daemon pid %d with %d of %d files of the layer written", pid, atKill, files)

	var first pullResult
	select {
	case first = <-done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the pull still runs 90s after the daemon was killed")
	}
	t.Logf("the pull ended %v after the kill: %v", time.Since(killed).Round(time.Millisecond), first.err)
	if first.err == nil {
		t.Fatalf("the pull succeeded although the daemon was killed during its unpack:\n%s", first.out)
	}
	// containerd says which layer it could not extract, and why: "failed to extract layer
	// (<media type> <digest>) to overlayfs as ...: error reading from server: EOF".
	if msg := first.err.Error(); !strings.Contains(msg, "failed to extract layer") || !strings.Contains(msg, big.String()) {
		t.Errorf("the pull's error does not name the layer whose extraction failed: %v", first.err)
	}
	if n := appliedLayers(t, e.daemon)[big]; n != 0 {
		t.Fatalf("the daemon logged the large layer applied %d times before it was killed: the kill came too late", n)
	}
	if atKill >= files {
		t.Fatalf("all %d files were written when the daemon was killed: the kill came too late", atKill)
	}
	snaps := c.Snapshots(t, "diff")
	top := chainIDs(t, im)[1]
	for _, s := range snaps {
		if s == top {
			t.Errorf("the half-applied layer was committed as snapshot %s", top)
		}
	}

	e.daemon.Restart(t)
	e.resetCounts()
	c.Pull(t, "diff", ref, e.hostsDir)
	origin := e.origin.Snapshot()
	if gets, n := origin.TotalBlobGETs(), origin.BlobBytes(); gets != 0 || n != 0 {
		t.Errorf("the pull after the restart downloaded again: %d blob GETs, %d bytes from the origin\n%s", gets, n, origin)
	}
	t.Logf("after the restart: origin %d blob GETs; mirror %d blob requests", origin.TotalBlobGETs(), mirrorBlobRequests(e.front.Snapshot()))
	if n := appliedLayers(t, e.daemon)[big]; n != 1 {
		t.Errorf("the restarted daemon applied the large layer %d times, want 1", n)
	}
	if n := diffOps(t, e.daemon, "apply", "error"); n != 0 {
		t.Errorf("%v applies failed after the restart", n)
	}
	out, err := c.CtrE(t.Context(), "diff", "run", "--rm", ref, "killed-check", "/bin/busybox", "sh", "-c",
		fmt.Sprintf("ls /%s | /bin/busybox wc -l; /bin/busybox stat -c %%s /%s/file-%04d.bin", bigDir, bigDir, files-1))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%d\n%d\n", files, 32<<10); out != want {
		t.Errorf("the container sees %q in %s, want %q (every file, full size)", out, bigDir, want)
	}
}

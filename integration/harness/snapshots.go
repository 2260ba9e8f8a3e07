package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
)

// snapshotMounts runs a ctr snapshots command that prints mounts as JSON (prepare or view
// with --mounts) and decodes them.
func (c *Containerd) snapshotMounts(t testing.TB, ns string, args ...string) []mount.Mount {
	t.Helper()
	out := c.Ctr(t, ns, append([]string{"snapshots", "--snapshotter", "overlayfs"}, args...)...)
	var mounts []mount.Mount
	if err := json.Unmarshal([]byte(out), &mounts); err != nil {
		t.Fatalf("ctr snapshots %s: mounts %q: %v", strings.Join(args, " "), out, err)
	}
	if len(mounts) == 0 {
		t.Fatalf("ctr snapshots %s: no mounts", strings.Join(args, " "))
	}
	return mounts
}

// removeSnapshotAtCleanup removes snapshot key when the test ends (after whatever was
// mounted from it has been unmounted: cleanups run last-registered first).
func (c *Containerd) removeSnapshotAtCleanup(t testing.TB, ns, key string) {
	t.Cleanup(func() {
		if _, err := c.CtrE(context.Background(), ns, "snapshots", "--snapshotter", "overlayfs", "rm", key); err != nil {
			t.Logf("remove snapshot %s: %v", key, err)
		}
	})
}

// SnapshotView makes a read-only view (key) of the committed snapshot parent in namespace
// ns and returns its mounts; the view is removed when the test ends.
func (c *Containerd) SnapshotView(t testing.TB, ns, key, parent string) []mount.Mount {
	t.Helper()
	mounts := c.snapshotMounts(t, ns, "view", "--mounts", key, parent)
	c.removeSnapshotAtCleanup(t, ns, key)
	return mounts
}

// SnapshotPrepare makes an active snapshot (key) on the committed snapshot parent in
// namespace ns and returns its mounts; it is removed when the test ends.
func (c *Containerd) SnapshotPrepare(t testing.TB, ns, key, parent string) []mount.Mount {
	t.Helper()
	mounts := c.snapshotMounts(t, ns, "prepare", "--mounts", key, parent)
	c.removeSnapshotAtCleanup(t, ns, key)
	return mounts
}

// LayerDirs returns the directories holding each layer of a read-only overlayfs view,
// bottom layer first: the source of a one-layer view's bind mount, or the lowerdir list of
// an overlay mount (which names the top layer first).
func LayerDirs(mounts []mount.Mount) ([]string, error) {
	if len(mounts) != 1 {
		return nil, fmt.Errorf("%d mounts, want one", len(mounts))
	}
	m := mounts[0]
	switch m.Type {
	case "bind":
		return []string{m.Source}, nil
	case "overlay":
		for _, o := range m.Options {
			if strings.HasPrefix(o, "upperdir=") {
				return nil, fmt.Errorf("overlay mount has an upper directory: not a view")
			}
			if lower, ok := strings.CutPrefix(o, "lowerdir="); ok {
				dirs := strings.Split(lower, ":")
				slices.Reverse(dirs)
				return dirs, nil
			}
		}
		return nil, fmt.Errorf("overlay mount without lowerdir: %v", m.Options)
	default:
		return nil, fmt.Errorf("mount type %q: not an overlayfs snapshot", m.Type)
	}
}

// MountAt mounts mounts at a new temporary directory and returns it; it is unmounted when
// the test ends (or earlier by the returned function, which may be called more than once).
func MountAt(t testing.TB, mounts []mount.Mount) (string, func()) {
	t.Helper()
	target := ShortTempDir(t, "mnt-")
	if err := mount.All(mounts, target); err != nil {
		t.Fatalf("mount %+v at %s: %v", mounts, target, err)
	}
	mounted := true
	unmount := func() {
		if !mounted {
			return
		}
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
			return
		}
		mounted = false
	}
	t.Cleanup(unmount)
	return target, unmount
}

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// These tests check what the daemon's diff API unpacks against containerd itself, on
// UnpackTestImage: a busybox layer and three layers of whiteouts, an opaque directory,
// hardlinks, symlinks, special modes, owners, xattrs and device nodes.

// pushUnpackImage pushes UnpackTestImage to the environment's origin.
func (e *proxyEnv) pushUnpackImage(t *testing.T, repo string) (*harness.Image, string) {
	t.Helper()
	return e.push(t, repo, "v1", harness.UnpackTestImage())
}

// unpackCheckScript runs in a container of UnpackTestImage and prints what the layers must
// have made of the root file system; unpackCheckWant is its output.
const unpackCheckScript = `B=/bin/busybox
for p in /del/gone.txt /deldir /etc/app/remove-me /opq/old1 /opq/sub; do
  if [ -e "$p" ]; then echo "present $p"; else echo "absent $p"; fi
done
cat /del/gone2.txt /del/keep.txt /opq/new1 /opq/new2 /etc/app/conf /sym/rel /sym/abs-link
$B stat -c '%n %a %u:%g' /etc/app/conf /modes/setuid /modes/setgid /modes/sticky /modes/ro /owners/file /owners/dir /owners/dir/newfile /hl/orig
$B stat -c '%n has %h links' /hl/orig
if [ "$($B stat -c %i /hl/orig)" = "$($B stat -c %i /hl/link2)" ]; then echo hl/link2 is hl/orig; fi
for l in /sym/rel /sym/dir /sym/dangling; do $B readlink $l; done
$B stat -c '%n %F %t:%T' /devnodes/null /devnodes/fifo /replace /replace-file
`

const unpackCheckWant = `absent /del/gone.txt
absent /deldir
absent /etc/app/remove-me
absent /opq/old1
absent /opq/sub
back
kept
new in the opaque directory
second file in the opaque directory
version 2
version 2
a symlink that became a file
/etc/app/conf 600 1:1
/modes/setuid 4755 0:0
/modes/setgid 2755 0:0
/modes/sticky 1777 0:0
/modes/ro 444 0:0
/owners/file 644 1234:5678
/owners/dir 750 42:43
/owners/dir/newfile 600 42:43
/hl/orig 640 7:8
/hl/orig has 3 links
hl/link2 is hl/orig
../etc/app/conf
../etc
/does/not/exist
/devnodes/null character special file 1:3
/devnodes/fifo fifo 0:0
/replace regular file 0:0
/replace-file directory 0:0
`

// eachLineDiff calls report for every index at which got and want differ ("(none)" for a
// missing line).
func eachLineDiff(got, want []string, report func(i int, got, want string)) {
	for i := 0; i < max(len(got), len(want)); i++ {
		g, w := "(none)", "(none)"
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			report(i, g, w)
		}
	}
}

// runUnpackCheck runs unpackCheckScript in a container of ref (runc) and compares its output
// with unpackCheckWant, line by line.
func runUnpackCheck(t *testing.T, c *harness.Containerd, ns, ref, id string) {
	t.Helper()
	harness.RequireCommand(t, "runc", "runc")
	out, err := c.CtrE(t.Context(), ns, "run", "--rm", ref, id, "/bin/busybox", "sh", "-c", unpackCheckScript)
	if err != nil {
		t.Fatalf("ctr run %s: %v", ref, err)
	}
	got := strings.Split(strings.TrimRight(strings.ReplaceAll(out, "\r\n", "\n"), "\n"), "\n")
	want := strings.Split(strings.TrimRight(unpackCheckWant, "\n"), "\n")
	eachLineDiff(got, want, func(i int, g, w string) {
		t.Errorf("container output line %d: %q, want %q", i+1, g, w)
	})
}

// TestProxyDiffUnpackToolsAndContainer pulls UnpackTestImage in proxy mode with the diff
// plugin with `ctr image pull`, the real `crictl pull` and CRI PullImage — each applies every
// layer through the daemon — and runs a container from the daemon-unpacked snapshot: deleted
// files are absent, re-created and changed files hold their new content, modes, owners,
// hardlinks, symlinks and device nodes are as the layers say.
func TestProxyDiffUnpackToolsAndContainer(t *testing.T) {
	e, c := newProxyDiffEnv(t)
	crictl := harness.Tools(t).RequireCrictl(t)
	t.Logf("crictl: %s", crictl)
	im, ref := e.pushUnpackImage(t, "test/unpack")

	before, logBefore := diffOps(t, e.daemon, "apply", "ok"), appliedLayers(t, e.daemon)
	c.Pull(t, "diff", ref, e.hostsDir)
	assertUnpackedByDaemon(t, e, c, "diff", im, before, logBefore)
	runUnpackCheck(t, c, "diff", ref, "unpack-check")

	// The real crictl: CRI's image service, namespace k8s.io.
	before, logBefore = diffOps(t, e.daemon, "apply", "ok"), appliedLayers(t, e.daemon)
	if got := c.CrictlPull(t, ref); !strings.HasPrefix(got, "sha256:") {
		t.Errorf("crictl pull printed image %q, want its sha256 ID", got)
	}
	assertUnpackedByDaemon(t, e, c, harness.CRINamespace, im, before, logBefore)
	if out, err := c.CrictlE(t.Context(), t, "images", "--digests"); err != nil || !strings.Contains(out, "test/unpack") {
		t.Errorf("crictl images: %v\n%s", err, out)
	}

	// Removed through crictl (CRI deletes synchronously), then pulled with CRI PullImage:
	// every layer is applied again.
	if _, err := c.CrictlE(t.Context(), t, "rmi", ref); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, "k8s.io to hold no snapshots", 30*time.Second, 100*time.Millisecond, func() error {
		if left := c.Snapshots(t, harness.CRINamespace); len(left) > 0 {
			return fmt.Errorf("snapshots left: %v", left)
		}
		return nil
	})
	before, logBefore = diffOps(t, e.daemon, "apply", "ok"), appliedLayers(t, e.daemon)
	c.CRIPull(t, ref)
	assertUnpackedByDaemon(t, e, c, harness.CRINamespace, im, before, logBefore)
	runUnpackCheck(t, c, harness.CRINamespace, ref, "unpack-check-cri")
}

// TestProxyDiffUnpackMatchesBuiltinDiffer pulls UnpackTestImage twice: in proxy mode, where
// the daemon applies every layer, and in a second containerd with its built-in content
// store and differ (pulling through the same daemon's mirror; the daemon applies nothing
// for it). The unpacked snapshots must be the same.
//
// What is compared (harness.CompareTrees), for every path: type, permission bits with
// setuid/setgid/sticky, owner uid:gid, size and SHA-256 of regular files, symlink targets,
// device numbers, every extended attribute (user.*, security.capability, and in the layer
// directories trusted.overlay.opaque), modification times of everything but directories and
// whiteouts, and hardlink groups (the paths sharing an inode). It is done twice:
//   - layer by layer, on the overlayfs directory holding each layer (the snapshot's upper
//     directory, as the applier wrote it): there, a deleted path is a whiteout (character
//     device 0:0) and an opaque directory carries trusted.overlay.opaque=y;
//   - on the merged view of the top snapshot (a read-only overlay mount of all layers), what
//     a container sees.
//
// Not compared: directory times and whiteout times (containerd's applier does not set them
// for directories it creates as parents, nor for whiteouts), the owner and times of each
// snapshot's root directory (the snapshotter's), and inode numbers themselves.
func TestProxyDiffUnpackMatchesBuiltinDiffer(t *testing.T) {
	e, c := newProxyDiffEnv(t)
	im, ref := e.pushUnpackImage(t, "test/compare")

	before, logBefore := diffOps(t, e.daemon, "apply", "ok"), appliedLayers(t, e.daemon)
	c.Pull(t, "diff", ref, e.hostsDir)
	assertUnpackedByDaemon(t, e, c, "diff", im, before, logBefore)

	builtin := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})
	before = diffOps(t, e.daemon, "apply", "ok")
	builtin.Pull(t, "builtin", ref, e.hostsDir)
	if n := diffOps(t, e.daemon, "apply", "ok") - before; n != 0 {
		t.Fatalf("the built-in containerd's pull applied %v layers through the daemon", n)
	}

	chain := chainIDs(t, im)
	top := chain[len(chain)-1]
	ours := c.SnapshotView(t, "diff", "compare-view", top)
	theirs := builtin.SnapshotView(t, "builtin", "compare-view", top)
	ourDirs, err := harness.LayerDirs(ours)
	if err != nil {
		t.Fatal(err)
	}
	theirDirs, err := harness.LayerDirs(theirs)
	if err != nil {
		t.Fatal(err)
	}
	if len(ourDirs) != len(im.Layers) || len(theirDirs) != len(im.Layers) {
		t.Fatalf("views of %d and %d layers, want %d", len(ourDirs), len(theirDirs), len(im.Layers))
	}
	for i := range ourDirs {
		assertSameTree(t, fmt.Sprintf("layer %d (%s)", i, im.Layers[i].Descriptor.Digest), ourDirs[i], theirDirs[i])
	}
	// The layer directories must hold the overlayfs markers, or the comparison above
	// compared two equally wrong trees.
	deletes, err := harness.ScanTree(ourDirs[2])
	if err != nil {
		t.Fatal(err)
	}
	if e := deletes["del/gone.txt"]; e == nil || !e.Whiteout {
		t.Errorf("layer 2: del/gone.txt is %+v, want a whiteout", e)
	}
	if e := deletes["opq"]; e == nil || e.Xattrs["trusted.overlay.opaque"] != `"y"` {
		t.Errorf("layer 2: opq is %+v, want trusted.overlay.opaque=y", e)
	}

	ourRoot, _ := harness.MountAt(t, ours)
	theirRoot, _ := harness.MountAt(t, theirs)
	assertSameTree(t, "merged view", ourRoot, theirRoot)
	merged, err := harness.ScanTree(ourRoot)
	if err != nil {
		t.Fatal(err)
	}
	if e := merged["xattr/file"]; e == nil || e.Xattrs["security.capability"] == "" || e.Xattrs["user.note"] != `"hello"` {
		t.Errorf("merged view: xattr/file is %+v, want security.capability and user.note", e)
	}
	if merged["del/gone.txt"] != nil || merged["opq/old1"] != nil {
		t.Errorf("merged view shows deleted paths: del/gone.txt %+v, opq/old1 %+v", merged["del/gone.txt"], merged["opq/old1"])
	}
}

// assertSameTree fails the test with the first differences between the daemon's tree (a)
// and containerd's (b).
func assertSameTree(t *testing.T, what, ours, theirs string) {
	t.Helper()
	diffs, err := harness.CompareTrees(ours, theirs)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(diffs) > 0 {
		t.Errorf("%s: the daemon's unpack (a: %s) differs from containerd's (b: %s) in %d ways, first:\n%s",
			what, ours, theirs, len(diffs), strings.Join(diffs[:min(len(diffs), 20)], "\n"))
		return
	}
	tree, err := harness.ScanTree(ours)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d paths equal", what, len(tree))
}

package integration

import (
	"fmt"
	"os"
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

// requireRunc stops the test unless runc (which ctr run needs) is installed.
func requireRunc(t *testing.T) {
	t.Helper()
	for _, p := range []string{"/usr/sbin/runc", "/usr/bin/runc"} {
		if _, err := os.Stat(p); err == nil {
			return
		}
	}
	harness.Unavailable(t, "ctr run needs runc (Debian package runc)")
}

// runUnpackCheck runs unpackCheckScript in a container of ref (runc) and compares its output
// with unpackCheckWant, line by line.
func runUnpackCheck(t *testing.T, c *harness.Containerd, ns, ref, id string) {
	t.Helper()
	requireRunc(t)
	out, err := c.CtrE(t.Context(), ns, "run", "--rm", ref, id, "/bin/busybox", "sh", "-c", unpackCheckScript)
	if err != nil {
		t.Fatalf("ctr run %s: %v", ref, err)
	}
	got := strings.Split(strings.TrimRight(strings.ReplaceAll(out, "\r\n", "\n"), "\n"), "\n")
	want := strings.Split(strings.TrimRight(unpackCheckWant, "\n"), "\n")
	for i := 0; i < max(len(got), len(want)); i++ {
		g, w := "", ""
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("container output line %d: %q, want %q", i+1, g, w)
		}
	}
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

package integration

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// writeBytes is /proc/<pid>/io write_bytes: what the process caused to be written to storage,
// counted when it dirties the pages (so before any writeback).
func writeBytes(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		t.Fatalf("read I/O counters: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "write_bytes: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("write_bytes %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatalf("no write_bytes in /proc/%d/io (kernel without task I/O accounting?)", pid)
	return 0
}

// pullWrites pulls ref cold in namespace ns and returns how many bytes the daemon and
// containerd wrote to disk for it, once the daemon has committed every blob of im.
func pullWrites(t *testing.T, d *harness.Daemon, c *harness.Containerd, im *harness.Image, ns, ref, hostsDir string) (daemon, ctrd int64) {
	t.Helper()
	d0, c0 := writeBytes(t, d.Process.PID()), writeBytes(t, c.Process.PID())
	c.Pull(t, ns, ref, hostsDir)
	harness.WaitFor(t, "the daemon committed every blob", time.Minute, 20*time.Millisecond, func() error {
		for _, b := range im.Blobs() {
			if !d.HasBlob(b.Digest, b.Size) {
				return fmt.Errorf("%s not committed", b.Digest)
			}
		}
		return nil
	})
	return writeBytes(t, d.Process.PID()) - d0, writeBytes(t, c.Process.PID()) - c0
}

// TestProxyColdPullWritesBlobsOnce: on a cold pull in proxy mode containerd fetches each blob
// through the mirror, whose fill writes it into the store, and writes the same bytes back
// through the content API: those are not written a second time. The daemon writes about the
// image's size; the same pull with containerd's built-in content store is measured beside
// it (the daemon's mirror copy plus containerd's own).
func TestProxyColdPullWritesBlobsOnce(t *testing.T) {
	e := newProxyEnv(t, true)
	c := harness.StartContainerdContentProxy(t, harness.ContainerdOptions{HostsDir: e.hostsDir}, e.socket, true)
	builtin := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})
	im, ref := e.push(t, "test/writes", "v1", proxyImageSpec(t, 7100))
	bim, bref := e.push(t, "test/writes-builtin", "v1", proxyImageSpec(t, 7200))
	var size, bsize int64
	for _, b := range im.Blobs() {
		size += b.Size
	}
	for _, b := range bim.Blobs() {
		bsize += b.Size
	}

	daemon, ctrd := pullWrites(t, e.daemon, c, im, "writes", ref, e.hostsDir)
	assertStoredOnce(t, c, "writes", e.daemon)
	bdaemon, bctrd := pullWrites(t, e.daemon, builtin, bim, "writes", bref, e.hostsDir)
	writeMeasure(t, "cold pull bytes written: proxy mode daemon=%d containerd=%d (image %d); built-in content daemon=%d containerd=%d (image %d); containerd's figures include the unpacked snapshots",
		daemon, ctrd, size, bdaemon, bctrd, bsize)
	// The index and the log take a little; a second copy would double it.
	if limit := size + size/10 + 2<<20; daemon > limit {
		t.Errorf("proxy-mode cold pull: the daemon wrote %d bytes for an image of %d (limit %d): blobs written twice", daemon, size, limit)
	}
	if daemon < size {
		t.Errorf("proxy-mode cold pull: the daemon wrote %d bytes for an image of %d: the counter does not see the blob files", daemon, size)
	}
}

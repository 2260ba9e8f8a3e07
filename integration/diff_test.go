package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// These tests run proxy mode with the daemon's diff API as containerd's differ: containerd's
// unpacks send each layer's Apply to the daemon, which reads the layer from its own store.

// newProxyDiffEnv is a proxy environment whose daemon serves the diff API, and a containerd
// 2.4.2 that uses it for the transfer service's unpacks and the diff service (and whose
// socket the daemon's Compare writes through).
func newProxyDiffEnv(t *testing.T) (*proxyEnv, *harness.Containerd) {
	t.Helper()
	e := newProxyEnv(t, false)
	// containerd first: the daemon's Compare writes through containerd's socket. containerd
	// reaches the daemon's socket lazily, so it starts without it.
	c := harness.StartContainerdContentProxy(t, harness.ContainerdOptions{HostsDir: e.hostsDir, ContentSharingPolicy: "shared", Diff: true}, e.socket, true)
	e.daemon.Config.Extra += harness.DiffConfigFor(c.Socket)
	e.startDaemon(t)
	return e, c
}

// diffOps is the daemon's count of diff operations op ("apply", "compare") with result ("ok",
// "error").
func diffOps(t *testing.T, d *harness.Daemon, op, result string) float64 {
	t.Helper()
	return metricValue(scrape(t, d), "containerd_blobcache_diff_operations_total", map[string]string{"operation": op, "result": result})
}

var appliedLine = regexp.MustCompile(`msg="layer applied".*\bdigest="?(sha256:[0-9a-f]{64})`)

// appliedLayers counts, per layer digest, the "layer applied" lines of the daemon's debug log.
func appliedLayers(t *testing.T, d *harness.Daemon) map[digest.Digest]int {
	t.Helper()
	b, err := os.ReadFile(d.Process.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	out := map[digest.Digest]int{}
	for _, m := range appliedLine.FindAllSubmatch(b, -1) {
		out[digest.Digest(m[1])]++
	}
	return out
}

var appliedMountsLine = regexp.MustCompile(`msg="layer applied".*\bdigest="?(sha256:[0-9a-f]{64})"?.*\bmounts="?\[([a-z ]*)\]`)

// appliedMounts lists, per layer digest, the mount types of each "layer applied" line: which
// of the applier's paths ran ("bind": the chain's first snapshot, mounted; "overlay": written
// straight into the upper directory).
func appliedMounts(t *testing.T, d *harness.Daemon) map[digest.Digest][]string {
	t.Helper()
	b, err := os.ReadFile(d.Process.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	out := map[digest.Digest][]string{}
	for _, m := range appliedMountsLine.FindAllSubmatch(b, -1) {
		out[digest.Digest(m[1])] = append(out[digest.Digest(m[1])], string(m[2]))
	}
	return out
}

// chainIDs are the snapshot names containerd gives an image's unpacked layers.
func chainIDs(t *testing.T, im *harness.Image) []string {
	t.Helper()
	var cfg ocispec.Image
	if err := json.Unmarshal(im.ConfigBytes, &cfg); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, id := range identity.ChainIDs(cfg.RootFS.DiffIDs) {
		out = append(out, id.String())
	}
	return out
}

// assertUnpackedByDaemon checks that a pull just done applied every layer of im through the
// daemon's diff API (the counter rose by one per layer, the log names each layer once more
// than before) and that ns holds the image's snapshots.
func assertUnpackedByDaemon(t *testing.T, e *proxyEnv, c *harness.Containerd, ns string, im *harness.Image, appliesBefore float64, logBefore map[digest.Digest]int) {
	t.Helper()
	if got, want := diffOps(t, e.daemon, "apply", "ok")-appliesBefore, float64(len(im.Layers)); got != want {
		t.Errorf("the daemon applied %v layers, want %v (one Apply per layer)", got, want)
	}
	if n := diffOps(t, e.daemon, "apply", "error"); n != 0 {
		t.Errorf("%v applies failed", n)
	}
	logAfter := appliedLayers(t, e.daemon)
	for _, l := range im.Layers {
		if got := logAfter[l.Descriptor.Digest] - logBefore[l.Descriptor.Digest]; got != 1 {
			t.Errorf("layer %s applied %d times by the daemon (its debug log), want 1", l.Descriptor.Digest, got)
		}
	}
	snaps := c.Snapshots(t, ns)
	for _, id := range chainIDs(t, im) {
		if !slices.Contains(snaps, id) {
			t.Errorf("namespace %s has no snapshot %s; it has %v", ns, id, snaps)
		}
	}
}

// ctr image pull (transfer service, unpack_config's differ), CRI PullImage (transfer service)
// and ctr image pull --local (the client's unpack through the diff service's default list)
// each unpack every layer through the daemon's Apply, and the image runs from the snapshots.
func TestProxyDiffPullUnpacksThroughDaemon(t *testing.T) {
	e, c := newProxyDiffEnv(t)
	im, ref := e.push(t, "test/diff", "v1", proxyImageSpec(t, 7100))

	before, logBefore := diffOps(t, e.daemon, "apply", "ok"), appliedLayers(t, e.daemon)
	c.Pull(t, "diff", ref, e.hostsDir)
	assertUnpackedByDaemon(t, e, c, "diff", im, before, logBefore)
	runImage(t, c, "diff", ref, "diff-run", "/bin/true")
	// containerd's own paths: the first layer into a bind-mounted empty snapshot, the others
	// straight into their overlay upper directories.
	mounts := appliedMounts(t, e.daemon)
	for i, l := range im.Layers {
		want := "overlay"
		if i == 0 {
			want = "bind"
		}
		if got := mounts[l.Descriptor.Digest]; !slices.Equal(got, []string{want}) {
			t.Errorf("layer %d applied with mounts %v, want [%s]", i, got, want)
		}
	}

	// CRI: another namespace (k8s.io), so its own snapshots, unpacked again.
	before, logBefore = diffOps(t, e.daemon, "apply", "ok"), appliedLayers(t, e.daemon)
	c.CRIPull(t, ref)
	assertUnpackedByDaemon(t, e, c, harness.CRINamespace, im, before, logBefore)

	// --local: ctr resolves and unpacks in its own process, through containerd's diff
	// service, whose default list starts with the daemon.
	before, logBefore = diffOps(t, e.daemon, "apply", "ok"), appliedLayers(t, e.daemon)
	c.Pull(t, "diff-local", ref, e.hostsDir, "--local")
	assertUnpackedByDaemon(t, e, c, "diff-local", im, before, logBefore)
}

// ctr snapshots diff (the Diff API's Compare, through the diff service's default list) is
// answered by the daemon; the layer it makes is written through containerd in the caller's
// namespace, so ctr reads it back and lists it, and it holds the file written into the
// snapshot.
func TestProxyDiffCompareThroughDaemon(t *testing.T) {
	e, c := newProxyDiffEnv(t)
	im, ref := e.push(t, "test/diff-compare", "v1", proxyImageSpec(t, 7200))
	c.Pull(t, "cmp", ref, e.hostsDir)
	ids := chainIDs(t, im)
	c.Ctr(t, "cmp", "snapshots", "--snapshotter", "overlayfs", "prepare", "work", ids[len(ids)-1])
	upper := snapshotUpperDir(t, c, "cmp", "work")
	body := []byte("written after the pull\n")
	if err := os.WriteFile(filepath.Join(upper, "added.txt"), body, 0o644); err != nil {
		t.Fatal(err)
	}

	before := diffOps(t, e.daemon, "compare", "ok")
	layer := c.Ctr(t, "cmp", "snapshots", "--snapshotter", "overlayfs", "diff", "--keep", "work")
	if got := diffOps(t, e.daemon, "compare", "ok") - before; got != 1 {
		t.Errorf("the daemon answered %v compares, want 1", got)
	}
	dg := digest.FromString(layer)
	if !slices.Contains(c.ContentDigests(t, "cmp"), dg.String()) {
		t.Errorf("namespace cmp does not list the new layer %s", dg)
	}
	if !e.daemon.Cached(t, dg, int64(len(layer))) {
		t.Errorf("the new layer %s is not in the daemon's store", dg)
	}
	files := gzipTarFiles(t, []byte(layer))
	if got, ok := files["added.txt"]; !ok || got != string(body) {
		t.Errorf("the layer holds %v, want added.txt with %q", keys(files), body)
	}
}

// snapshotUpperDir is the overlay upper directory of active snapshot key.
func snapshotUpperDir(t *testing.T, c *harness.Containerd, ns, key string) string {
	t.Helper()
	out := c.Ctr(t, ns, "snapshots", "--snapshotter", "overlayfs", "mounts", "/mnt", key)
	for _, opt := range strings.FieldsFunc(out, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
		if dir, ok := strings.CutPrefix(opt, "upperdir="); ok {
			return dir
		}
	}
	t.Fatalf("no upperdir in the mounts of %s: %s", key, out)
	return ""
}

// gzipTarFiles reads a gzipped tar: regular files' names and contents.
func gzipTarFiles(t *testing.T, b []byte) map[string]string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	out := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[h.Name] = string(data)
		}
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

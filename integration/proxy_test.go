package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	dto "github.com/prometheus/client_model/go"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// These tests run containerd with the daemon's content API as its content store
// ([proxy_plugins], containerd's own content plugin disabled) and the daemon's mirror in
// hosts.toml: the "one store for the node" mode.

// proxyEnv is an origin registry behind a counting proxy, the daemon serving the mirror and
// the content API, a counting proxy in front of the mirror (so that every request containerd
// sends to the mirror is seen), and a hosts directory pointing the origin at it.
type proxyEnv struct {
	reg      *harness.Registry
	origin   *harness.CountingProxy
	daemon   *harness.Daemon
	front    *harness.CountingProxy
	socket   string
	hostsDir string
}

func newProxyEnv(t *testing.T, startDaemon bool) *proxyEnv {
	t.Helper()
	harness.RequireRoot(t)
	harness.Tools(t)
	e := &proxyEnv{hostsDir: t.TempDir()}
	e.reg = harness.StartRegistry(t)
	e.origin = harness.StartCountingProxy(t, e.reg.URL)
	e.socket = filepath.Join(harness.ShortTempDir(t, "bcs-"), "content.sock")
	// The mirror's address is fixed now, so that a daemon started (or restarted) later
	// serves the same hosts.toml.
	cfg := e.daemonConfig(harness.FreeAddr(t), filepath.Join(t.TempDir(), "root"))
	e.front = harness.StartCountingProxy(t, "http://"+cfg.Address)
	if _, err := harness.WriteHostsToml(e.hostsDir, e.origin.Host, e.front.URL); err != nil {
		t.Fatal(err)
	}
	if startDaemon {
		e.daemon = harness.StartDaemon(t, cfg)
	} else {
		e.daemon = &harness.Daemon{Config: cfg}
	}
	return e
}

func (e *proxyEnv) daemonConfig(addr, root string) harness.DaemonConfig {
	return harness.DaemonConfig{
		Root:       root,
		Address:    addr,
		Registries: []string{e.origin.Host},
		Extra:      harness.ContentConfig(e.socket),
	}
}

// startDaemon (re)starts the daemon with the environment's configuration.
func (e *proxyEnv) startDaemon(t *testing.T) {
	t.Helper()
	e.daemon = harness.StartDaemon(t, e.daemon.Config)
}

func (e *proxyEnv) resetCounts() {
	e.origin.Reset()
	e.front.Reset()
}

func (e *proxyEnv) push(t *testing.T, repo, tag string, spec harness.ImageSpec) (*harness.Image, string) {
	t.Helper()
	im := harness.PushImage(t, e.reg.URL, repo, tag, spec)
	return im, harness.Ref(e.origin.Host, repo, tag)
}

// proxyImageSpec is a busybox rootfs (so that the image runs) and three layers of seeded
// random files, about 15 MB.
func proxyImageSpec(t *testing.T, seed uint64) harness.ImageSpec {
	t.Helper()
	harness.RequireDebianFile(t, harness.BusyboxPath, "busybox-static")
	return harness.ImageSpec{Layers: []harness.LayerSpec{
		{Busybox: true},
		{Seed: seed, Files: 4, FileSize: 1 << 20},
		{Seed: seed + 1, Files: 3, FileSize: 2 << 20},
		{Seed: seed + 2, Files: 5, FileSize: 512 << 10},
	}}
}

// heldBlobs is what the content API lists: the blobs containerd holds.
func heldBlobs(t *testing.T, socket string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []string
	if err := harness.ContentClient(t, socket).Walk(ctx, func(info content.Info) error {
		out = append(out, info.Digest.String())
		return nil
	}); err != nil {
		t.Fatalf("list the content API: %v", err)
	}
	slices.Sort(out)
	return out
}

func sortedContent(t *testing.T, c *harness.Containerd, ns string) []string {
	t.Helper()
	out := c.ContentDigests(t, ns)
	slices.Sort(out)
	return out
}

// runImage runs a command in a container of ref and fails the test unless it exits 0: the
// layers were unpacked from the content the daemon serves.
func runImage(t *testing.T, c *harness.Containerd, ns, ref, id string, args ...string) {
	t.Helper()
	// The shim finds runc on PATH, as this does.
	harness.RequireCommand(t, "runc", "runc")
	full := append([]string{"run", "--rm", "--null-io", ref, id}, args...)
	if out, err := c.CtrE(context.Background(), ns, full...); err != nil {
		t.Fatalf("ctr run %s: %v\n%s", ref, err, out)
	}
}

// assertStoredOnce checks that every blob containerd lists in ns is a file in the daemon's
// store with the size containerd reports, that containerd keeps no blob files of its own, and
// returns the daemon's blob files.
func assertStoredOnce(t *testing.T, c *harness.Containerd, ns string, d *harness.Daemon) map[string]int64 {
	t.Helper()
	files := harness.BlobFiles(t, d.Config.Root)
	out := c.Ctr(t, ns, "content", "ls")
	listed := 0
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		fields := strings.Fields(line)
		if i == 0 || len(fields) < 2 { // header
			continue
		}
		listed++
		dg := fields[0]
		size, ok := files[dg]
		if !ok {
			t.Errorf("containerd holds %s, which is not in the daemon's store", dg)
			continue
		}
		if want := parseSize(t, fields[1]); want >= 0 && size != want {
			t.Errorf("blob %s: %d bytes in the store, containerd lists %s", dg, size, fields[1])
		}
	}
	if listed == 0 {
		t.Errorf("containerd lists no content in %s", ns)
	}
	if own := harness.BlobFiles(t, filepath.Join(c.Root, harness.ContentPluginID)); len(own) != 0 {
		t.Errorf("containerd stored %d blob files of its own: %v", len(own), own)
	}
	for dg := range files {
		if err := d.VerifyBlobFile(digest.Digest(dg)); err != nil {
			t.Error(err)
		}
	}
	return files
}

// daemonPartials counts what is half-written in the daemon's root: containerd's ingests and
// the mirror's downloads.
func daemonPartials(t *testing.T, d *harness.Daemon) (ingests, fills int) {
	t.Helper()
	count := func(sub string) int {
		entries, err := os.ReadDir(filepath.Join(d.Config.Root, sub))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		return len(entries)
	}
	return count("ingest"), count("fills")
}

// assertNoPartials checks that a pull left nothing half-written in the daemon's root.
func assertNoPartials(t *testing.T, d *harness.Daemon) {
	t.Helper()
	if ingests, fills := daemonPartials(t, d); ingests+fills > 0 {
		t.Errorf("daemon root holds %d ingests and %d fills after the pull", ingests, fills)
	}
}

// parseSize reads ctr's human-readable size ("1.0 MiB", "527 B"); -1 when it is rounded.
func parseSize(t *testing.T, s string) int64 {
	var n int64
	if _, err := fmt.Sscanf(s, "%d", &n); err == nil && !strings.ContainsAny(s, ".KMG") {
		return n
	}
	return -1
}

func totalSize(files map[string]int64) int64 {
	var n int64
	for _, s := range files {
		n += s
	}
	return n
}

// mirrorBlobRequests counts the blob requests (GET and HEAD) containerd sent to the mirror.
func mirrorBlobRequests(c harness.ProxyCounts) int {
	n := 0
	for _, r := range c.Requests {
		if r.Kind == harness.KindBlob {
			n++
		}
	}
	return n
}

// measure logs a line starting with "MEASURE proxy" and appends it to
// $BLOBCACHE_MEASURE_FILE when set.
func measure(t *testing.T, format string, args ...any) {
	t.Helper()
	line := "MEASURE proxy " + fmt.Sprintf(format, args...)
	t.Log(line)
	if f := os.Getenv("BLOBCACHE_MEASURE_FILE"); f != "" {
		fh, err := os.OpenFile(f, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Errorf("measure file: %v", err)
			return
		}
		fmt.Fprintln(fh, line)
		fh.Close()
	}
}

// secondPull is what a pull after containerd's garbage collection cost.
type secondPull struct {
	originBlobBytes int64
	originBlobGETs  int
	mirrorBlobReqs  int
	wall            time.Duration
}

func (p secondPull) String() string {
	return fmt.Sprintf("origin_blob_bytes=%d origin_blob_gets=%d mirror_blob_requests=%d wall=%v",
		p.originBlobBytes, p.originBlobGETs, p.mirrorBlobReqs, p.wall.Round(time.Millisecond))
}

// pullRemovePull pulls ref, runs it, removes it with a synchronous garbage collection and
// pulls it again, returning what the second pull cost.
func (e *proxyEnv) pullRemovePull(t *testing.T, c *harness.Containerd, ns, ref string) secondPull {
	t.Helper()
	c.Pull(t, ns, ref, e.hostsDir)
	runImage(t, c, ns, ref, ns+"-1", "/bin/sh", "-c", "test -x /bin/busybox && test -d /data")
	if _, err := c.CtrE(context.Background(), ns, "image", "rm", "--sync", ref); err != nil {
		t.Fatalf("remove image: %v", err)
	}
	harness.WaitFor(t, "namespace "+ns+" to hold no content", 30*time.Second, 100*time.Millisecond, func() error {
		if left := c.ContentDigests(t, ns); len(left) > 0 {
			return fmt.Errorf("content left: %v", left)
		}
		return nil
	})
	e.resetCounts()
	wall := c.Pull(t, ns, ref, e.hostsDir)
	origin := e.origin.Snapshot()
	p := secondPull{
		originBlobBytes: origin.BlobBytes(),
		originBlobGETs:  origin.TotalBlobGETs(),
		mirrorBlobReqs:  mirrorBlobRequests(e.front.Snapshot()),
		wall:            wall,
	}
	runImage(t, c, ns, ref, ns+"-2", "/bin/true")
	return p
}

// TestProxyPullRunCollectRepull is the content proxy's promise: a pulled image runs from
// content kept by the daemon, containerd's garbage collection leaves it in the daemon's
// store, and the next pull downloads nothing, from the origin or from the mirror. The same
// flow with containerd's built-in content store is measured next to it.
func TestProxyPullRunCollectRepull(t *testing.T) {
	e := newProxyEnv(t, true)
	c := harness.StartContainerdContentProxy(t, harness.ContainerdOptions{HostsDir: e.hostsDir, ContentSharingPolicy: "shared"}, e.socket, true)
	im, ref := e.push(t, "test/proxy", "v1", proxyImageSpec(t, 5000))
	t.Logf("image %s: %d layers, %d bytes", ref, len(im.Layers), im.Size())

	// First pull: every blob comes from the origin once, through the mirror.
	e.resetCounts()
	first := c.Pull(t, "proxy", ref, e.hostsDir)
	origin := e.origin.Snapshot()
	if direct := origin.Direct(); len(direct.Requests) != 0 {
		t.Errorf("containerd went to the origin itself:\n%s", direct)
	}
	gets := origin.BlobGETs()
	for _, b := range im.Blobs() {
		if gets[b.Digest] != 1 {
			t.Errorf("blob %s fetched from the origin %d times, want 1", b.Digest, gets[b.Digest])
		}
	}
	files := assertStoredOnce(t, c, "proxy", e.daemon)
	assertNoPartials(t, e.daemon)
	held := heldBlobs(t, e.socket)
	if want := sortedContent(t, c, "proxy"); !slices.Equal(held, want) {
		t.Errorf("content API lists %v, containerd holds %v", held, want)
	}
	// The mirror serves what containerd holds through the content API as hits.
	for _, b := range []ocispec.Descriptor{im.Config, im.Layers[0].Descriptor} {
		r, err := e.daemon.GetBlob(context.Background(), e.origin.Host, "test/proxy", b.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != http.StatusOK || r.Result() != harness.ResultHit || r.Digest != b.Digest {
			t.Errorf("mirror GET of held blob %s: status %d, %s %q, body digest %s", b.Digest, r.Status, harness.ResultHeader, r.Result(), r.Digest)
		}
	}
	// Manifest, config and layers, each once.
	if want := len(im.Blobs()) + 1; len(files) != want {
		t.Errorf("daemon store holds %d files, want %d (manifest, config, %d layers)", len(files), want, len(im.Layers))
	}

	before := scrape(t, e.daemon)
	second := e.pullRemovePull(t, c, "proxy", ref)
	assertContentReads(t, before, scrape(t, e.daemon), im)
	if second.originBlobBytes != 0 || second.originBlobGETs != 0 {
		t.Errorf("second pull downloaded from the origin: %s\n%s", second, e.origin.Snapshot())
	}
	if second.mirrorBlobReqs != 0 {
		t.Errorf("second pull sent %d blob requests to the mirror:\n%s", second.mirrorBlobReqs, e.front.Snapshot())
	}
	after := assertStoredOnce(t, c, "proxy", e.daemon)
	assertNoPartials(t, e.daemon)
	if !mapsEqual(after, files) {
		t.Errorf("daemon store changed over collection and second pull:\nbefore %v\nafter  %v", files, after)
	}

	// containerd's collection released the holds; the second pull took them again.
	removeAndAwaitRelease(t, c, "proxy", ref, e.socket)
	if kept := harness.BlobFiles(t, e.daemon.Config.Root); !mapsEqual(kept, files) {
		t.Errorf("collection removed blobs from the daemon's store: %v, want %v", kept, files)
	}

	// The same flow with containerd's own content store, through the same mirror.
	builtin := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir, ContentSharingPolicy: "shared"})
	base := e.pullRemovePull(t, builtin, "builtin", ref)
	if base.mirrorBlobReqs == 0 {
		t.Errorf("with its own content store containerd fetched nothing from the mirror after collection: %s", base)
	}
	// On disk, the built-in store keeps its own copy next to the daemon's.
	builtinDisk := totalSize(files) + totalSize(harness.BlobFiles(t, filepath.Join(builtin.Root, harness.ContentPluginID)))
	measure(t, "second_pull content_proxy: %s | builtin_content_store: %s | blob_bytes_on_node content_proxy=%d builtin=%d | image=%dMB blobs=%d first_pull=%v (loopback, daemon built with -race)",
		second, base, totalSize(files), builtinDisk, im.Size()>>20, len(im.Blobs()), first.Round(time.Millisecond))
}

// assertContentReads checks the content API's metrics over a re-pull after containerd's
// collection: containerd asked Info of every blob and found it (hits), and unpacked every
// layer through Read, so the bytes the content surface served cover the layers.
func assertContentReads(t *testing.T, before, after map[string]*dto.MetricFamily, im *harness.Image) {
	t.Helper()
	delta := func(name string, labels map[string]string) float64 {
		return metricValue(after, name, labels) - metricValue(before, name, labels)
	}
	requests := "containerd_blobcache_requests_total"
	infoHits := delta(requests, map[string]string{"surface": "content", "kind": "info", "result": "hit"})
	readHits := delta(requests, map[string]string{"surface": "content", "kind": "read", "result": "hit"})
	served := delta("containerd_blobcache_served_bytes_total", map[string]string{"surface": "content", "source": "store"})
	errorsSeen := delta(requests, map[string]string{"surface": "content", "result": "error"})
	var layerBytes int64
	for _, l := range im.Layers {
		layerBytes += l.Descriptor.Size
	}
	t.Logf("content API over the re-pull: %v info hits, %v read hits, %v bytes served (layers %d bytes), %v errors", infoHits, readHits, served, layerBytes, errorsSeen)
	if infoHits < float64(len(im.Blobs())) {
		t.Errorf("content info hits over the re-pull: %v, want at least one per blob (%d)", infoHits, len(im.Blobs()))
	}
	if readHits == 0 || served < float64(layerBytes) {
		t.Errorf("content reads over the re-pull: %v hits, %v bytes served, want the %d layer bytes unpacked", readHits, served, layerBytes)
	}
}

// removeAndAwaitRelease removes ref from namespace ns and waits until containerd's collection
// has released every hold on the daemon's content API at socket.
func removeAndAwaitRelease(t *testing.T, c *harness.Containerd, ns, ref, socket string) {
	t.Helper()
	if _, err := c.CtrE(context.Background(), ns, "image", "rm", "--sync", ref); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, "containerd's collection to release the content API's holds", 30*time.Second, 100*time.Millisecond, func() error {
		if held := heldBlobs(t, socket); len(held) > 0 {
			return fmt.Errorf("still held: %v", held)
		}
		return nil
	})
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// pullResult is the outcome of a pull run in the background.
type pullResult struct {
	out  string
	err  error
	wall time.Duration
	done time.Time
}

func pullInBackground(c *harness.Containerd, ns, ref, hostsDir string) <-chan pullResult {
	ch := make(chan pullResult, 1)
	go func() {
		out, wall, err := c.PullE(context.Background(), ns, ref, hostsDir)
		ch <- pullResult{out: out, err: err, wall: wall, done: time.Now()}
	}()
	return ch
}

// lastLines shortens ctr's progress output to its end for a test log.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ctrMessage is ctr's own error message ("ctr: ...") out of a CtrE error.
func ctrMessage(err error) string {
	for _, line := range strings.Split(err.Error(), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "ctr: ") {
			return strings.TrimSpace(line)
		}
	}
	return lastLines(err.Error(), 2)
}

// TestProxyIndexLostKeepsHolds: the daemon's index is lost (removed while the daemon is
// stopped) under a running containerd that holds an unpacked image. Which blobs containerd
// held went with the index, and containerd does not read an unpacked layer again, so the
// restarted daemon holds every blob it finds: `gc --target 0` evicts none of them and
// containerd can still read all its content. containerd's next collection (after the image is
// removed) releases the holds, and the blobs become evictable cache.
func TestProxyIndexLostKeepsHolds(t *testing.T) {
	e := newProxyEnv(t, true)
	c := harness.StartContainerdContentProxy(t, harness.ContainerdOptions{HostsDir: e.hostsDir, ContentSharingPolicy: "shared"}, e.socket, true)
	im, ref := e.push(t, "test/lost-index", "v1", proxyImageSpec(t, 5300))
	c.Pull(t, "lost", ref, e.hostsDir)
	containerdHas := sortedContent(t, c, "lost")

	if err := e.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(e.daemon.Config.Root, "index.db")); err != nil {
		t.Fatal(err)
	}
	e.startDaemon(t)
	if held := heldBlobs(t, e.socket); !slices.Equal(held, containerdHas) {
		t.Errorf("after the index rebuild the content API holds %v, containerd has %v", held, containerdHas)
	}
	gc := decode[struct {
		Blobs int `json:"blobs"`
		Held  int `json:"held"`
	}](t, e.daemon.MustCLI(t, "gc", "--target", "0", "--json"))
	if gc.Blobs != 0 || gc.Held != len(containerdHas) {
		t.Errorf("gc --target 0 after the rebuild: evicted %d, skipped %d held; want 0 evicted, %d held", gc.Blobs, gc.Held, len(containerdHas))
	}
	for _, dg := range containerdHas {
		if _, err := c.CtrE(context.Background(), "lost", "content", "get", dg); err != nil {
			t.Errorf("containerd cannot read %s after the rebuild: %v", dg, err)
		}
	}
	runImage(t, c, "lost", ref, "lost-1", "/bin/true")

	removeAndAwaitRelease(t, c, "lost", ref, e.socket)
	gc = decode[struct {
		Blobs int `json:"blobs"`
		Held  int `json:"held"`
	}](t, e.daemon.MustCLI(t, "gc", "--target", "0", "--json"))
	if gc.Blobs != len(im.Blobs())+1 {
		t.Errorf("gc --target 0 after containerd's collection evicted %d blobs, want all %d", gc.Blobs, len(im.Blobs())+1)
	}
}

// TestProxyDaemonRestart restarts the daemon under a running containerd, gracefully and
// with SIGKILL (which leaves the socket file behind): containerd is not restarted, and the
// next pull, `ctr content ls` and reads of stored content work at once.
func TestProxyDaemonRestart(t *testing.T) {
	// The daemon is built with -race, whose runtime sleeps a second before exiting unless
	// told otherwise: the stop time measured here is the daemon's own.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	e := newProxyEnv(t, true)
	c := harness.StartContainerdContentProxy(t, harness.ContainerdOptions{HostsDir: e.hostsDir, ContentSharingPolicy: "shared"}, e.socket, true)
	imA, refA := e.push(t, "test/restart-a", "v1", proxyImageSpec(t, 5100))
	c.Pull(t, "restart", refA, e.hostsDir)
	runImage(t, c, "restart", refA, "a-1", "/bin/true")

	// Graceful: SIGTERM removes the socket, so that containerd waits for it (its dialer
	// retries a missing socket) instead of failing on a refused connection.
	t0 := time.Now()
	if err := e.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(t0)
	if _, err := os.Lstat(e.socket); !os.IsNotExist(err) {
		t.Errorf("socket left after a graceful stop: %v", err)
	}
	t1 := time.Now()
	e.startDaemon(t)
	started := time.Since(t1)

	// No waiting: containerd's connection went idle when the daemon left, and reconnects
	// on the next call.
	held := c.ContentDigests(t, "restart")
	if len(held) != len(imA.Blobs())+1 {
		t.Errorf("ctr content ls after restart lists %d blobs, want %d", len(held), len(imA.Blobs())+1)
	}
	cfg, err := c.CtrE(context.Background(), "restart", "content", "get", imA.Config.Digest.String())
	if err != nil {
		t.Fatalf("read stored content through containerd after the restart: %v", err)
	}
	if cfg != string(imA.ConfigBytes) {
		t.Errorf("config read after restart differs from the image's")
	}
	imB, refB := e.push(t, "test/restart-b", "v1", proxyImageSpec(t, 5200))
	t2 := time.Now()
	c.Pull(t, "restart", refB, e.hostsDir)
	firstPull := time.Since(t2)
	runImage(t, c, "restart", refB, "b-1", "/bin/true")
	if got, want := heldBlobs(t, e.socket), sortedContent(t, c, "restart"); !slices.Equal(got, want) {
		t.Errorf("content API lists %v after restart, containerd holds %v", got, want)
	}
	measure(t, "restart: sigterm_stop=%v start=%v first_pull_after=%v (image %dMB, daemon built with -race)",
		stopped.Round(time.Millisecond), started.Round(time.Millisecond), firstPull.Round(time.Millisecond), imB.Size()>>20)

	// SIGKILL: the socket file stays; the next daemon replaces it.
	if err := e.daemon.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(e.socket); err != nil {
		t.Fatalf("expected the killed daemon's socket file to stay: %v", err)
	}
	e.startDaemon(t)
	_, refC := e.push(t, "test/restart-c", "v1", proxyImageSpec(t, 5300))
	c.Pull(t, "restart", refC, e.hostsDir)
	runImage(t, c, "restart", refC, "c-1", "/bin/true")
	runImage(t, c, "restart", refA, "a-2", "/bin/true")
	assertStoredOnce(t, c, "restart", e.daemon)
	assertNoPartials(t, e.daemon)
}

// TestProxyContainerdBeforeDaemon starts containerd first and the daemon later. containerd
// boots without its content store (it connects lazily), a pull started meanwhile resolves
// the image at the origin itself (the mirror is down too) and then waits: containerd's
// writer retries while the content store is unavailable. Once the daemon is up the pull
// completes and the image runs.
func TestProxyContainerdBeforeDaemon(t *testing.T) {
	e := newProxyEnv(t, false)
	c := harness.StartContainerdContentProxy(t, harness.ContainerdOptions{HostsDir: e.hostsDir, ContentSharingPolicy: "shared"}, e.socket, true)
	im, ref := e.push(t, "test/late", "v1", proxyImageSpec(t, 5400))
	// Build the daemon now, so that its start below is only its start.
	harness.DaemonBinary(t)

	pull := pullInBackground(c, "late", ref, e.hostsDir)
	// The pull has resolved the tag (at the origin: the mirror is down) and goes on to
	// fetch, which needs the content store.
	harness.WaitFor(t, "the pull to resolve the image at the origin", 60*time.Second, 50*time.Millisecond, func() error {
		select {
		case r := <-pull:
			pull = nil
			return fmt.Errorf("%w: pull ended before the daemon started: %v\n%s", errGiveUp, r.err, lastLines(r.out, 5))
		default:
		}
		if len(e.origin.Snapshot().Direct().ManifestHEADs())+len(e.origin.Snapshot().Direct().ManifestGETs()) == 0 {
			return fmt.Errorf("no manifest request at the origin yet")
		}
		return nil
	})
	if _, err := os.Lstat(e.socket); !os.IsNotExist(err) {
		t.Fatalf("content socket exists before the daemon started: %v", err)
	}
	e.startDaemon(t)
	up := time.Now()
	select {
	case r := <-pull:
		if r.err != nil {
			t.Fatalf("pull started before the daemon failed: %v", r.err)
		}
		t.Logf("pull completed %v after the daemon was up (%v in all)", r.done.Sub(up).Round(time.Millisecond), r.wall.Round(time.Millisecond))
		measure(t, "late_daemon: pull_completed_after_daemon_up=%v", r.done.Sub(up).Round(time.Millisecond))
	case <-time.After(2 * time.Minute):
		t.Fatal("pull did not complete within 2 minutes of the daemon starting")
	}
	for _, b := range im.Blobs() {
		if !e.daemon.Cached(t, b.Digest, b.Size) {
			t.Errorf("blob %s is not in the daemon's store", b.Digest)
		}
	}
	assertStoredOnce(t, c, "late", e.daemon)
	assertNoPartials(t, e.daemon)
	runImage(t, c, "late", ref, "late-1", "/bin/true")
}

// errGiveUp ends a WaitFor poll at once (it wraps the harness's own stop error).
var errGiveUp = harness.ErrStopWaiting

// TestProxyDaemonKilledDuringPull shows what containerd does when the daemon dies while a
// blob is being written: the pull fails (containerd does not retry a broken write stream).
// The blobs committed before stay held, and the next pull completes fetching only what was
// missing.
func TestProxyDaemonKilledDuringPull(t *testing.T) {
	e := newProxyEnv(t, true)
	c := harness.StartContainerdContentProxy(t, harness.ContainerdOptions{HostsDir: e.hostsDir, ContentSharingPolicy: "shared"}, e.socket, true)
	im, ref := e.push(t, "test/killed", "v1", proxyImageSpec(t, 5500))
	stalled := im.Layers[2].Descriptor
	release := make(chan struct{})
	e.origin.SetIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+stalled.Digest.String()) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		return false
	})
	defer close(release)

	pull := pullInBackground(c, "killed", ref, e.hostsDir)
	// containerd is writing the stalled layer through the content API (after its Info has
	// waited content.info_fill_wait for the daemon's stalled fill of it and answered not found).
	harness.WaitFor(t, "an ingest of the stalled layer", 60*time.Second, 50*time.Millisecond, func() error {
		out, err := c.CtrE(context.Background(), "killed", "content", "active")
		if err != nil {
			return err
		}
		if !strings.Contains(out, stalled.Digest.Encoded()) {
			return fmt.Errorf("no ingest of %s yet:\n%s", stalled.Digest, out)
		}
		return nil
	})
	var before []digest.Digest
	for _, b := range im.Blobs() {
		if e.daemon.HasBlob(b.Digest, b.Size) {
			before = append(before, b.Digest)
		}
	}
	if err := e.daemon.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-pull:
		if r.err == nil {
			t.Fatal("pull succeeded although the daemon was killed while it wrote a layer")
		}
		t.Logf("containerd's pull failed as the daemon died: %s", ctrMessage(r.err))
	case <-time.After(2 * time.Minute):
		t.Fatal("pull neither failed nor completed within 2 minutes of the daemon's death")
	}

	e.origin.SetIntercept(nil)
	e.startDaemon(t)
	e.resetCounts()
	c.Pull(t, "killed", ref, e.hostsDir)
	gets := e.origin.Snapshot().BlobGETs()
	if gets[stalled.Digest] != 1 {
		t.Errorf("the layer in flight was fetched %d times by the next pull, want 1", gets[stalled.Digest])
	}
	for _, d := range before {
		if gets[d] != 0 {
			t.Errorf("blob %s, stored before the daemon died, was fetched again", d)
		}
	}
	runImage(t, c, "killed", ref, "killed-1", "/bin/true")
	assertStoredOnce(t, c, "killed", e.daemon)
	// The write that broke leaves containerd's ingest in the daemon's root; containerd's
	// garbage collection aborts it once nothing refers to it.
	ingests, _ := daemonPartials(t, e.daemon)
	t.Logf("%d ingests left by the broken pull", ingests)
	if _, err := c.CtrE(context.Background(), "killed", "image", "rm", "--sync", ref); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, "containerd's collection to abort the ingests left behind", 30*time.Second, 100*time.Millisecond, func() error {
		if ingests, fills := daemonPartials(t, e.daemon); ingests+fills > 0 {
			return fmt.Errorf("%d ingests, %d fills", ingests, fills)
		}
		return nil
	})
}

// TestProxyCRIStartedBeforeDaemon shows what containerd's CRI plugin does when containerd
// starts while the daemon is down: it checks every image's content at start, cannot read
// it, and forgets the image (ImageStatus: not present) although containerd still has it.
// It does not check again when the content store comes back; a CRI pull (what kubelet does
// for a missing image) makes it known again, without downloading anything.
func TestProxyCRIStartedBeforeDaemon(t *testing.T) {
	e := newProxyEnv(t, true)
	c := harness.StartContainerdContentProxy(t, harness.ContainerdOptions{HostsDir: e.hostsDir, ContentSharingPolicy: "shared"}, e.socket, true)
	im, ref := e.push(t, "test/cri", "v1", proxyImageSpec(t, 5600))
	c.CRIPull(t, ref)
	if c.CRIImageStatus(t, ref) == nil {
		t.Fatal("CRI does not know the image it pulled")
	}

	if err := e.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	c.RestartProxyMode(t, true)
	if c.CRIImageStatus(t, ref) != nil {
		t.Errorf("CRI knows the image although its content was unreadable when containerd started (containerd behaviour changed?)")
	}
	if out := c.Ctr(t, harness.CRINamespace, "images", "ls", "-q"); !strings.Contains(out, ref) {
		t.Errorf("containerd lost the image itself: %q", out)
	}

	e.startDaemon(t)
	up := time.Now()
	// containerd failed to connect while the daemon was down and now waits out its
	// reconnect backoff (up to about 3.6 s): reads fail fast until it connects.
	attempts := 0
	harness.WaitFor(t, "containerd to read content through the daemon again", 30*time.Second, 100*time.Millisecond, func() error {
		attempts++
		_, err := c.CtrE(context.Background(), harness.CRINamespace, "content", "get", im.Config.Digest.String())
		return err
	})
	reconnect := time.Since(up)
	if c.CRIImageStatus(t, ref) != nil {
		t.Error("CRI knows the image again without a pull (containerd behaviour changed?)")
	}
	e.resetCounts()
	c.CRIPull(t, ref)
	if c.CRIImageStatus(t, ref) == nil {
		t.Error("CRI does not know the image after pulling it again")
	}
	if n := e.origin.Snapshot().TotalBlobGETs(); n != 0 {
		t.Errorf("the CRI re-pull fetched %d blobs from the origin", n)
	}
	if n := mirrorBlobRequests(e.front.Snapshot()); n != 0 {
		t.Errorf("the CRI re-pull sent %d blob requests to the mirror", n)
	}
	measure(t, "cri_started_before_daemon: reads_work_after_daemon_up=%v (%d attempts); image forgotten by CRI until pulled again", reconnect.Round(time.Millisecond), attempts)
}

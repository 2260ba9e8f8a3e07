package integration

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// origin is a registry behind the counting proxy whose host is the registry part of the
// image references: everything that reaches the "origin" is counted.
type origin struct {
	reg   *harness.Registry
	proxy *harness.CountingProxy
}

// push builds and pushes an image to the registry (not through the proxy, so the counts
// start clean) and returns it with the reference to pull it by.
func (o origin) push(t *testing.T, repo, tag string, spec harness.ImageSpec) (*harness.Image, string) {
	t.Helper()
	im := harness.PushImage(t, o.reg.URL, repo, tag, spec)
	return im, harness.Ref(o.proxy.Host, repo, tag)
}

// mirrorEnv is the setup of the mirror tests: origins, the daemon allowed to reach them, a
// hosts directory sending each origin's pulls through the daemon, and containerd whose CRI
// reads that directory.
type mirrorEnv struct {
	origins  []origin
	daemon   *harness.Daemon
	hostsDir string
	// directDir holds hosts.toml files without the mirror, for comparison pulls.
	directDir string
	ctrd      *harness.Containerd
	// front, when asked for, is a counting proxy between containerd and the daemon: the
	// hosts.toml mirror is front.URL, so the daemon's answers to containerd are recorded.
	front *harness.CountingProxy
}

func newMirrorEnv(t *testing.T, nOrigins int) *mirrorEnv {
	t.Helper()
	return newMirrorEnvWith(t, nOrigins, false)
}

func newMirrorEnvWith(t *testing.T, nOrigins int, observeMirror bool) *mirrorEnv {
	t.Helper()
	harness.RequireRoot(t)
	harness.Tools(t)
	e := &mirrorEnv{hostsDir: t.TempDir(), directDir: t.TempDir()}
	var hosts []string
	for range nOrigins {
		reg := harness.StartRegistry(t)
		o := origin{reg: reg, proxy: harness.StartCountingProxy(t, reg.URL)}
		e.origins = append(e.origins, o)
		hosts = append(hosts, o.proxy.Host)
	}
	e.daemon = harness.StartDaemon(t, harness.DaemonConfig{Registries: hosts})
	mirrorURL := e.daemon.URL
	if observeMirror {
		e.front = harness.StartCountingProxy(t, e.daemon.URL)
		mirrorURL = e.front.URL
	}
	for _, h := range hosts {
		if _, err := harness.WriteHostsToml(e.hostsDir, h, mirrorURL); err != nil {
			t.Fatal(err)
		}
		if _, err := harness.WriteHostsToml(e.directDir, h, ""); err != nil {
			t.Fatal(err)
		}
	}
	e.ctrd = harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})
	return e
}

func (e *mirrorEnv) resetCounts() {
	for _, o := range e.origins {
		o.proxy.Reset()
	}
	if e.front != nil {
		e.front.Reset()
	}
}

// bigImageSpec is about 30 MB in three layers of seeded random files, plus busybox.
func bigImageSpec(t *testing.T, seed uint64) harness.ImageSpec {
	spec := harness.ImageSpec{Layers: []harness.LayerSpec{
		{Seed: seed, Files: 5, FileSize: 2 << 20},
		{Seed: seed + 1, Files: 4, FileSize: 2560 << 10},
		{Seed: seed + 2, Files: 10, FileSize: 1 << 20},
	}}
	return withBusybox(t, spec)
}

// withBusybox adds a busybox rootfs layer in front; building the image fails the test,
// naming the package, when busybox-static is not installed.
func withBusybox(t *testing.T, spec harness.ImageSpec) harness.ImageSpec {
	t.Helper()
	harness.RequireDebianFile(t, harness.BusyboxPath, "busybox-static")
	spec.Layers = append([]harness.LayerSpec{{Busybox: true}}, spec.Layers...)
	return spec
}

// assertServedByDaemon checks that containerd never went to the origin itself, that the
// daemon fetched each blob from the origin exactly once, and that its store holds each blob,
// intact. Blobs in cached were in the store before the pull: the origin must not see them.
func assertServedByDaemon(t *testing.T, d *harness.Daemon, o origin, blobs []ocispec.Descriptor, cached ...ocispec.Descriptor) {
	t.Helper()
	c := o.proxy.Snapshot()
	if direct := c.Direct(); len(direct.Requests) != 0 {
		t.Errorf("containerd went to the origin itself (%d requests), not through the mirror:\n%s", len(direct.Requests), direct)
	}
	gets := c.ViaMirror().BlobGETs()
	check := func(b ocispec.Descriptor, want int) {
		if gets[b.Digest] != want {
			t.Errorf("daemon fetched blob %s from the origin %d times, want %d", b.Digest, gets[b.Digest], want)
		}
		if !d.Cached(t, b.Digest, b.Size) {
			t.Errorf("blob %s (%d bytes) is not in the daemon's store at %s", b.Digest, b.Size, d.BlobPath(b.Digest))
		} else if err := d.VerifyBlobFile(b.Digest); err != nil {
			t.Errorf("stored blob: %v", err)
		}
	}
	for _, b := range blobs {
		check(b, 1)
	}
	for _, b := range cached {
		check(b, 0)
	}
	if t.Failed() {
		t.Logf("origin requests:\n%s", c)
	}
}

// splitCached separates the blobs the daemon already holds from the others.
func splitCached(d *harness.Daemon, blobs []ocispec.Descriptor) (fresh, cached []ocispec.Descriptor) {
	for _, b := range blobs {
		if d.HasBlob(b.Digest, b.Size) {
			cached = append(cached, b)
		} else {
			fresh = append(fresh, b)
		}
	}
	return fresh, cached
}

// TestMirrorPull pulls through the daemon with ctr (transfer service, --hosts-dir) and with
// the CRI PullImage RPC (hosts from the CRI config_path), single- and multi-platform.
func TestMirrorPull(t *testing.T) {
	e := newMirrorEnv(t, 1)
	o := e.origins[0]

	t.Run("ctr", func(t *testing.T) {
		im, ref := o.push(t, "test/big", "v1", bigImageSpec(t, 1000))
		t.Logf("image %s: %d layers, %d bytes", ref, len(im.Layers), im.Size())
		e.resetCounts()
		e.ctrd.Pull(t, "ctr", ref, e.hostsDir)
		assertServedByDaemon(t, e.daemon, o, im.Blobs())
	})

	t.Run("index", func(t *testing.T) {
		arm := ocispec.Platform{OS: "linux", Architecture: "arm64"}
		amdSpec := harness.ImageSpec{Layers: []harness.LayerSpec{{Seed: 1100, Files: 3, FileSize: 1 << 20}, {Seed: 1101, Files: 2, FileSize: 1 << 20}}}
		armSpec := harness.ImageSpec{Platform: &arm, Layers: []harness.LayerSpec{{Seed: 1200, Files: 3, FileSize: 1 << 20}}}
		ix := harness.PushIndex(t, o.reg.URL, "test/multi", "v1", amdSpec, armSpec)
		ref := harness.Ref(o.proxy.Host, "test/multi", "v1")
		e.resetCounts()
		e.ctrd.Pull(t, "index", ref, e.hostsDir, "--platform", "linux/amd64")
		amd, armIm := ix.ForPlatform("linux", "amd64"), ix.ForPlatform("linux", "arm64")
		assertServedByDaemon(t, e.daemon, o, amd.Blobs())
		c := o.proxy.Snapshot()
		for _, d := range armIm.LayerDigests() {
			if n := c.BlobGETs()[d]; n != 0 {
				t.Errorf("arm64 layer %s fetched %d times for a linux/amd64 pull", d, n)
			}
			if e.daemon.HasBlob(d, -1) {
				t.Errorf("arm64 layer %s is in the daemon's store", d)
			}
		}
		// The index itself went through the mirror: fetched by tag or digest, never directly.
		if n := len(c.Direct().Requests); n != 0 {
			t.Errorf("%d direct requests to the origin", n)
		}
		if got := c.ManifestGETs()["v1"] + c.ManifestGETs()[ix.Descriptor.Digest.String()]; got == 0 {
			t.Errorf("the index was never fetched from the origin:\n%s", c)
		}
	})

	t.Run("cri", func(t *testing.T) {
		im, ref := o.push(t, "test/cri", "v1", withBusybox(t, harness.ImageSpec{Layers: []harness.LayerSpec{{Seed: 1300, Files: 4, FileSize: 1 << 20}}}))
		// The busybox layer is shared with test/big, pulled above: already cached.
		fresh, cached := splitCached(e.daemon, im.Blobs())
		e.resetCounts()
		id := e.ctrd.CRIPull(t, ref)
		if id != im.Config.Digest.String() {
			t.Errorf("CRI image id %s, want config digest %s", id, im.Config.Digest)
		}
		assertServedByDaemon(t, e.daemon, o, fresh, cached...)
		if st := e.ctrd.CRIImageStatus(t, ref); st == nil {
			t.Errorf("CRI does not know %s after the pull", ref)
		}
	})
}

// TestMirrorWarmPullFromCache removes the image and its content from containerd and pulls
// again: the origin must see no blob GET, and the daemon answers containerd with hits.
func TestMirrorWarmPullFromCache(t *testing.T) {
	e := newMirrorEnvWith(t, 1, true)
	o := e.origins[0]
	im, ref := o.push(t, "test/warm", "v1", bigImageSpec(t, 2000))

	for _, tc := range []struct {
		name   string
		ns     string
		pull   func(t *testing.T)
		remove func(t *testing.T)
	}{
		{"ctr", "warm", func(t *testing.T) { e.ctrd.Pull(t, "warm", ref, e.hostsDir) }, func(t *testing.T) { e.ctrd.RemoveImageAndContent(t, "warm", ref) }},
		{"cri", harness.CRINamespace, func(t *testing.T) { e.ctrd.CRIPull(t, ref) }, func(t *testing.T) { e.ctrd.RemoveImageAndContent(t, harness.CRINamespace, ref) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.pull(t) // cold for ctr; for cri the daemon is already warm
			tc.remove(t)
			e.resetCounts()
			tc.pull(t)
			c := o.proxy.Snapshot()
			if n := c.TotalBlobGETs(); n != 0 {
				t.Errorf("warm pull made %d blob GETs at the origin, want 0:\n%s", n, c)
			}
			if n := len(c.Direct().Requests); n != 0 {
				t.Errorf("warm pull went to the origin directly:\n%s", c.Direct())
			}
			// What containerd got from the mirror: every blob, each answered as a hit.
			front := e.front.Snapshot()
			gets := front.BlobGETs()
			for _, b := range im.Blobs() {
				if gets[b.Digest] == 0 {
					t.Errorf("containerd did not GET %s from the mirror", b.Digest)
				}
			}
			for _, r := range front.Requests {
				if r.Kind == harness.KindBlob && r.Method == http.MethodGet && r.Result != harness.ResultHit {
					t.Errorf("warm GET %s answered %s=%q, want %q", r.Ref, harness.ResultHeader, r.Result, harness.ResultHit)
				}
			}
			if t.Failed() {
				t.Logf("containerd -> mirror:\n%s", front)
			}
			content := e.ctrd.ContentDigests(t, tc.ns)
			for _, b := range im.Blobs() {
				if !containsString(content, b.Digest.String()) {
					t.Errorf("containerd lacks %s after the warm pull", b.Digest)
				}
			}
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, l := range im.Layers {
		r, err := e.daemon.GetBlob(ctx, o.proxy.Host, "test/warm", l.Descriptor.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != http.StatusOK || r.Digest != l.Descriptor.Digest || r.Size != l.Descriptor.Size {
			t.Errorf("GET %s from the mirror: %d, %d bytes hashing to %s", l.Descriptor.Digest, r.Status, r.Size, r.Digest)
		}
		if r.Result() != harness.ResultHit {
			t.Errorf("GET %s from the mirror: %s = %q, want %q", l.Descriptor.Digest, harness.ResultHeader, r.Result(), harness.ResultHit)
		}
	}
	if n := o.proxy.Snapshot().TotalBlobGETs(); n != 0 {
		t.Errorf("cache hits went to the origin: %d blob GETs", n)
	}
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestMirrorSharedLayerAcrossRegistries: two registries hold images sharing a layer; the
// daemon keeps the layer once and fetches it only from the first registry it was asked for.
func TestMirrorSharedLayerAcrossRegistries(t *testing.T) {
	e := newMirrorEnv(t, 2)
	o1, o2 := e.origins[0], e.origins[1]
	shared := harness.LayerSpec{Seed: 3000, Files: 4, FileSize: 2 << 20}
	im1, ref1 := o1.push(t, "team/one", "v1", harness.ImageSpec{Layers: []harness.LayerSpec{shared, {Seed: 3001, Files: 2, FileSize: 1 << 20}}})
	im2, ref2 := o2.push(t, "other/two", "v1", harness.ImageSpec{Layers: []harness.LayerSpec{shared, {Seed: 3002, Files: 2, FileSize: 1 << 20}}})
	sharedDesc := im1.Layers[0].Descriptor
	if im2.Layers[0].Descriptor.Digest != sharedDesc.Digest {
		t.Fatalf("images do not share their first layer: %s vs %s", sharedDesc.Digest, im2.Layers[0].Descriptor.Digest)
	}

	e.ctrd.Pull(t, "one", ref1, e.hostsDir)
	assertServedByDaemon(t, e.daemon, o1, im1.Blobs())

	// Another namespace (isolated content policy): containerd fetches everything again, the
	// daemon answers the shared layer from its store.
	e.resetCounts()
	e.ctrd.Pull(t, "two", ref2, e.hostsDir)
	c2 := o2.proxy.Snapshot()
	if n := c2.BlobGETs()[sharedDesc.Digest] + c2.BlobHEADs()[sharedDesc.Digest]; n != 0 {
		t.Errorf("shared layer requested %d times from the second registry, want 0:\n%s", n, c2)
	}
	if n := o1.proxy.Snapshot().TotalBlobGETs(); n != 0 {
		t.Errorf("first registry asked for %d blobs while pulling from the second", n)
	}
	var unique2 []ocispec.Descriptor
	unique2 = append(unique2, im2.Config, im2.Layers[1].Descriptor)
	assertServedByDaemon(t, e.daemon, o2, unique2)

	if n := countCopies(t, e.daemon.Config.Root, sharedDesc); n != 1 {
		t.Errorf("the shared layer is stored %d times under %s, want once", n, e.daemon.Config.Root)
	}

	// Second pull of image 2: everything from the cache.
	e.ctrd.RemoveImageAndContent(t, "two", ref2)
	e.resetCounts()
	e.ctrd.Pull(t, "two", ref2, e.hostsDir)
	for i, o := range e.origins {
		if n := o.proxy.Snapshot().TotalBlobGETs(); n != 0 {
			t.Errorf("registry %d: warm pull of image 2 made %d blob GETs:\n%s", i+1, n, o.proxy.Snapshot())
		}
	}
}

// countCopies counts the distinct files under root whose content is the blob.
func countCopies(t *testing.T, root string, blob ocispec.Descriptor) int {
	t.Helper()
	var seen []os.FileInfo
	err := filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !de.Type().IsRegular() {
			return nil
		}
		fi, err := de.Info()
		if err != nil || fi.Size() != blob.Size {
			return err
		}
		for _, s := range seen {
			if os.SameFile(s, fi) {
				return nil
			}
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		if digest.NewDigest(digest.SHA256, h) == blob.Digest {
			seen = append(seen, fi)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return len(seen)
}

// TestMirrorCoalescesConcurrentBlobGets: 16 clients ask for one cold ~20 MB blob at once;
// the origin serves it once and every client gets the right bytes.
func TestMirrorCoalescesConcurrentBlobGets(t *testing.T) {
	e := newMirrorEnv(t, 1)
	o := e.origins[0]
	im, _ := o.push(t, "test/coalesce", "v1", harness.ImageSpec{Layers: []harness.LayerSpec{{Seed: 4000, Files: 10, FileSize: 2 << 20}}})
	blob := im.Layers[0].Descriptor
	e.resetCounts()

	const clients = 16
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := make(chan struct{})
	results := make([]harness.MirrorResponse, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			<-start
			results[i], errs[i] = e.daemon.GetBlob(ctx, o.proxy.Host, "test/coalesce", blob.Digest)
		})
	}
	close(start)
	wg.Wait()

	outcomes := map[string]int{}
	for i := range clients {
		if errs[i] != nil {
			t.Errorf("client %d: %v", i, errs[i])
			continue
		}
		r := results[i]
		outcomes[r.Result()]++
		if r.Status != http.StatusOK || r.Digest != blob.Digest || r.Size != blob.Size {
			t.Errorf("client %d: status %d, %d bytes hashing to %s; want 200, %d bytes of %s", i, r.Status, r.Size, r.Digest, blob.Size, blob.Digest)
		}
	}
	t.Logf("%d clients, results %v", clients, outcomes)
	c := o.proxy.Snapshot()
	if n := c.BlobGETs()[blob.Digest]; n != 1 {
		t.Errorf("origin saw %d GETs of the blob, want exactly 1:\n%s", n, c)
	}
	if got := c.BlobBytes(); got > blob.Size {
		t.Errorf("origin sent %d blob bytes for a %d byte blob", got, blob.Size)
	}
	if !e.daemon.Cached(t, blob.Digest, blob.Size) {
		t.Errorf("blob not committed to the store after the coalesced fetch")
	}
}

// TestMirrorDaemonDownFallsBack: with the daemon stopped (its port closed) the pull still
// succeeds, from the origin.
func TestMirrorDaemonDownFallsBack(t *testing.T) {
	e := newMirrorEnv(t, 1)
	o := e.origins[0]
	im, ref := o.push(t, "test/fallback", "v1", bigImageSpec(t, 5000))

	e.ctrd.Pull(t, "fallback", ref, e.hostsDir)
	assertServedByDaemon(t, e.daemon, o, im.Blobs())
	e.ctrd.RemoveImageAndContent(t, "fallback", ref)

	if err := e.daemon.Stop(); err != nil {
		t.Fatalf("stop daemon: %v", err)
	}
	if !e.daemon.PortClosed() {
		t.Fatalf("the mirror port %s still accepts connections after stop", e.daemon.Addr)
	}
	e.resetCounts()
	d := e.ctrd.Pull(t, "fallback", ref, e.hostsDir)
	t.Logf("pull with the daemon down took %v", d)
	c := o.proxy.Snapshot().Direct()
	for _, b := range im.Blobs() {
		if n := c.BlobGETs()[b.Digest]; n != 1 {
			t.Errorf("blob %s fetched directly %d times with the daemon down, want 1", b.Digest, n)
		}
	}
	if t.Failed() {
		t.Logf("origin requests:\n%s", o.proxy.Snapshot())
	}
}

// TestMirrorReadOnlyStoreBypasses: once the store cannot be written, the daemon still serves
// pulls (straight from upstream, no caching) and says so.
func TestMirrorReadOnlyStoreBypasses(t *testing.T) {
	e := newMirrorEnv(t, 1)
	o := e.origins[0]
	im, ref := o.push(t, "test/readonly", "v1", bigImageSpec(t, 6000))

	harness.MakeReadOnly(t, e.daemon.Config.Root)
	e.resetCounts()
	e.ctrd.Pull(t, "readonly", ref, e.hostsDir)

	c := o.proxy.Snapshot()
	if direct := c.Direct(); direct.TotalBlobGETs() != 0 {
		t.Errorf("containerd fetched %d blobs from the origin itself: the daemon failed instead of bypassing:\n%s", direct.TotalBlobGETs(), direct)
	}
	gets := c.ViaMirror().BlobGETs()
	for _, b := range im.Blobs() {
		if gets[b.Digest] == 0 {
			t.Errorf("blob %s never fetched by the daemon", b.Digest)
		}
		if e.daemon.HasBlob(b.Digest, -1) {
			t.Errorf("blob %s is in the read-only store", b.Digest)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := im.Layers[len(im.Layers)-1].Descriptor
	r, err := e.daemon.GetBlob(ctx, o.proxy.Host, "test/readonly", l.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != http.StatusOK || r.Digest != l.Digest || r.Size != l.Size {
		t.Errorf("GET %s with a read-only store: %d, %d bytes hashing to %s", l.Digest, r.Status, r.Size, r.Digest)
	}
	if r.Result() != harness.ResultBypass {
		t.Errorf("%s = %q with a read-only store, want %q", harness.ResultHeader, r.Result(), harness.ResultBypass)
	}
	if t.Failed() {
		t.Logf("origin requests:\n%s", o.proxy.Snapshot())
	}
}

// TestMirrorMeasurePullTimes logs (asserts nothing about) the wall time of a direct pull, a
// cold pull through the daemon and a warm one, of the largest image, in one line starting
// with MEASURE. With BLOBCACHE_MEASURE_FILE set the line is appended to that file too.
func TestMirrorMeasurePullTimes(t *testing.T) {
	e := newMirrorEnv(t, 1)
	o := e.origins[0]
	spec := harness.ImageSpec{Layers: []harness.LayerSpec{
		{Seed: 7000, Files: 10, FileSize: 2 << 20},
		{Seed: 7001, Files: 10, FileSize: 2 << 20},
		{Seed: 7002, Files: 10, FileSize: 2 << 20},
		{Seed: 7003, Files: 40, FileSize: 1 << 20},
	}}
	im, ref := o.push(t, "test/measure", "v1", withBusybox(t, spec))

	direct := e.ctrd.Pull(t, "measure-direct", ref, e.directDir)
	if n := o.proxy.Snapshot().Direct().TotalBlobGETs(); n != len(im.Blobs()) {
		t.Errorf("direct pull: %d direct blob GETs, want %d", n, len(im.Blobs()))
	}
	e.resetCounts()
	cold := e.ctrd.Pull(t, "measure-mirror", ref, e.hostsDir)
	assertServedByDaemon(t, e.daemon, o, im.Blobs())
	e.ctrd.RemoveImageAndContent(t, "measure-mirror", ref)
	e.resetCounts()
	warm := e.ctrd.Pull(t, "measure-mirror", ref, e.hostsDir)
	if n := o.proxy.Snapshot().TotalBlobGETs(); n != 0 {
		t.Errorf("warm pull made %d blob GETs at the origin", n)
	}
	line := fmt.Sprintf("MEASURE cold=%v warm=%v direct=%v image=%dMB layers=%d (ctr image pull on loopback, daemon built with -race)",
		cold.Round(time.Millisecond), warm.Round(time.Millisecond), direct.Round(time.Millisecond), im.Size()>>20, len(im.Layers))
	t.Log(line)
	if f := os.Getenv("BLOBCACHE_MEASURE_FILE"); f != "" {
		if err := appendLine(f, line); err != nil {
			t.Errorf("write %s: %v", f, err)
		}
	}
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(f, line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

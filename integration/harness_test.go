package integration

import (
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// These tests check the harness itself against the real registry and containerd, without
// the daemon: if they fail, the mirror tests' results mean nothing.

func TestHarnessClassifyPath(t *testing.T) {
	for _, tc := range []struct {
		path      string
		kind      harness.RequestKind
		name, ref string
	}{
		{"/v2/", harness.KindBase, "", ""},
		{"/v2/a/b/c/blobs/sha256:abc", harness.KindBlob, "a/b/c", "sha256:abc"},
		{"/v2/test/img/manifests/v1", harness.KindManifest, "test/img", "v1"},
		{"/v2/blobs/manifests/sha256:1", harness.KindManifest, "blobs", "sha256:1"},
		{"/v2/test/img/blobs/uploads/", harness.KindUpload, "test/img", ""},
		{"/v2/test/img/blobs/uploads/uuid", harness.KindUpload, "test/img", ""},
		{"/v2/_catalog", harness.KindOther, "", ""},
		{"/other", harness.KindOther, "", ""},
	} {
		kind, name, ref := harness.ClassifyPath(tc.path)
		if kind != tc.kind || name != tc.name || ref != tc.ref {
			t.Errorf("ClassifyPath(%q) = %q %q %q, want %q %q %q", tc.path, kind, name, ref, tc.kind, tc.name, tc.ref)
		}
	}
}

func TestHarnessImagesAreDeterministic(t *testing.T) {
	spec := harness.ImageSpec{Layers: []harness.LayerSpec{{Seed: 7, Files: 2, FileSize: 300 << 10}, {Seed: 8, Files: 1, FileSize: 1 << 20}}}
	a := harness.BuildImage(t, spec)
	b := harness.BuildImage(t, spec)
	if a.Manifest.Digest != b.Manifest.Digest || !slices.Equal(a.LayerDigests(), b.LayerDigests()) {
		t.Fatalf("same spec built twice differs: %v %v vs %v %v", a.Manifest.Digest, a.LayerDigests(), b.Manifest.Digest, b.LayerDigests())
	}
	spec.Layers[1].Seed = 9
	c := harness.BuildImage(t, spec)
	if c.Layers[0].Descriptor.Digest != a.Layers[0].Descriptor.Digest {
		t.Errorf("equal first layer spec gave different digests")
	}
	if c.Layers[1].Descriptor.Digest == a.Layers[1].Descriptor.Digest {
		t.Errorf("different seeds gave the same layer")
	}
	// Random content does not compress: the blob is about as large as the files.
	if s := a.Layers[1].Descriptor.Size; s < 1<<20 || s > 1<<20+64<<10 {
		t.Errorf("1 MiB random layer is %d bytes compressed", s)
	}
	for _, l := range a.Layers {
		fi, err := os.Stat(l.Path)
		if err != nil || fi.Size() != l.Descriptor.Size {
			t.Errorf("layer file %s: %v, size mismatch with %d", l.Path, err, l.Descriptor.Size)
		}
	}
}

// harnessEnv is a registry behind a counting proxy and a containerd whose CRI reads hostsDir.
type harnessEnv struct {
	reg      *harness.Registry
	origin   *harness.CountingProxy
	hostsDir string
	ctrd     *harness.Containerd
}

func newHarnessEnv(t *testing.T) *harnessEnv {
	t.Helper()
	harness.RequireRoot(t)
	harness.Tools(t)
	e := &harnessEnv{reg: harness.StartRegistry(t)}
	e.origin = harness.StartCountingProxy(t, e.reg.URL)
	e.hostsDir = t.TempDir()
	if _, err := harness.WriteHostsToml(e.hostsDir, e.origin.Host, ""); err != nil {
		t.Fatal(err)
	}
	e.ctrd = harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})
	return e
}

func smallImageSpec(seed uint64, busybox bool) harness.ImageSpec {
	spec := harness.ImageSpec{Layers: []harness.LayerSpec{
		{Seed: seed, Files: 2, FileSize: 512 << 10},
		{Seed: seed + 1, Files: 1, FileSize: 1 << 20},
	}}
	if busybox {
		spec.Layers = append([]harness.LayerSpec{{Busybox: true}}, spec.Layers...)
	}
	return spec
}

// assertFetchedOnce checks that every blob was fetched with exactly one GET and every GET
// came from the given side (direct or through a mirror).
func assertFetchedOnce(t *testing.T, counts harness.ProxyCounts, blobs []ocispec.Descriptor, direct bool) {
	t.Helper()
	gets := counts.BlobGETs()
	var want int64
	for _, b := range blobs {
		if gets[b.Digest] != 1 {
			t.Errorf("blob %s fetched %d times, want 1", b.Digest, gets[b.Digest])
		}
		want += b.Size
	}
	if got := counts.BlobBytes(); got != want {
		t.Errorf("blob bytes through proxy = %d, want %d", got, want)
	}
	for _, r := range counts.Requests {
		if r.Kind == harness.KindBlob && r.Direct != direct {
			t.Errorf("blob request %s %s: direct=%v, want %v", r.Method, r.Path, r.Direct, direct)
		}
	}
	if t.Failed() {
		t.Logf("requests:\n%s", counts)
	}
}

func TestHarnessCtrPullDirect(t *testing.T) {
	e := newHarnessEnv(t)
	im := harness.PushImage(t, e.reg.URL, "test/direct", "v1", smallImageSpec(100, true))
	ref := harness.Ref(e.origin.Host, "test/direct", "v1")
	const ns = "harness"

	e.ctrd.Pull(t, ns, ref, e.hostsDir)
	c := e.origin.Snapshot()
	assertFetchedOnce(t, c, im.Blobs(), true)
	if n := c.ManifestGETs()["v1"] + c.ManifestHEADs()["v1"]; n == 0 {
		t.Errorf("no manifest request for tag v1:\n%s", c)
	}
	for _, r := range c.Requests {
		if r.RawQuery != "" {
			t.Errorf("direct request carries a query: %s?%s", r.Path, r.RawQuery)
		}
	}
	content := e.ctrd.ContentDigests(t, ns)
	for _, b := range im.Blobs() {
		if !slices.Contains(content, b.Digest.String()) {
			t.Errorf("containerd lacks %s after pull", b.Digest)
		}
	}
	if len(e.ctrd.Snapshots(t, ns)) != len(im.Layers) {
		t.Errorf("snapshots after unpack: %v, want %d", e.ctrd.Snapshots(t, ns), len(im.Layers))
	}

	// After removal everything is fetched again: the harness can force cold pulls.
	e.ctrd.RemoveImageAndContent(t, ns, ref)
	e.origin.Reset()
	e.ctrd.Pull(t, ns, ref, e.hostsDir)
	assertFetchedOnce(t, e.origin.Snapshot(), im.Blobs(), true)

	// A pull in the same namespace without removal fetches no blob.
	e.origin.Reset()
	e.ctrd.Pull(t, ns, ref, e.hostsDir)
	if n := e.origin.Snapshot().TotalBlobGETs(); n != 0 {
		t.Errorf("re-pull of a present image made %d blob GETs", n)
	}
}

func TestHarnessCtrPullIndex(t *testing.T) {
	e := newHarnessEnv(t)
	arm := ocispec.Platform{OS: "linux", Architecture: "arm64"}
	amdSpec := smallImageSpec(200, false)
	armSpec := smallImageSpec(300, false)
	armSpec.Platform = &arm
	ix := harness.PushIndex(t, e.reg.URL, "test/multi", "v1", amdSpec, armSpec)
	ref := harness.Ref(e.origin.Host, "test/multi", "v1")

	e.ctrd.Pull(t, "harness", ref, e.hostsDir)
	c := e.origin.Snapshot()
	amd, armIm := ix.ForPlatform("linux", "amd64"), ix.ForPlatform("linux", "arm64")
	assertFetchedOnce(t, c.Filter(func(r harness.ProxiedRequest) bool {
		return r.Kind == harness.KindBlob && slices.Contains(amd.LayerDigests(), digest.Digest(r.Ref))
	}), amdOnlyLayers(amd), true)
	gets := c.BlobGETs()
	for _, d := range armIm.LayerDigests() {
		if gets[d] != 0 {
			t.Errorf("arm64 layer %s fetched for an amd64 pull", d)
		}
	}
	if gets[armIm.Config.Digest] != 1 {
		t.Errorf("arm64 config fetched %d times (ctr pulls all platforms' metadata), want 1", gets[armIm.Config.Digest])
	}
	if c.ManifestGETs()[ix.Descriptor.Digest.String()]+c.ManifestGETs()["v1"] == 0 {
		t.Errorf("index never fetched:\n%s", c)
	}
}

func amdOnlyLayers(im *harness.Image) []ocispec.Descriptor {
	var out []ocispec.Descriptor
	for _, l := range im.Layers {
		out = append(out, l.Descriptor)
	}
	return out
}

func TestHarnessCRIPull(t *testing.T) {
	e := newHarnessEnv(t)
	im := harness.PushImage(t, e.reg.URL, "test/cri", "v1", smallImageSpec(400, true))
	ref := harness.Ref(e.origin.Host, "test/cri", "v1")

	id := e.ctrd.CRIPull(t, ref)
	if id != im.Config.Digest.String() {
		t.Errorf("CRI image ref = %s, want the config digest %s", id, im.Config.Digest)
	}
	assertFetchedOnce(t, e.origin.Snapshot(), im.Blobs(), true)
	st := e.ctrd.CRIImageStatus(t, ref)
	if st == nil || !slices.Contains(st.RepoTags, ref) {
		t.Fatalf("CRI ImageStatus(%s) = %v", ref, st)
	}
	content := e.ctrd.ContentDigests(t, harness.CRINamespace)
	for _, b := range im.Blobs() {
		if !slices.Contains(content, b.Digest.String()) {
			t.Errorf("k8s.io namespace lacks %s", b.Digest)
		}
	}
}

// TestHarnessMirrorMechanics stands a second counting proxy in for the mirror (the registry
// ignores ?ns=) to check that WriteHostsToml and the ctr flags really route the pull through
// the mirror, and that containerd falls back to the registry when the mirror is down.
func TestHarnessMirrorMechanics(t *testing.T) {
	e := newHarnessEnv(t)
	mirror := harness.StartCountingProxy(t, e.reg.URL)
	im := harness.PushImage(t, e.reg.URL, "test/mech", "v1", smallImageSpec(500, false))
	ref := harness.Ref(e.origin.Host, "test/mech", "v1")
	if _, err := harness.WriteHostsToml(e.hostsDir, e.origin.Host, mirror.URL); err != nil {
		t.Fatal(err)
	}

	t.Run("ctr", func(t *testing.T) {
		e.ctrd.Pull(t, "mech", ref, e.hostsDir)
		if n := len(e.origin.Snapshot().Requests); n != 0 {
			t.Errorf("registry asked directly %d times although the mirror works:\n%s", n, e.origin.Snapshot())
		}
		m := mirror.Snapshot()
		assertFetchedOnce(t, m, im.Blobs(), false)
		for _, r := range m.Requests {
			if r.Kind != harness.KindBase && r.RawQuery != "ns="+e.origin.Host && r.RawQuery != "ns=127.0.0.1%3A"+portOf(e.origin.Host) {
				t.Errorf("mirror request without ns=%s: %s?%s", e.origin.Host, r.Path, r.RawQuery)
			}
		}
	})
	t.Run("cri", func(t *testing.T) {
		e.origin.Reset()
		mirror.Reset()
		e.ctrd.CRIPull(t, ref)
		if n := len(e.origin.Snapshot().Requests); n != 0 {
			t.Errorf("CRI pull asked the registry directly %d times:\n%s", n, e.origin.Snapshot())
		}
		assertFetchedOnce(t, mirror.Snapshot(), im.Blobs(), false)
	})
	t.Run("mirror-down", func(t *testing.T) {
		e.origin.Reset()
		closed := "http://" + harness.FreeAddr(t)
		if _, err := harness.WriteHostsToml(e.hostsDir, e.origin.Host, closed); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		e.ctrd.Pull(t, "mech-down", ref, e.hostsDir)
		t.Logf("pull with the mirror port closed took %v", time.Since(start))
		assertFetchedOnce(t, e.origin.Snapshot(), im.Blobs(), true)
	})
	t.Run("mirror-500", func(t *testing.T) {
		e.origin.Reset()
		mirror.Reset()
		if _, err := harness.WriteHostsToml(e.hostsDir, e.origin.Host, mirror.URL); err != nil {
			t.Fatal(err)
		}
		mirror.SetIntercept(func(w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, "broken", http.StatusInternalServerError)
			return true
		})
		defer mirror.SetIntercept(nil)
		e.ctrd.Pull(t, "mech-500", ref, e.hostsDir)
		assertFetchedOnce(t, e.origin.Snapshot(), im.Blobs(), true)
		if len(mirror.Snapshot().Requests) == 0 {
			t.Errorf("the failing mirror was never asked")
		}
	})
}

func portOf(hostport string) string {
	for i := len(hostport) - 1; i >= 0; i-- {
		if hostport[i] == ':' {
			return hostport[i+1:]
		}
	}
	return ""
}

// TestHarnessReadOnlyBind checks MakeReadOnly: new files fail, open ones stay writable.
func TestHarnessReadOnlyBind(t *testing.T) {
	harness.RequireRoot(t)
	dir := t.TempDir()
	f, err := os.Create(dir + "/open")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	undo := harness.MakeReadOnly(t, dir)
	if _, err := f.WriteString("still writable"); err != nil {
		t.Errorf("write to a file opened before the remount: %v", err)
	}
	if err := os.WriteFile(dir+"/new", []byte("x"), 0o644); err == nil {
		t.Errorf("created a file under the read-only bind")
	}
	undo()
	if err := os.WriteFile(dir+"/new", []byte("x"), 0o644); err != nil {
		t.Errorf("after undo: %v", err)
	}
}

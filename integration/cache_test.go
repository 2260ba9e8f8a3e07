package integration

import (
	"context"
	"encoding/json"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// verifyJSON is what `verify --json` prints.
type verifyJSON struct {
	Checked       int             `json:"checked"`
	Corrupt       []digest.Digest `json:"corrupt"`
	Missing       []digest.Digest `json:"missing"`
	Orphans       []digest.Digest `json:"orphans"`
	LeftoverFills int             `json:"leftoverFills"`
}

type lsJSON struct {
	Kind       string        `json:"kind"`
	Digest     digest.Digest `json:"digest"`
	Size       int64         `json:"size"`
	Registry   string        `json:"registry"`
	Repository string        `json:"repository"`
	Tag        string        `json:"tag"`
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	return v
}

// TestPrefetchThenPullFromCache: `prefetch --platform linux/amd64` of a multi-platform image
// fills the cache through the mirror path (amd64 only), after which `ctr image pull` makes
// no blob request to the origin. Then the other admin commands against the same daemon.
func TestPrefetchThenPullFromCache(t *testing.T) {
	e := newMirrorEnv(t, 1)
	o := e.origins[0]
	arm := ocispec.Platform{OS: "linux", Architecture: "arm64"}
	amdSpec := withBusybox(t, harness.ImageSpec{Layers: []harness.LayerSpec{{Seed: 7100, Files: 3, FileSize: 1 << 20}, {Seed: 7101, Files: 2, FileSize: 1 << 20}}})
	armSpec := harness.ImageSpec{Platform: &arm, Layers: []harness.LayerSpec{{Seed: 7200, Files: 3, FileSize: 1 << 20}}}
	ix := harness.PushIndex(t, o.reg.URL, "test/pre", "v1", amdSpec, armSpec)
	ref := harness.Ref(o.proxy.Host, "test/pre", "v1")
	amd, armIm := ix.ForPlatform("linux", "amd64"), ix.ForPlatform("linux", "arm64")
	d := e.daemon

	out := d.MustCLI(t, "prefetch", "--platform", "linux/amd64", ref)
	t.Logf("prefetch:\n%s", out)
	if !strings.Contains(out, "done") || !strings.Contains(out, "resolved to "+ix.Descriptor.Digest.String()) {
		t.Errorf("prefetch output lacks the resolution or the end:\n%s", out)
	}
	for _, b := range amd.Blobs() {
		if !d.Cached(t, b.Digest, b.Size) {
			t.Errorf("prefetch did not store %s", b.Digest)
		}
	}
	for _, l := range armIm.LayerDigests() {
		if d.HasBlob(l, -1) {
			t.Errorf("prefetch of linux/amd64 stored the arm64 layer %s", l)
		}
	}

	e.resetCounts()
	e.ctrd.Pull(t, "prefetched", ref, e.hostsDir, "--platform", "linux/amd64")
	c := o.proxy.Snapshot()
	if n := c.TotalBlobGETs(); n != 0 {
		t.Errorf("pull after prefetch made %d blob GETs at the origin, want 0:\n%s", n, c)
	}
	if n := len(c.Direct().Requests); n != 0 {
		t.Errorf("pull after prefetch went to the origin directly:\n%s", c.Direct())
	}

	// stats: the store and the traffic of this registry.
	st := decode[struct {
		Store struct {
			Size      int64 `json:"size"`
			Blobs     int64 `json:"blobs"`
			Manifests int64 `json:"manifests"`
			Tags      int64 `json:"tags"`
		} `json:"store"`
		Registries map[string]struct {
			Hits           int64   `json:"hits"`
			Misses         int64   `json:"misses"`
			BytesFromCache int64   `json:"bytesFromCache"`
			HitRatio       float64 `json:"hitRatio"`
		} `json:"registries"`
	}](t, d.MustCLI(t, "stats", "--json"))
	// The pull reads the arm64 manifest and config too (not its layers): so did prefetch.
	if st.Store.Blobs != int64(len(amd.Blobs())+4) || st.Store.Manifests != 3 || st.Store.Tags != 1 {
		t.Errorf("stats store %+v, want %d blobs (index, both manifests, arm64 config), 3 manifests, 1 tag", st.Store, len(amd.Blobs())+4)
	}
	reg := st.Registries[o.proxy.Host]
	if reg.Hits == 0 || reg.Misses == 0 || reg.BytesFromCache < amd.Size() || reg.HitRatio <= 0 {
		t.Errorf("stats for %s: %+v", o.proxy.Host, reg)
	}
	table := d.MustCLI(t, "stats")
	if !strings.Contains(table, o.proxy.Host) || !strings.Contains(table, "HIT RATIO") {
		t.Errorf("stats table:\n%s", table)
	}

	// ls: the tag and every blob; filters.
	entries := decode[[]lsJSON](t, d.MustCLI(t, "ls", "--json"))
	var tags []string
	var blobs []digest.Digest
	for _, en := range entries {
		if en.Kind == "tag" {
			tags = append(tags, en.Registry+"/"+en.Repository+":"+en.Tag)
		} else {
			blobs = append(blobs, en.Digest)
		}
	}
	if want := o.proxy.Host + "/test/pre:v1"; !slices.Equal(tags, []string{want}) {
		t.Errorf("ls tags %v, want [%s]", tags, want)
	}
	for _, b := range amd.Blobs() {
		if !slices.Contains(blobs, b.Digest) {
			t.Errorf("ls lacks %s", b.Digest)
		}
	}
	if got := decode[[]lsJSON](t, d.MustCLI(t, "ls", "manifests", "--json")); len(got) != 3 {
		t.Errorf("ls manifests: %d entries, want 3", len(got))
	}
	if out := d.MustCLI(t, "ls", "tags"); !strings.Contains(out, "test/pre:v1") {
		t.Errorf("ls tags table:\n%s", out)
	}

	// verify: clean, then a damaged blob is found and quarantined.
	if v := decode[verifyJSON](t, d.MustCLI(t, "verify", "--json")); v.Checked != len(amd.Blobs())+4 || len(v.Corrupt)+len(v.Missing)+len(v.Orphans) != 0 {
		t.Errorf("verify of a clean store: %+v", v)
	}
	victim := amd.Layers[len(amd.Layers)-1].Descriptor
	p := d.BlobPath(victim.Digest)
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, make([]byte, victim.Size), 0o444); err != nil {
		t.Fatal(err)
	}
	out, _, code := d.CLI(t, "verify", "--json")
	v := decode[verifyJSON](t, out)
	if code != 1 || !slices.Equal(v.Corrupt, []digest.Digest{victim.Digest}) {
		t.Errorf("verify of a damaged blob: exit %d, %+v", code, v)
	}
	if _, err := os.Stat(filepath.Join(d.Config.Root, "quarantine", victim.Digest.Encoded())); err != nil {
		t.Errorf("damaged blob not quarantined: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if r, err := d.GetBlob(ctx, o.proxy.Host, "test/pre", victim.Digest); err != nil || r.Digest != victim.Digest || r.Result() != harness.ResultMiss {
		t.Errorf("GET of the quarantined blob: %v %+v, want it fetched again intact", err, r)
	}
	harness.WaitFor(t, "refetched blob recorded", time.Minute, 50*time.Millisecond, func() error {
		if got := decode[[]lsJSON](t, d.MustCLI(t, "ls", "blobs", "--json", "--digest", victim.Digest.String())); len(got) != 1 {
			return os.ErrNotExist
		}
		return nil
	})

	// rm: a tag, a digest, then the registry; gc evicts the rest.
	if out := d.MustCLI(t, "rm", ref); !strings.Contains(out, "1 tags") {
		t.Errorf("rm tag: %s", out)
	}
	if out := d.MustCLI(t, "rm", amd.Config.Digest.String()); !strings.Contains(out, "removed 1 blobs") || d.HasBlob(amd.Config.Digest, -1) {
		t.Errorf("rm digest: %s", out)
	}
	d.MustCLI(t, "rm", o.proxy.Host)
	if left := d.StoredBlobs(t); len(left) != 0 {
		t.Errorf("rm registry left %d blob files", len(left))
	}
	// gc evicts what is fetched again, and the eviction metrics count it.
	if r, err := d.GetBlob(ctx, o.proxy.Host, "test/pre", victim.Digest); err != nil || r.Digest != victim.Digest {
		t.Fatalf("GET after rm: %v %+v", err, r)
	}
	harness.WaitFor(t, "refetched blob recorded", time.Minute, 50*time.Millisecond, func() error {
		if !d.Cached(t, victim.Digest, victim.Size) {
			return os.ErrNotExist
		}
		return nil
	})
	evictedBefore := metricValue(scrape(t, d), "containerd_blobcache_evicted_blobs_total", nil)
	gc := decode[struct {
		Blobs int `json:"blobs"`
	}](t, d.MustCLI(t, "gc", "--target", "0", "--json"))
	if gc.Blobs < 1 || d.HasBlob(victim.Digest, -1) {
		t.Errorf("gc --target 0 evicted %d blobs; blob still stored: %v", gc.Blobs, d.HasBlob(victim.Digest, -1))
	}
	if got := metricValue(scrape(t, d), "containerd_blobcache_evicted_blobs_total", nil) - evictedBefore; got != float64(gc.Blobs) {
		t.Errorf("evicted_blobs_total grew by %v, gc evicted %d", got, gc.Blobs)
	}

	// Daemon down: said clearly.
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := d.CLI(t, "stats")
	if code != 1 || !strings.Contains(errOut, "daemon not running") {
		t.Errorf("stats with the daemon down: exit %d, %q", code, errOut)
	}
}

// TestKillLoopDuringFillsAndEviction kills the daemon with SIGKILL at random moments, 50 times, while clients
// fetch cold blobs concurrently and a small size limit makes it evict all the time (and a
// real containerd pulls through it every tenth round). After each restart no fill is left;
// no response ever carries wrong bytes; at the end verify finds nothing to repair and the
// index lists exactly the blob files.
func TestKillLoopDuringFillsAndEviction(t *testing.T) {
	harness.RequireRoot(t)
	harness.Tools(t)
	reg := harness.StartRegistry(t)
	proxy := harness.StartCountingProxy(t, reg.URL)
	var layers []harness.LayerSpec
	for i := range 24 {
		layers = append(layers, harness.LayerSpec{Seed: uint64(8000 + i), Files: 2, FileSize: 300 << 10})
	}
	im := harness.PushImage(t, reg.URL, "test/kill", "v1", harness.ImageSpec{Layers: layers})
	ref := harness.Ref(proxy.Host, "test/kill", "v1")
	blobs := im.Blobs()
	var total int64
	for _, b := range blobs {
		total += b.Size
	}
	d := harness.StartDaemon(t, harness.DaemonConfig{
		Registries: []string{proxy.Host},
		LogLevel:   "info",
		// Room for about half the image: fetching it all keeps the evictor busy.
		Store: "max_size = " + itoa(total/2) + "\nhigh_watermark = 90\nlow_watermark = 60\naccess_flush_interval = \"100ms\"",
	})
	hostsDir := t.TempDir()
	if _, err := harness.WriteHostsToml(hostsDir, proxy.Host, d.URL); err != nil {
		t.Fatal(err)
	}
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: hostsDir})

	rng := rand.New(rand.NewSource(1))
	deadline := time.Now().Add(4 * time.Minute)
	const rounds = 50
	var wrong sync.Map
	for round := 0; round < rounds; round++ {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d rounds within the time bound", round, rounds)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewSource(int64(round*10 + w)))
				for ctx.Err() == nil {
					b := blobs[r.Intn(len(blobs))]
					resp, err := d.GetBlob(ctx, proxy.Host, "test/kill", b.Digest)
					if err == nil && resp.Status == http.StatusOK && resp.Size == b.Size && resp.Digest != b.Digest {
						wrong.Store(b.Digest, resp.Result())
					}
				}
			}()
		}
		pullDone := make(chan struct{})
		if round%10 == 5 {
			go func() {
				defer close(pullDone)
				pctx, pcancel := context.WithTimeout(ctx, time.Minute)
				defer pcancel()
				ctrd.PullE(pctx, "kill"+itoa(int64(round)), ref, hostsDir)
			}()
		} else {
			close(pullDone)
		}
		// A random moment: the kill is what is under test, not an event to wait for.
		time.Sleep(time.Duration(50+rng.Intn(400)) * time.Millisecond)
		if err := d.Kill(); err != nil {
			t.Fatal(err)
		}
		cancel()
		wg.Wait()
		<-pullDone
		d.Restart(t)
		if fills := d.FillFiles(t); len(fills) != 0 {
			t.Fatalf("round %d: fills left after restart: %v", round, fills)
		}
	}
	wrong.Range(func(k, v any) bool {
		t.Errorf("a complete 200 for %s carried other bytes (result %v)", k, v)
		return true
	})

	// Every blob is still served intact.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, b := range blobs {
		resp, err := d.GetBlob(ctx, proxy.Host, "test/kill", b.Digest)
		if err != nil || resp.Status != 200 || resp.Digest != b.Digest {
			t.Errorf("GET %s after the kills: %v %+v", b.Digest, err, resp)
		}
	}
	v := decode[verifyJSON](t, d.MustCLI(t, "verify", "--json"))
	if len(v.Corrupt)+len(v.Missing)+len(v.Orphans)+v.LeftoverFills != 0 {
		t.Errorf("verify after %d kills: %+v", rounds, v)
	}
	var indexed []digest.Digest
	for _, e := range decode[[]lsJSON](t, d.MustCLI(t, "ls", "blobs", "--json")) {
		indexed = append(indexed, e.Digest)
	}
	files := d.StoredBlobs(t)
	slices.Sort(indexed)
	slices.Sort(files)
	if !slices.Equal(indexed, files) {
		t.Errorf("index lists %d blobs, blobs/ holds %d files:\nindex %v\nfiles %v", len(indexed), len(files), indexed, files)
	}
	for _, f := range files {
		if err := d.VerifyBlobFile(f); err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d kills; %d blobs verified, %d in the store at the end", rounds, v.Checked, len(files))
}

// TestCorruptIndexStart: garbage in index.db, then no index.db at all: the daemon starts
// each time, moves the damaged file aside, finds its blobs again from the files and serves
// them as hits without asking the origin.
func TestCorruptIndexStart(t *testing.T) {
	harness.RequireRoot(t)
	harness.Tools(t)
	reg := harness.StartRegistry(t)
	proxy := harness.StartCountingProxy(t, reg.URL)
	im := harness.PushImage(t, reg.URL, "test/idx", "v1", harness.ImageSpec{Layers: []harness.LayerSpec{{Seed: 9000, Files: 2, FileSize: 1 << 20}, {Seed: 9001, Files: 1, FileSize: 1 << 20}}})
	d := harness.StartDaemon(t, harness.DaemonConfig{Registries: []string{proxy.Host}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	getAll := func(want string) {
		t.Helper()
		for _, b := range im.Blobs() {
			r, err := d.GetBlob(ctx, proxy.Host, "test/idx", b.Digest)
			if err != nil || r.Status != 200 || r.Digest != b.Digest {
				t.Fatalf("GET %s: %v %+v", b.Digest, err, r)
			}
			if want != "" && r.Result() != want {
				t.Errorf("GET %s: %s, want %s", b.Digest, r.Result(), want)
			}
		}
	}
	getAll("")
	harness.WaitFor(t, "blobs committed", time.Minute, 20*time.Millisecond, func() error {
		for _, b := range im.Blobs() {
			if !d.Cached(t, b.Digest, b.Size) {
				return os.ErrNotExist
			}
		}
		return nil
	})
	dbPath := filepath.Join(d.Config.Root, "index.db")
	for _, damage := range []string{"garbage", "missing"} {
		if err := d.Stop(); err != nil {
			t.Fatal(err)
		}
		switch damage {
		case "garbage":
			if err := os.WriteFile(dbPath, []byte(strings.Repeat("garbage!", 8192)), 0o600); err != nil {
				t.Fatal(err)
			}
		case "missing":
			if err := os.Remove(dbPath); err != nil {
				t.Fatal(err)
			}
		}
		d.Restart(t)
		proxy.Reset()
		getAll(harness.ResultHit)
		if n := proxy.Snapshot().TotalBlobGETs(); n != 0 {
			t.Errorf("%s index: %d blob GETs at the origin after the rebuild, want 0", damage, n)
		}
		if v := decode[verifyJSON](t, d.MustCLI(t, "verify", "--json")); v.Checked != len(im.Blobs()) || len(v.Corrupt)+len(v.Missing)+len(v.Orphans) != 0 {
			t.Errorf("%s index: verify %+v", damage, v)
		}
	}
	if aside, _ := filepath.Glob(dbPath + ".damaged-*"); len(aside) != 1 {
		t.Errorf("damaged index moved aside: %v, want one file", aside)
	}
}

func itoa(n int64) string { return strconvFormat(n) }

func strconvFormat(n int64) string { return strconv.FormatInt(n, 10) }

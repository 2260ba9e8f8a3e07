//go:build bench

package bench

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

func TestMain(m *testing.M) {
	// The bench binary started again as the null content server (nullcontent.go).
	if arg := os.Getenv(nullContentEnv); arg != "" {
		serveNullContent(arg)
		return
	}
	harness.Main(m)
}

// config is what the environment can change; the defaults are the full sizes.
type config struct {
	Runs             int     // BENCH_RUNS: runs per figure (the median is reported)
	Scale            float64 // BENCH_SCALE: multiplies every blob and image size
	HerdClients      int     // BENCH_HERD_CLIENTS
	DistHerdRuns     int     // BENCH_DIST_HERD_RUNS: distribution fetches once per client, so its herd is slow
	ManifestRequests int     // BENCH_MANIFEST_REQUESTS: per system, over all runs
	ManifestRate     int     // BENCH_MANIFEST_RATE: requests per second
	StartupRecords   int     // BENCH_STARTUP_RECORDS
	LinkMbit         int     // BENCH_LINK_MBIT
	LinkDelay        time.Duration
	Out              string          // BENCH_OUT: file the report is written to
	Only             map[string]bool // BENCH_SCENARIOS: comma-separated subset
}

func loadConfig(t *testing.T) config {
	t.Helper()
	c := config{
		Runs: envInt(t, "BENCH_RUNS", 5), Scale: envFloat(t, "BENCH_SCALE", 1),
		HerdClients: envInt(t, "BENCH_HERD_CLIENTS", 32), DistHerdRuns: envInt(t, "BENCH_DIST_HERD_RUNS", 1),
		ManifestRequests: envInt(t, "BENCH_MANIFEST_REQUESTS", 20000), ManifestRate: envInt(t, "BENCH_MANIFEST_RATE", 1000),
		StartupRecords: envInt(t, "BENCH_STARTUP_RECORDS", 100000),
		LinkMbit:       envInt(t, "BENCH_LINK_MBIT", 200),
		Out:            os.Getenv("BENCH_OUT"),
	}
	delay, err := time.ParseDuration(envString("BENCH_LINK_DELAY", "10ms"))
	if err != nil {
		t.Fatalf("BENCH_LINK_DELAY: %v", err)
	}
	c.LinkDelay = delay
	if s := os.Getenv("BENCH_SCENARIOS"); s != "" {
		c.Only = map[string]bool{}
		for _, name := range strings.Split(s, ",") {
			c.Only[strings.TrimSpace(name)] = true
		}
	}
	if c.Runs < 1 || c.Scale <= 0 || c.HerdClients < 1 || c.ManifestRate < 1 || c.LinkMbit < 1 {
		t.Fatalf("bad benchmark settings: %+v", c)
	}
	return c
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(t *testing.T, name string, def int) int {
	v, err := strconv.Atoi(envString(name, strconv.Itoa(def)))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

func envFloat(t *testing.T, name string, def float64) float64 {
	v, err := strconv.ParseFloat(envString(name, strconv.FormatFloat(def, 'g', -1, 64)), 64)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

func (c config) scaled(n int64) int64 { return max(1<<10, int64(float64(n)*c.Scale)) }

func (c config) enabled(name string) bool { return c.Only == nil || c.Only[name] }

// linkBytesPerSecond is the emulated link's rate in bytes.
func (c config) linkBytesPerSecond() float64 { return float64(c.LinkMbit) * 1e6 / 8 }

const (
	imageRepo = "bench/app"
	imageTag  = "v1"
	blobRepo  = "bench/blobs"
	// pullNS is the containerd namespace of every pull; the image and its content are
	// removed from it after each pull, so every pull downloads and unpacks everything.
	pullNS = "bench"
	// manifestInflight bounds the manifest load's concurrent requests; the client keeps as
	// many idle connections, so a slow moment does not turn into connection churn.
	manifestInflight = 256
)

type blobFile struct {
	Digest digest.Digest
	Size   int64
	Path   string
}

// env is what every scenario shares: the origin registry, the counting proxy in front of it
// (it counts the bytes fetched from the origin), the slow link in front of that, containerd,
// and the test image and blobs pushed to the origin.
type env struct {
	cfg     config
	bin     string
	nginx   string
	work    string
	origin  *harness.Registry
	counter *harness.CountingProxy
	link    *SlowLink
	ctrd    *harness.Containerd

	image      *harness.Image
	imageBytes int64
	// slowRef pulls through the slow link; loopRef straight from the origin on loopback.
	slowRef, loopRef string
	directSlowHosts  string
	directLoopHosts  string
	herdBlob         blobFile
	hotBlob          blobFile

	nextRoot int
	// peak RSS of the daemon (and of distribution) during the herd and hot-blob runs.
	herdRSS, hotRSS, distHerdRSS, distHotRSS int64
}

func TestBench(t *testing.T) {
	cfg := loadConfig(t)
	harness.RequireRoot(t)
	tools := harness.Tools(t)
	e := &env{cfg: cfg, work: t.TempDir()}
	// Debian's nginx is in /usr/sbin, which a non-root PATH lacks.
	e.nginx = "/usr/sbin/nginx"
	if p, err := exec.LookPath("nginx"); err == nil {
		e.nginx = p
	}
	harness.RequireDebianFile(t, e.nginx, "nginx-light")
	e.bin = harness.DaemonBinaryNoRace(t)
	pageReporting := steadyMemory(t)
	loadBefore := loadAverage()
	started := time.Now()
	scenarios := []struct {
		name string
		run  func(*testing.T, *Report)
		// own: the scenario builds its own environment (the cluster's namespaces).
		own bool
	}{
		{"cold", e.coldPull, false},
		{"warm", e.warmPull, false},
		{"herd", e.herd, false},
		{"hot", e.hotBlobScenario, false},
		{"manifest", e.manifestHits, false},
		{"tag", e.manifestByTag, false},
		{"startup", e.startup, false},
		{"proxy", e.proxyMode, false},
		{"cluster", e.clusterScenario, true},
	}
	for _, sc := range scenarios {
		if cfg.enabled(sc.name) && !sc.own {
			e.setup(t)
			break
		}
	}

	rep := &Report{}
	for _, sc := range scenarios {
		if !cfg.enabled(sc.name) {
			continue
		}
		t0 := time.Now()
		t.Run(sc.name, func(t *testing.T) { sc.run(t, rep) })
		t.Logf("scenario %s took %v", sc.name, time.Since(t0).Round(time.Second))
	}
	if cfg.enabled("herd") || cfg.enabled("hot") {
		e.memoryRow(rep)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "containerd-blobcache benchmarks, %s\n\n", started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- machine: %s, %d cores, %s, kernel %s\n", cpuModel(), runtime.NumCPU(), memTotal(), kernel())
	fmt.Fprintf(&b, "- load average before / after: %s / %s; took %v\n", loadBefore, loadAverage(), time.Since(started).Round(time.Second))
	fmt.Fprintf(&b, "- versions: containerd-blobcache %s (no -race); %s; %s; %s; %s\n", harness.SourceVersion(), runtime.Version(), firstLine(tools.Containerd, "--version"), firstLine(tools.Registry, "--version"), firstLine(e.nginx, "-v"))
	fmt.Fprintf(&b, "- settings: runs=%d scale=%g herd_clients=%d dist_herd_runs=%d manifest_requests=%d manifest_rate=%d/s startup_records=%d link=%d Mbit/s + %v each way\n",
		cfg.Runs, cfg.Scale, cfg.HerdClients, cfg.DistHerdRuns, cfg.ManifestRequests, cfg.ManifestRate, cfg.StartupRecords, cfg.LinkMbit, cfg.LinkDelay)
	fmt.Fprintf(&b, "- %s\n", pageReporting)
	fmt.Fprintf(&b, "- command: %s\n\n", envString("BENCH_COMMAND", "go test -tags bench -run TestBench ./integration/bench/"))
	b.WriteString(rep.Markdown())
	out := b.String()
	fmt.Println("\n" + out)
	if cfg.Out != "" {
		if err := os.WriteFile(cfg.Out, []byte(out), 0o644); err != nil {
			t.Errorf("write %s: %v", cfg.Out, err)
		}
	}
}

func (e *env) setup(t *testing.T) {
	t.Helper()
	e.origin = harness.StartRegistry(t)
	e.counter = harness.StartCountingProxy(t, e.origin.URL)
	link, err := StartSlowLink(e.counter.Host, LinkProfile{BitsPerSecond: int64(e.cfg.LinkMbit) * 1e6, Delay: e.cfg.LinkDelay})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	e.link = link

	t0 := time.Now()
	e.image = harness.PushImage(t, e.origin.URL, imageRepo, imageTag, e.imageSpec())
	for _, l := range e.image.Layers {
		e.imageBytes += l.Descriptor.Size
	}
	e.slowRef = harness.Ref(e.link.Addr, imageRepo, imageTag)
	e.loopRef = harness.Ref(e.origin.Host, imageRepo, imageTag)
	e.herdBlob = e.pushBlob(t, 7, e.cfg.scaled(200<<20))
	e.hotBlob = e.pushBlob(t, 8, e.cfg.scaled(256<<20))
	t.Logf("built and pushed the image (%d MB in %d layers) and blobs in %v", e.imageBytes>>20, len(e.image.Layers), time.Since(t0).Round(time.Millisecond))

	e.directSlowHosts = e.hostsDir(t, e.link.Addr, "")
	e.directLoopHosts = e.hostsDir(t, e.origin.Host, "")
	e.ctrd = harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.directSlowHosts})
}

// imageSpec is the test image: ~250 MB in three layers of incompressible files.
func (e *env) imageSpec() harness.ImageSpec {
	var spec harness.ImageSpec
	for i, mb := range []int64{100, 90, 60} {
		size := e.cfg.scaled(mb << 20)
		files := max(1, size/(4<<20))
		spec.Layers = append(spec.Layers, harness.LayerSpec{Seed: uint64(100 + i), Files: int(files), FileSize: size / files})
	}
	return spec
}

func (e *env) pushBlob(t *testing.T, seed uint64, size int64) blobFile {
	t.Helper()
	path := filepath.Join(e.work, fmt.Sprintf("blob-%d", seed))
	dg, err := WriteRandomBlob(path, seed, size)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := harness.NewPusher(e.origin.URL).PushFile(ctx, blobRepo, dg, size, path); err != nil {
		t.Fatal(err)
	}
	return blobFile{Digest: dg, Size: size, Path: path}
}

// hostsDir writes a hosts directory for registry with the given mirror ("" for none).
func (e *env) hostsDir(t *testing.T, registry, mirrorURL string) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := harness.WriteHostsToml(dir, registry, mirrorURL); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startDaemon starts containerd-blobcache (built without -race) on a new, empty root. The
// returned function stops it and removes the root.
func (e *env) startDaemon(t *testing.T) (*harness.Daemon, func()) {
	t.Helper()
	e.nextRoot++
	root := filepath.Join(e.work, fmt.Sprintf("root-%d", e.nextRoot))
	d := harness.StartDaemonFrom(t, e.bin, harness.DaemonConfig{
		Root:       root,
		LogLevel:   "info",
		Registries: []string{e.link.Addr, e.origin.Host},
	})
	return d, func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop daemon: %v", err)
		}
		os.RemoveAll(root)
	}
}

// startDist starts distribution as a pull-through proxy of remote with empty storage. The
// returned function stops it and removes its storage.
func (e *env) startDist(t *testing.T, remote string) (*harness.Registry, func()) {
	t.Helper()
	r := harness.StartPullThroughRegistry(t, remote)
	return r, func() {
		if err := r.Stop(); err != nil {
			t.Errorf("stop distribution: %v", err)
		}
		os.RemoveAll(filepath.Join(r.Dir, "storage"))
	}
}

// pull pulls ref with ctr through hostsDir, checks that no blob came from the origin
// directly when viaMirror (a mirror that failed would make containerd fall back silently and
// the figure would measure the wrong system), and removes the image and its content again.
func (e *env) pull(t *testing.T, ref, hostsDir string, viaMirror bool) time.Duration {
	t.Helper()
	return e.pullWith(t, e.ctrd, ref, hostsDir, viaMirror)
}

// pullWith is pull on containerd c.
func (e *env) pullWith(t *testing.T, c *harness.Containerd, ref, hostsDir string, viaMirror bool) time.Duration {
	t.Helper()
	e.counter.Reset()
	out, d, err := c.PullE(context.Background(), pullNS, ref, hostsDir)
	if err != nil {
		t.Fatalf("pull %s: %v\n%s", ref, err, out)
	}
	if viaMirror {
		if direct := e.counter.Snapshot().Direct(); direct.TotalBlobGETs() > 0 {
			t.Fatalf("pull of %s through the mirror fell back to the origin:\n%s", ref, direct)
		}
	}
	c.RemoveImageAndContent(t, pullNS, ref)
	return d
}

// ratioRow fills Ratio and Met of a row from ours/theirs and a bound: ours ≤ bound×theirs
// when lowerIsBetter, ours ≥ bound×theirs otherwise.
func ratioRow(row Row, ours, theirs, bound float64, lowerIsBetter bool) Row {
	r := ours / theirs
	row.Ratio = FormatRatio(r)
	if lowerIsBetter {
		row.Met = Bool(r <= bound)
	} else {
		row.Met = Bool(r >= bound)
	}
	return row
}

// coldPull: a ~250 MB image pulled over the slow link with nothing cached anywhere.
func (e *env) coldPull(t *testing.T, rep *Report) {
	samples := map[string][]time.Duration{}
	for i := range e.cfg.Runs {
		for _, sys := range Rotate([]string{"direct", "cache", "dist"}, i) {
			var d time.Duration
			switch sys {
			case "direct":
				d = e.pull(t, e.slowRef, e.directSlowHosts, false)
			case "cache":
				dm, stop := e.startDaemon(t)
				d = e.pull(t, e.slowRef, e.hostsDir(t, e.link.Addr, dm.URL), true)
				stop()
			case "dist":
				dist, stop := e.startDist(t, "http://"+e.link.Addr)
				d = e.pull(t, e.slowRef, e.hostsDir(t, e.link.Addr, dist.URL), true)
				stop()
			}
			samples[sys] = append(samples[sys], d)
			t.Logf("cold run %d %s: %v", i, sys, d.Round(time.Millisecond))
		}
	}
	ours, direct, dist := MedianDuration(samples["cache"]), MedianDuration(samples["direct"]), MedianDuration(samples["dist"])
	rep.Add(ratioRow(Row{
		Scenario: fmt.Sprintf("cold pull, %d MiB %d-layer image, %d Mbit/s + %v each way", e.imageBytes>>20, len(e.image.Layers), e.cfg.LinkMbit, e.cfg.LinkDelay),
		Measure:  "`ctr image pull` wall time",
		Ours:     FormatSeconds(ours),
		Others:   map[string]string{ColDirect: FormatSeconds(direct), ColDist: FormatSeconds(dist)},
		Target:   "≤ 1.05× direct",
	}, float64(ours), float64(direct), 1.05, true))
}

// warmPull: the same image again once the cache has it (containerd's copy removed), against
// distribution's warm cache and a direct pull from the origin on loopback.
func (e *env) warmPull(t *testing.T, rep *Report) {
	dm, stopDaemon := e.startDaemon(t)
	defer stopDaemon()
	dist, stopDist := e.startDist(t, "http://"+e.link.Addr)
	defer stopDist()
	cacheHosts := e.hostsDir(t, e.link.Addr, dm.URL)
	distHosts := e.hostsDir(t, e.link.Addr, dist.URL)
	e.pull(t, e.slowRef, cacheHosts, true)
	e.pull(t, e.slowRef, distHosts, true)

	samples := map[string][]time.Duration{}
	for i := range e.cfg.Runs {
		for _, sys := range Rotate([]string{"cache", "dist", "loop"}, i) {
			var d time.Duration
			switch sys {
			case "cache":
				d = e.pull(t, e.slowRef, cacheHosts, true)
			case "dist":
				d = e.pull(t, e.slowRef, distHosts, true)
			case "loop":
				d = e.pull(t, e.loopRef, e.directLoopHosts, false)
			}
			samples[sys] = append(samples[sys], d)
			t.Logf("warm run %d %s: %v", i, sys, d.Round(time.Millisecond))
		}
	}
	ours, dist0, loop := MedianDuration(samples["cache"]), MedianDuration(samples["dist"]), MedianDuration(samples["loop"])
	scenario := "warm pull of the same image (containerd's copy removed)"
	rep.Add(ratioRow(Row{
		Scenario: scenario, Measure: "wall time vs distribution warm",
		Ours: FormatSeconds(ours), Others: map[string]string{ColDist: FormatSeconds(dist0)},
		Target: "≤ 1.00× distribution",
	}, float64(ours), float64(dist0), 1.00, true))
	rep.Add(ratioRow(Row{
		Scenario: scenario, Measure: "wall time vs direct pull from a loopback origin",
		Ours: FormatSeconds(ours), Others: map[string]string{ColDirect: FormatSeconds(loop) + " (loopback)"},
		Target: "≤ 1.10× direct (loopback)",
	}, float64(ours), float64(loop), 1.10, true))
}

func blobURL(base, registry string, b blobFile) string {
	return base + "/v2/" + blobRepo + "/blobs/" + b.Digest.String() + "?ns=" + url.QueryEscape(registry)
}

// herdRun measures one cold fetch of the herd blob by n clients at once through a fresh
// server; it returns the result, the bytes the origin sent and the server's peak RSS.
func (e *env) herdRun(t *testing.T, dist bool, n int) (FetchResult, int64, int64) {
	t.Helper()
	var (
		base string
		pid  int
		stop func()
	)
	if dist {
		r, s := e.startDist(t, "http://"+e.link.Addr)
		base, pid, stop = r.URL, r.Process.PID(), s
	} else {
		d, s := e.startDaemon(t)
		base, pid, stop = d.URL, d.Process.PID(), s
	}
	defer stop()
	// Each client's whole transfer over the link, with slack; distribution fetches once per
	// client, the cache once in all.
	expect := float64(e.herdBlob.Size) / e.cfg.linkBytesPerSecond()
	if dist {
		expect *= float64(n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(2*expect*float64(time.Second))+60*time.Second)
	defer cancel()
	e.counter.Reset()
	client := NewLoadClient(n)
	defer client.CloseIdleConnections()
	res := ConcurrentGET(ctx, client, blobURL(base, e.link.Addr, e.herdBlob), nil, n, e.herdBlob.Size)
	rss, err := PeakRSS(pid)
	if err != nil {
		t.Errorf("peak RSS: %v", err)
	}
	// The counting proxy records a request when its handler returns, a moment after the
	// last byte left it.
	var origin int64
	harness.WaitFor(t, "origin byte count", 10*time.Second, 20*time.Millisecond, func() error {
		origin = e.counter.Snapshot().BlobBytes()
		if res.Err == nil && origin < e.herdBlob.Size {
			return fmt.Errorf("origin sent %d bytes so far", origin)
		}
		return nil
	})
	return res, origin, rss
}

// herd: n clients GET one cold blob at once; the origin must send it once.
func (e *env) herd(t *testing.T, rep *Report) {
	n := e.cfg.HerdClients
	var one, many []time.Duration
	var originOK = true
	var originMax int64
	for i := range e.cfg.Runs {
		for _, clients := range Rotate([]int{1, n}, i) {
			res, origin, rss := e.herdRun(t, false, clients)
			if res.Err != nil || res.Done != clients {
				t.Fatalf("herd run %d, %d clients: %d done: %v", i, clients, res.Done, res.Err)
			}
			if origin != e.herdBlob.Size {
				originOK = false
			}
			originMax = max(originMax, origin)
			e.herdRSS = max(e.herdRSS, rss)
			if clients == 1 {
				one = append(one, res.Wall)
			} else {
				many = append(many, res.Wall)
			}
			t.Logf("herd run %d, %d clients: %v, origin sent %d bytes, peak RSS %d MiB", i, clients, res.Wall.Round(time.Millisecond), origin, rss>>20)
		}
	}
	// distribution fetches the blob from the origin once per client; its figures are
	// reported, not judged.
	var distOne, distMany []time.Duration
	distNote := ""
	var distOrigin int64
	for i := range e.cfg.DistHerdRuns {
		for _, clients := range Rotate([]int{1, n}, i) {
			res, origin, rss := e.herdRun(t, true, clients)
			e.distHerdRSS = max(e.distHerdRSS, rss)
			t.Logf("distribution herd run %d, %d clients: %v, %d done (%v), origin sent %d bytes", i, clients, res.Wall.Round(time.Millisecond), res.Done, res.Err, origin)
			if clients == 1 {
				distOne = append(distOne, res.Wall)
				continue
			}
			distOrigin = max(distOrigin, origin)
			if res.Done != clients {
				distNote = fmt.Sprintf(" (%d of %d clients done: %v)", res.Done, clients, res.Err)
			}
			distMany = append(distMany, res.Wall)
		}
	}
	scenario := fmt.Sprintf("thundering herd: %d clients GET one cold %d MiB blob over the slow link", n, e.herdBlob.Size>>20)
	distBytes := ""
	if len(distMany) > 0 {
		distBytes = fmt.Sprintf("%.2f× the blob", float64(distOrigin)/float64(e.herdBlob.Size))
	}
	rep.Add(Row{
		Scenario: scenario, Measure: "bytes fetched from the origin (worst run)",
		Ours:   fmt.Sprintf("%.2f× the blob", float64(originMax)/float64(e.herdBlob.Size)),
		Others: map[string]string{ColDist: distBytes},
		Target: "exactly 1× the blob", Met: Bool(originOK),
	})
	oursMany, oursOne := MedianDuration(many), MedianDuration(one)
	distCell := ""
	if len(distMany) > 0 && len(distOne) > 0 {
		distCell = fmt.Sprintf("%s (1 client: %s)%s", FormatSeconds(MedianDuration(distMany)), FormatSeconds(MedianDuration(distOne)), distNote)
	}
	rep.Add(ratioRow(Row{
		Scenario: scenario, Measure: fmt.Sprintf("wall time, %d clients vs 1 client alone (%s)", n, FormatSeconds(oursOne)),
		Ours:   FormatSeconds(oursMany),
		Others: map[string]string{ColDist: distCell},
		Target: "≤ 1.15× one client",
	}, float64(oursMany), float64(oursOne), 1.15, true))
}

// hotBlobScenario: 1 and 8 concurrent GETs of a blob every server already has, as fast as they go.
func (e *env) hotBlobScenario(t *testing.T, rep *Report) {
	dm, stopDaemon := e.startDaemon(t)
	defer stopDaemon()
	// Filled from the origin on loopback: the point is serving, not fetching.
	dist, stopDist := e.startDist(t, e.origin.URL)
	defer stopDist()
	ngx := e.startNginx(t, dm.Config.Root)
	urls := map[string]string{
		"cache": blobURL(dm.URL, e.origin.Host, e.hotBlob),
		"dist":  blobURL(dist.URL, e.origin.Host, e.hotBlob),
		"nginx": ngx + "/blobs/sha256/" + e.hotBlob.Digest.Encoded(),
	}
	client := NewLoadClient(16)
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	for _, sys := range []string{"cache", "dist"} {
		if res := ConcurrentGET(ctx, client, urls[sys], nil, 1, e.hotBlob.Size); res.Err != nil {
			t.Fatalf("filling %s: %v", sys, res.Err)
		}
	}
	if !dm.HasBlob(e.hotBlob.Digest, e.hotBlob.Size) {
		t.Fatalf("the daemon did not store the hot blob")
	}
	for _, pid := range []int{dm.Process.PID(), dist.Process.PID()} {
		if err := ResetPeakRSS(pid); err != nil {
			t.Errorf("reset peak RSS: %v", err)
		}
	}
	samples := map[string][]float64{}
	for i := range e.cfg.Runs {
		for _, sys := range Rotate([]string{"cache", "dist", "nginx"}, i) {
			for _, n := range []int{1, 8} {
				// At least 1 GiB per sample: one 256 MiB transfer takes ~0.15 s, too short
				// to average out a busy moment on a shared machine.
				repeat := int(max(1, (1<<30)/(int64(n)*e.hotBlob.Size)))
				res := RepeatedGET(ctx, client, urls[sys], nil, n, repeat, e.hotBlob.Size)
				if res.Err != nil {
					t.Fatalf("hot run %d %s, %d clients: %v", i, sys, n, res.Err)
				}
				mbps := MBps(res.Bytes, res.Wall)
				key := fmt.Sprintf("%s/%d", sys, n)
				samples[key] = append(samples[key], mbps)
				t.Logf("hot run %d %s, %d clients: %.0f MB/s", i, sys, n, mbps)
			}
		}
	}
	var err error
	if e.hotRSS, err = PeakRSS(dm.Process.PID()); err != nil {
		t.Errorf("peak RSS: %v", err)
	}
	e.distHotRSS, _ = PeakRSS(dist.Process.PID())
	for _, n := range []int{1, 8} {
		ours := Median(samples[fmt.Sprintf("cache/%d", n)])
		d := Median(samples[fmt.Sprintf("dist/%d", n)])
		ng := Median(samples[fmt.Sprintf("nginx/%d", n)])
		row := ratioRow(Row{
			Scenario: fmt.Sprintf("hot blob: %d concurrent GET(s) of a cached %d MiB blob", n, e.hotBlob.Size>>20),
			Measure:  "MB/s (all clients together)",
			Ours:     fmt.Sprintf("%.0f", ours),
			Others:   map[string]string{ColDist: fmt.Sprintf("%.0f", d), ColNginx: fmt.Sprintf("%.0f", ng)},
			Target:   "≥ 0.90× nginx, ≥ distribution",
		}, ours, ng, 0.90, false)
		row.Met = Bool(*row.Met && ours >= d)
		rep.Add(row)
	}
}

// startNginx serves root (the daemon's store) with sendfile on a free loopback port and
// returns its base URL.
func (e *env) startNginx(t *testing.T, root string) string {
	t.Helper()
	dir := t.TempDir()
	addr := harness.FreeAddr(t)
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes %d;
user root;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  default_type application/octet-stream;
  client_body_temp_path %[2]s/body;
  proxy_temp_path %[2]s/proxy;
  server {
    listen %[3]s;
    location = /ready { return 200 "ok"; }
    location /blobs/ { root %[4]s; }
  }
}
`, runtime.NumCPU(), dir, addr, root)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(e.nginx, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", path)
	p := harness.StartProcess(t, "nginx", filepath.Join(dir, "nginx.log"), cmd)
	harness.WaitHTTP200(t, p, "http://"+addr+"/ready", 30*time.Second)
	return "http://" + addr
}

// manifestHits: GETs of a cached manifest (by digest) at a fixed rate, open loop.
func (e *env) manifestHits(t *testing.T, rep *Report) {
	dm, stopDaemon := e.startDaemon(t)
	defer stopDaemon()
	dist, stopDist := e.startDist(t, e.origin.URL)
	defer stopDist()
	path := "/v2/" + imageRepo + "/manifests/" + e.image.Manifest.Digest.String() + "?ns=" + url.QueryEscape(e.origin.Host)
	urls := map[string]string{"cache": dm.URL + path, "dist": dist.URL + path}
	// What containerd sends when it fetches a manifest by digest.
	manifestAccept := http.Header{"Accept": {ocispec.MediaTypeImageManifest + ", " + ocispec.MediaTypeImageIndex + ", application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, */*"}}
	client := NewLoadClient(manifestInflight)
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for sys, u := range urls {
		if res := ConcurrentGET(ctx, client, u, manifestAccept, 1, e.image.Manifest.Size); res.Err != nil {
			t.Fatalf("filling %s: %v", sys, res.Err)
		}
	}
	perRun := max(100, e.cfg.ManifestRequests/e.cfg.Runs)
	p50 := map[string][]time.Duration{}
	p99 := map[string][]time.Duration{}
	var lag99 []time.Duration
	for i := range e.cfg.Runs {
		for _, sys := range Rotate([]string{"cache", "dist"}, i) {
			rr, err := FixedRate(ctx, client, urls[sys], manifestAccept, perRun, e.cfg.ManifestRate, manifestInflight)
			if err != nil {
				t.Fatalf("manifest run %d %s: %v", i, sys, err)
			}
			p50[sys] = append(p50[sys], Percentile(rr.Latency, 50))
			p99[sys] = append(p99[sys], Percentile(rr.Latency, 99))
			lag99 = append(lag99, Percentile(rr.Lag, 99))
			t.Logf("manifest run %d %s: p50 %v p99 %v; load generator's own send lag p50 %v p99 %v", i, sys,
				Percentile(rr.Latency, 50), Percentile(rr.Latency, 99), Percentile(rr.Lag, 50), Percentile(rr.Lag, 99))
		}
	}
	scenario := fmt.Sprintf("manifest hits by digest, %d/s, %d requests per system", e.cfg.ManifestRate, perRun*e.cfg.Runs)
	rep.Add(Row{
		Scenario: scenario, Measure: "p50 latency",
		Ours:   FormatMillis(MedianDuration(p50["cache"])),
		Others: map[string]string{ColDist: FormatMillis(MedianDuration(p50["dist"]))},
	})
	ours := MedianDuration(p99["cache"])
	rep.Add(Row{
		Scenario: scenario, Measure: fmt.Sprintf("p99 latency (the load generator's own p99 send lag: %s)", FormatMillis(MedianDuration(lag99))),
		Ours:   FormatMillis(ours),
		Others: map[string]string{ColDist: FormatMillis(MedianDuration(p99["dist"]))},
		Ratio:  FormatRatio(float64(ours) / float64(MedianDuration(p99["dist"]))),
		Target: "p99 ≤ 2 ms", Met: Bool(ours <= 2*time.Millisecond),
	})
}

// memoryRow reports the daemon's peak RSS over the herd and hot-blob runs.
func (e *env) memoryRow(rep *Report) {
	peak := max(e.herdRSS, e.hotRSS)
	mib := func(n int64) string {
		if n == 0 {
			return "not run"
		}
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	rep.Add(Row{
		Scenario: "daemon memory during the herd and hot-blob runs", Measure: "peak RSS (VmHWM)",
		Ours:   fmt.Sprintf("%s (herd %s, hot %s)", mib(peak), mib(e.herdRSS), mib(e.hotRSS)),
		Others: map[string]string{ColDist: fmt.Sprintf("herd %s, hot %s", mib(e.distHerdRSS), mib(e.distHotRSS))},
		Target: "≤ 100 MiB", Met: Bool(peak > 0 && peak <= 100<<20),
	})
}

// startup: time from exec to the mirror answering /v2/, with an index of many records.
func (e *env) startup(t *testing.T, rep *Report) {
	base := e.work
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm" // writing 100 000 records with an fsync each takes minutes on disk
	}
	root, err := os.MkdirTemp(base, "blobcache-bench-startup-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	empty := t.TempDir()
	t0 := time.Now()
	if err := WriteIndexRecords(context.Background(), root, e.cfg.StartupRecords); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d index records in %v", e.cfg.StartupRecords, time.Since(t0).Round(time.Millisecond))
	var full, none []time.Duration
	for i := range e.cfg.Runs {
		for _, r := range Rotate([]string{root, empty}, i) {
			if r == root {
				full = append(full, e.timeStartup(t, r, e.cfg.StartupRecords))
			} else {
				none = append(none, e.timeStartup(t, r, 0))
			}
		}
	}
	ours := MedianDuration(full)
	rep.Add(Row{
		Scenario: fmt.Sprintf("start-up with %d index records", e.cfg.StartupRecords),
		Measure:  fmt.Sprintf("exec to /v2/ answering (empty store: %s)", FormatMillis(MedianDuration(none))),
		Ours:     FormatMillis(ours),
		Target:   "≤ 1 s", Met: Bool(ours <= time.Second),
	})
}

// timeStartup starts the daemon on root and returns how long it took until GET /v2/ answered
// 200, polling every millisecond; then it checks that a recorded blob is a hit and stops it.
func (e *env) timeStartup(t *testing.T, root string, records int) time.Duration {
	t.Helper()
	dir := t.TempDir()
	cfg := harness.DaemonConfig{Root: root, LogLevel: "info", Address: harness.FreeAddr(t), AllowedRegistries: []string{"*"}}
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(cfg.TOML()), 0o644); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	u := "http://" + cfg.Address + "/v2/"
	start := time.Now()
	p := harness.StartProcess(t, "containerd-blobcache", filepath.Join(dir, "daemon.log"), exec.Command(e.bin, "serve", "--config", path))
	defer p.Stop()
	var took time.Duration
	harness.WaitFor(t, "daemon start-up", 30*time.Second, time.Millisecond, func() error {
		resp, err := client.Get(u)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		took = time.Since(start)
		return nil
	})
	if records > 0 {
		// The last record written must be served from the store.
		data := fmt.Appendf(nil, "containerd-blobcache benchmark record %d\n", records-1)
		u := "http://" + cfg.Address + "/v2/bench/repo-1/blobs/" + digest.FromBytes(data).String() + "?ns=registry.bench.invalid"
		resp, err := client.Head(u)
		if err != nil {
			t.Fatalf("HEAD a recorded blob: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get(harness.ResultHeader) != harness.ResultHit {
			t.Fatalf("HEAD a recorded blob: %s, %s %q", resp.Status, harness.ResultHeader, resp.Header.Get(harness.ResultHeader))
		}
	}
	return took
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func memTotal() string {
	if kb, ok := meminfoKiB("MemTotal"); ok {
		return fmt.Sprintf("%.0f GiB RAM", math.Round(kb/(1<<20)))
	}
	return "?"
}

// meminfoKiB is field of /proc/meminfo, in KiB.
func meminfoKiB(field string) (float64, bool) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				if kb, err := strconv.ParseFloat(f[0], 64); err == nil {
					return kb, true
				}
			}
		}
	}
	return 0, false
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// firstLine runs a tool's version command and returns the first line it prints.
func firstLine(bin string, args ...string) string {
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return filepath.Base(bin) + " ?"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.ReplaceAll(line, bin, filepath.Base(bin))
}

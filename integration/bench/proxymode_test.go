//go:build bench

package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	dto "github.com/prometheus/client_model/go"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// proxyBench is proxy mode (containerd A: the daemon's content API as its content store,
// the daemon's diff API as its differ) beside mirror mode (containerd B: its built-in
// content store and differ, pulling through the daemon's mirror), both on the loopback
// origin, so that the figures are the pulls' own cost and not the link's.
type proxyBench struct {
	e      *env
	socket string
	a, b   *harness.Containerd
	// daemon is the running daemon; stop stops it and removes its root.
	daemon *harness.Daemon
	stop   func()
}

// startDaemon starts a daemon serving the mirror, the content API and the diff API on a new,
// empty root, stopping the previous one first.
func (p *proxyBench) startDaemon(t *testing.T) {
	t.Helper()
	if p.stop != nil {
		p.stop()
	}
	p.e.nextRoot++
	root := filepath.Join(p.e.work, fmt.Sprintf("proxy-root-%d", p.e.nextRoot))
	d := harness.StartDaemonFrom(t, p.e.bin, harness.DaemonConfig{
		Root:       root,
		LogLevel:   "info",
		Registries: []string{p.e.origin.Host},
		Extra:      harness.ContentConfig(p.socket) + harness.DiffConfig,
	})
	p.daemon = d
	p.stop = func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop daemon: %v", err)
		}
		os.RemoveAll(root)
	}
}

func (p *proxyBench) hosts(t *testing.T) string {
	return p.e.hostsDir(t, p.e.origin.Host, p.daemon.URL)
}

// applyStats is the daemon's count and summed duration of successful Applies.
func (p *proxyBench) applyStats(t *testing.T) (uint64, time.Duration) {
	t.Helper()
	fams, err := p.daemon.ScrapeMetrics()
	if err != nil {
		t.Fatal(err)
	}
	f := fams["containerd_blobcache_diff_operation_duration_seconds"]
	for _, m := range f.GetMetric() {
		if labelIs(m, "operation", "apply") && labelIs(m, "result", "ok") {
			h := m.GetHistogram()
			return h.GetSampleCount(), time.Duration(h.GetSampleSum() * float64(time.Second))
		}
	}
	return 0, 0
}

func labelIs(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

// writeBytes is what a process has made the kernel write to storage so far
// (/proc/PID/io write_bytes: page-cache pages it dirtied, counted when dirtied).
func writeBytes(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "write_bytes: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("/proc/%d/io has no write_bytes", pid)
	return 0
}

// written measures the bytes the daemon and containerd c write to storage during f.
func (p *proxyBench) written(t *testing.T, c *harness.Containerd, f func()) (daemon, ctrd int64) {
	t.Helper()
	d0, c0 := writeBytes(t, p.daemon.Process.PID()), writeBytes(t, c.Process.PID())
	f()
	return writeBytes(t, p.daemon.Process.PID()) - d0, writeBytes(t, c.Process.PID()) - c0
}

// proxyMode: cold pull and re-pull of the ~250 MiB image in proxy mode and in mirror mode,
// alternating, with the share of proxy mode's re-pull that is the daemon's Apply, the bytes
// written to disk per cold pull, and the content API's Read rate through containerd's own
// proxy client.
func (e *env) proxyMode(t *testing.T, rep *Report) {
	p := &proxyBench{e: e, socket: filepath.Join(harness.ShortTempDir(t, "bcb-"), "content.sock")}
	defer func() {
		if p.stop != nil {
			p.stop()
		}
	}()
	// containerd's defaults: the shared content policy.
	p.a = harness.StartContainerdContentProxy(t, harness.ContainerdOptions{HostsDir: e.directLoopHosts, ContentSharingPolicy: "shared", Diff: true}, p.socket, false)
	p.b = harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.directLoopHosts, ContentSharingPolicy: "shared"})
	ref := e.loopRef
	layers := uint64(len(e.image.Layers))

	// Cold: a new daemon root for every pull; containerd A restarted with it, so that its
	// connection to the socket is new too.
	cold := map[string][]time.Duration{}
	written := map[string][]float64{}
	for i := range e.cfg.Runs {
		for _, sys := range Rotate([]string{"proxy", "mirror"}, i) {
			p.startDaemon(t)
			c := p.b
			if sys == "proxy" {
				c = p.a
				p.a.RestartProxyMode(t, false)
			}
			var d time.Duration
			byDaemon, byContainerd := p.written(t, c, func() { d = e.pullWith(t, c, ref, p.hosts(t), true) })
			cold[sys] = append(cold[sys], d)
			written[sys] = append(written[sys], float64(byDaemon+byContainerd))
			t.Logf("proxy-mode cold run %d %s: %v, written %d MB by the daemon, %d MB by containerd", i, sys, d.Round(time.Millisecond), byDaemon/1e6, byContainerd/1e6)
		}
	}
	ours, theirs := MedianDuration(cold["proxy"]), MedianDuration(cold["mirror"])
	scenario := fmt.Sprintf("proxy mode (content + diff plugin), %d MiB %d-layer image, loopback origin", e.imageBytes>>20, len(e.image.Layers))
	rep.Add(ratioRow(Row{
		Scenario: scenario, Measure: "cold pull (daemon and containerd empty), `ctr image pull` wall time",
		Ours: FormatSeconds(ours), Others: map[string]string{ColMirrorMode: FormatSeconds(theirs)},
		Target: "≤ 1.05× mirror mode",
	}, float64(ours), float64(theirs), 1.05, true))
	rep.Add(Row{
		Scenario: scenario, Measure: "bytes written to disk per cold pull (daemon + containerd, /proc/PID/io write_bytes)",
		Ours:   fmt.Sprintf("%.0f MB", Median(written["proxy"])/1e6),
		Others: map[string]string{ColMirrorMode: fmt.Sprintf("%.0f MB", Median(written["mirror"])/1e6)},
		Ratio:  FormatRatio(Median(written["proxy"]) / Median(written["mirror"])),
	})

	// Re-pull: one daemon holds the image; each pull follows `image rm` and a synchronous
	// garbage collection of the pull before it.
	p.startDaemon(t)
	p.a.RestartProxyMode(t, false)
	hosts := p.hosts(t)
	e.pullWith(t, p.a, ref, hosts, true)
	e.pullWith(t, p.b, ref, hosts, true)
	repull := map[string][]time.Duration{}
	var shares []float64
	for i := range e.cfg.Runs {
		for _, sys := range Rotate([]string{"proxy", "mirror"}, i) {
			if sys == "mirror" {
				repull[sys] = append(repull[sys], e.pullWith(t, p.b, ref, hosts, true))
				continue
			}
			n0, sum0 := p.applyStats(t)
			d := e.pullWith(t, p.a, ref, hosts, true)
			n1, sum1 := p.applyStats(t)
			if n1-n0 != layers {
				t.Fatalf("proxy-mode re-pull %d: the daemon applied %d layers, want %d: the figure would not measure proxy mode", i, n1-n0, layers)
			}
			if gets := e.counter.Snapshot().TotalBlobGETs(); gets != 0 {
				t.Fatalf("proxy-mode re-pull %d fetched %d blobs from the origin", i, gets)
			}
			repull[sys] = append(repull[sys], d)
			shares = append(shares, float64(sum1-sum0)/float64(d))
			t.Logf("proxy-mode re-pull run %d: %v, of which Apply %v", i, d.Round(time.Millisecond), (sum1 - sum0).Round(time.Millisecond))
		}
	}
	ours, theirs = MedianDuration(repull["proxy"]), MedianDuration(repull["mirror"])
	rep.Add(ratioRow(Row{
		Scenario: scenario, Measure: "re-pull after `image rm` + GC (the daemon holds the image), wall time",
		Ours: FormatSeconds(ours), Others: map[string]string{ColMirrorMode: FormatSeconds(theirs)},
		Target: "≤ 0.80× mirror mode",
	}, float64(ours), float64(theirs), 0.80, true))
	rep.Add(Row{
		Scenario: scenario, Measure: "share of the re-pull's wall time spent in the daemon's Apply (summed over the layers)",
		Ours: fmt.Sprintf("%.0f %%", 100*Median(shares)),
	})

	write, mbps, nullMBps := p.contentRates(t)
	rep.Add(Row{
		Scenario: fmt.Sprintf("content API Write of a %d MiB blob through containerd's proxy client (core/content/proxy)", e.hotBlob.Size>>20),
		Measure:  "MB/s, as containerd stores a blob it fetched (content.Copy, one write stream)",
		Ours:     fmt.Sprintf("%.0f", write),
	})
	rep.Add(Row{
		Scenario: fmt.Sprintf("content API Read of a cached %d MiB blob through containerd's proxy client (core/content/proxy)", e.hotBlob.Size>>20),
		Measure:  "MB/s, sequential 32 KiB ReadAt",
		Ours:     fmt.Sprintf("%.0f", mbps),
		Others:   map[string]string{ColNullContent: fmt.Sprintf("%.0f", nullMBps)},
		Ratio:    fmt.Sprintf("%.2f×", mbps/nullMBps),
		Target:   "≥ 250 MB/s", Met: Bool(mbps >= 250),
	})
}

// contentRates writes the hot blob through the content API (as containerd stores a blob it
// pulled in proxy mode; the daemon does not hold it yet) and reads it back the way
// containerd's unpacker reads a layer from a proxy content store: 32 KiB per ReadAt, through
// containerd's own client. The null content server (nullcontent.go) is read the same way,
// the two taking turns. It returns the write's MB/s and the median read MB/s of the daemon
// and of the null server.
func (p *proxyBench) contentRates(t *testing.T) (write, read, nullRead float64) {
	t.Helper()
	e := p.e
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	store := harness.ContentClient(t, p.socket)
	desc := ocispec.Descriptor{Digest: e.hotBlob.Digest, Size: e.hotBlob.Size}
	f, err := os.Open(e.hotBlob.Path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = content.WriteBlob(ctx, store, "bench-read-rate", f, desc)
	f.Close()
	if err != nil {
		t.Fatalf("write the hot blob through the content API: %v", err)
	}
	write = MBps(desc.Size, time.Since(start))
	t.Logf("content API write: %.0f MB/s", write)

	null := harness.ContentClient(t, startNullContent(t, filepath.Dir(p.socket), desc.Size))
	buf := make([]byte, 32<<10)
	samples := map[string][]float64{}
	for i := range e.cfg.Runs {
		for _, sys := range Rotate([]string{"daemon", "null"}, i) {
			s := store
			if sys == "null" {
				s = null
			}
			mbps := readRate(ctx, t, s, desc, buf)
			samples[sys] = append(samples[sys], mbps)
			t.Logf("content API read run %d, %s: %.0f MB/s", i, sys, mbps)
		}
	}
	return write, Median(samples["daemon"]), Median(samples["null"])
}

// readRate reads desc from store sequentially, len(buf) bytes per ReadAt, and returns the MB/s.
func readRate(ctx context.Context, t *testing.T, store content.Store, desc ocispec.Descriptor, buf []byte) float64 {
	t.Helper()
	start := time.Now()
	ra, err := store.ReaderAt(ctx, desc)
	if err != nil {
		t.Fatalf("content API ReaderAt %s: %v", desc.Digest, err)
	}
	defer ra.Close()
	// Hide WriterTo so that the copy goes through buf, one ReadAt per 32 KiB.
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{content.NewReader(ra)}, buf)
	if err != nil || n != desc.Size {
		t.Fatalf("read %d of %d bytes through the content API: %v", n, desc.Size, err)
	}
	return MBps(n, time.Since(start))
}

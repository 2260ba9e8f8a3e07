package integration

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// slowRegistryPullLimit is the target for a registry that sends 1 KiB/s: the pull
// ends (here through containerd's fallback) within this.
const slowRegistryPullLimit = 15 * time.Second

// everyRequest applies fault to every manifest and blob request of the daemon, GET and HEAD.
func everyRequest(f *harness.FaultInjector, fault harness.Fault, methods ...string) {
	for _, kind := range []harness.RequestKind{harness.KindManifest, harness.KindBlob} {
		for _, m := range methods {
			fl := fault
			fl.Request, fl.Method = kind, m
			f.Add(fl)
		}
	}
}

// TestFaultsHungAndSlowRegistry pulls with ctr through the mirror while the registry, seen
// from the daemon (containerd's hosts.toml lists the mirror, then the registry itself, which
// stays healthy), either never answers or sends 1 KiB/s. With the daemon's defaults for the
// low-speed limit (10 KiB/s over 10 s) and the circuit breaker (30 s):
//   - hung: one response_header_timeout opens the circuit; every later request of the pull,
//     and of the next pull, gets a prompt 502 and containerd falls back; the registry sees
//     exactly one hung request.
//   - slow: the layers are abandoned after low_speed_time, the circuit opens, containerd's
//     Range retries get a prompt 502 and it fetches them from the registry: the pull ends
//     within 15 s.
//
// The MEASURE lines are the seconds each pull took (fault figures of issue 15).
func TestFaultsHungAndSlowRegistry(t *testing.T) {
	t.Run("hung", func(t *testing.T) {
		e := newFaultEnvConfig(t, func(*harness.DaemonConfig) {})
		im, took := pullFromHungRegistry(t, e, "slow/hung", 32000)
		hung := e.faults.Injected(harness.FaultHangBeforeHeaders)
		if hung != 1 {
			t.Errorf("the registry got %d hung requests from the daemon, want 1 (the circuit opens after the first)", hung)
		}
		if took < faultHeaderTimeout {
			t.Errorf("pull took %v, less than the header timeout %v: the hang was never waited for", took, faultHeaderTimeout)
		}
		if took >= 2*faultHeaderTimeout {
			t.Errorf("pull took %v: more than one response_header_timeout (%v)", took, faultHeaderTimeout)
		}
		assertFellBackFor(t, e, im)
		assertCircuitMetric(t, e, 1)
		writeMeasure(t, "fault=hung-registry pull=%v response_header_timeout=%v hung_requests=%d", took.Round(10*time.Millisecond), faultHeaderTimeout, hung)

		// Within the cool-down a second pull pays no timeout at all.
		im2, ref2 := e.push(t, "slow/hung2", "v1", smallImage(32100))
		_, took2, err := e.ctrd.PullE(context.Background(), "hung2", ref2, e.hostsDir)
		if err != nil {
			t.Fatalf("second pull: %v", err)
		}
		if n := e.faults.Injected(harness.FaultHangBeforeHeaders); n != hung {
			t.Errorf("the open circuit let %d more requests reach the hung registry", n-hung)
		}
		if took2 >= faultHeaderTimeout {
			t.Errorf("second pull took %v, a timeout (%v) although the circuit is open", took2, faultHeaderTimeout)
		}
		assertFellBackFor(t, e, im2)
		writeMeasure(t, "fault=hung-registry-second-pull pull=%v", took2.Round(10*time.Millisecond))
	})

	// The same hung registry without the breaker, for comparison: each request of the pull
	// waits for its own timeout (what issue 15 measured: 40 s for a 5-request pull at 10 s).
	t.Run("hung-without-breaker", func(t *testing.T) {
		e := newFaultEnvConfig(t, func(c *harness.DaemonConfig) { c.UpstreamExtra = `circuit_breaker_cooldown = "0s"` })
		im, took := pullFromHungRegistry(t, e, "slow/hung-nobreaker", 32300)
		hung := e.faults.Injected(harness.FaultHangBeforeHeaders)
		if hung < 2 || took < 2*faultHeaderTimeout {
			t.Errorf("without the breaker: %d hung requests in %v; expected one timeout per request", hung, took)
		}
		assertFellBackFor(t, e, im)
		writeMeasure(t, "fault=hung-registry-without-breaker pull=%v response_header_timeout=%v hung_requests=%d", took.Round(10*time.Millisecond), faultHeaderTimeout, hung)
	})

	t.Run("slow-1KiBps", func(t *testing.T) {
		e := newFaultEnvConfig(t, func(*harness.DaemonConfig) {})
		everyRequest(e.faults, harness.Fault{Kind: harness.FaultSlowDrip, DripChunk: 1 << 10, DripInterval: time.Second}, http.MethodGet)
		im, ref := e.push(t, "slow/drip", "v1", smallImage(32200))
		_, took, err := e.ctrd.PullE(context.Background(), "slow1", ref, e.hostsDir)
		if err != nil {
			t.Fatalf("pull with a 1 KiB/s registry behind the mirror failed: %v", err)
		}
		if e.faults.Injected(harness.FaultSlowDrip) == 0 {
			t.Fatal("no slow answer was injected: the test proves nothing")
		}
		if took >= slowRegistryPullLimit {
			t.Errorf("pull took %v with a 1 KiB/s registry, want under %v", took, slowRegistryPullLimit)
		}
		direct := e.proxy.Snapshot().Direct().BlobGETs()
		for _, l := range im.Layers {
			if direct[l.Descriptor.Digest] == 0 {
				t.Errorf("layer %s was not fetched from the registry by containerd: no fallback", l.Descriptor.Digest)
			}
			if e.daemon.HasBlob(l.Descriptor.Digest, -1) {
				t.Errorf("the slow layer %s was committed to the store", l.Descriptor.Digest)
			}
		}
		logText, err := os.ReadFile(e.daemon.Process.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(logText), "upstream too slow") {
			t.Errorf("the daemon's log does not say the upstream was too slow")
		}
		assertCircuitMetric(t, e, 1)
		writeMeasure(t, "fault=slow-registry-1KiB/s pull=%v low_speed_limit=10KiB/s low_speed_time=10s", took.Round(10*time.Millisecond))
	})
}

// pullFromHungRegistry makes every request of the daemon to the registry hang before headers,
// then pulls a new image through the mirror; the pull must succeed (by fallback).
func pullFromHungRegistry(t *testing.T, e *faultEnv, repo string, seed uint64) (*harness.Image, time.Duration) {
	t.Helper()
	everyRequest(e.faults, harness.Fault{Kind: harness.FaultHangBeforeHeaders, Hang: time.Minute}, http.MethodGet, http.MethodHead)
	im, ref := e.push(t, repo, "v1", smallImage(seed))
	_, took, err := e.ctrd.PullE(context.Background(), strings.ReplaceAll(repo, "/", "-"), ref, e.hostsDir)
	if err != nil {
		t.Fatalf("pull with a hung registry behind the mirror failed: %v", err)
	}
	return im, took
}

// assertFellBackFor checks that containerd fetched every blob of im from the registry itself
// and holds all of them.
func assertFellBackFor(t *testing.T, e *faultEnv, im *harness.Image) {
	t.Helper()
	direct := e.proxy.Snapshot().Direct().BlobGETs()
	for _, b := range im.Blobs() {
		if direct[b.Digest] == 0 {
			t.Errorf("blob %s was not fetched from the registry by containerd", b.Digest)
		}
	}
}

// assertCircuitMetric checks the daemon's upstream_circuit_open gauge for the registry.
func assertCircuitMetric(t *testing.T, e *faultEnv, want float64) {
	t.Helper()
	labels := map[string]string{"host": e.proxy.Host}
	if got := metricValue(scrape(t, e.daemon), "containerd_blobcache_upstream_circuit_open", labels); got != want {
		t.Errorf("containerd_blobcache_upstream_circuit_open{host=%q} = %v, want %v", e.proxy.Host, got, want)
	}
}

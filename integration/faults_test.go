package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// Short timeouts keep the fault tests quick; the daemon's defaults are 5s and 10s.
const (
	faultStallTimeout  = 2 * time.Second
	faultHeaderTimeout = 3 * time.Second
)

// faultEnv is one origin whose answers to the daemon (never to containerd directly) can be
// damaged, the daemon in front of it, and containerd whose hosts.toml lists the mirror and
// then the origin.
type faultEnv struct {
	origin
	faults   *harness.FaultInjector
	daemon   *harness.Daemon
	hostsDir string
	ctrd     *harness.Containerd
}

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	return newFaultEnvWith(t, false)
}

// newFaultEnvWith is the environment of the per-fault tables: the circuit breaker is off, so
// that each fault is judged by itself rather than by the fast failures an earlier one left
// (TestFaultsHungAndSlowRegistry tests the breaker).
func newFaultEnvWith(t *testing.T, verifyBeforeServe bool) *faultEnv {
	t.Helper()
	return newFaultEnvConfig(t, func(c *harness.DaemonConfig) {
		c.VerifyBeforeServe = verifyBeforeServe
		c.UpstreamExtra = `circuit_breaker_cooldown = "0s"`
	})
}

// newFaultEnvConfig starts a fault environment whose daemon configuration mutate adjusts.
func newFaultEnvConfig(t *testing.T, mutate func(*harness.DaemonConfig)) *faultEnv {
	t.Helper()
	harness.RequireRoot(t)
	harness.Tools(t)
	reg := harness.StartRegistry(t)
	e := &faultEnv{origin: origin{reg: reg, proxy: harness.StartCountingProxy(t, reg.URL)}, hostsDir: t.TempDir()}
	e.faults = harness.InjectFaults(t, e.proxy)
	cfg := harness.DaemonConfig{
		Registries:            []string{e.proxy.Host},
		StallTimeout:          faultStallTimeout.String(),
		ResponseHeaderTimeout: faultHeaderTimeout.String(),
	}
	mutate(&cfg)
	e.daemon = harness.StartDaemon(t, cfg)
	if _, err := harness.WriteHostsToml(e.hostsDir, e.proxy.Host, e.daemon.URL); err != nil {
		t.Fatal(err)
	}
	e.ctrd = harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})
	return e
}

// smallImage is about 3 MB in two layers; each seed gives distinct blobs.
func smallImage(seed uint64) harness.ImageSpec {
	return harness.ImageSpec{Layers: []harness.LayerSpec{
		{Seed: seed, Files: 2, FileSize: 1 << 20},
		{Seed: seed + 1, Files: 1, FileSize: 1 << 20},
	}}
}

// faultOutcome is what a fault must end in.
type faultOutcome int

const (
	// viaMirror: the pull completes through the mirror (a retry or Range retry recovers),
	// containerd never fetches the faulted object from the origin itself, and it is cached.
	viaMirror faultOutcome = iota
	// fallsBack: the mirror answers with an error status (before any header for a blob
	// resumed at an offset) and containerd fetches the object from the origin itself; the
	// daemon keeps nothing of it.
	fallsBack
	// eitherWay: one of the two, not decided by the daemon (Go's transport retries an
	// idempotent request once when a reused connection breaks before the answer).
	eitherWay
)

func (o faultOutcome) String() string {
	switch o {
	case viaMirror:
		return "recovered through the mirror, cached"
	case fallsBack:
		return "containerd fell back to the origin, not cached"
	}
	return "through the mirror or by fallback"
}

type faultCase struct {
	name  string
	fault harness.Fault
	// target says which object of the image is faulted: "layer" (the first layer), "tag"
	// (the manifest by tag), "manifest" (the manifest by digest).
	target string
	want   faultOutcome
	// daemonDoes is the table's description of the daemon's behaviour.
	daemonDoes string
}

// verifiedFaultCases run with mirror.verify_before_serve: the daemon sends a cold blob only
// once verified, so a corrupt upstream is a 502 and containerd never holds corrupt bytes.
// (Streaming, the default, cuts the client before the last byte, but containerd keeps the
// corrupt bytes it got and its commit fails: see docs/FAULTS.md.)
func verifiedFaultCases() []faultCase {
	return []faultCase{
		{"verified-corrupt-always", harness.Fault{Kind: harness.FaultCorrupt, Offset: 1000}, "layer", fallsBack,
			"verify_before_serve: 502 before any header (digest mismatch)"},
		{"verified-corrupt-once", harness.Fault{Kind: harness.FaultCorrupt, Offset: 1000, Times: 1}, "layer", fallsBack,
			"verify_before_serve: 502 before any header"},
		{"verified-reset-mid-body-once", harness.Fault{Kind: harness.FaultResetMidBody, Times: 1}, "layer", fallsBack,
			"verify_before_serve: 502 before any header"},
		{"verified-slow-drip", harness.Fault{Kind: harness.FaultSlowDrip, DripChunk: 64 << 10, DripInterval: 100 * time.Millisecond}, "layer", viaMirror,
			"verify_before_serve: the blob is sent once downloaded and verified"},
	}
}

func faultCases() []faultCase {
	drip := harness.Fault{Kind: harness.FaultSlowDrip, DripChunk: 64 << 10, DripInterval: 100 * time.Millisecond}
	return []faultCase{
		{"reset-before-headers-always", harness.Fault{Kind: harness.FaultResetBeforeHeaders}, "layer", fallsBack,
			"502 before any header"},
		{"reset-before-headers-once", harness.Fault{Kind: harness.FaultResetBeforeHeaders, Times: 1}, "layer", eitherWay,
			"on a reused connection Go's transport retries and the mirror serves; otherwise 502 before any header"},
		{"reset-mid-body-always", harness.Fault{Kind: harness.FaultResetMidBody}, "layer", fallsBack,
			"200, body streamed, connection cut at the fault; the Range retry gets a 502 before any header"},
		{"reset-mid-body-once", harness.Fault{Kind: harness.FaultResetMidBody, Times: 1}, "layer", viaMirror,
			"200, connection cut; the Range retry starts a new download and gets 206"},
		{"truncated-always", harness.Fault{Kind: harness.FaultTruncate}, "layer", fallsBack,
			"200, connection cut where upstream stopped; Range retry gets 502"},
		{"truncated-once", harness.Fault{Kind: harness.FaultTruncate, Times: 1}, "layer", viaMirror,
			"200, connection cut; Range retry served by a new download"},
		{"slow-drip", drip, "layer", viaMirror,
			"streams the bytes as they come (gaps shorter than stall_timeout)"},
		{"hang-before-headers", harness.Fault{Kind: harness.FaultHangBeforeHeaders, Hang: time.Minute}, "layer", fallsBack,
			"502 after upstream.response_header_timeout"},
		{"hang-mid-body", harness.Fault{Kind: harness.FaultHangMidBody, Hang: time.Minute}, "layer", fallsBack,
			"200, cut after upstream.stall_timeout without a byte; Range retry gets 502 after the next stall"},
		{"status-500", harness.Fault{Kind: harness.FaultStatus, Status: http.StatusInternalServerError}, "layer", fallsBack,
			"relays the 500"},
		{"status-503-retry-after", harness.Fault{Kind: harness.FaultStatus, Status: http.StatusServiceUnavailable, RetryAfter: "30"}, "layer", fallsBack,
			"relays the 503 and its Retry-After"},
		{"status-429-retry-after", harness.Fault{Kind: harness.FaultStatus, Status: http.StatusTooManyRequests, RetryAfter: "30"}, "layer", fallsBack,
			"relays the 429 and its Retry-After (containerd retries the mirror, then moves on)"},
		{"redirect-loop", harness.Fault{Kind: harness.FaultRedirectLoop}, "layer", fallsBack,
			"502 after 5 redirects"},
		{"manifest-wrong-content-type", harness.Fault{Kind: harness.FaultContentType, ContentType: "text/html; charset=utf-8"}, "tag", viaMirror,
			"serves (and caches) the manifest with the media type its verified body declares"},
		{"manifest-wrong-bytes-by-tag", harness.Fault{Kind: harness.FaultWrongBytes}, "tag", fallsBack,
			"502: body does not match the Docker-Content-Digest upstream claims"},
		{"manifest-wrong-bytes-by-digest", harness.Fault{Kind: harness.FaultWrongBytes}, "manifest", fallsBack,
			"502: body does not hash to the digest asked for"},
		{"manifest-over-4mib", harness.Fault{Kind: harness.FaultOversize, PadTo: 5 << 20}, "tag", fallsBack,
			"502 MANIFEST_INVALID (Content-Length over store.max_manifest_size), nothing read"},
		{"manifest-over-4mib-chunked", harness.Fault{Kind: harness.FaultOversize, PadTo: 5 << 20, Chunked: true}, "tag", fallsBack,
			"502 MANIFEST_INVALID after reading max_manifest_size+1 bytes"},
	}
}

// TestFaultsPull pulls an image with ctr through the mirror while the origin misbehaves
// towards the daemon in one way per subtest. Every pull must succeed, through the mirror
// or by containerd's fallback as the table says, promptly; nothing corrupt or partial may
// be left in the store. The MEASURE lines are the table of docs/FAULTS.md.
func TestFaultsPull(t *testing.T) {
	runFaultPulls(t, newFaultEnv(t), faultCases(), 20000)
}

// TestFaultsPullVerified is TestFaultsPull with mirror.verify_before_serve.
func TestFaultsPullVerified(t *testing.T) {
	runFaultPulls(t, newFaultEnvWith(t, true), verifiedFaultCases(), 22000)
}

func runFaultPulls(t *testing.T, e *faultEnv, cases []faultCase, seed uint64) {
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			repo := "faults/" + tc.name
			im, ref := e.push(t, repo, "v1", smallImage(seed+uint64(10*i)))
			layer := im.Layers[0].Descriptor
			f := tc.fault
			switch tc.target {
			case "layer":
				f.Request, f.Ref = harness.KindBlob, layer.Digest.String()
			case "tag":
				f.Request, f.Ref = harness.KindManifest, "v1"
			case "manifest":
				f.Request, f.Ref = harness.KindManifest, im.Manifest.Digest.String()
			}
			e.faults.Clear()
			e.faults.Add(f)
			if tc.target == "manifest" {
				// The daemon stores a manifest it fetched by tag under its digest; a 503 on
				// the tag makes containerd resolve at the origin and then ask the mirror
				// for the manifest by digest, which the daemon must fetch.
				e.faults.Add(harness.Fault{Kind: harness.FaultStatus, Status: http.StatusServiceUnavailable, Request: harness.KindManifest, Ref: "v1"})
			}
			e.proxy.Reset()

			ns := fmt.Sprintf("fault%d-%d", seed, i)
			_, took, err := e.ctrd.PullE(context.Background(), ns, ref, e.hostsDir)
			if err != nil {
				t.Fatalf("pull with fault %s failed: %v", tc.name, err)
			}
			if n := e.faults.Injected(f.Kind); n == 0 {
				t.Fatalf("fault %s was never injected: the test proves nothing\n%s", tc.name, e.proxy.Snapshot())
			}
			c := e.proxy.Snapshot()
			direct := c.Direct()
			var directForTarget int
			switch tc.target {
			case "layer":
				directForTarget = direct.BlobGETs()[layer.Digest]
			default:
				directForTarget = len(direct.Filter(func(r harness.ProxiedRequest) bool { return r.Kind == harness.KindManifest }).Requests)
			}
			// faulted is what must not be in the store after a fallback: the layer, the
			// manifest fetched by digest, or for a tag the damaged body the origin sent.
			faulted := im.Manifest.Digest
			switch {
			case tc.target == "layer":
				faulted = layer.Digest
			case tc.target == "tag" && f.Kind == harness.FaultWrongBytes:
				faulted = digest.FromBytes(append(bytes.Clone(im.ManifestBytes), ' '))
			case tc.target == "tag" && f.Kind == harness.FaultOversize:
				faulted = digest.FromBytes(append(bytes.Clone(im.ManifestBytes), bytes.Repeat([]byte(" "), f.PadTo-len(im.ManifestBytes))...))
			}
			switch tc.want {
			case viaMirror:
				if directForTarget != 0 {
					t.Errorf("containerd went to the origin for the faulted object %d times; the mirror should have recovered:\n%s", directForTarget, c)
				}
				harness.WaitFor(t, "faulted object committed", 30*time.Second, 50*time.Millisecond, func() error {
					if !e.daemon.Cached(t, faulted, -1) {
						return fmt.Errorf("%s not in the store", faulted)
					}
					return nil
				})
			case fallsBack:
				if directForTarget == 0 {
					t.Errorf("containerd never fetched the faulted object from the origin itself:\n%s", c)
				}
				if e.daemon.HasBlob(faulted, -1) {
					t.Errorf("the faulted object %s is in the store", faulted)
				}
			}
			// Everything else of the image still went through the mirror.
			for _, b := range im.Blobs() {
				if b.Digest != faulted && direct.BlobGETs()[b.Digest] != 0 {
					t.Errorf("healthy blob %s was fetched directly", b.Digest)
				}
			}
			// containerd holds the whole image, intact (it verifies digests itself).
			content := e.ctrd.ContentDigests(t, ns)
			for _, b := range im.Blobs() {
				if !containsString(content, b.Digest.String()) {
					t.Errorf("containerd lacks %s after the pull", b.Digest)
				}
			}
			assertNoFillsLeft(t, e.daemon.Config.Root)
			n := assertBlobFilesIntact(t, e.daemon.Config.Root)
			if t.Failed() {
				t.Logf("origin requests:\n%s", c)
			}
			writeMeasure(t, "fault=%s outcome=%q pull=%v injected=%d direct_requests=%d store_blobs=%d daemon=%q",
				tc.name, tc.want, took.Round(10*time.Millisecond), e.faults.Injected(f.Kind), len(direct.Requests), n, tc.daemonDoes)
		})
	}
	if err := e.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	rep := verifyStoreOffline(t, e.daemon.Config.Root)
	t.Logf("store after every fault: %d blob files, %d index records, all intact", rep.Files, rep.Records)
}

// TestFaultsHTTP checks at the HTTP level what containerd relies on: after a 200 a failure
// cuts the connection (the bytes received are a prefix of the blob, no error text in the
// body); a stalled upstream is abandoned after stall_timeout; a request that cannot be
// answered gets a prompt 5xx; an over-limit manifest is refused.
func TestFaultsHTTP(t *testing.T) {
	e := newFaultEnv(t)
	im, _ := e.push(t, "faults/http", "v1", smallImage(21000))
	layer := im.Layers[0]
	want, err := os.ReadFile(layer.Path)
	if err != nil {
		t.Fatal(err)
	}
	blobPath := "/v2/faults/http/blobs/" + layer.Descriptor.Digest.String()
	url := e.daemon.URL + blobPath + "?ns=" + e.proxy.Host
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableCompression: true}}

	get := func(t *testing.T, rng string) (status int, body []byte, readErr error, took time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		defer resp.Body.Close()
		body, readErr = io.ReadAll(resp.Body)
		return resp.StatusCode, body, readErr, time.Since(start)
	}
	// assertCutPrefix checks a response cut after its 200; flipped is the offset of a byte
	// the fault corrupted (-1: none), which is the one allowed difference.
	assertCutPrefix := func(t *testing.T, status int, body []byte, readErr error, flipped int) {
		t.Helper()
		if status != http.StatusOK {
			t.Fatalf("status %d, want 200 then a cut", status)
		}
		if readErr == nil {
			t.Fatalf("body read ended cleanly after %d of %d bytes: a short body looked complete", len(body), len(want))
		}
		if !errors.Is(readErr, io.ErrUnexpectedEOF) && !strings.Contains(readErr.Error(), "reset") {
			t.Logf("read error: %v", readErr)
		}
		if len(body) >= len(want) {
			t.Fatalf("got %d bytes of a %d byte blob before the cut", len(body), len(want))
		}
		expect := bytes.Clone(want[:len(body)])
		if flipped >= 0 && flipped < len(expect) {
			expect[flipped] ^= 0xff
		}
		if !bytes.Equal(body, expect) {
			t.Fatalf("the %d bytes before the cut are not a prefix of the blob (error text inside the body?)", len(body))
		}
	}

	for _, kind := range []harness.FaultKind{harness.FaultResetMidBody, harness.FaultTruncate, harness.FaultCorrupt} {
		t.Run(string(kind), func(t *testing.T) {
			e.faults.Clear()
			off := len(want) / 3
			e.faults.Add(harness.Fault{Kind: kind, Request: harness.KindBlob, Ref: layer.Descriptor.Digest.String(), Offset: int64(off)})
			status, body, readErr, _ := get(t, "")
			flipped := -1
			if kind == harness.FaultCorrupt {
				flipped = off
				if len(body) != len(want)-1 {
					t.Errorf("corrupt blob: got %d bytes before the cut, want all but the last (%d)", len(body), len(want)-1)
				}
			}
			assertCutPrefix(t, status, body, readErr, flipped)
			// containerd's retries from where it was cut, as containerd does them: each gets
			// more bytes (206, then cut again: the client may have been cut before the
			// download's failure point) until the download fails again before reaching the
			// offset, which must be a 5xx before any header.
			have := bytes.Clone(body)
			for attempt := 1; ; attempt++ {
				if attempt > 10 {
					t.Fatalf("no 5xx after %d Range retries", attempt-1)
				}
				status, body, readErr, _ = get(t, fmt.Sprintf("bytes=%d-", len(have)))
				if status >= 500 {
					break
				}
				if status != http.StatusPartialContent || readErr == nil || len(body) == 0 {
					t.Fatalf("Range retry %d at %d: %d with %d bytes (%v), want 206 then a cut, or a 5xx", attempt, len(have), status, len(body), readErr)
				}
				have = append(have, body...)
				assertCutPrefix(t, http.StatusOK, have, readErr, flipped)
			}
			assertNoFillsLeft(t, e.daemon.Config.Root)
			if e.daemon.HasBlob(layer.Descriptor.Digest, -1) {
				t.Fatal("faulted blob committed")
			}
		})
	}

	t.Run("hang-mid-body", func(t *testing.T) {
		e.faults.Clear()
		e.faults.Add(harness.Fault{Kind: harness.FaultHangMidBody, Request: harness.KindBlob, Ref: layer.Descriptor.Digest.String(), Hang: time.Minute})
		status, body, readErr, took := get(t, "")
		assertCutPrefix(t, status, body, readErr, -1)
		if took < faultStallTimeout || took > faultStallTimeout+15*time.Second {
			t.Errorf("client cut after %v, want about the stall timeout %v", took, faultStallTimeout)
		}
		writeMeasure(t, "fault=hang-mid-body-http client_cut_after=%v stall_timeout=%v", took.Round(10*time.Millisecond), faultStallTimeout)
	})

	t.Run("hang-before-headers", func(t *testing.T) {
		e.faults.Clear()
		e.faults.Add(harness.Fault{Kind: harness.FaultHangBeforeHeaders, Request: harness.KindBlob, Ref: layer.Descriptor.Digest.String(), Hang: time.Minute})
		status, _, _, took := get(t, "")
		if status != http.StatusBadGateway {
			t.Errorf("status %d, want 502", status)
		}
		if took > faultHeaderTimeout+15*time.Second {
			t.Errorf("502 after %v, want about the response header timeout %v", took, faultHeaderTimeout)
		}
		writeMeasure(t, "fault=hang-before-headers-http status=%d after=%v response_header_timeout=%v", status, took.Round(10*time.Millisecond), faultHeaderTimeout)
	})

	t.Run("reset-before-headers", func(t *testing.T) {
		e.faults.Clear()
		e.faults.Add(harness.Fault{Kind: harness.FaultResetBeforeHeaders, Request: harness.KindBlob, Ref: layer.Descriptor.Digest.String()})
		status, body, _, took := get(t, "")
		if status != http.StatusBadGateway || !strings.Contains(string(body), "UNAVAILABLE") {
			t.Errorf("status %d body %q, want 502 UNAVAILABLE", status, truncateBytes(body))
		}
		if took > 5*time.Second {
			t.Errorf("502 took %v: not prompt", took)
		}
	})

	t.Run("manifest-over-limit", func(t *testing.T) {
		for _, chunked := range []bool{false, true} {
			e.faults.Clear()
			e.faults.Add(harness.Fault{Kind: harness.FaultOversize, Request: harness.KindManifest, Ref: "v1", PadTo: 5 << 20, Chunked: chunked})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			r, err := e.daemon.Do(ctx, http.MethodGet, "/v2/faults/http/manifests/v1", e.proxy.Host, http.Header{"Accept": {"application/vnd.oci.image.manifest.v1+json"}})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != http.StatusBadGateway || r.Size > 64<<10 {
				t.Errorf("chunked=%v: oversize manifest answered %d with %d bytes, want a short 502", chunked, r.Status, r.Size)
			}
		}
		if e.daemon.HasBlob(im.Manifest.Digest, -1) {
			t.Error("a manifest was stored from an oversize answer")
		}
	})

	// Once upstream is healthy again, the blob every fault above hit is served whole and
	// right: nothing of the faulty answers was kept.
	e.faults.Clear()
	for _, want := range []string{harness.ResultMiss, harness.ResultHit} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		r, err := e.daemon.GetBlob(ctx, e.proxy.Host, "faults/http", layer.Descriptor.Digest)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != http.StatusOK || r.Digest != layer.Descriptor.Digest || r.Result() != want {
			t.Errorf("after the faults: %d, %s, %s=%q; want 200, %s, %q", r.Status, r.Digest, harness.ResultHeader, r.Result(), layer.Descriptor.Digest, want)
		}
		if want == harness.ResultMiss {
			harness.WaitFor(t, "blob committed", 30*time.Second, 50*time.Millisecond, func() error {
				if !e.daemon.Cached(t, layer.Descriptor.Digest, layer.Descriptor.Size) {
					return fmt.Errorf("not committed yet")
				}
				return nil
			})
		}
	}
	if err := e.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	verifyStoreOffline(t, e.daemon.Config.Root)
}

func truncateBytes(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// hostileEnv is a daemon (with its debug listener) in front of one registry holding a
// small image; no containerd.
type hostileEnv struct {
	origin
	daemon    *harness.Daemon
	debugAddr string
	im        *harness.Image
}

func newHostileEnv(t *testing.T, readHeaderTimeout string) *hostileEnv {
	t.Helper()
	harness.RequireRoot(t)
	harness.Tools(t)
	reg := harness.StartRegistry(t)
	e := &hostileEnv{origin: origin{reg: reg, proxy: harness.StartCountingProxy(t, reg.URL)}, debugAddr: harness.FreeAddr(t)}
	e.daemon = harness.StartDaemon(t, harness.DaemonConfig{
		Registries:        []string{e.proxy.Host},
		ReadHeaderTimeout: readHeaderTimeout,
		LogLevel:          "info",
		Extra:             harness.DebugConfig(e.debugAddr),
	})
	e.im, _ = e.push(t, "hostile/img", "v1", smallImage(30000))
	return e
}

// usage is the daemon's goroutines and open files at one moment.
type usage struct{ goroutines, fds int }

func (e *hostileEnv) usage(t *testing.T) usage {
	t.Helper()
	g, err := harness.Goroutines(e.debugAddr)
	if err != nil {
		t.Fatalf("goroutines: %v", err)
	}
	n, err := harness.OpenFDs(e.daemon.Process.PID())
	if err != nil {
		t.Fatalf("fds: %v", err)
	}
	return usage{g, n}
}

// assertBackToBaseline waits until the daemon's goroutines and fds are back to at most the
// baseline plus a small slack (the debug request's own goroutine, idle timers), and that
// GET /v2/ answers promptly.
func (e *hostileEnv) assertBackToBaseline(t *testing.T, base usage) usage {
	t.Helper()
	return e.assertBackToBaselineWith(t, base, 0)
}

// upstreamIdleConns is the daemon's keep-alive pool towards one registry (the resolver's
// MaxIdleConnsPerHost): after a load those connections stay open, idle, for 90 s, each
// with one fd and two goroutines. They are allowed on top of the baseline, no more.
const upstreamIdleConns = 16

// assertBackToBaselineWith is assertBackToBaseline allowing idleUpstream idle upstream
// connections more than at the baseline.
func (e *hostileEnv) assertBackToBaselineWith(t *testing.T, base usage, idleUpstream int) usage {
	t.Helper()
	var now usage
	harness.WaitFor(t, "goroutines and fds back to baseline", 60*time.Second, 200*time.Millisecond, func() error {
		now = e.usage(t)
		if now.goroutines > base.goroutines+3+2*idleUpstream || now.fds > base.fds+2+idleUpstream {
			return fmt.Errorf("now %+v, baseline %+v", now, base)
		}
		return nil
	})
	e.assertHealthy(t)
	return now
}

func (e *hostileEnv) assertHealthy(t *testing.T) {
	t.Helper()
	if exited, err := e.daemon.Process.Exited(); exited {
		t.Fatalf("daemon exited: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	r, err := e.daemon.Do(ctx, http.MethodGet, "/v2/", "", nil)
	if err != nil || r.Status != http.StatusOK {
		t.Fatalf("GET /v2/ after hostile input: %v %d", err, r.Status)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("GET /v2/ took %v", d)
	}
}

// rawExchange sends raw bytes on a new connection and reads what comes back until the
// server closes or timeout passes. It returns the status codes of the responses seen and
// whether the server closed the connection.
func rawExchange(t *testing.T, addr, raw string, timeout time.Duration) (statuses []int, closed bool, text string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	// The write may fail once the server has answered and closed (large bodies).
	go func() { _, _ = io.WriteString(conn, raw) }()
	br := bufio.NewReader(conn)
	var b strings.Builder
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			isTimeout := false
			if e, ok := err.(net.Error); ok {
				ne = e
				isTimeout = ne.Timeout()
			}
			return statuses, !isTimeout, b.String()
		}
		statuses = append(statuses, resp.StatusCode)
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		fmt.Fprintf(&b, "%d %s %s\n", resp.StatusCode, resp.Header.Get("Connection"), strings.TrimSpace(string(body)))
		if resp.Close {
			return statuses, true, b.String()
		}
	}
}

// TestHostileInput sends what no registry client sends: traversal and odd characters in
// names, references, digests and ns; oversized headers, URLs and bodies; request smuggling
// attempts; unknown methods. Each must get a 4xx (or the connection closed), and the
// daemon must stay healthy with no goroutine or fd growth.
func TestHostileInput(t *testing.T) {
	e := newHostileEnv(t, "")
	reg := e.proxy.Host
	layer := e.im.Layers[0].Descriptor.Digest.String()
	e.assertHealthy(t)
	base := e.usage(t)

	get := func(target string) string {
		return "GET " + target + " HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n"
	}
	big := strings.Repeat("a", 200<<10)
	cases := []struct {
		name string
		raw  string
		// allowClose501 accepts a 501 with the connection closed (Go's answer to an
		// unsupported Transfer-Encoding).
		allowClose501 bool
	}{
		{"traversal-path", get("/v2/../../../../etc/passwd"), false},
		{"traversal-in-name", get("/v2/a/../../blobs/" + layer + "?ns=" + reg), false},
		{"escaped-traversal", get("/v2/%2e%2e/%2e%2e/blobs/" + layer + "?ns=" + reg), false},
		{"escaped-slash-in-tag", get("/v2/hostile/img/manifests/..%2f..%2fv1?ns=" + reg), false},
		{"upper-case-name", get("/v2/Hostile/IMG/manifests/v1?ns=" + reg), false},
		{"unicode-name", get("/v2/h\u00f6stile/manifests/v1?ns=" + reg), false},
		{"nul-in-tag", get("/v2/hostile/img/manifests/v1%00?ns=" + reg), false},
		{"long-tag", get("/v2/hostile/img/manifests/" + strings.Repeat("t", 200) + "?ns=" + reg), false},
		{"long-name", get("/v2/" + strings.Repeat("n", 300) + "/manifests/v1?ns=" + reg), false},
		{"bad-digest-hex", get("/v2/hostile/img/blobs/sha256:zzzz?ns=" + reg), false},
		{"digest-traversal", get("/v2/hostile/img/blobs/sha256:../../../../etc/passwd?ns=" + reg), false},
		{"digest-unknown-algorithm", get("/v2/hostile/img/blobs/md5:d41d8cd98f00b204e9800998ecf8427e?ns=" + reg), false},
		{"digest-short", get("/v2/hostile/img/blobs/sha256:abcd?ns=" + reg), false},
		{"manifest-digest-bad", get("/v2/hostile/img/manifests/sha256:" + strings.Repeat("g", 64) + "?ns=" + reg), false},
		{"ns-traversal", get("/v2/hostile/img/manifests/v1?ns=../../etc"), false},
		{"ns-url", get("/v2/hostile/img/manifests/v1?ns=http%3A%2F%2Fevil.example%2Fx"), false},
		{"ns-userinfo", get("/v2/hostile/img/manifests/v1?ns=user%40evil.example"), false},
		{"ns-path", get("/v2/hostile/img/manifests/v1?ns=" + reg + "%2Fx"), false},
		{"ns-nul", get("/v2/hostile/img/manifests/v1?ns=evil%00.example"), false},
		{"ns-twice", get("/v2/hostile/img/manifests/v1?ns=" + reg + "&ns=other.example"), false},
		{"ns-missing", get("/v2/hostile/img/manifests/v1"), false},
		{"ns-metadata-address", get("/v2/hostile/img/manifests/v1?ns=169.254.169.254"), false},
		{"ns-loopback-not-allowed", get("/v2/hostile/img/manifests/v1?ns=127.0.0.1%3A1"), false},
		{"oversized-header", "GET /v2/ HTTP/1.1\r\nHost: mirror\r\nX-Big: " + big + "\r\n\r\n", false},
		{"oversized-url", get("/v2/" + big), false},
		{"many-headers", "GET /v2/ HTTP/1.1\r\nHost: mirror\r\n" + strings.Repeat("X-A: b\r\n", 20000) + "\r\n", false},
		{"oversized-body", "PUT /v2/hostile/img/blobs/uploads/ HTTP/1.1\r\nHost: mirror\r\nContent-Length: 104857600\r\n\r\n" + strings.Repeat("x", 1<<20), false},
		{"body-on-get", "GET /v2/ HTTP/1.1\r\nHost: mirror\r\nContent-Length: 5\r\n\r\nhello", false},
		{"smuggle-cl-te", "GET /v2/ HTTP/1.1\r\nHost: mirror\r\nContent-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/smuggled/manifests/x HTTP/1.1\r\nHost: mirror\r\n\r\n", true},
		{"smuggle-te-cl", "GET /v2/ HTTP/1.1\r\nHost: mirror\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /v2/smuggled/manifests/x HTTP/1.1\r\nHost: mirror\r\n\r\n0\r\n\r\n", true},
		{"smuggle-two-cl", "GET /v2/ HTTP/1.1\r\nHost: mirror\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /v2/smuggled/manifests/x HTTP/1.1\r\n\r\n", true},
		{"smuggle-te-obfuscated", "GET /v2/ HTTP/1.1\r\nHost: mirror\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", true},
		{"smuggle-te-list", "GET /v2/ HTTP/1.1\r\nHost: mirror\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", true},
		{"method-unknown", "FOO /v2/ HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n", false},
		{"method-trace", "TRACE /v2/ HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n", false},
		{"method-delete", "DELETE /v2/hostile/img/manifests/v1?ns=" + reg + " HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n", false},
		{"method-connect", "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n", false},
		{"absolute-uri", "GET http://evil.example/v2/ HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n", true},
		{"no-host-http11", "GET /v2/ HTTP/1.1\r\n\r\n", false},
		{"bad-header-char", "GET /v2/ HTTP/1.1\r\nHost: mirror\r\nX-\x00: y\r\n\r\n", false},
		{"tls-client-hello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", false},
		{"garbage-request-line", "\x00\x01\x02 / HTTP/1.1\r\n\r\n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			statuses, closed, text := rawExchange(t, e.daemon.Addr, tc.raw, 15*time.Second)
			if len(statuses) == 0 {
				if !closed {
					t.Fatalf("no answer and the connection left open")
				}
				return // closed without an answer: acceptable
			}
			if len(statuses) > 1 {
				t.Errorf("%d responses on one connection (a smuggled request was served): %v\n%s", len(statuses), statuses, text)
			}
			s := statuses[0]
			switch {
			case s == http.StatusOK && strings.HasPrefix(tc.name, "absolute-uri"):
				// Go serves the path of an absolute-form target; it goes nowhere else.
			case s >= 400 && s < 500:
			case s == http.StatusNotImplemented && tc.allowClose501 && closed:
			default:
				t.Errorf("answered %d, want a 4xx:\n%s", s, text)
			}
			t.Logf("%v closed=%v %s", statuses, closed, firstLine(text))
		})
	}
	// The origin never saw any of it.
	if n := len(e.proxy.Snapshot().Requests); n != 0 {
		t.Errorf("hostile requests reached the origin %d times:\n%s", n, e.proxy.Snapshot())
	}
	after := e.assertBackToBaseline(t, base)
	writeMeasure(t, "hostile cases=%d goroutines_before=%d after=%d fds_before=%d after=%d", len(cases), base.goroutines, after.goroutines, base.fds, after.fds)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	if len(l) > 160 {
		l = l[:160]
	}
	return l
}

// TestHostileRanges sends malformed Range headers for a blob, on a miss (served from the
// download) and on a hit (served from the file): the answer is the whole blob (200), a
// valid part (206) or 416, never a 5xx, and the bytes are right.
func TestHostileRanges(t *testing.T) {
	e := newHostileEnv(t, "")
	reg := e.proxy.Host
	l := e.im.Layers[0].Descriptor
	ranges := []string{"bytes=abc", "bytes=5-1", "bytes=-", "items=0-1", "bytes=0-1,2-3", "bytes=99999999999999999999-",
		"bytes=-0", "bytes= 1-2", "bytes=1-2-3", "bytes=-99999999999999999999", "bytes=18446744073709551615-", "bytes=0-0",
		fmt.Sprintf("bytes=%d-", l.Size), fmt.Sprintf("bytes=%d-%d", l.Size-1, l.Size+100), strings.Repeat("bytes=0-1,", 2000) + "0-1"}
	base := e.usage(t)
	for _, phase := range []string{"miss", "hit"} {
		for i, rng := range ranges {
			if phase == "miss" && i > 0 {
				// One miss is enough to test the download path's parser: the blob is then
				// committed. Each miss below uses a fresh blob from a new image instead.
				break
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			r, err := e.daemon.Do(ctx, http.MethodGet, "/v2/hostile/img/blobs/"+l.Digest.String(), reg, http.Header{"Range": {rng}})
			cancel()
			if err != nil {
				t.Fatalf("%s %q: %v", phase, rng, err)
			}
			switch r.Status {
			case http.StatusOK:
				if r.Digest != l.Digest {
					t.Errorf("%s %q: 200 with the wrong bytes", phase, rng)
				}
			case http.StatusPartialContent, http.StatusRequestedRangeNotSatisfiable:
			default:
				t.Errorf("%s %q: %d", phase, rng, r.Status)
			}
			t.Logf("%s %q -> %d (%d bytes)", phase, truncateString(rng, 40), r.Status, r.Size)
		}
		if phase == "miss" {
			harness.WaitFor(t, "blob committed", 30*time.Second, 50*time.Millisecond, func() error {
				if !e.daemon.Cached(t, l.Digest, l.Size) {
					return fmt.Errorf("not yet")
				}
				return nil
			})
		}
	}
	// Malformed ranges on misses, each on its own fresh blob.
	for i, rng := range ranges {
		im, _ := e.push(t, fmt.Sprintf("hostile/range%d", i), "v1", harness.ImageSpec{Layers: []harness.LayerSpec{{Seed: uint64(31000 + i), Files: 1, FileSize: 64 << 10}}})
		d := im.Layers[0].Descriptor
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		r, err := e.daemon.Do(ctx, http.MethodGet, fmt.Sprintf("/v2/hostile/range%d/blobs/%s", i, d.Digest), reg, http.Header{"Range": {rng}})
		cancel()
		if err != nil {
			t.Fatalf("miss %q: %v", rng, err)
		}
		if r.Status >= 500 || (r.Status == http.StatusOK && r.Digest != d.Digest) {
			t.Errorf("miss %q: %d, %d bytes", rng, r.Status, r.Size)
		}
		t.Logf("miss %q -> %d (%d bytes)", truncateString(rng, 40), r.Status, r.Size)
	}
	e.assertBackToBaseline(t, base)
	assertNoFillsLeft(t, e.daemon.Config.Root)
	assertBlobFilesIntact(t, e.daemon.Config.Root)
}

func truncateString(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// TestHostileSlowloris opens many connections that send their headers a byte at a time:
// each is closed after mirror.read_header_timeout, and the mirror answers other clients
// meanwhile.
func TestHostileSlowloris(t *testing.T) {
	const readHeaderTimeout = 2 * time.Second
	e := newHostileEnv(t, readHeaderTimeout.String())
	base := e.usage(t)
	const clients = 50
	var wg sync.WaitGroup
	lifetimes := make([]time.Duration, clients)
	errs := make([]error, clients)
	for i := range clients {
		wg.Go(func() {
			conn, err := net.DialTimeout("tcp", e.daemon.Addr, 5*time.Second)
			if err != nil {
				errs[i] = err
				return
			}
			defer conn.Close()
			start := time.Now()
			io.WriteString(conn, "GET /v2/ HTTP/1.1\r\nHost: mirror\r\n")
			// One header byte every 300 ms, for at most 60 s: the server must cut it first.
			deadline := start.Add(60 * time.Second)
			for time.Now().Before(deadline) {
				conn.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := conn.Write([]byte("X")); err != nil {
					lifetimes[i] = time.Since(start)
					return
				}
				conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				buf := make([]byte, 512)
				if _, err := conn.Read(buf); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						continue
					}
					lifetimes[i] = time.Since(start)
					return
				} else {
					// Whatever the server says (a 408), it must then close.
					continue
				}
			}
			errs[i] = fmt.Errorf("connection still open after %v", time.Since(start))
		})
	}
	// Meanwhile a normal client is served promptly.
	for range 5 {
		e.assertHealthy(t)
	}
	wg.Wait()
	var longest time.Duration
	for i := range clients {
		if errs[i] != nil {
			t.Errorf("slow client %d: %v", i, errs[i])
		}
		longest = max(longest, lifetimes[i])
	}
	if longest > readHeaderTimeout+10*time.Second {
		t.Errorf("a slow client lived %v, read_header_timeout is %v", longest, readHeaderTimeout)
	}
	after := e.assertBackToBaseline(t, base)
	writeMeasure(t, "slowloris clients=%d read_header_timeout=%v longest_lived=%v goroutines_before=%d after=%d fds_before=%d after=%d",
		clients, readHeaderTimeout, longest.Round(10*time.Millisecond), base.goroutines, after.goroutines, base.fds, after.fds)
}

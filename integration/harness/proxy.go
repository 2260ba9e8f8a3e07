package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// DirectHeader is the header WriteHostsToml puts on the registry's own `server` entry, so a
// request that containerd sends straight to the registry (not through the mirror) can be
// told apart from the daemon's upstream requests at the counting proxy.
const DirectHeader = "X-Blobcache-Test-Direct"

// RequestKind classifies a registry API request.
type RequestKind string

const (
	KindBase     RequestKind = "base"     // /v2/
	KindManifest RequestKind = "manifest" // /v2/<name>/manifests/<ref>
	KindBlob     RequestKind = "blob"     // /v2/<name>/blobs/<digest>
	KindUpload   RequestKind = "upload"   // /v2/<name>/blobs/uploads/...
	KindOther    RequestKind = "other"
)

// ProxiedRequest is one request the counting proxy forwarded.
type ProxiedRequest struct {
	Method    string
	Path      string
	RawQuery  string
	Kind      RequestKind
	Name      string // repository name
	Ref       string // tag or digest for manifests, digest for blobs
	Direct    bool   // carried DirectHeader: containerd talking to the registry itself
	UserAgent string
	Range     string
	// Remote is the client's IP address (which node asked, on a switch).
	Remote string
	Status int
	// Result is the response's X-Blobcache-Result header (when the proxy fronts the daemon).
	Result string
	// BodyBytes is how many response body bytes went to the client.
	BodyBytes int64
}

// CountingProxy is a reverse proxy on 127.0.0.1 in front of an origin registry that counts
// what passes through it. Tests use its Host as the registry of their image references so
// that every request for the "origin" — from containerd or from the daemon — is seen here.
type CountingProxy struct {
	Host   string // "127.0.0.1:<port>"
	URL    string // "http://" + Host
	Origin *url.URL

	srv *http.Server

	mu        sync.Mutex
	requests  []ProxiedRequest
	intercept func(http.ResponseWriter, *http.Request) bool
}

// StartCountingProxy starts a proxy in front of originURL (for example Registry.URL).
func StartCountingProxy(t testing.TB, originURL string) *CountingProxy {
	t.Helper()
	origin, err := url.Parse(originURL)
	if err != nil {
		t.Fatalf("counting proxy origin %q: %v", originURL, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("counting proxy listen: %v", err)
	}
	return serveCountingProxy(t, origin, l, (&net.Dialer{Timeout: 5 * time.Second}).DialContext)
}

// StartCountingProxy starts a counting proxy listening on addr ("10.213.0.9:5000") inside
// the namespace, in front of originURL as the namespace sees it (its loopback registry).
func (n *Netns) StartCountingProxy(t testing.TB, addr, originURL string) *CountingProxy {
	t.Helper()
	origin, err := url.Parse(originURL)
	if err != nil {
		t.Fatalf("counting proxy origin %q: %v", originURL, err)
	}
	l, err := n.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("counting proxy listen in %s: %v", n.Name, err)
	}
	return serveCountingProxy(t, origin, l, n.DialContext)
}

func serveCountingProxy(t testing.TB, origin *url.URL, l net.Listener, dial func(context.Context, string, string) (net.Conn, error)) *CountingProxy {
	p := &CountingProxy{Host: l.Addr().String(), Origin: origin}
	p.URL = "http://" + p.Host
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(origin)
			pr.Out.Header.Del(DirectHeader)
		},
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           dial,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       30 * time.Second,
			ResponseHeaderTimeout: 60 * time.Second,
		},
		ErrorLog: nil,
	}
	p.srv = &http.Server{
		Handler:           p.handler(rp),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = p.srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.srv.Shutdown(ctx); err != nil {
			_ = p.srv.Close()
		}
	})
	return p
}

func (p *CountingProxy) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind, name, ref := ClassifyPath(r.URL.Path)
		rec := ProxiedRequest{
			Method:    r.Method,
			Path:      r.URL.Path,
			RawQuery:  r.URL.RawQuery,
			Kind:      kind,
			Name:      name,
			Ref:       ref,
			Direct:    r.Header.Get(DirectHeader) != "",
			UserAgent: r.UserAgent(),
			Range:     r.Header.Get("Range"),
		}
		rec.Remote, _, _ = net.SplitHostPort(r.RemoteAddr)
		cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		p.mu.Lock()
		intercept := p.intercept
		p.mu.Unlock()
		if intercept == nil || !intercept(cw, r) {
			next.ServeHTTP(cw, r)
		}
		rec.Status = cw.status
		rec.Result = cw.Header().Get(ResultHeader)
		rec.BodyBytes = cw.n
		p.mu.Lock()
		p.requests = append(p.requests, rec)
		p.mu.Unlock()
	})
}

// SetIntercept installs a hook that sees every request first; when it returns true it has
// answered the request itself and the origin is not asked. nil removes the hook.
func (p *CountingProxy) SetIntercept(f func(http.ResponseWriter, *http.Request) bool) {
	p.mu.Lock()
	p.intercept = f
	p.mu.Unlock()
}

// Reset forgets every request counted so far.
func (p *CountingProxy) Reset() {
	p.mu.Lock()
	p.requests = nil
	p.mu.Unlock()
}

// Snapshot returns the counts of the requests completed so far.
func (p *CountingProxy) Snapshot() ProxyCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return ProxyCounts{Requests: append([]ProxiedRequest(nil), p.requests...)}
}

// ProxyCounts is a snapshot of the requests a CountingProxy forwarded, in completion order.
type ProxyCounts struct {
	Requests []ProxiedRequest
}

// Filter returns the requests for which keep is true.
func (c ProxyCounts) Filter(keep func(ProxiedRequest) bool) ProxyCounts {
	var out ProxyCounts
	for _, r := range c.Requests {
		if keep(r) {
			out.Requests = append(out.Requests, r)
		}
	}
	return out
}

// Direct keeps the requests containerd sent to the registry itself.
func (c ProxyCounts) Direct() ProxyCounts {
	return c.Filter(func(r ProxiedRequest) bool { return r.Direct })
}

// ViaMirror keeps the requests that did not come from containerd directly, that is the
// daemon's upstream requests (when the registry's hosts.toml was written by WriteHostsToml).
func (c ProxyCounts) ViaMirror() ProxyCounts {
	return c.Filter(func(r ProxiedRequest) bool { return !r.Direct })
}

func (c ProxyCounts) count(kind RequestKind, method string) map[string]int {
	m := map[string]int{}
	for _, r := range c.Requests {
		if r.Kind == kind && r.Method == method {
			m[r.Ref]++
		}
	}
	return m
}

// BlobGETs counts GET requests per blob digest.
func (c ProxyCounts) BlobGETs() map[digest.Digest]int {
	return toDigestMap(c.count(KindBlob, http.MethodGet))
}

// BlobHEADs counts HEAD requests per blob digest.
func (c ProxyCounts) BlobHEADs() map[digest.Digest]int {
	return toDigestMap(c.count(KindBlob, http.MethodHead))
}

// ManifestGETs counts GET requests per manifest reference (tag or digest).
func (c ProxyCounts) ManifestGETs() map[string]int { return c.count(KindManifest, http.MethodGet) }

// ManifestHEADs counts HEAD requests per manifest reference (tag or digest).
func (c ProxyCounts) ManifestHEADs() map[string]int { return c.count(KindManifest, http.MethodHead) }

// TotalBlobGETs is the number of blob GET requests.
func (c ProxyCounts) TotalBlobGETs() int {
	n := 0
	for _, v := range c.count(KindBlob, http.MethodGet) {
		n += v
	}
	return n
}

// BlobBytes is the number of blob body bytes sent to clients (GET responses only).
func (c ProxyCounts) BlobBytes() int64 {
	var n int64
	for _, r := range c.Requests {
		if r.Kind == KindBlob && r.Method == http.MethodGet {
			n += r.BodyBytes
		}
	}
	return n
}

// String lists the requests, one a line, for test failure messages.
func (c ProxyCounts) String() string {
	var b strings.Builder
	for _, r := range c.Requests {
		via := "mirror"
		if r.Direct {
			via = "direct"
		}
		q := ""
		if r.RawQuery != "" {
			q = "?" + r.RawQuery
		}
		rng := ""
		if r.Range != "" {
			rng = " range=" + r.Range
		}
		res := ""
		if r.Result != "" {
			res = " result=" + r.Result
		}
		fmt.Fprintf(&b, "  %s %s%s -> %d (%d bytes, %s, %q%s%s)\n", r.Method, r.Path, q, r.Status, r.BodyBytes, via, r.UserAgent, rng, res)
	}
	if b.Len() == 0 {
		return "  (no requests)\n"
	}
	return b.String()
}

func toDigestMap(m map[string]int) map[digest.Digest]int {
	out := make(map[digest.Digest]int, len(m))
	for k, v := range m {
		out[digest.Digest(k)] += v
	}
	return out
}

// ClassifyPath splits a distribution API path into its kind, repository name and reference.
func ClassifyPath(p string) (kind RequestKind, name, ref string) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return KindOther, "", ""
	}
	if rest == "" {
		return KindBase, "", ""
	}
	if i := strings.Index(rest, "/blobs/uploads"); i > 0 {
		return KindUpload, rest[:i], ""
	}
	if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		return KindBlob, rest[:i], rest[i+len("/blobs/"):]
	}
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		return KindManifest, rest[:i], rest[i+len("/manifests/"):]
	}
	return KindOther, "", ""
}

// countingWriter records the status and counts body bytes. Unwrap lets the reverse proxy
// reach the underlying writer's Flush.
type countingWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	n           int64
}

func (w *countingWriter) WriteHeader(code int) {
	if !w.wroteHeader && code >= 200 {
		w.status = code
		w.wroteHeader = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

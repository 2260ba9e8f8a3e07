package harness

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// FaultKind is one way an upstream registry can misbehave.
type FaultKind string

const (
	// FaultResetBeforeHeaders accepts the request and resets the connection (RST) without
	// answering.
	FaultResetBeforeHeaders FaultKind = "reset-before-headers"
	// FaultResetMidBody sends the headers (full Content-Length) and the first Offset bytes,
	// then resets the connection.
	FaultResetMidBody FaultKind = "reset-mid-body"
	// FaultTruncate sends the headers (full Content-Length) and the first Offset bytes, then
	// closes the connection cleanly (FIN).
	FaultTruncate FaultKind = "truncate"
	// FaultCorrupt sends the whole body with the byte at Offset flipped: right length,
	// wrong digest.
	FaultCorrupt FaultKind = "corrupt"
	// FaultSlowDrip sends the whole body, DripChunk bytes every DripInterval.
	FaultSlowDrip FaultKind = "slow-drip"
	// FaultHangBeforeHeaders accepts the request and sends nothing until Hang passes (or
	// the injector closes), then closes the connection.
	FaultHangBeforeHeaders FaultKind = "hang-before-headers"
	// FaultHangMidBody sends the headers and the first Offset bytes, then nothing until Hang
	// passes (or the injector closes), then closes the connection.
	FaultHangMidBody FaultKind = "hang-mid-body"
	// FaultStatus answers Status (with Retry-After when set) and an OCI error body.
	FaultStatus FaultKind = "status"
	// FaultRedirectLoop answers 307 to the same path, forever.
	FaultRedirectLoop FaultKind = "redirect-loop"
	// FaultContentType sends the real body with ContentType as its Content-Type.
	FaultContentType FaultKind = "content-type"
	// FaultWrongBytes sends a body that differs from the real one (a space appended, so a
	// manifest stays valid JSON) with the real one's Content-Length+1 and
	// Docker-Content-Digest: bytes that do not match the digest they claim.
	FaultWrongBytes FaultKind = "wrong-bytes"
	// FaultOversize sends the real body padded with spaces (still valid JSON) to PadTo
	// bytes; with Chunked the length is not announced.
	FaultOversize FaultKind = "oversize"
)

// Fault is one rule of a FaultInjector: which of the daemon's upstream requests it hits
// and what happens to them. Requests that containerd sends to the registry itself (those
// carrying DirectHeader) are never faulted, so containerd's fallback always finds a
// healthy registry.
type Fault struct {
	Kind FaultKind
	// Match: the request kind (KindBlob, KindManifest), and when set the reference (tag or
	// digest) and method. Method "" matches GET only.
	Request RequestKind
	Ref     string
	Method  string
	// Times is how many matching requests are faulted; 0 means every one.
	Times int

	// Offset is where a mid-body fault cuts or corrupts; negative counts from the end;
	// 0 means half the body.
	Offset int64
	// DripChunk and DripInterval pace FaultSlowDrip.
	DripChunk    int
	DripInterval time.Duration
	// Hang bounds the hangs (default 2 minutes).
	Hang time.Duration
	// Status and RetryAfter for FaultStatus.
	Status     int
	RetryAfter string
	// ContentType for FaultContentType.
	ContentType string
	// PadTo and Chunked for FaultOversize.
	PadTo   int
	Chunked bool
}

type faultRule struct {
	Fault
	hits int
}

// FaultInjector programs faults into a CountingProxy's answers to the daemon. It fetches
// the real answer from the proxy's origin and damages it on the way.
type FaultInjector struct {
	proxy  *CountingProxy
	client *http.Client
	closed chan struct{}

	mu    sync.Mutex
	rules []*faultRule
	// injected counts the faults applied, per kind.
	injected map[FaultKind]int
}

// InjectFaults installs a FaultInjector on p (replacing any intercept hook). Hangs end when
// the test ends.
func InjectFaults(t testing.TB, p *CountingProxy) *FaultInjector {
	t.Helper()
	f := &FaultInjector{
		proxy:    p,
		client:   &http.Client{Timeout: time.Minute, Transport: &http.Transport{Proxy: nil, DisableCompression: true}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		closed:   make(chan struct{}),
		injected: map[FaultKind]int{},
	}
	p.SetIntercept(f.intercept)
	t.Cleanup(func() {
		p.SetIntercept(nil)
		close(f.closed)
	})
	return f
}

// Add appends a rule; the first matching rule with hits left applies.
func (f *FaultInjector) Add(fault Fault) {
	f.mu.Lock()
	f.rules = append(f.rules, &faultRule{Fault: fault})
	f.mu.Unlock()
}

// Clear removes every rule and resets the counts.
func (f *FaultInjector) Clear() {
	f.mu.Lock()
	f.rules = nil
	f.injected = map[FaultKind]int{}
	f.mu.Unlock()
}

// Injected reports how many times faults of kind were applied.
func (f *FaultInjector) Injected(kind FaultKind) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.injected[kind]
}

func (f *FaultInjector) match(r *http.Request) *faultRule {
	if r.Header.Get(DirectHeader) != "" {
		return nil
	}
	kind, _, ref := ClassifyPath(r.URL.Path)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, rule := range f.rules {
		method := rule.Method
		if method == "" {
			method = http.MethodGet
		}
		if rule.Request != kind || (rule.Ref != "" && rule.Ref != ref) || method != r.Method {
			continue
		}
		if rule.Times > 0 && rule.hits >= rule.Times {
			continue
		}
		rule.hits++
		f.injected[rule.Kind]++
		return rule
	}
	return nil
}

func (f *FaultInjector) intercept(w http.ResponseWriter, r *http.Request) bool {
	rule := f.match(r)
	if rule == nil {
		return false
	}
	switch rule.Kind {
	case FaultResetBeforeHeaders:
		if conn, _ := f.hijack(w); conn != nil {
			reset(conn)
		}
		return true
	case FaultHangBeforeHeaders:
		conn, _ := f.hijack(w)
		if conn != nil {
			f.hang(r.Context(), rule.Hang)
			conn.Close()
		}
		return true
	case FaultStatus:
		if rule.RetryAfter != "" {
			w.Header().Set("Retry-After", rule.RetryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rule.Status)
		fmt.Fprintf(w, `{"errors":[{"code":"UNAVAILABLE","message":"injected %d"}]}`, rule.Status)
		return true
	case FaultRedirectLoop:
		n, _ := strconv.Atoi(r.URL.Query().Get("loop"))
		w.Header().Set("Location", fmt.Sprintf("%s?loop=%d", r.URL.Path, n+1))
		w.WriteHeader(http.StatusTemporaryRedirect)
		return true
	}

	// The remaining faults damage the real answer.
	hdr, body, err := f.fetchOrigin(r)
	if err != nil {
		http.Error(w, "fault injector: "+err.Error(), http.StatusBadGateway)
		return true
	}
	off := rule.Offset
	switch {
	case off == 0:
		off = int64(len(body)) / 2
	case off < 0:
		off += int64(len(body))
	}
	off = max(0, min(off, int64(len(body))))
	switch rule.Kind {
	case FaultResetMidBody, FaultTruncate, FaultHangMidBody:
		conn, bw := f.hijack(w)
		if conn == nil {
			return true
		}
		writeRawHead(bw, http.StatusOK, hdr, int64(len(body)))
		bw.Write(body[:off])
		bw.Flush()
		switch rule.Kind {
		case FaultResetMidBody:
			reset(conn)
		case FaultTruncate:
			conn.Close()
		default:
			f.hang(r.Context(), rule.Hang)
			conn.Close()
		}
	case FaultCorrupt:
		bad := bytes.Clone(body)
		if len(bad) > 0 {
			bad[min(off, int64(len(bad)-1))] ^= 0xff
		}
		writeHeader(w, hdr, int64(len(bad)))
		w.Write(bad)
	case FaultSlowDrip:
		chunk := max(rule.DripChunk, 1)
		writeHeader(w, hdr, int64(len(body)))
		rc := http.NewResponseController(w)
		for i := 0; i < len(body); i += chunk {
			if _, err := w.Write(body[i:min(i+chunk, len(body))]); err != nil {
				return true
			}
			rc.Flush()
			select {
			case <-time.After(rule.DripInterval):
			case <-r.Context().Done():
				return true
			case <-f.closed:
				return true
			}
		}
	case FaultContentType:
		hdr.Set("Content-Type", rule.ContentType)
		writeHeader(w, hdr, int64(len(body)))
		w.Write(body)
	case FaultWrongBytes:
		bad := append(bytes.Clone(body), ' ')
		writeHeader(w, hdr, int64(len(bad)))
		w.Write(bad)
	case FaultOversize:
		big := append(bytes.Clone(body), bytes.Repeat([]byte(" "), max(rule.PadTo-len(body), 0))...)
		if rule.Chunked {
			copyTo := w.Header()
			for _, k := range []string{"Content-Type", "Docker-Content-Digest"} {
				if v := hdr.Get(k); v != "" {
					copyTo.Set(k, v)
				}
			}
			w.WriteHeader(http.StatusOK)
		} else {
			writeHeader(w, hdr, int64(len(big)))
		}
		w.Write(big)
	default:
		http.Error(w, "fault injector: unknown fault "+string(rule.Kind), http.StatusInternalServerError)
	}
	return true
}

// fetchOrigin gets the real answer, whole (the test images are small).
func (f *FaultInjector) fetchOrigin(r *http.Request) (http.Header, []byte, error) {
	u := *f.proxy.Origin
	u.Path = r.URL.Path
	u.RawQuery = r.URL.RawQuery
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, err
	}
	for _, k := range []string{"Accept", "Authorization"} {
		if v := r.Header.Values(k); len(v) > 0 {
			req.Header[k] = v
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("origin answered %s", resp.Status)
	}
	return resp.Header, body, nil
}

func (f *FaultInjector) hijack(w http.ResponseWriter) (net.Conn, *bufio.ReadWriter) {
	conn, bw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "fault injector: cannot hijack: "+err.Error(), http.StatusInternalServerError)
		return nil, nil
	}
	return conn, bw
}

func (f *FaultInjector) hang(ctx context.Context, d time.Duration) {
	if d <= 0 {
		d = 2 * time.Minute
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	case <-f.closed:
	}
}

// reset closes conn with an RST instead of a FIN.
func reset(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

var answerHeaders = []string{"Content-Type", "Docker-Content-Digest", "Docker-Distribution-Api-Version", "Etag"}

func writeHeader(w http.ResponseWriter, from http.Header, length int64) {
	for _, k := range answerHeaders {
		if v := from.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	w.WriteHeader(http.StatusOK)
}

func writeRawHead(bw *bufio.ReadWriter, status int, from http.Header, length int64) {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	for _, k := range answerHeaders {
		if v := from.Get(k); v != "" {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\nConnection: close\r\n\r\n", length)
	bw.WriteString(b.String())
}

package resolver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

type breakerClock struct{ t time.Time }

func (c *breakerClock) now() time.Time          { return c.t }
func (c *breakerClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestBreakerOpensProbesAndCloses(t *testing.T) {
	ctx := context.Background()
	clock := &breakerClock{t: time.Unix(1000, 0)}
	var events []string
	b := newBreakers(30*time.Second, func(host string, open bool) { events = append(events, fmt.Sprintf("%s open=%v", host, open)) })
	b.now = clock.now
	const h = "reg.example:443"

	if probe, err := b.allow(h); probe || err != nil {
		t.Fatalf("closed circuit: probe %v err %v", probe, err)
	}
	b.failed(ctx, h, errors.New("timeout awaiting response headers"))
	if _, err := b.allow(h); !errors.Is(err, ErrCircuitOpen) || !errdefs.IsUnavailable(err) {
		t.Fatalf("open circuit: err %v, want ErrCircuitOpen (unavailable)", err)
	}
	if _, err := b.allow("other.example:443"); err != nil {
		t.Fatalf("another host is affected: %v", err)
	}
	clock.advance(29 * time.Second)
	if _, err := b.allow(h); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("before the cool-down ends: err %v", err)
	}
	clock.advance(time.Second)
	probe, err := b.allow(h)
	if !probe || err != nil {
		t.Fatalf("after the cool-down: probe %v err %v, want the probe", probe, err)
	}
	if _, err := b.allow(h); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("a second request while the probe is out: err %v, want ErrCircuitOpen", err)
	}
	// The probe fails: open for another cool-down.
	b.failed(ctx, h, errors.New("connection refused"))
	b.probeDone(h)
	if _, err := b.allow(h); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("after a failed probe: err %v", err)
	}
	clock.advance(30 * time.Second)
	if probe, _ := b.allow(h); !probe {
		t.Fatal("no probe after the second cool-down")
	}
	b.succeeded(ctx, h)
	b.probeDone(h)
	if probe, err := b.allow(h); probe || err != nil {
		t.Fatalf("after a good probe: probe %v err %v, want closed", probe, err)
	}
	want := []string{h + " open=true", h + " open=false"}
	if fmt.Sprint(events) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", events, want)
	}
}

func TestBreakerProbeWithoutVerdictLetsAnotherProbe(t *testing.T) {
	clock := &breakerClock{t: time.Unix(1000, 0)}
	b := newBreakers(time.Second, nil)
	b.now = clock.now
	b.failed(context.Background(), "h:1", errors.New("x"))
	clock.advance(time.Second)
	if probe, _ := b.allow("h:1"); !probe {
		t.Fatal("no probe")
	}
	b.probeDone("h:1") // the client went away: no verdict
	if probe, _ := b.allow("h:1"); !probe {
		t.Fatal("no second probe after a probe without verdict")
	}
}

func TestNoBreakerWithoutCooldown(t *testing.T) {
	b := newBreakers(0, nil)
	b.failed(context.Background(), "h:1", errors.New("x"))
	if probe, err := b.allow("h:1"); probe || err != nil {
		t.Fatalf("disabled breaker: probe %v err %v", probe, err)
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "net/http: timeout awaiting response headers" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestIsConnectionFailure(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	bg := context.Background()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"header timeout", bg, timeoutErr{}, true},
		{"refused", bg, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{"closed before an answer", bg, io.EOF, true},
		{"reset", bg, fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{"client went away", canceled, timeoutErr{}, false},
		{"context canceled", bg, context.Canceled, false},
		{"blocked address", bg, fmt.Errorf("dial: %w", ErrBlockedAddress), false},
		{"TLS alert from the server", bg, &net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}, false},
		{"certificate not trusted", bg, &tls.CertificateVerificationError{Err: errors.New("unknown authority")}, false},
		{"plain HTTP answer to TLS", bg, tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, false},
	} {
		if got := isConnectionFailure(tc.ctx, tc.err); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// A host that closes connections without answering opens its circuit: the next request fails
// fast without reaching it; after the cool-down one probe reaches it and, answered, closes it.
func TestResolverCircuitBreaker(t *testing.T) {
	var accepted, healthy atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			accepted.Add(1)
			if healthy.Load() == 0 {
				c.Close()
			}
		}
	}
	srv.Start()
	defer srv.Close()
	var opened []bool
	r := newResolver(t, func(o *Options) {
		o.BreakerCooldown = time.Minute
		o.ObserveBreaker = func(_ string, open bool) { opened = append(opened, open) }
	})
	clock := &breakerClock{t: time.Unix(1000, 0)}
	r.breakers.now = clock.now
	ep, _ := r.Endpoint(hostOf(t, srv))
	get := func() (*http.Response, error) {
		return r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "blobs", Reference: "sha256:x", Header: http.Header{}})
	}
	if _, err := get(); err == nil || errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("first request: err %v, want a connection failure", err)
	}
	n := accepted.Load()
	if _, err := get(); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("second request: err %v, want ErrCircuitOpen", err)
	}
	if accepted.Load() != n {
		t.Fatal("the open circuit still let a connection through")
	}
	healthy.Store(1)
	clock.advance(time.Minute)
	resp, err := get()
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	resp.Body.Close()
	if resp, err = get(); err != nil {
		t.Fatalf("after the probe: %v", err)
	}
	resp.Body.Close()
	if fmt.Sprint(opened) != "[true false]" {
		t.Fatalf("breaker events %v", opened)
	}
}

func TestLowSpeedLimit(t *testing.T) {
	newGuard := func() *stallGuard {
		return &stallGuard{dog: watchdog{stall: time.Second, lowSpeedLimit: 10 << 10, lowSpeedTime: 10 * time.Second}}
	}
	// 1 KiB per second of waiting: abandoned when the window ends.
	g := newGuard()
	for i := 1; i <= 10; i++ {
		err := g.checkSpeed(1<<10, time.Second)
		if i < 10 && err != nil {
			t.Fatalf("read %d: abandoned before low_speed_time: %v", i, err)
		}
		if i == 10 && !errors.Is(err, ErrTooSlow) {
			t.Fatalf("read %d: err %v, want ErrTooSlow", i, err)
		}
	}
	// 20 KiB per second: never abandoned, across several windows.
	g = newGuard()
	for i := 0; i < 50; i++ {
		if err := g.checkSpeed(20<<10, time.Second); err != nil {
			t.Fatalf("fast body abandoned at read %d: %v", i, err)
		}
	}
	// A fast window then a slow one: judged per window.
	g = newGuard()
	for i := 0; i < 10; i++ {
		g.checkSpeed(100<<10, time.Second)
	}
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		err = g.checkSpeed(1<<10, time.Second)
	}
	if !errors.Is(err, ErrTooSlow) {
		t.Fatalf("slow window after a fast one: err %v", err)
	}
	// Off.
	g = &stallGuard{dog: watchdog{stall: time.Second}}
	for i := 0; i < 20; i++ {
		if err := g.checkSpeed(1, time.Second); err != nil {
			t.Fatalf("no limit configured, yet: %v", err)
		}
	}
}

package resolver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// ErrCircuitOpen is returned, without any request sent, for a host whose circuit is open:
// it recently failed to answer (no response headers in time, no connection, a download that
// stalled or crawled), and asking again would only make the client wait as long once more.
var ErrCircuitOpen = fmt.Errorf("upstream circuit open: %w", errdefs.ErrUnavailable)

// breakers keeps one circuit per upstream host (as dialled, host:port). One failure opens
// it for the cool-down; then one request, the probe, goes through while the others still
// fail fast; a probe that gets response headers closes it, one that fails opens it again.
type breakers struct {
	cooldown time.Duration
	now      func() time.Time
	// observe, when set, is told when a host's circuit opens (open true) or closes.
	observe func(host string, open bool)

	mu    sync.Mutex
	hosts map[string]*circuit
}

type circuit struct {
	open      bool
	openUntil time.Time
	probing   bool
	cause     error
}

// newBreakers returns nil (no breaker) when cooldown is not positive.
func newBreakers(cooldown time.Duration, observe func(host string, open bool)) *breakers {
	if cooldown <= 0 {
		return nil
	}
	return &breakers{cooldown: cooldown, now: time.Now, observe: observe, hosts: map[string]*circuit{}}
}

// allow says whether a request to host may be sent; probe is set when it is the one request
// let through after the cool-down, whose outcome decides the circuit.
func (b *breakers) allow(host string) (probe bool, err error) {
	if b == nil {
		return false, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.hosts[host]
	switch {
	case c == nil || !c.open:
		return false, nil
	case !c.probing && !b.now().Before(c.openUntil):
		c.probing = true
		return true, nil
	}
	return false, fmt.Errorf("%s (after: %v); retried after %s: %w", host, c.cause, b.cooldown, ErrCircuitOpen)
}

// succeeded records that host answered (response headers arrived).
func (b *breakers) succeeded(ctx context.Context, host string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	c := b.hosts[host]
	wasOpen := c != nil && c.open
	delete(b.hosts, host)
	b.mu.Unlock()
	if wasOpen {
		log.G(ctx).WithField("host", host).Info("upstream circuit closed: the host answers again")
		if b.observe != nil {
			b.observe(host, false)
		}
	}
}

// failed records a failure of host that opens (or keeps open) its circuit.
func (b *breakers) failed(ctx context.Context, host string, cause error) {
	if b == nil {
		return
	}
	b.mu.Lock()
	c := b.hosts[host]
	if c == nil {
		c = &circuit{}
		b.hosts[host] = c
	}
	opened := !c.open
	c.open, c.probing, c.cause = true, false, cause
	c.openUntil = b.now().Add(b.cooldown)
	b.mu.Unlock()
	entry := log.G(ctx).WithFields(log.Fields{"host": host, "cooldown": b.cooldown}).WithError(cause)
	if !opened {
		entry.Warn("upstream circuit stays open: the probe failed")
		return
	}
	entry.Warn("upstream circuit open: requests to this host fail fast until a probe succeeds")
	if b.observe != nil {
		b.observe(host, true)
	}
}

// probeDone lets another request probe when the probe ended without a verdict (the client
// went away, the request was refused before it was sent).
func (b *breakers) probeDone(host string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	if c := b.hosts[host]; c != nil {
		c.probing = false
	}
	b.mu.Unlock()
}

// isConnectionFailure says whether err, from sending a request, means the host did not
// answer: no connection, no TLS handshake or no response headers in time, or the connection
// closed before an answer. It is not one when the caller's own context ended, nor for the
// daemon's own refusals (blocked address, redirect loop) or TLS verification errors, which
// are configuration, not the host's health.
func isConnectionFailure(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errdefs.IsPermissionDenied(err) {
		return false
	}
	var (
		verr    *tls.CertificateVerificationError
		recErr  tls.RecordHeaderError
		unknown x509.UnknownAuthorityError
		nameErr x509.HostnameError
	)
	if errors.As(err, &verr) || errors.As(err, &recErr) || errors.As(err, &unknown) || errors.As(err, &nameErr) {
		return false
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return true
	}
	var operr *net.OpError
	if errors.As(err, &operr) {
		// "remote error"/"local error": a TLS alert (a refused client certificate), not a
		// host that does not answer.
		return operr.Op != "remote error" && operr.Op != "local error"
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		// net/http's unexported errServerClosedIdle: the connection closed before an answer
		// (on a fresh connection, or again on the retry of a reused one).
		strings.Contains(err.Error(), "server closed idle connection")
}

package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/internal/cluster"
)

// ErrOwnBlob is FetchBlob's answer when this node owns the digest: it asks the registry.
var ErrOwnBlob = fmt.Errorf("this node owns the blob: %w", errdefs.ErrNotFound)

// Outcome names what a FetchBlob (or the body it returned) came to, for the metrics.
type Outcome string

const (
	// OutcomeServed: the owner sent the whole blob.
	OutcomeServed Outcome = "served"
	// OutcomeRefused: the owner answered about the content (401, 403, 404: the client may
	// not read it, or the registry has no such blob); the peer is fine.
	OutcomeRefused Outcome = "refused"
	// OutcomeFailed: no connection, an error status, an unsigned answer, or no first byte in
	// time; the peer is marked down.
	OutcomeFailed Outcome = "failed"
	// OutcomeStalled: the owner stopped sending midway; the peer is marked down.
	OutcomeStalled Outcome = "stalled"
)

// ClientOptions configure a Client.
type ClientOptions struct {
	Members *cluster.Membership
	Auth    *Auth
	// ConnectTimeout bounds the TCP connection and the TLS handshake to a peer.
	ConnectTimeout time.Duration
	// StallTimeout bounds every wait for a byte from a peer: the answer's headers and
	// first byte, and then each read.
	StallTimeout time.Duration
	// Observe, when set, is told the outcome of each peer fetch.
	Observe func(Outcome)
}

// Client fetches blobs from their owners for the mirror. It has its own HTTP client and
// timeouts, short ones, separate from the registry's: a peer is either there at once or
// skipped.
type Client struct {
	opts ClientOptions
	http *http.Client
}

// NewClient returns a Client.
func NewClient(opts ClientOptions) (*Client, error) {
	if opts.Members == nil || opts.Auth == nil || opts.ConnectTimeout <= 0 || opts.StallTimeout <= 0 {
		return nil, fmt.Errorf("peer client needs membership, authentication and positive timeouts: %w", errdefs.ErrInvalidArgument)
	}
	dialer := &net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		DialContext:           dialer.DialContext,
		TLSClientConfig:       opts.Auth.clientTLS,
		TLSHandshakeTimeout:   opts.ConnectTimeout,
		ResponseHeaderTimeout: opts.StallTimeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		// Peers are on the node network: never through a proxy from the environment.
		Proxy: nil,
	}
	return &Client{opts: opts, http: &http.Client{
		Transport: transport,
		// A peer answers or refuses; it never sends the asking node elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

func (c *Client) observe(o Outcome) {
	if c.opts.Observe != nil {
		c.opts.Observe(o)
	}
}

// FetchBlob asks the owner of dgst for the blob (registry and repository as the client
// named them; authorization is the client's, forwarded so that the owner can check its
// right to a private blob). It returns the body and the size (-1 when unknown) once the
// first byte is in hand; any error means "ask the registry". The body's Read fails when the
// owner stops sending for StallTimeout; the owner is then marked down.
func (c *Client) FetchBlob(ctx context.Context, registry, repository string, dgst digest.Digest, authorization string) (io.ReadCloser, int64, error) {
	owner, self := c.opts.Members.Owner(dgst.String())
	if self || owner == "" {
		return nil, -1, ErrOwnBlob
	}
	u := url.URL{
		Scheme:   c.opts.Auth.scheme(),
		Host:     owner,
		Path:     BlobsPath + dgst.String(),
		RawQuery: url.Values{"ns": {registry}, "repo": {repository}}.Encode(),
	}
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return nil, -1, err
	}
	nonce, err := c.opts.Auth.signRequest(req, authorization)
	if err != nil {
		cancel()
		return nil, -1, err
	}
	log := log.G(ctx).WithFields(log.Fields{"peer": owner, "digest": dgst})
	fail := func(outcome Outcome, err error) (io.ReadCloser, int64, error) {
		cancel()
		c.observe(outcome)
		if outcome != OutcomeRefused {
			c.opts.Members.MarkDown(owner)
			log.WithError(err).Warn("peer failed; fetching from the registry and leaving the peer out for a while")
		} else {
			log.WithError(err).Debug("peer refused the blob; fetching from the registry")
		}
		return nil, -1, err
	}

	// One watchdog for every wait: until the first byte, and then between reads.
	watch := newWatchdog(c.opts.StallTimeout, cancel)
	resp, err := c.http.Do(req)
	if err != nil {
		watch.stop()
		if watch.fired() {
			err = fmt.Errorf("no answer within %s", c.opts.StallTimeout)
		}
		return fail(OutcomeFailed, err)
	}
	if err := c.opts.Auth.verifyResponse(nonce, resp); err != nil {
		watch.stop()
		resp.Body.Close()
		return fail(OutcomeFailed, fmt.Errorf("%w (status %d)", err, resp.StatusCode))
	}
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusNotFound:
		watch.stop()
		resp.Body.Close()
		return fail(OutcomeRefused, fmt.Errorf("peer answered %d", resp.StatusCode))
	default:
		watch.stop()
		resp.Body.Close()
		return fail(OutcomeFailed, fmt.Errorf("peer answered %d", resp.StatusCode))
	}
	body := &peerBody{body: resp.Body, watch: watch, cancel: cancel, onEnd: func(o Outcome, err error) {
		c.observe(o)
		if o == OutcomeStalled {
			c.opts.Members.MarkDown(owner)
			log.WithError(err).Warn("peer stalled mid-blob; leaving it out for a while")
		}
	}}
	if resp.ContentLength == 0 {
		return body, 0, nil
	}
	// The first byte decides between the peer and the registry: until it is here, going to
	// the registry costs nothing.
	var first [1]byte
	n, err := io.ReadFull(body.body, first[:])
	if err != nil || n == 0 {
		watch.stop()
		resp.Body.Close()
		if watch.fired() {
			err = fmt.Errorf("no first byte within %s", c.opts.StallTimeout)
		}
		return fail(OutcomeFailed, err)
	}
	watch.progress()
	body.pending = first[:1]
	return body, resp.ContentLength, nil
}

// peerBody is a peer's answer as the fill reads it: a stall cancels the request and turns
// into an error that names it.
type peerBody struct {
	body    io.ReadCloser
	pending []byte
	watch   *watchdog
	cancel  context.CancelFunc
	onEnd   func(Outcome, error)
	once    sync.Once
}

func (b *peerBody) Read(p []byte) (int, error) {
	if len(b.pending) > 0 {
		n := copy(p, b.pending)
		b.pending = b.pending[n:]
		return n, nil
	}
	n, err := b.body.Read(p)
	if n > 0 {
		b.watch.progress()
	}
	switch {
	case err == io.EOF:
		b.end(OutcomeServed, nil)
	case err != nil && b.watch.fired():
		err = fmt.Errorf("peer sent nothing for %s: %w", b.watch.after, errdefs.ErrUnavailable)
		b.end(OutcomeStalled, err)
	case err != nil:
		b.end(OutcomeStalled, err)
	}
	return n, err
}

func (b *peerBody) end(o Outcome, err error) {
	b.once.Do(func() {
		b.watch.stop()
		b.onEnd(o, err)
	})
}

func (b *peerBody) Close() error {
	b.once.Do(func() { b.watch.stop() })
	b.cancel()
	return b.body.Close()
}

// watchdog calls cancel when progress is not reported for after.
type watchdog struct {
	after time.Duration
	timer *time.Timer
	mu    sync.Mutex
	fire  bool
}

func newWatchdog(after time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{after: after}
	w.timer = time.AfterFunc(after, func() {
		w.mu.Lock()
		w.fire = true
		w.mu.Unlock()
		cancel()
	})
	return w
}

func (w *watchdog) progress() { w.timer.Reset(w.after) }
func (w *watchdog) stop()     { w.timer.Stop() }

func (w *watchdog) fired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fire
}

// IsOwnBlob reports whether err is FetchBlob's "this node owns it".
func IsOwnBlob(err error) bool { return errors.Is(err, ErrOwnBlob) }

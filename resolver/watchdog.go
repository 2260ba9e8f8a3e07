package resolver

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// ErrStalled is returned by a response body that received no byte for the stall timeout.
var ErrStalled = fmt.Errorf("upstream stalled: %w", errdefs.ErrUnavailable)

// ErrTooSlow is returned by a response body that arrived below the low-speed limit for the
// low-speed time (as curl's --speed-limit/--speed-time).
var ErrTooSlow = fmt.Errorf("upstream too slow: %w", errdefs.ErrUnavailable)

// watchdog is what a body watchdog enforces: a stall timeout (no byte at all) and a
// low-speed limit (fewer than lowSpeedLimit bytes per second over lowSpeedTime).
type watchdog struct {
	stall         time.Duration
	lowSpeedLimit int64
	lowSpeedTime  time.Duration
}

// stallGuard abandons a body that stalls or crawls. Only the time spent waiting inside Read
// counts, so a slow reader on our side does not count against the upstream: the stall timer
// runs while a Read waits, and the speed is the bytes received over the time spent waiting
// for them. onAbort is told why the body was abandoned (to open the host's circuit).
type stallGuard struct {
	body    io.ReadCloser
	dog     watchdog
	cancel  context.CancelFunc
	onAbort func(error)
	timer   *time.Timer

	// The current speed window: bytes received and time waited since it began. Read is
	// not called concurrently, so these need no lock.
	windowBytes  int64
	windowWaited time.Duration

	mu      sync.Mutex
	stalled bool
}

func newStallGuard(body io.ReadCloser, dog watchdog, cancel context.CancelFunc, onAbort func(error)) io.ReadCloser {
	g := &stallGuard{body: body, dog: dog, cancel: cancel, onAbort: onAbort}
	g.timer = time.AfterFunc(dog.stall, g.fire)
	g.timer.Stop()
	return g
}

func (g *stallGuard) fire() {
	g.mu.Lock()
	g.stalled = true
	g.mu.Unlock()
	g.cancel()
}

func (g *stallGuard) Read(p []byte) (int, error) {
	start := time.Now()
	g.timer.Reset(g.dog.stall)
	n, err := g.body.Read(p)
	g.timer.Stop()
	if err != nil && err != io.EOF {
		g.mu.Lock()
		stalled := g.stalled
		g.mu.Unlock()
		if stalled {
			err := fmt.Errorf("no byte for %s: %w", g.dog.stall, ErrStalled)
			g.abort(err)
			return n, err
		}
		return n, fmt.Errorf("read upstream body: %w: %w", err, errdefs.ErrUnavailable)
	}
	if err == nil {
		if serr := g.checkSpeed(int64(n), time.Since(start)); serr != nil {
			g.cancel()
			g.abort(serr)
			return n, serr
		}
	}
	return n, err
}

// checkSpeed adds one Read to the window; when the window has lasted lowSpeedTime it is
// judged and a new one begins.
func (g *stallGuard) checkSpeed(n int64, waited time.Duration) error {
	if g.dog.lowSpeedLimit <= 0 || g.dog.lowSpeedTime <= 0 {
		return nil
	}
	g.windowBytes += n
	g.windowWaited += waited
	if g.windowWaited < g.dog.lowSpeedTime {
		return nil
	}
	rate := float64(g.windowBytes) / g.windowWaited.Seconds()
	if rate < float64(g.dog.lowSpeedLimit) {
		return fmt.Errorf("%d bytes in %s, under %d bytes/s (upstream.low_speed_limit) for upstream.low_speed_time: %w",
			g.windowBytes, g.windowWaited.Round(time.Millisecond), g.dog.lowSpeedLimit, ErrTooSlow)
	}
	g.windowBytes, g.windowWaited = 0, 0
	return nil
}

func (g *stallGuard) abort(err error) {
	if g.onAbort != nil {
		g.onAbort(err)
		g.onAbort = nil
	}
}

func (g *stallGuard) Close() error {
	g.timer.Stop()
	err := g.body.Close()
	g.cancel()
	return err
}

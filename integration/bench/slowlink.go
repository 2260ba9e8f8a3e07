package bench

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// LinkProfile is an emulated network link: a bandwidth shared by every connection in each
// direction (like one physical link, not a per-connection limit), and a one-way delay.
type LinkProfile struct {
	// BitsPerSecond is the rate of each direction.
	BitsPerSecond int64
	// Delay is added to every byte in each direction (so a round trip costs 2×Delay on top
	// of the serialisation time).
	Delay time.Duration
}

// relayChunk is the unit the link forwards; small enough that pacing is smooth at 200 Mbit/s
// (32 KiB is 1.3 ms of link time).
const relayChunk = 32 << 10

// queuedChunks bounds what a direction holds for one connection: the emulated link's
// buffer. 16×32 KiB is about two bandwidth-delay products at 200 Mbit/s and 10 ms.
const queuedChunks = 16

// SlowLink is a user-space TCP relay on 127.0.0.1 that emulates a LinkProfile in front of a
// target address. This kernel has no netem, and a tc qdisc on a veth pair would need
// addresses outside loopback; a relay keeps the benchmark on loopback and adds the delay
// too. The rate is enforced by a shared transmit clock per direction, the delay by holding
// each chunk until it is due.
type SlowLink struct {
	Addr    string // "127.0.0.1:port" to connect to instead of the target
	Target  string
	Profile LinkProfile

	ln   net.Listener
	down *linkClock // target → client
	up   *linkClock // client → target

	// Downstream counts the bytes delivered from the target to clients.
	downstream atomic.Int64

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// linkClock is one direction of the link: the time at which it finishes sending what was
// queued so far.
type linkClock struct {
	mu   sync.Mutex
	busy time.Time
	bps  int64
}

// reserve queues n bytes and returns when their last bit has left the link.
func (c *linkClock) reserve(n int) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if c.busy.Before(now) {
		c.busy = now
	}
	if c.bps > 0 {
		c.busy = c.busy.Add(time.Duration(int64(n) * 8 * int64(time.Second) / c.bps))
	}
	return c.busy
}

// StartSlowLink listens on a free loopback port and relays every connection to target
// through the emulated link.
func StartSlowLink(target string, p LinkProfile) (*SlowLink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &SlowLink{
		Addr:    ln.Addr().String(),
		Target:  target,
		Profile: p,
		ln:      ln,
		down:    &linkClock{bps: p.BitsPerSecond},
		up:      &linkClock{bps: p.BitsPerSecond},
		conns:   map[net.Conn]struct{}{},
	}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// DownstreamBytes is how many bytes the target has sent to clients through the link.
func (l *SlowLink) DownstreamBytes() int64 { return l.downstream.Load() }

// Close stops accepting, cuts every relayed connection and waits for the relays to end.
func (l *SlowLink) Close() error {
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	err := l.ln.Close()
	l.wg.Wait()
	return err
}

func (l *SlowLink) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *SlowLink) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

func (l *SlowLink) accept() {
	defer l.wg.Done()
	for {
		client, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.serve(client)
		}()
	}
}

func (l *SlowLink) serve(client net.Conn) {
	if !l.track(client) {
		client.Close()
		return
	}
	defer l.untrack(client)
	defer client.Close()
	// The TCP handshake over the emulated link costs one round trip before any data moves.
	time.Sleep(2 * l.Profile.Delay)
	server, err := net.DialTimeout("tcp", l.Target, 5*time.Second)
	if err != nil {
		return
	}
	if !l.track(server) {
		server.Close()
		return
	}
	defer l.untrack(server)
	defer server.Close()
	done := make(chan struct{}, 2)
	go func() { l.pipe(server, client, l.up, nil); done <- struct{}{} }()
	go func() { l.pipe(client, server, l.down, &l.downstream); done <- struct{}{} }()
	<-done
	<-done
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst through one direction of the link: every chunk is stamped with the
// time the link has sent it plus the delay, and written no earlier. EOF is passed on as a
// half-close once everything before it was delivered.
func (l *SlowLink) pipe(dst, src net.Conn, clock *linkClock, counter *atomic.Int64) {
	queue := make(chan chunk, queuedChunks)
	go func() {
		defer close(queue)
		for {
			buf := make([]byte, relayChunk)
			n, err := src.Read(buf)
			if n > 0 {
				queue <- chunk{b: buf[:n], due: clock.reserve(n).Add(l.Profile.Delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	failed := false
	for c := range queue {
		if failed {
			continue // drain so the reader can finish
		}
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		n, err := dst.Write(c.b)
		if counter != nil {
			counter.Add(int64(n))
		}
		if err != nil {
			failed = true
			src.Close() // unblock the reader
		}
	}
	if failed {
		return
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	} else {
		dst.Close()
	}
}

package cluster

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Options configure a Membership.
type Options struct {
	// Self is this node's address as the peer lists name it (host:port). It always takes
	// part in the placement: when it owns a digest, this node goes to the registry itself.
	Self string
	// Static are peers (host:port) listed in the configuration.
	Static []string
	// DNSName, when set, is resolved every DNSInterval; each address with DNSPort is a peer.
	DNSName     string
	DNSPort     int
	DNSInterval time.Duration
	// DNSServer is "host:port" of the one server to ask; empty: the system resolver.
	DNSServer string
	// DownFor is how long a peer that failed stays out of the placement.
	DownFor time.Duration
	// Now is the clock; tests set it.
	Now func() time.Time
	// LookupIP replaces the DNS lookup; tests set it.
	LookupIP func(ctx context.Context, name string) ([]net.IP, error)
}

// State is a peer's state as shown by stats and the metrics.
type State string

const (
	StateSelf State = "self"
	StateUp   State = "up"
	StateDown State = "down"
)

// PeerState is one peer as the placement sees it now.
type PeerState struct {
	Address string
	State   State
	// DownUntil is when a down peer is tried again.
	DownUntil time.Time
}

// Membership knows the peers and which of them are down. It is safe for concurrent use.
type Membership struct {
	opts   Options
	lookup func(ctx context.Context, name string) ([]net.IP, error)

	mu     sync.Mutex
	static []string
	dns    []string
	down   map[string]time.Time
}

// New returns a Membership with the static peers; DNS peers appear once Refresh or Run
// resolved the name.
func New(opts Options) (*Membership, error) {
	if opts.Self == "" {
		return nil, fmt.Errorf("cluster membership needs this node's address: %w", errdefs.ErrInvalidArgument)
	}
	if opts.DNSName != "" && (opts.DNSPort <= 0 || opts.DNSInterval <= 0) {
		return nil, fmt.Errorf("cluster DNS discovery needs a port and an interval: %w", errdefs.ErrInvalidArgument)
	}
	if opts.DownFor <= 0 {
		opts.DownFor = 30 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := &Membership{opts: opts, lookup: opts.LookupIP, down: map[string]time.Time{}}
	if m.lookup == nil {
		m.lookup = dnsLookup(opts.DNSServer)
	}
	for _, a := range opts.Static {
		m.static = append(m.static, normalize(a))
	}
	m.opts.Self = normalize(opts.Self)
	return m, nil
}

// dnsLookup resolves names with the system resolver, or by asking server alone.
func dnsLookup(server string) func(ctx context.Context, name string) ([]net.IP, error) {
	r := net.DefaultResolver
	if server != "" {
		r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		}}
	}
	return func(ctx context.Context, name string) ([]net.IP, error) {
		return r.LookupIP(ctx, "ip", name)
	}
}

// normalize writes host:port the one way, so that "[::1]:5057" and a resolved ::1 match.
func normalize(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil {
		host = ip.String()
	}
	return net.JoinHostPort(host, port)
}

// Self is this node's address.
func (m *Membership) Self() string { return m.opts.Self }

// Run resolves the DNS name at once and then every DNSInterval until ctx ends. Without a
// DNS name it returns at once.
func (m *Membership) Run(ctx context.Context) {
	if m.opts.DNSName == "" {
		return
	}
	t := time.NewTicker(m.opts.DNSInterval)
	defer t.Stop()
	for {
		if err := m.Refresh(ctx); err != nil && ctx.Err() == nil {
			log.G(ctx).WithError(err).WithField("dns_name", m.opts.DNSName).Warn("cannot resolve the peers' DNS name; keeping the last known peers")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Refresh resolves the DNS name once. A failed lookup keeps the peers known before: a DNS
// hiccup must not make every node the owner of everything.
func (m *Membership) Refresh(ctx context.Context) error {
	if m.opts.DNSName == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.opts.DNSInterval)
	defer cancel()
	ips, err := m.lookup(ctx, m.opts.DNSName)
	if err != nil {
		return err
	}
	port := strconv.Itoa(m.opts.DNSPort)
	peers := make([]string, 0, len(ips))
	for _, ip := range ips {
		peers = append(peers, net.JoinHostPort(ip.String(), port))
	}
	sort.Strings(peers)
	m.mu.Lock()
	changed := fmt.Sprint(peers) != fmt.Sprint(m.dns)
	m.dns = peers
	m.mu.Unlock()
	if changed {
		log.G(ctx).WithField("peers", peers).Info("peers from DNS changed")
	}
	return nil
}

// allLocked is every known peer, self included, sorted and without duplicates. m.mu is held.
func (m *Membership) allLocked() []string {
	seen := map[string]bool{m.opts.Self: true}
	all := []string{m.opts.Self}
	for _, list := range [][]string{m.static, m.dns} {
		for _, p := range list {
			if !seen[p] {
				seen[p] = true
				all = append(all, p)
			}
		}
	}
	sort.Strings(all)
	return all
}

// Owner is the peer that owns key among the peers that are up (self always is); self
// reports that it is this node.
func (m *Membership) Owner(key string) (addr string, self bool) {
	now := m.opts.Now()
	m.mu.Lock()
	var live []string
	for _, p := range m.allLocked() {
		if until, ok := m.down[p]; ok {
			if now.Before(until) {
				continue
			}
			delete(m.down, p)
		}
		live = append(live, p)
	}
	m.mu.Unlock()
	owner := Owner(live, key)
	return owner, owner == m.opts.Self
}

// MarkDown leaves addr out of the placement for DownFor: its keys go to their next owner
// (rendezvous hashing moves only those), and it is tried again afterwards.
func (m *Membership) MarkDown(addr string) {
	addr = normalize(addr)
	if addr == m.opts.Self {
		return
	}
	m.mu.Lock()
	m.down[addr] = m.opts.Now().Add(m.opts.DownFor)
	m.mu.Unlock()
}

// Peers lists every known peer with its state, sorted by address.
func (m *Membership) Peers() []PeerState {
	now := m.opts.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []PeerState
	for _, p := range m.allLocked() {
		st := PeerState{Address: p, State: StateUp}
		switch until, down := m.down[p]; {
		case p == m.opts.Self:
			st.State = StateSelf
		case down && now.Before(until):
			st.State, st.DownUntil = StateDown, until
		}
		out = append(out, st)
	}
	return out
}

package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/internal/cluster"
	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/internal/testpki"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// blobRegistry serves blobs of repository app and counts the GETs of each. A blob in hold is
// sent half, then the rest once hold is closed.
type blobRegistry struct {
	blobs map[digest.Digest][]byte
	// token, when set, is the only Authorization the registry accepts.
	token string

	mu     sync.Mutex
	gets   map[digest.Digest]int
	ranges []string
	asked  chan digest.Digest
	hold   map[digest.Digest]chan struct{}
}

func (u *blobRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d := digest.Digest(strings.TrimPrefix(r.URL.Path, "/v2/app/blobs/"))
	body, ok := u.blobs[d]
	if !ok {
		http.NotFound(w, r)
		return
	}
	if u.token != "" && r.Header.Get("Authorization") != u.token {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://auth.invalid/token"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	u.mu.Lock()
	if r.Method == http.MethodGet {
		u.gets[d]++
	}
	hold := u.hold[d]
	if rng := r.Header.Get("Range"); rng != "" {
		u.ranges = append(u.ranges, rng)
		var from int
		if _, err := fmt.Sscanf(rng, "bytes=%d-", &from); err == nil && from < len(body) {
			u.mu.Unlock()
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(body)-1, len(body)))
			w.Header().Set("Content-Length", fmt.Sprint(len(body)-from))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(body[from:])
			return
		}
	}
	u.mu.Unlock()
	if u.asked != nil && r.Method == http.MethodGet {
		u.asked <- d
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method != http.MethodGet {
		return
	}
	if hold != nil {
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		<-hold
		body = body[len(body)/2:]
	}
	w.Write(body)
}

func (u *blobRegistry) count(d digest.Digest) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.gets[d]
}

// freePort returns a loopback address nothing listens on (the peers' addresses must be known
// before the daemons start, as in a real configuration).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// peerNode is one daemon of a loopback cluster.
type peerNode struct {
	srv  *Server
	peer string
}

// startPeerNodes starts one daemon per peer address, all listing all of them, with the
// peer credentials auth sets.
func startPeerNodes(t *testing.T, peers []string, auth func(*config.PeerConfig)) []*peerNode {
	t.Helper()
	var nodes []*peerNode
	for _, addr := range peers {
		// Generous under the race detector: these tests are about sharing, not timeouts.
		nodes = append(nodes, startPeerNode(t, addr, peers, auth, 10*time.Second))
	}
	return nodes
}

// withKey sets the shared key file.
func withKey(keyFile string) func(*config.PeerConfig) {
	return func(p *config.PeerConfig) { p.KeyFile = keyFile }
}

// startPeerNode starts a daemon whose peer listener is on addr, with the peer list peers.
func startPeerNode(t *testing.T, addr string, peers []string, auth func(*config.PeerConfig), stall time.Duration) *peerNode {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "bc-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	cfg := config.Default()
	cfg.Root = t.TempDir()
	cfg.Mirror.Address = "127.0.0.1:0"
	cfg.Metrics.Address = "127.0.0.1:0"
	cfg.Admin.Address = filepath.Join(sockDir, "admin.sock")
	cfg.Upstream.AllowedRegistries = []string{"127.0.0.1:*"}
	cfg.Upstream.PlainHTTP = []string{"127.0.0.1:*"}
	cfg.Upstream.AllowPrivateNetworks = []string{"127.0.0.1:*"}
	cfg.Peer.Enabled = true
	cfg.Peer.Listen = addr
	cfg.Peer.StaticPeers = peers
	auth(&cfg.Peer)
	cfg.Peer.StallTimeout = config.Duration(stall)
	cfg.Peer.ConnectTimeout = config.Duration(2 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("node %s: %v", addr, err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("node %s Serve: %v", addr, err)
		}
	})
	return &peerNode{srv: srv, peer: srv.PeerAddress()}
}

func writeKey(t *testing.T) string {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	f := filepath.Join(t.TempDir(), "peer.key")
	if err := os.WriteFile(f, []byte(fmt.Sprintf("%x\n", key)), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// blobsOwnedBy makes random blobs until it has n owned by each peer.
func blobsOwnedBy(peers []string, n, size int) map[string][][]byte {
	out := map[string][][]byte{}
	for done := 0; done < len(peers); {
		b := make([]byte, size)
		rand.Read(b)
		owner := cluster.Owner(peers, digest.FromBytes(b).String())
		if len(out[owner]) < n {
			out[owner] = append(out[owner], b)
			if len(out[owner]) == n {
				done++
			}
		}
	}
	return out
}

// waitStored waits until the fill of d is committed in srv's store.
func waitStored(t *testing.T, srv *Server, d digest.Digest) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := srv.store.Info(context.Background(), d); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("blob %s never committed", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func getBlob(t *testing.T, mirrorAddr, ns string, d digest.Digest) ([]byte, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: time.Minute}).Get("http://" + mirrorAddr + "/v2/app/blobs/" + d.String() + "?ns=" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s from %s: %d %v", d, mirrorAddr, resp.StatusCode, err)
	}
	return body, resp.Header.Get(traffic.ResultHeader)
}

// Two daemons on loopback share blobs through the tier: each blob is fetched from the
// registry once, by its owner; the other node gets it from the owner (result "peer"), keeps
// its own verified copy (a hit next time), and stats count the bytes by source.
func TestTwoNodesShareBlobs(t *testing.T) {
	peers := []string{freePort(t), freePort(t)}
	owned := blobsOwnedBy(peers, 2, 300<<10)
	up := &blobRegistry{blobs: map[digest.Digest][]byte{}, gets: map[digest.Digest]int{}}
	for _, list := range owned {
		for _, b := range list {
			up.blobs[digest.FromBytes(b)] = b
		}
	}
	reg := httptest.NewServer(up)
	defer reg.Close()
	ns := strings.TrimPrefix(reg.URL, "http://")
	nodes := startPeerNodes(t, peers, withKey(writeKey(t)))

	for i, asker := range nodes {
		owner := nodes[1-i]
		for _, b := range owned[owner.peer] {
			d := digest.FromBytes(b)
			// The owner's own miss goes to the registry; the asker's to the owner.
			if got, res := getBlob(t, owner.srv.MirrorAddress(), ns, d); !bytes.Equal(got, b) || res != string(traffic.Miss) {
				t.Fatalf("owner: result %q, body equal %v", res, bytes.Equal(got, b))
			}
			if got, res := getBlob(t, asker.srv.MirrorAddress(), ns, d); !bytes.Equal(got, b) || res != string(traffic.Peer) {
				t.Fatalf("asker: result %q, want %q; body equal %v", res, traffic.Peer, bytes.Equal(got, b))
			}
			waitStored(t, asker.srv, d)
			if got, res := getBlob(t, asker.srv.MirrorAddress(), ns, d); !bytes.Equal(got, b) || res != string(traffic.Hit) {
				t.Fatalf("asker again: result %q, want a hit from its own copy", res)
			}
			if n := up.count(d); n != 1 {
				t.Fatalf("registry served blob %s %d times, want once", d, n)
			}
		}
	}
	st := adminStats(t, nodes[0].srv.AdminAddress())
	if st.Total.PeerMisses != 2 || st.Total.BytesFromPeer != 2*300<<10 {
		t.Fatalf("stats: %d peer misses, %d bytes from peers; want 2 and %d", st.Total.PeerMisses, st.Total.BytesFromPeer, 2*300<<10)
	}
	// Served from its store, or from its fill when the peer asked before the commit.
	if served := st.Peer.BytesFromCache + st.Peer.BytesFromUpstream; st.Peer.Requests != 2 || served != 2*300<<10 {
		t.Fatalf("stats: served %d requests, %d bytes to peers; want 2, %d", st.Peer.Requests, served, 2*300<<10)
	}
	states := map[string]string{}
	for _, p := range st.Peers {
		states[p.Address] = p.State
	}
	if states[peers[0]] != "self" || states[peers[1]] != "up" {
		t.Fatalf("peers in stats: %v", st.Peers)
	}

	// /metrics agrees: bytes by source, peers by state, fetch outcomes.
	fams := scrapeMetrics(t, http.DefaultClient, "http://"+nodes[0].srv.MetricsAddress()+"/metrics")
	if got := familySum(fams, "containerd_blobcache_served_bytes_total", map[string]string{"surface": "mirror", "source": "peer"}); got != 2*300<<10 {
		t.Errorf("served_bytes_total{source=peer} = %v, want %d", got, 2*300<<10)
	}
	if got := familySum(fams, "containerd_blobcache_peer_fetches_total", map[string]string{"outcome": "served"}); got != 2 {
		t.Errorf("peer_fetches_total{outcome=served} = %v, want 2", got)
	}
	gauge := map[string]float64{}
	for _, m := range fams["containerd_blobcache_peers"].GetMetric() {
		gauge[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
	}
	if gauge["self"] != 1 || gauge["up"] != 1 || gauge["down"] != 0 {
		t.Errorf("containerd_blobcache_peers by state: %v", gauge)
	}
}

// Both nodes want the same cold blob at once: the owner fetches it from the registry once
// and streams it to the other node while it downloads (the registry holds the second half
// until both requests are under way).
func TestTwoNodesColdAtOnceFetchOnce(t *testing.T) {
	peers := []string{freePort(t), freePort(t)}
	owned := blobsOwnedBy(peers, 1, 1<<20)
	b := owned[peers[1]][0]
	d := digest.FromBytes(b)
	release := make(chan struct{})
	up := &blobRegistry{
		blobs: map[digest.Digest][]byte{d: b}, gets: map[digest.Digest]int{},
		hold: map[digest.Digest]chan struct{}{d: release}, asked: make(chan digest.Digest, 4),
	}
	reg := httptest.NewServer(up)
	defer reg.Close()
	defer close(release)
	ns := strings.TrimPrefix(reg.URL, "http://")
	nodes := startPeerNodes(t, peers, withKey(writeKey(t)))

	type answer struct {
		body   []byte
		result string
	}
	answers := make(chan answer, 2)
	get := func(n *peerNode) {
		resp, err := http.Get("http://" + n.srv.MirrorAddress() + "/v2/app/blobs/" + d.String() + "?ns=" + ns)
		if err != nil {
			answers <- answer{}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		answers <- answer{body, resp.Header.Get(traffic.ResultHeader)}
	}
	// The non-owner asks first: its request reaches the registry through the owner.
	go get(nodes[0])
	<-up.asked
	go get(nodes[1])
	// The owner's own request joins the fill in progress; wait for it to be there.
	for deadline := time.Now().Add(30 * time.Second); nodes[1].srv.store.FillStats().Readers < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("the owner's request never joined the fill: %+v", nodes[1].srv.store.FillStats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	release <- struct{}{}
	results := map[string]bool{}
	for range 2 {
		a := <-answers
		if !bytes.Equal(a.body, b) {
			t.Fatalf("a node got %d bytes, not the blob", len(a.body))
		}
		results[a.result] = true
	}
	if !results[string(traffic.Peer)] || !results[string(traffic.Miss)] {
		t.Fatalf("results %v, want one peer and one miss", results)
	}
	if n := up.count(d); n != 1 {
		t.Fatalf("registry served the blob %d times, want once", n)
	}
}

// The tier over mutual TLS alone, and with the key as well: a blob owned by the other node
// comes from it, and the registry serves it once.
func TestTwoNodesShareOverTLS(t *testing.T) {
	files, err := testpki.Write(t.TempDir(), net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writeKey(t)
	for _, c := range []struct {
		name string
		key  string
	}{{"tls", ""}, {"tls and key", keyFile}} {
		t.Run(c.name, func(t *testing.T) {
			peers := []string{freePort(t), freePort(t)}
			b := blobsOwnedBy(peers, 1, 200<<10)[peers[1]][0]
			d := digest.FromBytes(b)
			up := &blobRegistry{blobs: map[digest.Digest][]byte{d: b}, gets: map[digest.Digest]int{}}
			reg := httptest.NewServer(up)
			defer reg.Close()
			ns := strings.TrimPrefix(reg.URL, "http://")
			nodes := startPeerNodes(t, peers, func(p *config.PeerConfig) {
				p.TLSCertFile, p.TLSKeyFile, p.TLSCAFile, p.KeyFile = files.Cert, files.Key, files.CA, c.key
			})
			if got, res := getBlob(t, nodes[0].srv.MirrorAddress(), ns, d); !bytes.Equal(got, b) || res != string(traffic.Peer) {
				t.Fatalf("result %q, want %q", res, traffic.Peer)
			}
			if n := up.count(d); n != 1 {
				t.Fatalf("registry served the blob %d times", n)
			}
		})
	}
}

package server

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/internal/cluster"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/peer"
)

// A peer that fails in any way costs a pull nothing: the blob comes from the registry, in
// full and correct, and the peer is marked down. Each case is a node whose only other peer
// is a stand-in owning the blob.
func TestFailingPeerFallsBackToRegistry(t *testing.T) {
	const size = 512 << 10
	keyFile := writeKey(t)
	auth, err := peer.LoadAuth(peer.AuthOptions{KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	otherKey := writeKey(t)
	otherAuth, err := peer.LoadAuth(peer.AuthOptions{KeyFile: otherKey})
	if err != nil {
		t.Fatal(err)
	}
	// stop ends the handlers that hang, at the end of the test.
	stop := make(chan struct{})
	var stopOnce sync.Once
	t.Cleanup(func() { stopOnce.Do(func() { close(stop) }) })

	signedPeer := func(a *peer.Auth, h http.HandlerFunc) string {
		srv, err := peer.NewServer(a, h)
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(srv)
		t.Cleanup(ts.Close)
		t.Cleanup(func() { stopOnce.Do(func() { close(stop) }) })
		return strings.TrimPrefix(ts.URL, "http://")
	}
	// The blob a stand-in serves is looked up by digest in the registry's blobs.
	up := &blobRegistry{blobs: map[digest.Digest][]byte{}, gets: map[digest.Digest]int{}}
	blobOf := func(r *http.Request) []byte {
		return up.blobs[digest.Digest(r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:])]
	}

	// sendThird answers with the blob's length and its first third, then does then.
	sendThird := func(then func()) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			b := blobOf(r)
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.WriteHeader(http.StatusOK)
			w.Write(b[:len(b)/3])
			w.(http.Flusher).Flush()
			then()
		}
	}

	cases := []struct {
		name string
		peer func() string
		// resumed: the peer sent part of the blob, and the rest came with a Range request.
		resumed bool
	}{
		{name: "refused connection", peer: func() string { return freePort(t) }},
		{name: "accepts and never answers", peer: func() string {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					t.Cleanup(func() { c.Close() })
				}
			}()
			return ln.Addr().String()
		}},
		{name: "answers 500", peer: func() string {
			return signedPeer(auth, func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "broken", http.StatusInternalServerError)
			})
		}},
		{name: "answers under another key", peer: func() string {
			return signedPeer(otherAuth, func(w http.ResponseWriter, r *http.Request) {
				w.Write(blobOf(r))
			})
		}},
		{name: "sends headers and no byte", peer: func() string {
			return signedPeer(auth, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", fmt.Sprint(len(blobOf(r))))
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				<-stop
			})
		}},
		{name: "stalls mid-body", resumed: true, peer: func() string {
			return signedPeer(auth, sendThird(func() { <-stop }))
		}},
		{name: "cuts the connection mid-body", resumed: true, peer: func() string {
			return signedPeer(auth, sendThird(func() { panic(http.ErrAbortHandler) }))
		}},
	}
	reg := httptest.NewServer(up)
	defer reg.Close()
	ns := strings.TrimPrefix(reg.URL, "http://")

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			peerAddr := c.peer()
			self := freePort(t)
			// A blob the stand-in owns.
			var b []byte
			for {
				b = make([]byte, size)
				rand.Read(b)
				if cluster.Owner([]string{self, peerAddr}, digest.FromBytes(b).String()) == peerAddr {
					break
				}
			}
			d := digest.FromBytes(b)
			up.mu.Lock()
			up.blobs[d] = b
			up.ranges = nil
			up.mu.Unlock()
			node := startPeerNode(t, self, []string{self, peerAddr}, withKey(keyFile), 300*time.Millisecond)

			got, result := getBlob(t, node.srv.MirrorAddress(), ns, d)
			if !bytes.Equal(got, b) {
				t.Fatalf("the pull got %d bytes, not the blob", len(got))
			}
			up.mu.Lock()
			ranges := append([]string(nil), up.ranges...)
			up.mu.Unlock()
			if c.resumed {
				want := fmt.Sprintf("bytes=%d-", size/3)
				if result != string(traffic.Peer) || len(ranges) != 1 || ranges[0] != want {
					t.Fatalf("result %q, registry ranges %v; want the rest from the registry with %q", result, ranges, want)
				}
			} else if result != string(traffic.Miss) || up.count(d) != 1 || len(ranges) != 0 {
				t.Fatalf("result %q, registry GETs %d, ranges %v; want a plain miss from the registry", result, up.count(d), ranges)
			}
			st := adminStats(t, node.srv.AdminAddress())
			for _, p := range st.Peers {
				if p.Address == peerAddr && p.State != "down" {
					t.Fatalf("failing peer is %s, want down", p.State)
				}
			}
			// While it is down, the next miss goes straight to the registry.
			b2 := make([]byte, 1024)
			rand.Read(b2)
			d2 := digest.FromBytes(b2)
			up.mu.Lock()
			up.blobs[d2] = b2
			up.mu.Unlock()
			if _, result := getBlob(t, node.srv.MirrorAddress(), ns, d2); result != string(traffic.Miss) {
				t.Fatalf("next miss: %q", result)
			}
		})
	}
}

// A private blob crosses nodes only under the rule of one node: the owner serves it to a
// client whose own credentials the registry accepts, and to no other.
func TestPrivateBlobNeedsTheClientsRight(t *testing.T) {
	peers := []string{freePort(t), freePort(t)}
	b := blobsOwnedBy(peers, 1, 64<<10)[peers[1]][0]
	d := digest.FromBytes(b)
	up := &blobRegistry{blobs: map[digest.Digest][]byte{d: b}, gets: map[digest.Digest]int{}, token: "Bearer good"}
	reg := httptest.NewServer(up)
	defer reg.Close()
	ns := strings.TrimPrefix(reg.URL, "http://")
	nodes := startPeerNodes(t, peers, withKey(writeKey(t)))
	asker, owner := nodes[0], nodes[1]

	get := func(n *peerNode, cred string) (int, []byte, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+n.srv.MirrorAddress()+"/v2/app/blobs/"+d.String()+"?ns="+ns, nil)
		if cred != "" {
			req.Header.Set("Authorization", cred)
		}
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		return resp.StatusCode, buf.Bytes(), resp.Header.Get(traffic.ResultHeader)
	}
	// The owner stores it, fetched with a credential: private.
	if code, body, _ := get(owner, "Bearer good"); code != http.StatusOK || !bytes.Equal(body, b) {
		t.Fatalf("owner: %d", code)
	}
	waitStored(t, owner.srv, d)

	for _, cred := range []string{"", "Bearer bad"} {
		code, body, _ := get(asker, cred)
		if code != http.StatusUnauthorized || bytes.Contains(body, b[:64]) {
			t.Fatalf("client with %q: %d, %d bytes; want 401 and no blob", cred, code, len(body))
		}
	}
	st := adminStats(t, owner.srv.AdminAddress())
	// The registry's refusals were relayed (a short error body each), no blob byte.
	if p := st.Peer; p.Requests != 2 || p.Hits != 0 || p.Misses != 0 || p.BytesFromCache != 0 || p.BytesFromUpstream >= 1024 {
		t.Fatalf("owner's peer surface: %+v; want two refusals and no blob byte", st.Peer)
	}
	// A refusal is about the content, not the peer: it stays up.
	for _, p := range adminStats(t, asker.srv.AdminAddress()).Peers {
		if p.State == "down" {
			t.Fatalf("peer %s marked down after refusing a private blob", p.Address)
		}
	}
	code, body, result := get(asker, "Bearer good")
	if code != http.StatusOK || !bytes.Equal(body, b) || result != string(traffic.Peer) {
		t.Fatalf("client with the right: %d %q", code, result)
	}
	if n := up.count(d); n != 1 {
		t.Fatalf("registry served the private blob %d times, want once (the owner's)", n)
	}
}

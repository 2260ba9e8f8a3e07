package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/containerd/log"

	"github.com/containerd-blobcache/containerd-blobcache/internal/cluster"
	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/internal/metrics"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/admin/adminapi"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/mirror"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/peer"
)

// peerTier is the cluster tier's part of the process: the membership, the client the mirror
// asks on a local miss, and the peer listener with its own mirror handler. A nil *peerTier
// (peer.enabled = false) does nothing.
type peerTier struct {
	members  *cluster.Membership
	auth     *peer.Auth
	client   *peer.Client
	listener net.Listener
	server   *http.Server
	done     chan error
}

// newPeerTier loads the peer credentials, builds the membership and the client, and binds
// the peer listener. m may be nil (no metrics).
func newPeerTier(cfg config.PeerConfig, m *metrics.Metrics) (*peerTier, error) {
	if !cfg.Enabled {
		return nil, nil
	}
	auth, err := peer.LoadAuth(peer.AuthOptions{KeyFile: cfg.KeyFile, TLSCertFile: cfg.TLSCertFile, TLSKeyFile: cfg.TLSKeyFile, TLSCAFile: cfg.TLSCAFile})
	if err != nil {
		return nil, err
	}
	members, err := cluster.New(cluster.Options{
		Self: cfg.AdvertiseAddress(), Static: cfg.StaticPeers,
		DNSName: cfg.DNSName, DNSPort: cfg.DNSPort, DNSInterval: cfg.DNSInterval.D(), DNSServer: cfg.DNSServer,
		DownFor: cfg.DownFor.D(),
	})
	if err != nil {
		return nil, err
	}
	m.WatchPeers(members.Peers)
	client, err := peer.NewClient(peer.ClientOptions{
		Members: members, Auth: auth,
		ConnectTimeout: cfg.ConnectTimeout.D(), StallTimeout: cfg.StallTimeout.D(),
		Observe: func(o peer.Outcome) { m.PeerFetched(string(o)) },
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("peer listener on %s (peer.listen): %w", cfg.Listen, err)
	}
	return &peerTier{members: members, auth: auth, client: client, listener: ln, done: make(chan error, 1)}, nil
}

// setHandler gives the listener its blob handler: a mirror handler that never asks peers.
func (t *peerTier) setHandler(blobs http.Handler, readHeaderTimeout time.Duration) error {
	srv, err := peer.NewServer(t.auth, blobs)
	if err != nil {
		return err
	}
	t.server = peer.NewHTTPServer(srv, readHeaderTimeout)
	return nil
}

// address is the peer listener's address, "" when the tier is off.
func (t *peerTier) address() string {
	if t == nil {
		return ""
	}
	return t.listener.Addr().String()
}

// serve runs the membership's DNS refresh and the listener until ctx ends or shutdown.
func (t *peerTier) serve(ctx context.Context) {
	if t == nil {
		return
	}
	t.server.BaseContext = func(net.Listener) context.Context { return context.WithoutCancel(ctx) }
	go t.members.Run(ctx)
	go func() {
		var err error
		if t.server.TLSConfig != nil {
			err = t.server.ServeTLS(t.listener, "", "")
		} else {
			err = t.server.Serve(t.listener)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		if err != nil {
			log.G(ctx).WithError(err).Error("peer listener stopped; this node's misses still go to its owners, other nodes skip it")
		}
		t.done <- err
	}()
}

// shutdown lets the blobs in flight to other nodes finish until ctx ends, then cuts them
// (the asking nodes carry on from the registry).
func (t *peerTier) shutdown(ctx context.Context) {
	if t == nil {
		return
	}
	if err := t.server.Shutdown(ctx); err != nil {
		t.server.Close()
	}
	<-t.done
}

func (t *peerTier) close() {
	if t != nil {
		t.listener.Close()
	}
}

// peerStatus is the admin API's view of the membership.
func (t *peerTier) peerStatus() []adminapi.PeerStatus {
	var out []adminapi.PeerStatus
	for _, p := range t.members.Peers() {
		st := adminapi.PeerStatus{Address: p.Address, State: string(p.State)}
		if !p.DownUntil.IsZero() {
			until := p.DownUntil.UTC()
			st.DownUntil = &until
		}
		out = append(out, st)
	}
	return out
}

// wire gives the node's mirror the peer client, and the peer listener a mirror handler of
// its own over the same store and resolver: without peers (a request from a peer is never
// sent on to another), its requests counted as the peer surface's.
func (t *peerTier) wire(opts *mirror.Options, readHeaderTimeout time.Duration) error {
	own := *opts
	own.Peers = nil
	own.Observer = traffic.AsSurface(traffic.SurfacePeer, opts.Observer)
	// The asking node verifies the bytes itself before its fill commits (and holds them from
	// its containerd if it is configured to); holding them here as well would only delay the
	// first byte past the asking node's stall_timeout.
	own.VerifyBeforeServe = false
	blobs, err := mirror.New(own)
	if err != nil {
		return err
	}
	opts.Peers = t.client
	return t.setHandler(blobs, readHeaderTimeout)
}

package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/net/http/httpproxy"
	"google.golang.org/grpc"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/internal/metrics"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/internal/unixsock"
	"github.com/containerd-blobcache/containerd-blobcache/internal/version"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/content"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/mirror"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// Server is the running daemon: the store and every listener on it.
type Server struct {
	cfg            config.Config
	store          *blobcache.Store
	mirrorListener net.Listener
	mirrorServer   *http.Server
	// content is nil when the content API is disabled.
	content *content.Service
	// containerd is the diff API's connection to containerd's socket; nil without it.
	containerd *grpc.ClientConn
	// ops is the metrics and health listener (see ops.go); nil when disabled.
	ops    *opsServer
	health *metrics.Health
	// debug is nil unless debug.address is set.
	debug *debugServer
	// admin is the admin API (plugin/admin) on its unix socket.
	adminListener net.Listener
	adminServer   *http.Server
	// creds are reloaded on SIGHUP and when their files change (reload.go).
	creds *resolver.CredentialStore
	// peer is the cluster tier (peer.go); nil when peer.enabled is false.
	peer *peerTier
}

// New opens the store and binds the listeners, so that once it returns the daemon accepts
// connections (they wait in the backlog until Serve runs).
func New(ctx context.Context, cfg config.Config) (_ *Server, retErr error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// What New acquired, released in reverse order when a later step fails.
	var undo []func()
	defer func() {
		if retErr != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	// First in, so last out: after the store and the sockets are closed.
	undo = append(undo, removeCreated(cfg))

	// The metrics are created after the store (they read it when scraped); evictions that
	// start before then are not counted, and the pointer keeps the hand-over race-free.
	var evictionMetrics atomic.Pointer[metrics.Metrics]
	storeOpts := storeOptions(cfg)
	storeOpts.OnEvict = func(blobs int, bytes int64) { evictionMetrics.Load().Evicted(blobs, bytes) }
	store, err := blobcache.Open(ctx, storeOpts)
	if err != nil {
		return nil, fmt.Errorf("open store in %s (root): %w", cfg.Root, err)
	}
	undo = append(undo, func() { store.Close() })

	health := &metrics.Health{}
	ops, err := newOpsServer(ctx, cfg.Metrics, store, health)
	if err != nil {
		return nil, err
	}
	undo = append(undo, ops.close)
	// Each request of either surface is observed once; that observation feeds the admin
	// API's stats and the metrics alike.
	counters := &traffic.Counters{}
	observer := traffic.Observers{counters, ops.requestObserver()}

	// The content socket comes next: when containerd uses it, containerd waits for it.
	var contentSvc *content.Service
	var containerdConn *grpc.ClientConn
	if cfg.Content.Enabled {
		cln, err := unixsock.Listen(ctx, cfg.Content.Address, cfg.Content.SocketGroup)
		if err != nil {
			return nil, fmt.Errorf("content socket %s (content.address): %w", cfg.Content.Address, err)
		}
		contentSvc, err = content.NewService(ctx, store, cln, observer)
		if err != nil {
			cln.Close()
			return nil, err
		}
		undo = append(undo, func() { contentSvc.Close() })
		if cfg.Diff.Enabled {
			containerdConn, err = addDiff(ctx, cfg, contentSvc, ops.diffObserver())
			if err != nil {
				return nil, err
			}
			undo = append(undo, func() { containerdConn.Close() })
		}
	}

	ln, err := net.Listen("tcp", cfg.Mirror.Address)
	if err != nil {
		return nil, fmt.Errorf("mirror listener on %s: %w", cfg.Mirror.Address, err)
	}
	undo = append(undo, func() { ln.Close() })

	var peerMetrics *metrics.Metrics
	if ops != nil {
		peerMetrics = ops.metrics
	}
	tier, err := newPeerTier(cfg.Peer, peerMetrics)
	if err != nil {
		return nil, err
	}
	undo = append(undo, tier.close)

	opts := resolverOptions(cfg.Upstream)
	opts.UserAgent = "containerd-blobcache/" + version.Version
	opts.SelfAddresses = []string{ln.Addr().String()}
	if tier != nil {
		opts.SelfAddresses = append(opts.SelfAddresses, tier.address())
	}
	// Read once: the environment of the process at start, as http.ProxyFromEnvironment.
	opts.ProxyEnvironment = httpproxy.FromEnvironment()
	creds, err := resolver.NewCredentialStore(credentialStoreOptions(cfg.Upstream))
	if err != nil {
		return nil, err
	}
	opts.CredentialStore = creds
	if ops != nil {
		opts.ObserveUpstream = ops.metrics.UpstreamResponded
		opts.ObserveTokenFetch = ops.metrics.TokenFetched
		opts.ObserveBreaker = ops.metrics.UpstreamCircuit
		evictionMetrics.Store(ops.metrics)
	}
	res, err := resolver.New(opts)
	if err != nil {
		return nil, err
	}
	log.G(ctx).WithField("proxy", res.ProxyDescription()).Info("upstream forward proxy")
	mopts := mirror.Options{
		Store:             store,
		Resolver:          res,
		DefaultRegistry:   cfg.Mirror.DefaultRegistry,
		TagFreshness:      cfg.Store.TagFreshness.D(),
		MaxManifestSize:   cfg.Store.MaxManifestSize,
		AccessCheckTTL:    cfg.Upstream.PrivateAccessTTL.D(),
		VerifyBeforeServe: cfg.Mirror.VerifyBeforeServe,
		Tags:              tagPolicy(cfg),
		Observer:          observer,
	}
	if tier != nil {
		if err := tier.wire(&mopts, cfg.Mirror.ReadTimeout.D()); err != nil {
			return nil, err
		}
	}
	handler, err := mirror.New(mopts)
	if err != nil {
		return nil, err
	}
	if contentSvc != nil {
		// containerd's Info before a download is answered by the mirror filling the blob
		// when a manifest it served lists it (plugin/mirror/prefetch.go).
		contentSvc.Store().SetPrefetcher(handler, cfg.Content.InfoFillWait.D())
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: cfg.Mirror.ReadTimeout.D(),
		// Requests are small; nothing legitimate needs more than this in headers.
		MaxHeaderBytes: 64 << 10,
		IdleTimeout:    2 * time.Minute,
		// Requests must outlive the signal that starts a shutdown: Shutdown waits for them.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}

	dbg, err := listenDebug(cfg.Debug.Address)
	if err != nil {
		return nil, fmt.Errorf("debug listener on %s (debug.address): %w", cfg.Debug.Address, err)
	}
	undo = append(undo, dbg.close)

	aln, asrv, err := newAdmin(ctx, cfg, store, handler, counters, tier)
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, store: store, mirrorListener: ln, mirrorServer: srv, content: contentSvc, containerd: containerdConn, ops: ops, health: health, debug: dbg, adminListener: aln, adminServer: asrv, creds: creds, peer: tier}, nil
}

// MirrorAddress is the address the mirror listens on (useful when configured with port 0).
func (s *Server) MirrorAddress() string { return s.mirrorListener.Addr().String() }

// PeerAddress is the peer listener's address, or "" when the cluster tier is off.
func (s *Server) PeerAddress() string { return s.peer.address() }

// ContentAddress is the content API's socket, or "" when it is disabled.
func (s *Server) ContentAddress() string {
	if s.content == nil {
		return ""
	}
	return s.content.Address()
}

// Serve runs until ctx is cancelled or a listener fails, then shuts down: new connections are
// refused, requests in flight get mirror.shutdown_timeout (content.shutdown_timeout for the
// content API) to finish and are cut after it, and the store is closed.
func (s *Server) Serve(ctx context.Context) error {
	mirrorErr := make(chan error, 1)
	go func() {
		err := s.mirrorServer.Serve(s.mirrorListener)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		mirrorErr <- err
	}()
	go s.serveAdmin(ctx)
	contentErr := make(chan error, 1)
	fields := log.Fields{"mirror": s.MirrorAddress(), "admin": s.AdminAddress(), "root": s.cfg.Root, "version": version.Version}
	if s.content != nil {
		go func() { contentErr <- s.content.Serve() }()
		fields["content"] = s.content.Address()
		fields["diff"] = s.cfg.Diff.Enabled
	}
	if s.ops != nil {
		s.ops.serve(ctx)
		fields["metrics"] = s.ops.address()
	}
	if s.peer != nil {
		s.peer.serve(ctx)
		fields["peer"] = s.peer.address()
	}
	log.G(ctx).WithFields(fields).Info("containerd-blobcache serving")
	go s.debug.serve(ctx)
	defer s.debug.close()
	stopReload := s.reloadCredentials(ctx)
	defer stopReload()
	// Every listener was bound in New and is being served: connections are accepted.
	s.ready(ctx)

	var serveErr error
	select {
	case <-ctx.Done():
	case err := <-mirrorErr:
		serveErr = errors.Join(fmt.Errorf("mirror server stopped"), err)
		mirrorErr <- nil
	case err := <-contentErr:
		serveErr = errors.Join(fmt.Errorf("content server stopped"), err)
		contentErr <- nil
	}
	log.G(ctx).Info("shutting down")
	s.stopping(ctx)
	s.adminServer.Close()
	base := context.WithoutCancel(ctx)
	done := make(chan struct{})
	if s.content != nil {
		// Both surfaces drain at the same time: the content socket closes at once, so
		// that containerd fails fast while the daemon is away instead of waiting for it.
		go func() {
			defer close(done)
			cctx, cancel := context.WithTimeout(base, s.cfg.Content.ShutdownTimeout.D())
			defer cancel()
			s.content.Shutdown(cctx)
		}()
	} else {
		close(done)
	}
	shutdownCtx, cancel := context.WithTimeout(base, s.cfg.Mirror.ShutdownTimeout.D())
	defer cancel()
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		s.peer.shutdown(shutdownCtx)
	}()
	if err := s.mirrorServer.Shutdown(shutdownCtx); err != nil {
		log.G(ctx).WithError(err).Warn("requests still running at the shutdown timeout; cutting them")
		s.mirrorServer.Close()
	}
	<-done
	<-peerDone
	if s.content != nil {
		if err := <-contentErr; err != nil {
			serveErr = errors.Join(serveErr, fmt.Errorf("content server: %w", err))
		}
	}
	if err := <-mirrorErr; err != nil {
		serveErr = errors.Join(serveErr, fmt.Errorf("mirror server: %w", err))
	}
	if s.containerd != nil {
		s.containerd.Close()
	}
	if err := s.store.Close(); err != nil {
		serveErr = errors.Join(serveErr, fmt.Errorf("close store: %w", err))
	}
	s.ops.shutdown(base)
	if serveErr != nil {
		return fmt.Errorf("%w: %w", serveErr, errdefs.ErrUnavailable)
	}
	return nil
}

// Close releases what New acquired, for a Server that never ran Serve.
func (s *Server) Close() error {
	s.ops.close()
	s.mirrorListener.Close()
	s.debug.close()
	s.adminListener.Close()
	s.peer.close()
	if s.content != nil {
		s.content.Close()
	}
	if s.containerd != nil {
		s.containerd.Close()
	}
	return s.store.Close()
}

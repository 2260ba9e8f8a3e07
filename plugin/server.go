package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/internal/version"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/mirror"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// Server is the running daemon: the store and every listener on it.
type Server struct {
	cfg            config.Config
	store          *blobcache.Store
	mirrorListener net.Listener
	mirrorServer   *http.Server
}

// New opens the store and binds the listeners, so that once it returns the daemon accepts
// connections (they wait in the backlog until Serve runs).
func New(ctx context.Context, cfg config.Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	store, err := blobcache.Open(ctx, blobcache.Options{Root: cfg.Root})
	if err != nil {
		return nil, fmt.Errorf("open store in %s: %w", cfg.Root, err)
	}
	ln, err := net.Listen("tcp", cfg.Mirror.Address)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("mirror listener on %s: %w", cfg.Mirror.Address, err)
	}
	opts := resolver.OptionsFromConfig(cfg.Upstream)
	opts.UserAgent = "containerd-blobcache/" + version.Version
	opts.SelfAddresses = []string{ln.Addr().String()}
	res, err := resolver.New(opts)
	if err != nil {
		ln.Close()
		store.Close()
		return nil, err
	}
	handler, err := mirror.New(mirror.Options{
		Store:           store,
		Resolver:        res,
		DefaultRegistry: cfg.Mirror.DefaultRegistry,
		TagFreshness:    cfg.Store.TagFreshness.D(),
		MaxManifestSize: cfg.Store.MaxManifestSize,
	})
	if err != nil {
		ln.Close()
		store.Close()
		return nil, err
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
	return &Server{cfg: cfg, store: store, mirrorListener: ln, mirrorServer: srv}, nil
}

// MirrorAddress is the address the mirror listens on (useful when configured with port 0).
func (s *Server) MirrorAddress() string { return s.mirrorListener.Addr().String() }

// Serve runs until ctx is cancelled, then shuts down: new connections are refused, requests in
// flight get mirror.shutdown_timeout to finish and are cut after it, and the store is closed.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.mirrorServer.Serve(s.mirrorListener) }()
	log.G(ctx).WithFields(log.Fields{"mirror": s.MirrorAddress(), "root": s.cfg.Root, "version": version.Version}).Info("containerd-blobcache serving")

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		if errors.Is(serveErr, http.ErrServerClosed) {
			serveErr = nil
		}
	}
	log.G(ctx).Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Mirror.ShutdownTimeout.D())
	defer cancel()
	if err := s.mirrorServer.Shutdown(shutdownCtx); err != nil {
		log.G(ctx).WithError(err).Warn("requests still running at the shutdown timeout; cutting them")
		s.mirrorServer.Close()
	}
	if err := s.store.Close(); err != nil {
		serveErr = errors.Join(serveErr, fmt.Errorf("close store: %w", err))
	}
	if serveErr != nil {
		return fmt.Errorf("mirror server: %w", errors.Join(serveErr, errdefs.ErrUnavailable))
	}
	return nil
}

// Close releases what New acquired, for a Server that never ran Serve.
func (s *Server) Close() error {
	s.mirrorListener.Close()
	return s.store.Close()
}

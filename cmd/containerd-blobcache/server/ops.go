package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/containerd/log"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/internal/metrics"
	"github.com/containerd-blobcache/containerd-blobcache/internal/sdnotify"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/internal/version"
)

// opsServer is the listener of /metrics, /healthz and /readyz. Its methods accept a nil
// receiver (listener disabled), so that the server's code paths need no conditionals.
type opsServer struct {
	metrics  *metrics.Metrics
	listener net.Listener
	server   *http.Server
	done     chan struct{}
}

func newOpsServer(ctx context.Context, cfg config.MetricsConfig, store *blobcache.Store, health *metrics.Health) (*opsServer, error) {
	if cfg.Address == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s (metrics.address): %w", cfg.Address, err)
	}
	m := metrics.New(version.Version, store)
	return &opsServer{
		metrics:  m,
		listener: ln,
		server: &http.Server{
			Handler:           metrics.Handler(m, health),
			ReadHeaderTimeout: 10 * time.Second,
			BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		},
		done: make(chan struct{}),
	}, nil
}

// MetricsAddress is the address of the metrics listener, or "" when it is disabled.
func (s *Server) MetricsAddress() string { return s.ops.address() }

func (o *opsServer) address() string {
	if o == nil {
		return ""
	}
	return o.listener.Addr().String()
}

// requestObserver is the metrics' side of the surfaces' request observations, or nil
// without a metrics listener.
func (o *opsServer) requestObserver() traffic.Observer {
	if o == nil {
		return nil
	}
	return o.metrics
}

func (o *opsServer) serve(ctx context.Context) {
	go func() {
		defer close(o.done)
		if err := o.server.Serve(o.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).Error("metrics listener stopped")
		}
	}()
}

// shutdown stops the listener last, so that /readyz says 503 for as long as the daemon drains.
func (o *opsServer) shutdown(ctx context.Context) {
	if o == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := o.server.Shutdown(ctx); err != nil {
		o.server.Close()
	}
	<-o.done
}

func (o *opsServer) close() {
	if o != nil {
		o.listener.Close()
	}
}

// ready marks the daemon ready on /readyz and tells systemd (Type=notify), once every
// listener accepts connections.
func (s *Server) ready(ctx context.Context) {
	s.health.SetReady(true)
	if sent, err := sdnotify.Notify(sdnotify.Ready); err != nil {
		log.G(ctx).WithError(err).Warn("cannot notify systemd of readiness")
	} else if sent {
		log.G(ctx).Debug("notified systemd: ready")
	}
}

// stopping marks the daemon not ready and tells systemd that it is stopping.
func (s *Server) stopping(ctx context.Context) {
	s.health.SetReady(false)
	if _, err := sdnotify.Notify(sdnotify.Stopping); err != nil {
		log.G(ctx).WithError(err).Warn("cannot notify systemd of shutdown")
	}
}

// Observer is where components report what is not a request of a surface (token fetches,
// evictions). It is never nil; with the metrics listener disabled it records nothing.
func (s *Server) Observer() metrics.Observer {
	if s.ops == nil {
		return (*metrics.Metrics)(nil)
	}
	return s.ops.metrics
}

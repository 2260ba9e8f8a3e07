package server

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/containerd/log"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/admin"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/mirror"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// storeOptions are the store's size limit and access-time batching from the config.
func storeOptions(cfg config.Config) blobcache.Options {
	return blobcache.Options{
		Root:                cfg.Root,
		MaxSize:             int64(cfg.Store.MaxSize),
		HighWatermark:       cfg.Store.HighWatermark,
		LowWatermark:        cfg.Store.LowWatermark,
		AccessFlushInterval: cfg.Store.AccessFlushInterval.D(),
		// containerd's holds are only at stake when it uses the content API.
		HoldRebuilt: cfg.Content.Enabled,
	}
}

// resolverOptions are the upstream settings from the config; the caller adds what comes from
// the running process (user agent, own addresses, credentials, observers).
func resolverOptions(c config.UpstreamConfig) resolver.Options {
	return resolver.Options{
		AllowedRegistries:     c.AllowedRegistries,
		PlainHTTP:             c.PlainHTTP,
		AllowPrivateNetworks:  c.AllowPrivateNetworks,
		DialTimeout:           c.DialTimeout.D(),
		ResponseHeaderTimeout: c.ResponseHeaderTimeout.D(),
		StallTimeout:          c.StallTimeout.D(),
		HostsDir:              c.HostsDir,
	}
}

// tagPolicy is the mirror's tag policy from the config.
func tagPolicy(cfg config.Config) mirror.TagPolicy {
	st := cfg.Store
	return mirror.TagPolicy{
		Freshness:        st.TagFreshnessFor,
		AlwaysRevalidate: st.AlwaysRevalidate,
		MaxStaleness:     st.MaxStaleness.D(),
		NegativeTTL:      st.NegativeTTL.D(),
	}
}

// newAdmin binds the admin socket and builds its server.
func newAdmin(ctx context.Context, cfg config.Config, store *blobcache.Store, m *mirror.Handler, counters *traffic.Counters, tier *peerTier) (net.Listener, *http.Server, error) {
	ln, err := admin.Listen(ctx, cfg.Admin.Address)
	if err != nil {
		return nil, nil, err
	}
	api := admin.New(store, m, counters)
	if tier != nil {
		api.SetPeers(tier.peerStatus)
	}
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	return ln, srv, nil
}

// serveAdmin serves the admin API until the server is closed. Its failure is logged, not
// fatal: the mirror and the content API matter more than the operator's commands.
func (s *Server) serveAdmin(ctx context.Context) {
	err := s.adminServer.Serve(s.adminListener)
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.G(ctx).WithError(err).Error("admin API stopped")
	}
}

// AdminAddress is the admin API's socket.
func (s *Server) AdminAddress() string { return s.adminListener.Addr().String() }

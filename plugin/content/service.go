package content

import (
	"context"
	"errors"
	"net"
	"runtime"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/plugins/services/content/contentserver"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// Service is the content API served over gRPC on a listener.
type Service struct {
	store *Store
	srv   *grpc.Server
	ln    net.Listener
}

// NewService serves cache's content on ln (see Listen) once Serve runs. ctx carries the
// logger every request logs with; observer, when not nil, is told about every call.
func NewService(ctx context.Context, cache *blobcache.Store, ln net.Listener, observer traffic.Observer) (*Service, error) {
	store, err := NewStore(ctx, cache)
	if err != nil {
		return nil, err
	}
	logger := log.G(ctx)
	srv := grpc.NewServer(
		// containerd's proxy client sends writes of up to half its 16 MiB limit per
		// message, above gRPC's 4 MiB default.
		grpc.MaxRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
		grpc.MaxSendMsgSize(defaults.DefaultMaxSendMsgSize),
		// A Read per 32 KiB makes many short streams: reusing goroutines spares each one
		// a new goroutine and its stack growth (busy workers fall back to new goroutines).
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		// A Read answer (32 KiB of data plus its headers and trailers) fits one write
		// buffer, so it leaves in one write instead of two.
		grpc.WriteBufferSize(128<<10),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			start := time.Now()
			ctx = log.WithLogger(ctx, logger)
			resp, err := handler(ctx, req)
			logResult(ctx, info.FullMethod, err)
			observe(observer, info.FullMethod, err, start, 0)
			return resp, err
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			start := time.Now()
			stream := &countedStream{ServerStream: ss, ctx: log.WithLogger(ss.Context(), logger)}
			err := handler(srv, stream)
			logResult(ss.Context(), info.FullMethod, err)
			observe(observer, info.FullMethod, err, start, stream.sent)
			return err
		}),
	)
	api.RegisterContentServer(srv, readServer{ContentServer: contentserver.New(store), store: store})
	return &Service{store: store, srv: srv, ln: ln}, nil
}

// Registrar is the service's gRPC server, for the other APIs served on the same socket (the
// diff API: containerd's proxy plugins at one address share one connection). Register on it
// before Serve. Their calls are logged like the content API's, not counted as content calls.
func (s *Service) Registrar() grpc.ServiceRegistrar { return s.srv }

// Store is the content store the service serves.
func (s *Service) Store() *Store { return s.store }

// Address is the socket the service listens on.
func (s *Service) Address() string { return s.ln.Addr().String() }

// Serve serves until Shutdown; it returns nil after a Shutdown.
func (s *Service) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Shutdown closes the socket (new connections are refused at once, so containerd fails fast
// instead of waiting), lets requests in flight finish until ctx is done, then cuts them.
func (s *Service) Shutdown(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		log.G(ctx).Warn("content requests still running at the shutdown timeout; cutting them")
		s.srv.Stop()
		<-done
	}
}

// Close releases the listener of a service that never ran Serve.
func (s *Service) Close() error {
	s.srv.Stop()
	return s.ln.Close()
}

// logResult logs failed requests at debug level; the answers containerd expects in normal
// operation (not found, already exists) are not failures worth a line.
func logResult(ctx context.Context, method string, err error) {
	if err == nil {
		return
	}
	switch status.Code(err) {
	case codes.NotFound, codes.AlreadyExists:
		return
	}
	if errdefs.IsNotFound(err) || errdefs.IsAlreadyExists(err) {
		return
	}
	log.G(ctx).WithError(err).WithField("method", method).Debug("gRPC request failed")
}

package content

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/defaults"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/internal/unixsock"
)

// served is a content service on a unix socket with containerd's own proxy client on it:
// what containerd's [proxy_plugins] entry talks to, end to end.
type served struct {
	cache  *blobcache.Store
	svc    *Service
	client content.Store
	conn   *grpc.ClientConn
	socket string
	done   chan error
}

// serve opens the store at root and serves it on a socket in a short temporary directory;
// observer (may be nil) is told about every call.
func serve(ctx context.Context, root string, observer traffic.Observer) (*served, error) {
	cache, err := blobcache.Open(ctx, blobcache.Options{Root: root})
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "bc-content-")
	if err != nil {
		cache.Close()
		return nil, err
	}
	socket := filepath.Join(dir, "content.sock")
	ln, err := unixsock.Listen(ctx, socket, "")
	if err != nil {
		cache.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	svc, err := NewService(ctx, cache, ln, observer)
	if err != nil {
		ln.Close()
		cache.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	s := &served{cache: cache, svc: svc, socket: socket, done: make(chan error, 1)}
	go func() { s.done <- svc.Serve() }()
	// The dial options containerd uses for proxy plugins (cmd/containerd/server).
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)),
	)
	if err != nil {
		s.close(ctx)
		return nil, err
	}
	s.conn = conn
	s.client = proxy.NewContentStore(conn)
	return s, nil
}

// close stops client, service and store, and removes the socket directory.
func (s *served) close(ctx context.Context) error {
	if s.conn != nil {
		s.conn.Close()
	}
	s.svc.Shutdown(ctx)
	serveErr := <-s.done
	err := s.cache.Close()
	os.RemoveAll(filepath.Dir(s.socket))
	if serveErr != nil {
		return serveErr
	}
	return err
}

// newServed serves a fresh store for one test.
func newServed(t *testing.T) *served {
	t.Helper()
	return newObservedServed(t, nil)
}

// newObservedServed is newServed with an observer of the calls.
func newObservedServed(t *testing.T, observer traffic.Observer) *served {
	t.Helper()
	s, err := serve(t.Context(), t.TempDir(), observer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.close(context.Background()); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

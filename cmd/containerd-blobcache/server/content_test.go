package server

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// With the content API enabled the daemon serves it on its socket over the store the mirror
// uses, and removes the socket at shutdown so that containerd fails fast while it is away.
func TestServeContentAPI(t *testing.T) {
	dir, err := os.MkdirTemp("", "bc-srv-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := config.Default()
	cfg.Root = t.TempDir()
	cfg.Mirror.Address = "127.0.0.1:0"
	cfg.Metrics.Address = "" // no metrics listener: the default port may be taken
	cfg.Admin.Address = filepath.Join(t.TempDir(), "admin.sock")
	cfg.Content.Enabled = true
	cfg.Content.Address = filepath.Join(dir, "run", "content.sock")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if srv.ContentAddress() != cfg.Content.Address {
		t.Errorf("ContentAddress = %q", srv.ContentAddress())
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()

	conn, err := grpc.NewClient("unix://"+cfg.Content.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cs := proxy.NewContentStore(conn)
	data := []byte("layer bytes")
	d := digest.FromBytes(data)
	if err := content.WriteBlob(ctx, cs, "ref", bytes.NewReader(data), ocispec.Descriptor{Digest: d, Size: int64(len(data))}); err != nil {
		t.Fatalf("write through the content API: %v", err)
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after shutdown")
	}
	if _, err := os.Lstat(cfg.Content.Address); !os.IsNotExist(err) {
		t.Errorf("socket left after shutdown: %v", err)
	}
	store, err := blobcache.Open(context.Background(), blobcache.Options{Root: cfg.Root})
	if err != nil {
		t.Fatalf("store not closed at shutdown: %v", err)
	}
	defer store.Close()
	info, err := store.Info(context.Background(), d)
	if err != nil || !info.Held {
		t.Fatalf("blob written through the content API: %+v, %v", info, err)
	}
}

// Disabled (the default), the daemon runs mirror-only and binds no socket.
func TestContentAPIDisabled(t *testing.T) {
	cfg := config.Default()
	cfg.Root = t.TempDir()
	cfg.Mirror.Address = "127.0.0.1:0"
	cfg.Metrics.Address = "" // no metrics listener: the default port may be taken
	cfg.Admin.Address = filepath.Join(t.TempDir(), "admin.sock")
	cfg.Content.Address = filepath.Join(t.TempDir(), "content.sock")
	srv, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if srv.ContentAddress() != "" {
		t.Errorf("ContentAddress = %q, want none", srv.ContentAddress())
	}
	if _, err := os.Lstat(cfg.Content.Address); !os.IsNotExist(err) {
		t.Errorf("socket created while disabled: %v", err)
	}
}

// A socket another daemon serves is not taken over: New fails and releases the store.
func TestContentSocketInUse(t *testing.T) {
	dir, err := os.MkdirTemp("", "bc-srv-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	first := config.Default()
	first.Root = t.TempDir()
	first.Mirror.Address = "127.0.0.1:0"
	first.Metrics.Address = "" // no metrics listener: the default port may be taken
	first.Admin.Address = filepath.Join(t.TempDir(), "admin.sock")
	first.Content.Enabled = true
	first.Content.Address = filepath.Join(dir, "c.sock")
	srv, err := New(context.Background(), first)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	second := first
	second.Root = t.TempDir()
	if s2, err := New(context.Background(), second); !errdefs.IsAlreadyExists(err) {
		if s2 != nil {
			s2.Close()
		}
		t.Fatalf("second daemon on the same socket: %v, want already exists", err)
	}
	// Its store was released.
	store, err := blobcache.Open(context.Background(), blobcache.Options{Root: second.Root})
	if err != nil {
		t.Fatalf("store of the failed daemon still locked: %v", err)
	}
	store.Close()
}

package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// On shutdown a download in flight finishes for its client, new connections are refused and
// the store is closed (its lock released).
func TestShutdownLetsRequestsFinishAndClosesTheStore(t *testing.T) {
	data := make([]byte, 2<<20)
	rand.New(rand.NewSource(1)).Read(data)
	dgst := digest.FromBytes(data)
	gate := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
		w.Write(data[len(data)/2:])
	}))
	defer upstream.Close()
	host := strings.TrimPrefix(upstream.URL, "http://")

	cfg := config.Default()
	cfg.Root = t.TempDir()
	cfg.Mirror.Address = "127.0.0.1:0"
	cfg.Metrics.Address = "" // no metrics listener: the default port may be taken
	cfg.Admin.Address = filepath.Join(t.TempDir(), "admin.sock")
	cfg.Upstream.PlainHTTP = []string{host}
	cfg.Upstream.AllowPrivateNetworks = []string{host}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()

	url := fmt.Sprintf("http://%s/v2/app/blobs/%s?ns=%s", srv.MirrorAddress(), dgst, host)
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	half := make([]byte, len(data)/2)
	if _, err := io.ReadFull(resp.Body, half); err != nil {
		t.Fatal(err)
	}

	cancel() // what SIGTERM does in main
	// Once the listener is closed, new connections are refused.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := http.Get(fmt.Sprintf("http://%s/v2/", srv.MirrorAddress()))
		if err != nil {
			break
		}
		c.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepting after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(gate)
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("request in flight cut by shutdown: %v", err)
	}
	if !bytes.Equal(append(half, rest...), data) {
		t.Fatal("request in flight got wrong bytes")
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after shutdown")
	}
	// The store was closed: the same root opens again (bbolt's lock is free).
	store, err := blobcache.Open(context.Background(), blobcache.Options{Root: cfg.Root})
	if err != nil {
		t.Fatalf("store not closed at shutdown: %v", err)
	}
	defer store.Close()
	if _, err := store.Info(context.Background(), dgst); err != nil {
		t.Fatalf("blob downloaded during shutdown not committed: %v", err)
	}
}

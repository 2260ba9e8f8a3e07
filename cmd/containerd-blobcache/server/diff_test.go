package server

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/diff"
	diffproxy "github.com/containerd/containerd/v2/core/diff/proxy"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// startWithContent starts a daemon with the content API (and the diff API when diff is set)
// and returns a connection to its socket, as containerd's proxy plugins dial it.
func startWithContent(t *testing.T, withDiff bool) *grpc.ClientConn {
	t.Helper()
	dir, err := os.MkdirTemp("", "bc-srv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := config.Default()
	cfg.Root = t.TempDir()
	cfg.Mirror.Address = "127.0.0.1:0"
	cfg.Metrics.Address = ""
	cfg.Admin.Address = filepath.Join(dir, "admin.sock")
	cfg.Content.Enabled = true
	cfg.Content.Address = filepath.Join(dir, "content.sock")
	cfg.Diff.Enabled = withDiff
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+cfg.Content.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// With diff enabled, a layer written through the content API is applied through the diff API
// on the same socket: both services share the content API's gRPC server.
func TestServeDiffAPIOnContentSocket(t *testing.T) {
	conn := startWithContent(t, true)
	ctx := context.Background()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	body := []byte("applied by the daemon\n")
	if err := tw.WriteHeader(&tar.Header{Name: "hello", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body)), Uid: os.Getuid(), Gid: os.Getgid()}); err != nil {
		t.Fatal(err)
	}
	tw.Write(body)
	tw.Close()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(layer.Bytes()), Size: int64(layer.Len())}
	if err := content.WriteBlob(ctx, contentproxy.NewContentStore(conn), "layer", bytes.NewReader(layer.Bytes()), desc); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	upper, work, lower := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "lower")
	for _, d := range []string{upper, work, lower} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mounts := []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"workdir=" + work, "upperdir=" + upper, "lowerdir=" + lower}}}
	applier := diffproxy.NewDiffApplier(diffapi.NewDiffClient(conn)).(diff.Applier)
	applied, err := applier.Apply(ctx, desc, mounts)
	if err != nil {
		// A daemon without root's capabilities names them; the test needs them.
		t.Fatalf("Apply through the content socket: %v", err)
	}
	if applied.Digest != desc.Digest {
		t.Errorf("applied %s, want %s (an uncompressed layer is its own diff ID)", applied.Digest, desc.Digest)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "hello")); err != nil || !bytes.Equal(b, body) {
		t.Errorf("hello = %q, %v", b, err)
	}
}

// Without diff enabled, the socket serves the content API only.
func TestDiffAPIOffByDefault(t *testing.T) {
	conn := startWithContent(t, false)
	applier := diffproxy.NewDiffApplier(diffapi.NewDiffClient(conn)).(diff.Applier)
	_, err := applier.Apply(context.Background(), ocispec.Descriptor{Digest: digest.FromString("x"), Size: 1}, nil)
	if !errdefs.IsNotImplemented(err) {
		t.Fatalf("Apply with diff disabled: %v, want not implemented", err)
	}
}

package diff

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/proxy"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"
)

// calls records what the observer is told.
type calls struct {
	mu  sync.Mutex
	ops []string
}

func (c *calls) DiffCall(op string, failed bool, _ time.Duration, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	result := "ok"
	if failed {
		result = "error"
	}
	c.ops = append(c.ops, op+" "+result)
}

func (c *calls) list() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.ops, ", ")
}

// differ is what containerd's diff proxy client implements.
type differ interface {
	diff.Applier
	diff.Comparer
}

// serveDiff serves the diff API over store with the capability set caps, and returns
// containerd's own diff proxy client on it (what a [proxy_plugins] entry of type diff uses).
func serveDiff(t *testing.T, store content.Store, caps CapSet, obs Observer) differ {
	t.Helper()
	ln := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	New(context.Background(), Options{Store: store, Observer: obs, Capabilities: &caps}).Register(srv)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ln.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewDiffApplier(diffapi.NewDiffClient(conn)).(differ)
}

// layer is a gzipped tar of a directory, a file and a symlink owned by the test's own user
// (so that applying it needs no privilege), stored in a new local content store.
func layer(t *testing.T) (content.Store, ocispec.Descriptor, digest.Digest) {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	uid, gid := os.Getuid(), os.Getgid()
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Size: 6},
		{Name: "etc/link", Typeflag: tar.TypeSymlink, Linkname: "motd"},
	} {
		h.Uid, h.Gid, h.ModTime = uid, gid, time.Unix(1700000000, 0)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("hello\n"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tarBuf.Bytes())
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz.Bytes()), Size: int64(gz.Len())}
	if err := content.WriteBlob(context.Background(), store, "layer", bytes.NewReader(gz.Bytes()), desc); err != nil {
		t.Fatal(err)
	}
	return store, desc, digest.FromBytes(tarBuf.Bytes())
}

// overlayUpper is the mount containerd's overlayfs snapshotter gives for a layer on a parent:
// the applier writes into upperdir itself, without mounting.
func overlayUpper(t *testing.T) (string, []mount.Mount) {
	dir := t.TempDir()
	upper, work, lower := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "lower")
	for _, d := range []string{upper, work, lower} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return upper, []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"workdir=" + work, "upperdir=" + upper, "lowerdir=" + lower}}}
}

func TestApplyThroughContainerdsClient(t *testing.T) {
	store, desc, diffID := layer(t)
	obs := &calls{}
	applier := serveDiff(t, store, ^CapSet(0), obs)
	upper, mounts := overlayUpper(t)

	applied, err := applier.Apply(context.Background(), desc, mounts)
	if err != nil {
		t.Fatal(err)
	}
	if applied.Digest != diffID || applied.MediaType != ocispec.MediaTypeImageLayer {
		t.Errorf("applied %s (%s), want the uncompressed tar's %s", applied.Digest, applied.MediaType, diffID)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "etc", "motd")); err != nil || string(b) != "hello\n" {
		t.Errorf("etc/motd = %q, %v", b, err)
	}
	if target, err := os.Readlink(filepath.Join(upper, "etc", "link")); err != nil || target != "motd" {
		t.Errorf("etc/link -> %q, %v", target, err)
	}
	if got := obs.list(); got != "apply ok" {
		t.Errorf("observed %q, want one successful apply", got)
	}
}

func TestApplyWithoutCapabilitiesNamesThem(t *testing.T) {
	store, desc, _ := layer(t)
	obs := &calls{}
	applier := serveDiff(t, store, ^CapSet(0)&^(1<<unix.CAP_SYS_ADMIN|1<<unix.CAP_MKNOD), obs)
	upper, mounts := overlayUpper(t)

	_, err := applier.Apply(context.Background(), desc, mounts)
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Apply: %v, want a failed precondition", err)
	}
	for _, want := range []string{"CAP_SYS_ADMIN", "CAP_MKNOD", desc.Digest.String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "CAP_CHOWN") {
		t.Errorf("error %q names a capability the daemon has", err)
	}
	if entries, _ := os.ReadDir(upper); len(entries) != 0 {
		t.Errorf("a refused apply wrote %d entries", len(entries))
	}
	if got := obs.list(); got != "apply error" {
		t.Errorf("observed %q, want one failed apply", got)
	}
}

func TestCompareWithoutCapabilitiesNamesThem(t *testing.T) {
	store, _, _ := layer(t)
	obs := &calls{}
	comparer := serveDiff(t, store, 0, obs)
	_, lower := overlayUpper(t)
	_, upper := overlayUpper(t)
	_, err := comparer.Compare(context.Background(), lower, upper)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		t.Fatalf("Compare: %v, want a failed precondition naming CAP_SYS_ADMIN", err)
	}
	if got := obs.list(); got != "compare error" {
		t.Errorf("observed %q, want one failed compare", got)
	}
}

// A Compare that containerd forwards carries the caller's namespace and lease in the gRPC
// metadata: the layer is written through containerd with both; a call without a namespace
// writes into the daemon's store.
func TestCompareWritesThroughContainerdInTheCallersNamespace(t *testing.T) {
	local, viaContainerd := walkingStub("local"), walkingStub("containerd")
	c := &comparer{local: local, viaContainerd: viaContainerd}

	in := metadata.NewIncomingContext(context.Background(), metadata.Pairs("containerd-namespace", "k8s.io", "containerd-lease", "lease-1"))
	ctx, next := c.pick(in)
	if next != viaContainerd {
		t.Fatal("a call with a namespace does not write through containerd")
	}
	out, _ := metadata.FromOutgoingContext(ctx)
	if got := out.Get("containerd-namespace"); len(got) != 1 || got[0] != "k8s.io" {
		t.Errorf("outgoing namespace %v, want k8s.io", got)
	}
	if got := out.Get("containerd-lease"); len(got) != 1 || got[0] != "lease-1" {
		t.Errorf("outgoing lease %v, want lease-1", got)
	}

	if _, next := c.pick(context.Background()); next != local {
		t.Error("a call without a namespace does not write into the daemon's store")
	}
	if _, next := (&comparer{local: local}).pick(in); next != local {
		t.Error("without a containerd client, a call with a namespace does not write into the daemon's store")
	}
}

// walkingStub is a comparer that is only compared by identity.
type walkingStub string

func (walkingStub) Compare(context.Context, []mount.Mount, []mount.Mount, ...diff.Opt) (ocispec.Descriptor, error) {
	return ocispec.Descriptor{}, errdefs.ErrNotImplemented
}

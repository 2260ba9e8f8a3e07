package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	diffproxy "github.com/containerd/containerd/v2/core/diff/proxy"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/containerd/v2/plugins/diff/walking"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// changeContainerTree changes a container's root file system (mounted at root) the way a
// `docker commit`-style layer records it: new files, a hardlink, a symlink, a fifo and a
// file capability; changed content, mode, owner and xattrs of lower files; deleted files and
// a deleted directory; and a lower directory removed and made again (opaque in overlayfs).
func changeContainerTree(t *testing.T, root string) {
	t.Helper()
	p := func(rel string) string { return filepath.Join(root, rel) }
	for _, step := range []struct {
		what string
		do   func() error
	}{
		{"mkdir added", func() error { return os.Mkdir(p("added"), 0o750) }},
		{"write added/new.txt", func() error { return os.WriteFile(p("added/new.txt"), []byte("new file\n"), 0o640) }},
		{"chown added/new.txt", func() error { return os.Lchown(p("added/new.txt"), 1000, 1001) }},
		{"link added/new-link", func() error { return os.Link(p("added/new.txt"), p("added/new-link")) }},
		{"symlink added/sym", func() error { return os.Symlink("/etc/app/conf", p("added/sym")) }},
		{"mkfifo added/fifo", func() error { return unix.Mkfifo(p("added/fifo"), 0o600) }},
		{"write added/cap", func() error { return os.WriteFile(p("added/cap"), []byte("#!/bin/sh\n"), 0o755) }},
		{"setcap added/cap", func() error {
			return unix.Setxattr(p("added/cap"), "security.capability", []byte(harness.FileCapability(10)), 0)
		}},
		{"rewrite etc/app/conf", func() error { return os.WriteFile(p("etc/app/conf"), []byte("version 3\n"), 0o600) }},
		{"chmod modes/ro", func() error { return os.Chmod(p("modes/ro"), 0o400) }},
		{"chown owners/file", func() error { return os.Lchown(p("owners/file"), 1, 2) }},
		{"setxattr xattr/file", func() error { return unix.Setxattr(p("xattr/file"), "user.changed", []byte("yes"), 0) }},
		{"rm del/keep.txt", func() error { return os.Remove(p("del/keep.txt")) }},
		{"rm -r hl", func() error { return os.RemoveAll(p("hl")) }},
		{"rm -r opq", func() error { return os.RemoveAll(p("opq")) }},
		{"mkdir opq", func() error { return os.Mkdir(p("opq"), 0o700) }},
		{"write opq/fresh", func() error { return os.WriteFile(p("opq/fresh"), []byte("fresh\n"), 0o644) }},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
	}
}

// tarListing renders every entry of an uncompressed layer tar as one line (name, type,
// mode, owner, size, link target, device, modification time, PAX records, SHA-256 of the
// content) and returns the lines and the SHA-256 of the whole tar (the layer's diff ID).
func tarListing(t *testing.T, r io.Reader) ([]string, string) {
	t.Helper()
	whole := sha256.New()
	tr := tar.NewReader(io.TeeReader(r, whole))
	var out []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read layer tar: %v", err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, tr); err != nil {
			t.Fatal(err)
		}
		var pax []string
		for k, v := range hdr.PAXRecords {
			pax = append(pax, fmt.Sprintf("%s=%q", k, v))
		}
		sort.Strings(pax)
		out = append(out, fmt.Sprintf("%s type=%c mode=%o owner=%d:%d size=%d link=%q dev=%d:%d mtime=%d pax=[%s] sha256=%s",
			hdr.Name, hdr.Typeflag, hdr.Mode, hdr.Uid, hdr.Gid, hdr.Size, hdr.Linkname, hdr.Devmajor, hdr.Devminor,
			hdr.ModTime.UnixNano(), strings.Join(pax, " "), hex.EncodeToString(h.Sum(nil))))
	}
	if _, err := io.Copy(io.Discard, tr); err != nil {
		t.Fatal(err)
	}
	return out, hex.EncodeToString(whole.Sum(nil))
}

func gunzipListing(t *testing.T, what string, r io.Reader) ([]string, string) {
	t.Helper()
	gz, err := gzip.NewReader(r)
	if err != nil {
		t.Fatalf("%s: not gzip: %v", what, err)
	}
	defer gz.Close()
	return tarListing(t, gz)
}

// changedSnapshot pulls UnpackTestImage in proxy mode with the diff plugin, prepares an
// active snapshot on its top layer and changes its file system (changeContainerTree). It
// returns the mounts of the committed parent (a view) and of the changed snapshot.
func changedSnapshot(t *testing.T, repo string) (e *proxyEnv, c *harness.Containerd, lower, upper []mount.Mount) {
	t.Helper()
	e, c = newProxyDiffEnv(t)
	im, ref := e.pushUnpackImage(t, repo)
	c.Pull(t, "diff", ref, e.hostsDir)
	chain := chainIDs(t, im)
	top := chain[len(chain)-1]
	upper = c.SnapshotPrepare(t, "diff", "changed", top)
	root, unmount := harness.MountAt(t, upper)
	changeContainerTree(t, root)
	unmount()
	lower = c.SnapshotView(t, "diff", "changed-parent", top)
	return e, c, lower, upper
}

// walkingLayer is the layer containerd's own walking differ makes of lower and upper, run in
// this process with a content store of its own; it returns its tar listing and diff ID.
func walkingLayer(t *testing.T, lower, upper []mount.Mount) ([]string, string) {
	t.Helper()
	// Labelled: the walking differ records the uncompressed digest as a label.
	store, err := local.NewLabeledStore(t.TempDir(), memLabels{})
	if err != nil {
		t.Fatal(err)
	}
	desc, err := walking.NewWalkingDiff(store).Compare(t.Context(), lower, upper, diff.WithMediaType(ocispec.MediaTypeImageLayerGzip))
	if err != nil {
		t.Fatalf("walking differ: %v", err)
	}
	blob, err := content.ReadBlob(t.Context(), store, desc)
	if err != nil {
		t.Fatal(err)
	}
	return gunzipListing(t, "containerd's layer", bytes.NewReader(blob))
}

// memLabels keeps a local content store's labels in memory.
type memLabels map[digest.Digest]map[string]string

func (m memLabels) Get(d digest.Digest) (map[string]string, error) { return maps.Clone(m[d]), nil }

func (m memLabels) Set(d digest.Digest, labels map[string]string) error {
	m[d] = maps.Clone(labels)
	return nil
}

func (m memLabels) Update(d digest.Digest, update map[string]string) (map[string]string, error) {
	labels := m[d]
	if labels == nil {
		labels = map[string]string{}
	}
	for k, v := range update {
		if v == "" {
			delete(labels, k)
		} else {
			labels[k] = v
		}
	}
	m[d] = labels
	return maps.Clone(labels), nil
}

// assertSameLayer compares the daemon's layer with containerd's, entry by entry and by diff
// ID, and checks that it holds the changes changeContainerTree made.
func assertSameLayer(t *testing.T, ours []string, ourID string, theirs []string, theirID string) {
	t.Helper()
	eachLineDiff(ours, theirs, func(i int, a, b string) {
		t.Errorf("entry %d: the daemon's layer has\n  %s\ncontainerd's has\n  %s", i, a, b)
	})
	if ourID != theirID {
		t.Errorf("uncompressed layers differ: the daemon's sha256:%s, containerd's sha256:%s", ourID, theirID)
	}
	t.Logf("both layers: %d entries, diff ID sha256:%s", len(ours), ourID)
	// The layer holds what was changed (or the comparison compared two empty layers).
	for _, want := range []string{"added/new-link type=0", "added/new.txt type=1", "added/cap ", "del/.wh.keep.txt ", ".wh.hl ", "opq/.wh.new1 ", "opq/fresh ", "etc/app/conf ", "owners/file "} {
		found := false
		for _, l := range ours {
			found = found || strings.HasPrefix(l, want)
		}
		if !found {
			t.Errorf("the daemon's layer has no entry %q:\n%s", want, strings.Join(ours, "\n"))
		}
	}
}

// TestProxyDiffCompareMatchesWalkingDiffer commits a changed container file system to a
// layer through the daemon's diff API (Compare, on the daemon's socket, as containerd's
// proxy differ calls it) and through containerd's own walking differ, run here on the same
// two snapshots: the two layers' uncompressed tars are the same, entry by entry (name,
// type, mode, owner, size, link, device, mtime, PAX records with xattrs, content hash) and
// byte for byte.
func TestProxyDiffCompareMatchesWalkingDiffer(t *testing.T) {
	e, _, lower, upper := changedSnapshot(t, "test/commit")

	conn, err := grpc.NewClient("unix://"+e.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	comparer, ok := diffproxy.NewDiffApplier(diffapi.NewDiffClient(conn)).(diff.Comparer)
	if !ok {
		t.Fatal("containerd's diff proxy is no Comparer")
	}
	before := diffOps(t, e.daemon, "compare", "ok")
	desc, err := comparer.Compare(t.Context(), lower, upper, diff.WithMediaType(ocispec.MediaTypeImageLayerGzip))
	if err != nil {
		t.Fatalf("Compare through the daemon: %v", err)
	}
	if n := diffOps(t, e.daemon, "compare", "ok") - before; n != 1 {
		t.Errorf("the daemon counted %v compares, want 1", n)
	}
	// The layer is in the daemon's store, read through its content API.
	blob, err := content.ReadBlob(t.Context(), harness.ContentClient(t, e.socket), desc)
	if err != nil {
		t.Fatalf("read the daemon's layer %s: %v", desc.Digest, err)
	}
	ours, ourID := gunzipListing(t, "the daemon's layer", bytes.NewReader(blob))
	theirs, theirID := walkingLayer(t, lower, upper)
	assertSameLayer(t, ours, ourID, theirs, theirID)
}

// TestProxyDiffCtrSnapshotsDiff makes the same layer with `ctr snapshots diff`: containerd's
// diff service asks the daemon first (its default list), and ctr then reads the layer from
// containerd's content store, in its namespace. The layer must be readable there and equal
// to the walking differ's.
func TestProxyDiffCtrSnapshotsDiff(t *testing.T) {
	e, c, lower, upper := changedSnapshot(t, "test/ctrdiff")
	before := diffOps(t, e.daemon, "compare", "ok")
	out, err := c.CtrE(t.Context(), "diff", "snapshots", "--snapshotter", "overlayfs", "diff", "changed")
	if err != nil {
		t.Fatalf("ctr snapshots diff: %v", err)
	}
	if n := diffOps(t, e.daemon, "compare", "ok") - before; n != 1 {
		t.Errorf("the daemon counted %v compares for ctr snapshots diff, want 1", n)
	}
	ours, ourID := gunzipListing(t, "ctr's layer", strings.NewReader(out))
	theirs, theirID := walkingLayer(t, lower, upper)
	assertSameLayer(t, ours, ourID, theirs, theirID)
}

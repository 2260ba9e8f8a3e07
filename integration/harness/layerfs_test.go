package harness

import (
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/pkg/archive"
)

// TestUnpackTestImageLayers applies the layers of UnpackTestImage with containerd's own
// archive package (into a plain directory, whiteouts as deletions) and checks that they say
// what the image promises: deletions, an opaque directory, re-created files, modes, owners,
// xattrs, hardlinks and parents copied from below.
func TestUnpackTestImageLayers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("applying owners, device nodes and security.capability needs root")
	}
	if _, err := os.Stat(BusyboxPath); err != nil {
		t.Skipf("the image's first layer needs %s (Debian package busybox-static)", BusyboxPath)
	}
	im := BuildImage(t, UnpackTestImage())
	if len(im.Layers) != 4 {
		t.Fatalf("%d layers, want 4", len(im.Layers))
	}
	root := t.TempDir()
	for _, l := range im.Layers {
		f, err := os.Open(l.Path)
		if err != nil {
			t.Fatal(err)
		}
		gz, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := archive.Apply(context.Background(), root, gz); err != nil {
			t.Fatalf("apply layer %s: %v", l.Descriptor.Digest, err)
		}
		f.Close()
	}
	tree, err := ScanTree(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"del/gone.txt", "deldir", "etc/app/remove-me", "opq/old1", "opq/sub"} {
		if tree[p] != nil {
			t.Errorf("%s is present; the layers delete it", p)
		}
	}
	file := func(p, content string) *TreeEntry {
		t.Helper()
		e := tree[p]
		if e == nil || e.Type != "file" {
			t.Fatalf("%s: %+v, want a regular file", p, e)
		}
		if got, _ := os.ReadFile(filepath.Join(root, p)); string(got) != content {
			t.Errorf("%s holds %q, want %q", p, got, content)
		}
		return e
	}
	file("del/gone2.txt", "back\n")
	file("del/keep.txt", "kept\n")
	file("opq/new1", "new in the opaque directory\n")
	file("opq/new2", "second file in the opaque directory\n")
	if conf := file("etc/app/conf", "version 2\n"); conf.Perm != 0o600 || conf.UID != 1 || conf.GID != 1 {
		t.Errorf("etc/app/conf: mode %04o owner %d:%d, want 0600 1:1", conf.Perm, conf.UID, conf.GID)
	}
	if e := file("modes/setuid", "#!/bin/sh\n"); e.Perm != 0o4755 {
		t.Errorf("modes/setuid: mode %04o", e.Perm)
	}
	if e := tree["modes/sticky"]; e == nil || e.Perm != 0o1777 {
		t.Errorf("modes/sticky: %+v, want a 1777 directory", e)
	}
	if e := file("xattr/file", "with attributes\n"); e.Xattrs["user.note"] != `"hello"` || e.Xattrs["security.capability"] == "" {
		t.Errorf("xattr/file: xattrs %v, want user.note and security.capability", e.Xattrs)
	}
	if e := file("hl/orig", "hardlinked content\n"); len(e.Links) != 2 || e.UID != 7 || e.Perm != 0o640 {
		t.Errorf("hl/orig: links %v, owner %d, mode %04o; want 2 links, owner 7, 0640", e.Links, e.UID, e.Perm)
	}
	if e := tree["owners/dir"]; e == nil || e.UID != 42 || e.GID != 43 || e.Perm != 0o750 {
		t.Errorf("owners/dir: %+v, want a 0750 directory of 42:43", e)
	}
	if e := tree["devnodes/null"]; e == nil || e.Type != "char" || e.Rdev != "1:3" {
		t.Errorf("devnodes/null: %+v, want char 1:3", e)
	}
	if e := tree["sym/rel"]; e == nil || e.Target != "../etc/app/conf" {
		t.Errorf("sym/rel: %+v", e)
	}
	if e := tree["replace"]; e == nil || e.Type != "file" {
		t.Errorf("replace: %+v, want the file that replaced the directory", e)
	}
}

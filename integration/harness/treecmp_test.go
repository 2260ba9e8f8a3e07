package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var treeTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// writeTree makes a small tree under dir: a directory with a user xattr, two hardlinked
// files, a symlink, a fifo and an empty directory, every time set to treeTime. change, when
// set, alters it before the times are set.
func writeTree(t *testing.T, dir string, change func(dir string)) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p := func(rel string) string { return filepath.Join(dir, rel) }
	must(os.MkdirAll(p("etc/app"), 0o755))
	must(os.MkdirAll(p("empty"), 0o711))
	must(os.WriteFile(p("etc/app/conf"), []byte("version 1\n"), 0o644))
	must(os.WriteFile(p("etc/app/data"), []byte("data\n"), 0o640))
	must(os.Link(p("etc/app/data"), p("etc/app/data-link")))
	must(os.WriteFile(p("plain"), []byte("plain\n"), 0o644))
	must(os.Symlink("../etc/app/conf", p("etc/conf-link")))
	must(unix.Mkfifo(p("fifo"), 0o600))
	must(unix.Setxattr(p("etc/app/conf"), "user.note", []byte("hello"), 0))
	if change != nil {
		change(dir)
	}
	must(filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		ts := []unix.Timespec{unix.NsecToTimespec(treeTime.UnixNano()), unix.NsecToTimespec(treeTime.UnixNano())}
		return unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW)
	}))
}

// compareVariant builds the base tree and a changed copy and returns their differences.
func compareVariant(t *testing.T, change func(dir string)) []string {
	t.Helper()
	a, b := t.TempDir(), t.TempDir()
	writeTree(t, a, nil)
	writeTree(t, b, change)
	diffs, err := CompareTrees(a, b)
	if err != nil {
		t.Fatal(err)
	}
	return diffs
}

// wantDiff fails unless the first difference is exactly want.
func wantDiff(t *testing.T, diffs []string, want string) {
	t.Helper()
	if len(diffs) == 0 || diffs[0] != want {
		t.Fatalf("differences %q, want first %q", diffs, want)
	}
}

func TestCompareTreesEqual(t *testing.T) {
	if diffs := compareVariant(t, nil); len(diffs) != 0 {
		t.Fatalf("two equal trees differ: %q", diffs)
	}
}

func TestCompareTreesReportsEachDifference(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(dir string) error
		want   string
	}{
		{"mode", func(d string) error { return os.Chmod(filepath.Join(d, "etc/app/conf"), 0o600) },
			"etc/app/conf: mode 0644 != 0600"},
		{"setuid", func(d string) error { return os.Chmod(filepath.Join(d, "plain"), 0o644|os.ModeSetuid) },
			"plain: mode 0644 != 4644"},
		{"xattr value", func(d string) error {
			return unix.Setxattr(filepath.Join(d, "etc/app/conf"), "user.note", []byte("bye"), 0)
		}, `etc/app/conf: xattr user.note "hello" != "bye"`},
		{"xattr missing", func(d string) error { return unix.Removexattr(filepath.Join(d, "etc/app/conf"), "user.note") },
			`etc/app/conf: xattr user.note="hello" only in a`},
		{"content, same size", func(d string) error {
			return os.WriteFile(filepath.Join(d, "plain"), []byte("PLAIN\n"), 0o644)
		}, "plain: content sha256 "},
		{"symlink target", func(d string) error {
			p := filepath.Join(d, "etc/conf-link")
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Symlink("/etc/app/conf", p)
		}, `etc/conf-link: symlink target "../etc/app/conf" != "/etc/app/conf"`},
		{"hardlink broken", func(d string) error {
			p := filepath.Join(d, "etc/app/data-link")
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.WriteFile(p, []byte("data\n"), 0o640)
		}, "etc/app/data: hardlinked with [etc/app/data-link] != []"},
		{"missing file", func(d string) error { return os.Remove(filepath.Join(d, "plain")) },
			"plain: only in a (file 0644 0:0 6 bytes)"},
		{"extra empty dir", func(d string) error { return os.Mkdir(filepath.Join(d, "empty/nested"), 0o755) },
			"empty/nested: only in b (dir 0755 0:0)"},
		{"type", func(d string) error {
			p := filepath.Join(d, "fifo")
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.WriteFile(p, nil, 0o600)
		}, "fifo: type fifo != file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diffs := compareVariant(t, func(d string) {
				if err := tc.change(d); err != nil {
					t.Fatal(err)
				}
			})
			if len(diffs) == 0 || !strings.HasPrefix(diffs[0], tc.want) {
				t.Fatalf("differences %q, want first to start with %q", diffs, tc.want)
			}
		})
	}
}

func TestCompareTreesMtime(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	writeTree(t, a, nil)
	writeTree(t, b, nil)
	later := treeTime.Add(time.Second)
	if err := os.Chtimes(filepath.Join(b, "plain"), later, later); err != nil {
		t.Fatal(err)
	}
	// A directory's time is not compared (see CompareTrees).
	if err := os.Chtimes(filepath.Join(b, "empty"), later, later); err != nil {
		t.Fatal(err)
	}
	diffs, err := CompareTrees(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 1 || !strings.HasPrefix(diffs[0], "plain: mtime (ns) ") {
		t.Fatalf("differences %q, want only plain's mtime", diffs)
	}
}

// TestTreeDiffOverlayMarkers compares trees as overlayfs upper directories hold them: a
// whiteout is a character device 0:0, an opaque directory has trusted.overlay.opaque.
func TestTreeDiffOverlayMarkers(t *testing.T) {
	base := func() Tree {
		return Tree{
			".":        {Type: "dir", Perm: 0o755},
			"del":      {Type: "dir", Perm: 0o755},
			"del/gone": {Type: "char", Whiteout: true, Rdev: "0:0"},
			"opq":      {Type: "dir", Perm: 0o755, Xattrs: map[string]string{"trusted.overlay.opaque": `"y"`}},
		}
	}
	if diffs := base().Diff(base()); len(diffs) != 0 {
		t.Fatalf("equal trees differ: %q", diffs)
	}
	noWhiteout := base()
	delete(noWhiteout, "del/gone")
	wantDiff(t, base().Diff(noWhiteout), "del/gone: only in a (whiteout (char 0:0) 0000 0:0)")

	notOpaque := base()
	notOpaque["opq"] = &TreeEntry{Type: "dir", Perm: 0o755}
	wantDiff(t, base().Diff(notOpaque), `opq: xattr trusted.overlay.opaque="y" only in a`)

	device := base()
	device["del/gone"] = &TreeEntry{Type: "char", Rdev: "1:3"}
	wantDiff(t, base().Diff(device), "del/gone: type whiteout (char 0:0) != char")
}

// TestCompareTreesOnDiskOverlayMarkers makes real whiteouts, opaque markers, owners and a
// file capability, which need root (CAP_MKNOD, CAP_SYS_ADMIN for trusted.*, CAP_CHOWN).
func TestCompareTreesOnDiskOverlayMarkers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod, trusted.* xattrs and chown need root")
	}
	markers := func(d string) error {
		if err := unix.Mknod(filepath.Join(d, "gone"), unix.S_IFCHR, 0); err != nil {
			return err
		}
		if err := unix.Setxattr(filepath.Join(d, "empty"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
			return err
		}
		if err := unix.Setxattr(filepath.Join(d, "plain"), "security.capability", []byte(FileCapability(capNetRaw)), 0); err != nil {
			return err
		}
		return os.Lchown(filepath.Join(d, "etc/conf-link"), 1234, 5678)
	}
	build := func(change func(d string) error) string {
		d := t.TempDir()
		writeTree(t, d, func(d string) {
			if err := markers(d); err != nil {
				t.Fatal(err)
			}
			if change != nil {
				if err := change(d); err != nil {
					t.Fatal(err)
				}
			}
		})
		return d
	}
	a := build(nil)
	for _, tc := range []struct {
		name   string
		change func(d string) error
		want   string
	}{
		{"equal", nil, ""},
		{"missing whiteout", func(d string) error { return os.Remove(filepath.Join(d, "gone")) },
			"gone: only in a (whiteout (char 0:0) 0000 0:0)"},
		{"not opaque", func(d string) error { return unix.Removexattr(filepath.Join(d, "empty"), "trusted.overlay.opaque") },
			`empty: xattr trusted.overlay.opaque="y" only in a`},
		{"capability lost", func(d string) error { return unix.Removexattr(filepath.Join(d, "plain"), "security.capability") },
			`plain: xattr security.capability=`},
		{"symlink owner", func(d string) error { return os.Lchown(filepath.Join(d, "etc/conf-link"), 1, 1) },
			"etc/conf-link: owner 1234:5678 != 1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diffs, err := CompareTrees(a, build(tc.change))
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if len(diffs) != 0 {
					t.Fatalf("equal trees differ: %q", diffs)
				}
				return
			}
			if len(diffs) == 0 || !strings.HasPrefix(diffs[0], tc.want) {
				t.Fatalf("differences %q, want first to start with %q", diffs, tc.want)
			}
		})
	}
}

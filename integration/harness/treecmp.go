package harness

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// TreeEntry is what CompareTrees compares of one path of a directory tree.
type TreeEntry struct {
	// Type is dir, file, symlink, char, block, fifo or socket; Whiteout marks overlayfs'
	// whiteout (a character device 0:0).
	Type     string
	Whiteout bool
	// Perm holds the permission, setuid, setgid and sticky bits.
	Perm     uint32
	UID, GID uint32
	// Size and SHA256 of a regular file's content; Target of a symlink; Rdev of a device.
	Size   int64
	SHA256 string
	Target string
	Rdev   string
	// MtimeNs is the modification time; compared for everything but directories and
	// whiteouts (see CompareTrees).
	MtimeNs int64
	// Xattrs holds every extended attribute, values quoted (they may be binary).
	Xattrs map[string]string
	// Links lists the other paths of the tree that are the same inode (hardlinks), sorted.
	Links []string
}

// Tree maps slash-separated paths relative to a root ("." is the root) to their entries.
type Tree map[string]*TreeEntry

// ScanTree walks root without following symlinks and records every path's TreeEntry.
func ScanTree(root string) (Tree, error) {
	tree := Tree{}
	inodes := map[[2]uint64][]string{}
	err := filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		e, st, err := scanEntry(path)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		tree[rel] = e
		if e.Type != "dir" && st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			inodes[key] = append(inodes[key], rel)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, paths := range inodes {
		for _, p := range paths {
			for _, other := range paths {
				if other != p {
					tree[p].Links = append(tree[p].Links, other)
				}
			}
			sort.Strings(tree[p].Links)
		}
	}
	return tree, nil
}

func scanEntry(path string) (*TreeEntry, *unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil, nil, err
	}
	e := &TreeEntry{
		Perm:    st.Mode & 0o7777,
		UID:     st.Uid,
		GID:     st.Gid,
		MtimeNs: st.Mtim.Nano(),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Type = "dir"
	case unix.S_IFREG:
		e.Type = "file"
		e.Size = st.Size
		sum, err := fileSHA256(path)
		if err != nil {
			return nil, nil, err
		}
		e.SHA256 = sum
	case unix.S_IFLNK:
		e.Type = "symlink"
		target, err := os.Readlink(path)
		if err != nil {
			return nil, nil, err
		}
		e.Target = target
	case unix.S_IFCHR:
		e.Type = "char"
		e.Whiteout = st.Rdev == 0
	case unix.S_IFBLK:
		e.Type = "block"
	case unix.S_IFIFO:
		e.Type = "fifo"
	case unix.S_IFSOCK:
		e.Type = "socket"
	default:
		e.Type = fmt.Sprintf("mode %#o", st.Mode&unix.S_IFMT)
	}
	if e.Type == "char" || e.Type == "block" {
		e.Rdev = fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	xattrs, err := readXattrs(path)
	if err != nil {
		return nil, nil, err
	}
	e.Xattrs = xattrs
	return e, &st, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// readXattrs lists and reads every extended attribute of path itself (not of a symlink's
// target).
func readXattrs(path string) (map[string]string, error) {
	size, err := unix.Llistxattr(path, nil)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil || size == 0 {
		return nil, err
	}
	buf := make([]byte, size)
	n, err := unix.Llistxattr(path, buf)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vsize, err := unix.Lgetxattr(path, name, nil)
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		val := make([]byte, vsize)
		if vsize > 0 {
			if vsize, err = unix.Lgetxattr(path, name, val); err != nil {
				return nil, fmt.Errorf("xattr %s: %w", name, err)
			}
		}
		out[name] = strconv.Quote(string(val[:vsize]))
	}
	return out, nil
}

// CompareTrees compares the trees under a and b and returns their differences, sorted by
// path, each naming the path and what differs ("only in a", type, permissions and
// setuid/setgid/sticky bits, owner, size and content hash, symlink target, device numbers,
// whiteout, extended attributes — trusted.overlay.opaque included —, modification time,
// hardlink group). The roots themselves are compared without their times and owner: a
// snapshot's root directory is the snapshotter's, not the layer's. Directory times are not
// compared: creating a path inside a directory the layer does not list moves its time to
// the moment of the unpack. Whiteout times are not compared either: the applier creates
// them without setting a time.
func CompareTrees(a, b string) ([]string, error) {
	ta, err := ScanTree(a)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", a, err)
	}
	tb, err := ScanTree(b)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", b, err)
	}
	return ta.Diff(tb), nil
}

// Diff lists the differences between t (a) and other (b); see CompareTrees.
func (t Tree) Diff(other Tree) []string {
	var paths []string
	for p := range t {
		paths = append(paths, p)
	}
	for p := range other {
		if _, ok := t[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	var out []string
	for _, p := range paths {
		ea, eb := t[p], other[p]
		switch {
		case eb == nil:
			out = append(out, fmt.Sprintf("%s: only in a (%s)", p, ea.describe()))
		case ea == nil:
			out = append(out, fmt.Sprintf("%s: only in b (%s)", p, eb.describe()))
		default:
			for _, d := range ea.diff(eb, p == ".") {
				out = append(out, p+": "+d)
			}
		}
	}
	return out
}

func (e *TreeEntry) describe() string {
	s := fmt.Sprintf("%s %04o %d:%d", e.kind(), e.Perm, e.UID, e.GID)
	switch {
	case e.Type == "symlink":
		s += " -> " + e.Target
	case e.Type == "file":
		s += fmt.Sprintf(" %d bytes", e.Size)
	}
	return s
}

func (e *TreeEntry) kind() string {
	if e.Whiteout {
		return "whiteout (char 0:0)"
	}
	return e.Type
}

func (e *TreeEntry) diff(o *TreeEntry, root bool) []string {
	var out []string
	add := func(what string, a, b any) {
		out = append(out, fmt.Sprintf("%s %v != %v", what, a, b))
	}
	if e.kind() != o.kind() {
		add("type", e.kind(), o.kind())
		return out
	}
	if e.Perm != o.Perm {
		add("mode", fmt.Sprintf("%04o", e.Perm), fmt.Sprintf("%04o", o.Perm))
	}
	if !root && (e.UID != o.UID || e.GID != o.GID) {
		add("owner", fmt.Sprintf("%d:%d", e.UID, e.GID), fmt.Sprintf("%d:%d", o.UID, o.GID))
	}
	if e.Size != o.Size {
		add("size", e.Size, o.Size)
	}
	if e.SHA256 != o.SHA256 {
		add("content sha256", e.SHA256, o.SHA256)
	}
	if e.Target != o.Target {
		add("symlink target", strconv.Quote(e.Target), strconv.Quote(o.Target))
	}
	if e.Rdev != o.Rdev {
		add("device", e.Rdev, o.Rdev)
	}
	if e.Type != "dir" && !e.Whiteout && e.MtimeNs != o.MtimeNs {
		add("mtime (ns)", e.MtimeNs, o.MtimeNs)
	}
	names := map[string]bool{}
	for k := range e.Xattrs {
		names[k] = true
	}
	for k := range o.Xattrs {
		names[k] = true
	}
	sorted := make([]string, 0, len(names))
	for k := range names {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		va, oka := e.Xattrs[k]
		vb, okb := o.Xattrs[k]
		switch {
		case !okb:
			out = append(out, fmt.Sprintf("xattr %s=%s only in a", k, va))
		case !oka:
			out = append(out, fmt.Sprintf("xattr %s=%s only in b", k, vb))
		case va != vb:
			add("xattr "+k, va, vb)
		}
	}
	if !slices.Equal(e.Links, o.Links) {
		add("hardlinked with", e.Links, o.Links)
	}
	return out
}

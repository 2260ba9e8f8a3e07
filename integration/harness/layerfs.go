package harness

import (
	"archive/tar"
	"encoding/binary"
	"strings"
)

// TarEntry is one entry of a hand-written layer (LayerSpec.Entries): the header as given
// (ModTime defaults to the layer epoch, Size to len(Data)) and, for a regular file, Data.
type TarEntry struct {
	Header tar.Header
	Data   string
}

// TarDir is a directory entry.
func TarDir(name string, mode int64) TarEntry {
	return TarEntry{Header: tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimSuffix(name, "/") + "/", Mode: mode}}
}

// TarFile is a regular file holding data.
func TarFile(name, data string, mode int64) TarEntry {
	return TarEntry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, Data: data}
}

// TarSymlink is a symbolic link to target.
func TarSymlink(name, target string) TarEntry {
	return TarEntry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

// TarHardlink is a hard link to target, an entry earlier in the same layer. It carries the
// target's mode, owner and xattrs, as tar writes them: an applier sets them again on the
// shared inode.
func TarHardlink(name string, target TarEntry) TarEntry {
	h := target.Header
	return TarEntry{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: h.Name, Mode: h.Mode, Uid: h.Uid, Gid: h.Gid, PAXRecords: h.PAXRecords}}
}

// TarChar is a character device node.
func TarChar(name string, major, minor int64, mode int64) TarEntry {
	return TarEntry{Header: tar.Header{Typeflag: tar.TypeChar, Name: name, Devmajor: major, Devminor: minor, Mode: mode}}
}

// TarFifo is a named pipe.
func TarFifo(name string, mode int64) TarEntry {
	return TarEntry{Header: tar.Header{Typeflag: tar.TypeFifo, Name: name, Mode: mode}}
}

// TarWhiteout deletes path (a file or a whole directory) of the layers below: the OCI
// whiteout `.wh.<name>`.
func TarWhiteout(path string) TarEntry {
	dir, base := "", path
	if i := strings.LastIndex(path, "/"); i >= 0 {
		dir, base = path[:i+1], path[i+1:]
	}
	return TarFile(dir+".wh."+base, "", 0o644)
}

// TarOpaque hides everything the layers below hold in dir: the OCI opaque whiteout
// `<dir>/.wh..wh..opq`.
func TarOpaque(dir string) TarEntry {
	return TarFile(strings.TrimSuffix(dir, "/")+"/.wh..wh..opq", "", 0o644)
}

// Owner returns e owned by uid:gid.
func (e TarEntry) Owner(uid, gid int) TarEntry {
	e.Header.Uid, e.Header.Gid = uid, gid
	return e
}

// Xattr returns e with the extended attribute name set to value (a PAX
// `SCHILY.xattr.<name>` record, as tar and containerd write them).
func (e TarEntry) Xattr(name, value string) TarEntry {
	records := map[string]string{}
	for k, v := range e.Header.PAXRecords {
		records[k] = v
	}
	records["SCHILY.xattr."+name] = value
	e.Header.PAXRecords = records
	return e
}

func writeEntries(tw *tar.Writer, entries []TarEntry) error {
	for _, e := range entries {
		hdr := e.Header
		if hdr.ModTime.IsZero() {
			hdr.ModTime = layerEpoch
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.Data))
		}
		if len(hdr.PAXRecords) > 0 {
			hdr.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			if _, err := tw.Write([]byte(e.Data)); err != nil {
				return err
			}
		}
	}
	return nil
}

// FileCapability is a security.capability value (struct vfs_cap_data, revision 2) granting
// the capability numbered bit as permitted and effective, as `setcap cap_xxx+ep` writes it.
func FileCapability(bit uint) string {
	const revision2, effective = 0x02000000, 0x1
	var b [20]byte
	binary.LittleEndian.PutUint32(b[0:], revision2|effective)
	if bit < 32 {
		binary.LittleEndian.PutUint32(b[4:], 1<<bit) // permitted, low word
	} else {
		binary.LittleEndian.PutUint32(b[12:], 1<<(bit-32)) // permitted, high word
	}
	return string(b[:])
}

// capNetRaw is CAP_NET_RAW's number.
const capNetRaw = 13

// UnpackTestImage is a runnable image (busybox first) whose three upper layers hold what a
// layer applier must get right: the second deletes files and a directory of the first
// (`.wh.` whiteouts), makes a directory opaque (`.wh..wh..opq`) and changes a file's content,
// mode and owner; the third re-creates a deleted file and writes into directories it does
// not list itself (their owner, mode and xattrs come from the layers below). The first holds
// hardlinks, symlinks (absolute, relative, dangling, to a directory), setuid/setgid files,
// a sticky directory, non-root owners, user.* and security.capability xattrs, empty
// directories, a character device and a fifo.
func UnpackTestImage() ImageSpec {
	return ImageSpec{Layers: []LayerSpec{
		{Busybox: true},
		{Entries: unpackBaseLayer()},
		{Entries: unpackDeleteLayer()},
		{Entries: unpackRecreateLayer()},
	}}
}

func unpackBaseLayer() []TarEntry {
	hlOrig := TarFile("hl/orig", "hardlinked content\n", 0o640).Owner(7, 8).Xattr("user.linked", "yes")
	return []TarEntry{
		TarDir("etc", 0o755),
		TarDir("etc/app", 0o755),
		TarFile("etc/app/conf", "version 1\n", 0o644),
		TarFile("etc/app/remove-me", "remove me\n", 0o644),

		TarDir("del", 0o755),
		TarFile("del/gone.txt", "gone\n", 0o644),
		TarFile("del/gone2.txt", "gone too\n", 0o644),
		TarFile("del/keep.txt", "kept\n", 0o644),
		TarDir("deldir", 0o755),
		TarDir("deldir/sub", 0o700),
		TarFile("deldir/sub/file", "in a deleted directory\n", 0o644),

		TarDir("opq", 0o755).Xattr("user.layer", "base"),
		TarFile("opq/old1", "hidden by the opaque directory\n", 0o644),
		TarDir("opq/sub", 0o755),
		TarFile("opq/sub/old2", "hidden too\n", 0o644),

		TarDir("hl", 0o755),
		hlOrig,
		TarHardlink("hl/link", hlOrig),
		TarHardlink("hl/link2", hlOrig),

		TarDir("sym", 0o755),
		TarSymlink("sym/abs", "/etc/app/conf"),
		TarSymlink("sym/rel", "../etc/app/conf"),
		TarSymlink("sym/dangling", "/does/not/exist"),
		TarSymlink("sym/dir", "../etc"),
		TarSymlink("sym/owned", "rel").Owner(1234, 5678),

		TarDir("modes", 0o755),
		TarFile("modes/setuid", "#!/bin/sh\n", 0o4755),
		TarFile("modes/setgid", "#!/bin/sh\n", 0o2755),
		TarDir("modes/sticky", 0o1777),
		TarFile("modes/ro", "read only\n", 0o400),
		TarFile("modes/none", "no permissions\n", 0o000),

		TarDir("owners", 0o755),
		TarFile("owners/file", "owned\n", 0o644).Owner(1234, 5678),
		TarDir("owners/dir", 0o750).Owner(42, 43).Xattr("user.dir", "parent"),

		TarDir("xattr", 0o755),
		TarFile("xattr/file", "with attributes\n", 0o755).
			Xattr("user.note", "hello").
			Xattr("user.empty", "").
			Xattr("security.capability", FileCapability(capNetRaw)),
		TarDir("xattr/dir", 0o755).Xattr("user.d", "1"),

		TarDir("empty", 0o755),
		TarDir("empty/nested", 0o711),

		TarDir("devnodes", 0o755),
		TarChar("devnodes/null", 1, 3, 0o666),
		TarFifo("devnodes/fifo", 0o600),

		TarDir("replace", 0o755),
		TarFile("replace/inner", "a directory that becomes a file\n", 0o644),
		TarFile("replace-file", "a file that becomes a directory\n", 0o644),
	}
}

func unpackDeleteLayer() []TarEntry {
	return []TarEntry{
		TarDir("del", 0o755),
		TarWhiteout("del/gone.txt"),
		TarWhiteout("del/gone2.txt"),
		TarWhiteout("deldir"),

		TarDir("etc", 0o755),
		TarDir("etc/app", 0o755),
		TarWhiteout("etc/app/remove-me"),
		TarFile("etc/app/conf", "version 2\n", 0o600).Owner(1, 1),

		TarDir("opq", 0o755).Xattr("user.layer", "deletes"),
		TarOpaque("opq"),
		TarFile("opq/new1", "new in the opaque directory\n", 0o644),

		TarDir("modes", 0o755),
		TarFile("modes/ro", "read only, now for all\n", 0o444),

		TarFile("replace", "now a file\n", 0o644),
		TarDir("replace-file", 0o755),
		TarFile("replace-file/inside", "now a directory\n", 0o644),
	}
}

func unpackRecreateLayer() []TarEntry {
	symFile := TarFile("sym/abs", "a symlink that became a file\n", 0o644)
	return []TarEntry{
		// No entries for del/, owners/dir/ or opq/: the applier makes them from the layers
		// below (owner, mode and xattrs copied up).
		TarFile("del/gone2.txt", "back\n", 0o644),
		TarFile("owners/dir/newfile", "in a parent from below\n", 0o600).Owner(42, 43),
		TarFile("opq/new2", "second file in the opaque directory\n", 0o644),
		symFile,
		TarHardlink("sym/abs-link", symFile),
	}
}

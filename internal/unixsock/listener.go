package unixsock

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// TempSuffix is added to the socket path for the name the socket is bound under before it
// is renamed into place; the path plus this must fit a unix socket address (107 bytes).
const TempSuffix = ".tmp"

// staleProbeTimeout bounds the dial that tells a stale socket file from a live one.
const staleProbeTimeout = time.Second

// Listen binds a daemon unix socket at path (the content/diff socket, the admin socket).
//
// The socket is private to root (0600) unless group is set (a group name or numeric gid):
// then it is 0660 and owned by that group. A directory Listen creates for it is 0700 (0750
// with the group); an existing directory is left as it is.
//
// A socket file left by a daemon that died is replaced; a socket another process still
// serves is not, and Listen fails. The socket appears under its name only once its mode
// and owner are set (it is bound under a temporary name and renamed), so no client ever
// reaches it with the wrong permissions. Closing the listener removes the socket, unless
// another daemon has replaced it meanwhile.
func Listen(ctx context.Context, path, group string) (net.Listener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("socket %q: not an absolute path: %w", path, errdefs.ErrInvalidArgument)
	}
	gid := -1
	if group != "" {
		var err error
		if gid, err = lookupGroup(group); err != nil {
			return nil, err
		}
	}
	if err := ensureDir(ctx, filepath.Dir(path), gid); err != nil {
		return nil, err
	}
	if err := removeStale(ctx, path); err != nil {
		return nil, err
	}

	tmp := path + TempSuffix
	os.Remove(tmp) // left by a daemon that died between binding and renaming
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ul := ln.(*net.UnixListener)
	// The name bound is the temporary one: the listener must not unlink it, it unlinks
	// the final name itself on Close.
	ul.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ul.Close()
		os.Remove(tmp)
		return nil, err
	}
	mode := os.FileMode(0o600)
	if gid >= 0 {
		if err := os.Chown(tmp, -1, gid); err != nil {
			return fail(fmt.Errorf("chown socket to group %s: %w", group, err))
		}
		mode = 0o660
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(fmt.Errorf("chmod socket: %w", err))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("move socket into place: %w", err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("stat socket: %w", err))
	}
	return &socketListener{UnixListener: ul, path: path, file: fi}, nil
}

// socketListener removes its socket file on Close, if it is still the one it bound.
type socketListener struct {
	*net.UnixListener
	path string
	file fs.FileInfo
	once sync.Once
}

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.file) {
			os.Remove(l.path)
		}
	})
	return err
}

// Addr names the final socket path rather than the temporary name bound.
func (l *socketListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func lookupGroup(group string) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil {
		if gid < 0 {
			return 0, fmt.Errorf("socket group %q: negative gid: %w", group, errdefs.ErrInvalidArgument)
		}
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("socket group %q: %v: %w", group, err, errdefs.ErrInvalidArgument)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("socket group %q: gid %q: %w", group, g.Gid, errdefs.ErrInvalidArgument)
	}
	return gid, nil
}

// ensureDir creates the socket's directory when missing, 0700 or (with a group) 0750.
func ensureDir(ctx context.Context, dir string, gid int) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("socket directory %s is not a directory: %w", dir, errdefs.ErrInvalidArgument)
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	mode := os.FileMode(0o700)
	if gid >= 0 {
		if err := os.Chown(dir, -1, gid); err != nil {
			return fmt.Errorf("chown socket directory: %w", err)
		}
		mode = 0o750
	}
	// MkdirAll's mode is filtered by the umask; the mode wanted is exact.
	if err := os.Chmod(dir, mode); err != nil {
		return fmt.Errorf("chmod socket directory: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"path": dir, "mode": mode}).Debug("created socket directory")
	return nil
}

// removeStale removes a socket file nobody serves. A live socket, or anything that is not a
// socket, is left alone and reported.
func removeStale(ctx context.Context, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat socket: %w", err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("socket path %s exists and is not a socket: %w", path, errdefs.ErrAlreadyExists)
	}
	conn, err := net.DialTimeout("unix", path, staleProbeTimeout)
	if err == nil {
		conn.Close()
		return fmt.Errorf("socket %s is served by another process (another containerd-blobcache?): %w", path, errdefs.ErrAlreadyExists)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	log.G(ctx).WithField("path", path).Info("removed stale socket")
	return nil
}

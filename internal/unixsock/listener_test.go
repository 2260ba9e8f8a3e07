package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bc-ln-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestListenCreatesPrivateSocket(t *testing.T) {
	base := shortDir(t)
	path := filepath.Join(base, "run", "bc", "content.sock")
	ln, err := Listen(t.Context(), path, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := mode(t, path); got != 0o600 {
		t.Errorf("socket mode %o, want 600", got)
	}
	if got := mode(t, filepath.Dir(path)); got != 0o700 {
		t.Errorf("directory mode %o, want 700", got)
	}
	if ln.Addr().String() != path {
		t.Errorf("Addr = %s", ln.Addr())
	}
	if _, err := os.Stat(path + TempSuffix); !os.IsNotExist(err) {
		t.Errorf("temporary socket left: %v", err)
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("accept: %v", err)
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
}

func TestListenGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another group needs root")
	}
	base := shortDir(t)
	path := filepath.Join(base, "d", "c.sock")
	ln, err := Listen(t.Context(), path, "4242")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for p, want := range map[string]os.FileMode{path: 0o660, filepath.Dir(path): 0o750} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want || fi.Sys().(*syscall.Stat_t).Gid != 4242 {
			t.Errorf("%s: mode %o gid %d, want %o gid 4242", p, fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Gid, want)
		}
	}
	if _, err := Listen(t.Context(), filepath.Join(base, "x.sock"), "no-such-group-blobcache"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unknown group: %v", err)
	}
}

func TestListenExistingDirectoryUntouched(t *testing.T) {
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(t.Context(), filepath.Join(dir, "c.sock"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := mode(t, dir); got != 0o755 {
		t.Errorf("existing directory's mode changed to %o", got)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "c.sock")
	// What a daemon killed with -9 leaves: a socket file nobody accepts on.
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not there: %v", err)
	}
	ln, err := Listen(t.Context(), path, "")
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer ln.Close()
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	c.Close()
}

func TestListenRefusesLiveSocketAndOtherFiles(t *testing.T) {
	dir := shortDir(t)
	live := filepath.Join(dir, "live.sock")
	ln, err := Listen(t.Context(), live, "")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Listen(t.Context(), live, ""); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second Listen on a live socket: %v, want already exists", err)
	}
	if _, err := os.Lstat(live); err != nil {
		t.Errorf("live socket removed: %v", err)
	}

	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(t.Context(), regular, ""); !errdefs.IsAlreadyExists(err) {
		t.Errorf("Listen over a regular file: %v", err)
	}
	if _, err := Listen(t.Context(), "relative.sock", ""); !errdefs.IsInvalidArgument(err) {
		t.Errorf("relative path: %v", err)
	}
}

// A daemon shutting down must not remove the socket of the daemon that replaced it.
func TestCloseLeavesReplacedSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "c.sock")
	ln, err := Listen(t.Context(), path, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("Close removed the replacing socket: %v", err)
	}
}

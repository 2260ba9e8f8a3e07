package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// nobody is the unprivileged user the daemon runs as in TestRunsAsNonRoot.
const nobody = 65534

// TestRunsAsNonRoot runs the real daemon binary as uid/gid 65534 with nothing but its state
// directory and its socket directory writable to it, and pulls through it with ctr: the
// pull is served by the daemon, its store and content socket belong to that user, and the
// socket is 0600.
func TestRunsAsNonRoot(t *testing.T) {
	harness.RequireRoot(t)
	harness.Tools(t)
	reg := harness.StartRegistry(t)
	o := origin{reg: reg, proxy: harness.StartCountingProxy(t, reg.URL)}

	// base (root's, 0755): the binary copy, the config and the log; state/ and run/ belong
	// to the daemon's user, 0700, and are all it can write.
	base := harness.ShortTempDir(t, "bcn-")
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	state, run := filepath.Join(base, "state"), filepath.Join(base, "run")
	for _, d := range []string{state, run} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	socket, adminSocket := filepath.Join(run, "content.sock"), filepath.Join(run, "admin.sock")
	cfg := harness.DaemonConfig{Root: filepath.Join(state, "store"), Registries: []string{o.proxy.Host}, AdminAddress: adminSocket, Extra: harness.ContentConfig(socket)}
	daemon := harness.StartDaemonAs(t, cfg, &syscall.Credential{Uid: nobody, Gid: nobody}, base)

	for name, path := range map[string]string{"content": socket, "admin": adminSocket} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 || st.Uid != nobody {
			t.Errorf("%s socket: mode %v owner %d, want a 0600 socket owned by %d", name, fi.Mode(), st.Uid, nobody)
		}
	}
	if pst, err := os.Stat("/proc/" + strconv.Itoa(daemon.Process.PID())); err != nil || pst.Sys().(*syscall.Stat_t).Uid != nobody {
		t.Fatalf("daemon process not running as %d: %v", nobody, err)
	}

	hostsDir := t.TempDir()
	if _, err := harness.WriteHostsToml(hostsDir, o.proxy.Host, daemon.URL); err != nil {
		t.Fatal(err)
	}
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: hostsDir})
	im, ref := o.push(t, "nonroot/img", "v1", smallImage(70000))
	ctrd.Pull(t, "nonroot", ref, hostsDir)
	assertServedByDaemon(t, daemon, o, im.Blobs())
	for _, b := range im.Blobs() {
		if fi, err := os.Stat(daemon.BlobPath(b.Digest)); err == nil && fi.Sys().(*syscall.Stat_t).Uid != nobody {
			t.Errorf("blob %s owned by %d", b.Digest, fi.Sys().(*syscall.Stat_t).Uid)
		}
	}
	if err := daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("content socket left after a clean stop: %v", err)
	}
	verifyStoreOffline(t, cfg.Root)
}

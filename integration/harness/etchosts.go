package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRegistryName is a registry name that resolves to 127.0.0.1 only for processes started
// with an EtcHosts file from WriteEtcHosts. Go's proxy rules (and curl's) never send a
// loopback IP or "localhost" through a forward proxy, so a test of HTTPS_PROXY needs a
// registry that is on loopback but named otherwise.
const TestRegistryName = "registry.blobcache.test"

// WriteEtcHosts writes a hosts(5) file mapping each name to 127.0.0.1 (plus the usual
// localhost line) and returns its path.
func WriteEtcHosts(t testing.TB, names ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("127.0.0.1 localhost\n::1 localhost\n")
	for _, n := range names {
		fmt.Fprintf(&b, "127.0.0.1 %s\n", n)
	}
	path := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// withEtcHosts runs argv in a mount namespace of its own where hostsFile is bind-mounted on
// /etc/hosts: the machine's /etc/hosts is untouched and no other process sees the names.
// unshare and sh exec in place, so the recorded PID is the program's.
func withEtcHosts(t testing.TB, hostsFile string, argv ...string) *exec.Cmd {
	t.Helper()
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare not found: install Debian's util-linux and mount packages")
	}
	args := append([]string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c",
		`mount --bind "$0" /etc/hosts && exec "$@"`, hostsFile}, argv...)
	return exec.Command(unshare, args...)
}

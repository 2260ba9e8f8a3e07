package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// The shipped unit passes `systemd-analyze verify` (which needs no running systemd) with
// ExecStart pointing at a real build of the daemon, and keeps the properties the daemon
// relies on.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze := harness.RequireCommand(t, "systemd-analyze", "systemd")
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(root, "contrib", "systemd", "containerd-blobcache.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Type=notify", "Before=containerd.service", "Restart=always", "ProtectSystem=strict",
		"ReadWritePaths=/var/lib/containerd-blobcache /run/containerd-blobcache",
		"NoNewPrivileges=yes", "ProtectHome=yes", "PrivateTmp=yes", "LimitNOFILE=",
	} {
		if !strings.Contains(string(unit), "\n"+want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	bin := harness.DaemonBinary(t)
	verify := func(text string) (string, error) {
		dir := t.TempDir()
		path := filepath.Join(dir, "containerd-blobcache.service")
		// verify checks that ExecStart's binary exists: point it at the one just built.
		text = strings.ReplaceAll(text, "/usr/local/bin/containerd-blobcache", bin)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(analyze, "verify", path)
		// Without a terminal systemd would log its findings to the journal, not to us.
		cmd.Env = append(os.Environ(), "SYSTEMD_LOG_TARGET=console", "SYSTEMD_LOG_COLOR=0")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := verify(string(unit)); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The check can fail: systemd-analyze reports a broken copy of the unit.
	if out, _ := verify(strings.Replace(string(unit), "\nType=notify\n", "\nType=notifyy\n", 1)); !strings.Contains(out, "notifyy") {
		t.Fatalf("systemd-analyze verify did not report Type=notifyy: %q", out)
	}
}

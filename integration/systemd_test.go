package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/diff"
)

// The shipped unit passes `systemd-analyze verify` (which needs no running systemd) with
// ExecStart pointing at a real build of the daemon, and keeps the properties the daemon
// relies on.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		harness.Unavailable(t, "systemd-analyze not found (apt-get install systemd): %v", err)
	}
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

// Proxy mode's drop-in for the daemon's unit verifies together with the unit, and grants the
// capabilities the diff API needs — those and no more — while the unit alone (mirror mode)
// grants none of the extra ones.
func TestSystemdProxyDropInVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		harness.Unavailable(t, "systemd-analyze not found (apt-get install systemd): %v", err)
	}
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(root, "contrib", "systemd", "containerd-blobcache.service"))
	if err != nil {
		t.Fatal(err)
	}
	dropIn, err := os.ReadFile(filepath.Join(root, "contrib", "systemd", "containerd-blobcache.service.d", "proxy-mode.conf"))
	if err != nil {
		t.Fatal(err)
	}
	bin := harness.DaemonBinary(t)
	verify := func(dropInText string) string {
		dir := t.TempDir()
		unitPath := filepath.Join(dir, "containerd-blobcache.service")
		if err := os.WriteFile(unitPath, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/containerd-blobcache", bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		// systemd-analyze reads drop-ins from <unit>.d next to the unit.
		if err := os.Mkdir(unitPath+".d", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(unitPath+".d", "proxy-mode.conf"), []byte(dropInText), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(analyze, "verify", unitPath)
		cmd.Env = append(os.Environ(), "SYSTEMD_LOG_TARGET=console", "SYSTEMD_LOG_COLOR=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Sprintf("%v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if out := verify(string(dropIn)); out != "" {
		t.Fatalf("systemd-analyze verify with the drop-in: %s", out)
	}
	// The drop-in is read: a broken copy is reported.
	if out := verify(strings.Replace(string(dropIn), "\nPrivateDevices=no\n", "\nPrivateDevices=noo\n", 1)); !strings.Contains(out, "noo") {
		t.Fatalf("systemd-analyze verify did not report the drop-in's PrivateDevices=noo: %q", out)
	}

	granted := capabilityLine(t, string(dropIn), true)
	if want := diff.RequiredCapabilities(); !slices.Equal(slices.Sorted(slices.Values(granted)), slices.Sorted(slices.Values(want))) {
		t.Errorf("drop-in grants %v, the diff API needs %v", granted, want)
	}
	for _, c := range capabilityLine(t, string(unit), false) {
		if c == "CAP_SYS_ADMIN" || c == "CAP_MKNOD" {
			t.Errorf("mirror mode's unit grants %s", c)
		}
	}
	for _, want := range []string{"ReadWritePaths=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs", "SystemCallFilter=@mount", "RestrictSUIDSGID=no", "UMask=0022"} {
		if !strings.Contains(string(dropIn), "\n"+want+"\n") {
			t.Errorf("drop-in lacks %q", want)
		}
	}
}

// capabilityLine is the last CapabilityBoundingSet= list of a unit file; reset says that an
// empty CapabilityBoundingSet= must come first (a drop-in replaces the unit's set).
func capabilityLine(t *testing.T, text string, reset bool) []string {
	t.Helper()
	var last []string
	sawReset := false
	for _, l := range strings.Split(text, "\n") {
		v, ok := strings.CutPrefix(l, "CapabilityBoundingSet=")
		if !ok {
			continue
		}
		if strings.TrimSpace(v) == "" {
			sawReset = true
			continue
		}
		last = strings.Fields(v)
	}
	if reset && !sawReset {
		t.Error("CapabilityBoundingSet is not reset before the drop-in's list: systemd would add to the unit's")
	}
	if last == nil {
		t.Fatal("no CapabilityBoundingSet= list")
	}
	return last
}

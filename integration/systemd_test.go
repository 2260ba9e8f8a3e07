package integration

import (
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
	v := newSystemdVerifier(t)
	unit := string(v.unit)
	for _, want := range []string{
		"Type=notify", "Before=containerd.service", "Restart=always", "ProtectSystem=strict",
		"ReadWritePaths=/var/lib/containerd-blobcache /run/containerd-blobcache",
		"NoNewPrivileges=yes", "ProtectHome=yes", "PrivateTmp=yes", "LimitNOFILE=",
	} {
		if !strings.Contains(unit, "\n"+want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	if out, err := v.verify(t, unit, ""); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The check can fail: systemd-analyze reports a broken copy of the unit.
	if out, _ := v.verify(t, strings.Replace(unit, "\nType=notify\n", "\nType=notifyy\n", 1), ""); !strings.Contains(out, "notifyy") {
		t.Fatalf("systemd-analyze verify did not report Type=notifyy: %q", out)
	}
}

// Proxy mode's drop-in for the daemon's unit verifies together with the unit, and grants the
// capabilities the diff API needs — those and no more — while the unit alone (mirror mode)
// grants none of the extra ones.
func TestSystemdProxyDropInVerifies(t *testing.T) {
	v := newSystemdVerifier(t)
	unit := v.unit
	dropIn := readContrib(t, "systemd", "containerd-blobcache.service.d", "proxy-mode.conf")
	if out, err := v.verify(t, string(unit), string(dropIn)); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify with the drop-in: %v\n%s", err, out)
	}
	// The drop-in is read: a broken copy is reported.
	if out, _ := v.verify(t, string(unit), strings.Replace(string(dropIn), "\nPrivateDevices=no\n", "\nPrivateDevices=noo\n", 1)); !strings.Contains(out, "noo") {
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

// systemdVerifier runs `systemd-analyze verify` on copies of the shipped unit (and, when
// given, a drop-in for it) with ExecStart pointing at a real build of the daemon.
type systemdVerifier struct {
	analyze, bin string
	unit         []byte
}

// newSystemdVerifier finds systemd-analyze and reads contrib/systemd/containerd-blobcache.service.
func newSystemdVerifier(t *testing.T) *systemdVerifier {
	t.Helper()
	analyze := harness.RequireCommand(t, "systemd-analyze", "systemd")
	return &systemdVerifier{analyze: analyze, bin: harness.DaemonBinary(t), unit: readContrib(t, "systemd", "containerd-blobcache.service")}
}

// readContrib reads a file under contrib/.
func readContrib(t *testing.T, path ...string) []byte {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(append([]string{root, "contrib"}, path...)...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// verify returns what systemd-analyze says about unit with dropIn ("" for none) as
// containerd-blobcache.service.d/proxy-mode.conf: nothing when both are fine.
func (v *systemdVerifier) verify(t *testing.T, unit, dropIn string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "containerd-blobcache.service")
	// verify checks that ExecStart's binary exists: point it at the one just built.
	unit = strings.ReplaceAll(unit, "/usr/local/bin/containerd-blobcache", v.bin)
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	if dropIn != "" {
		// systemd-analyze reads drop-ins from <unit>.d next to the unit.
		if err := os.Mkdir(path+".d", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(path+".d", "proxy-mode.conf"), []byte(dropIn), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(v.analyze, "verify", path)
	// Without a terminal systemd would log its findings to the journal, not to us.
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_TARGET=console", "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// startDaemonWithout starts the environment's daemon (with the diff API) with capabilities
// taken out of its bounding set by setpriv (util-linux): as root, a process gets only what its
// bounding set allows at exec.
func startDaemonWithout(t *testing.T, e *proxyEnv, caps ...string) {
	t.Helper()
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		harness.Unavailable(t, "setpriv not found (Debian package util-linux): %v", err)
	}
	drop := make([]string, len(caps))
	for i, c := range caps {
		drop[i] = "-" + c
	}
	// A wrapper that execs setpriv, which execs the daemon: the PID the harness records is
	// the daemon's.
	wrapper := filepath.Join(t.TempDir(), "blobcache-without-caps")
	script := fmt.Sprintf("#!/bin/sh\nexec %s --inh-caps=-all --bounding-set=%s -- %s \"$@\"\n", setpriv, strings.Join(drop, ","), harness.DaemonBinary(t))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	e.daemon.Config.Extra += harness.DiffConfig
	e.daemon = harness.StartDaemonFrom(t, wrapper, e.daemon.Config)
}

// A daemon without CAP_SYS_ADMIN and CAP_MKNOD says so once at start; each Apply is answered
// with an error naming them, and containerd's pulls (ctr through the transfer service, and CRI
// PullImage) fail with that error, promptly, instead of hanging or unpacking half an image.
func TestProxyDiffWithoutCapabilitiesFailsClearly(t *testing.T) {
	e := newProxyEnv(t, false)
	startDaemonWithout(t, e, "sys_admin", "mknod")
	c := harness.StartContainerdContentProxy(t, harness.ContainerdOptions{HostsDir: e.hostsDir, ContentSharingPolicy: "shared", Diff: true}, e.socket, true)
	_, ref := e.push(t, "test/diff-nocaps", "v1", proxyImageSpec(t, 7300))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	out, _, err := c.PullE(ctx, "nocaps", ref, e.hostsDir)
	took := time.Since(start)
	if err == nil {
		t.Fatalf("pull succeeded without the capabilities to unpack:\n%s", out)
	}
	if ctx.Err() != nil {
		t.Fatalf("pull still running after %v: %v", took, err)
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, "ctr: "); i >= 0 {
		msg = msg[i:] // the error ctr reports, without its progress output
	}
	t.Logf("ctr pull failed after %v: %s", took.Round(time.Millisecond), msg)
	for _, want := range []string{"CAP_SYS_ADMIN", "CAP_MKNOD"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ctr's error does not name %s", want)
		}
	}
	if strings.Contains(err.Error(), "CAP_CHOWN") {
		t.Error("ctr's error names CAP_CHOWN, which the daemon has")
	}
	if n := diffOps(t, e.daemon, "apply", "error"); n < 1 {
		t.Errorf("%v failed applies counted, want at least 1", n)
	}
	if n := diffOps(t, e.daemon, "apply", "ok"); n != 0 {
		t.Errorf("%v applies succeeded", n)
	}

	_, err = c.CRIPullE(ctx, ref)
	if err == nil || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		t.Errorf("CRI PullImage: %v, want an error naming CAP_SYS_ADMIN", err)
	}
	if ctx.Err() != nil {
		t.Fatal("CRI PullImage did not end in time")
	}

	log, err := os.ReadFile(e.daemon.Process.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "the daemon lacks capabilities to apply layers"); n != 1 {
		t.Errorf("the missing capabilities are logged %d times at start, want once", n)
	}
	if !strings.Contains(string(log), "missing=\"CAP_SYS_ADMIN, CAP_MKNOD\"") {
		t.Errorf("the start-up warning does not list CAP_SYS_ADMIN, CAP_MKNOD:\n%s", harness.TailFile(e.daemon.Process.LogPath, 4<<10))
	}
}

package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
	"github.com/containerd-blobcache/containerd-blobcache/internal/ociimage"
)

// buildStaticDaemon builds the daemon as `make image` does (CGO_ENABLED=0: the image has no
// libc) into dir.
func buildStaticDaemon(t *testing.T, dir string) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "containerd-blobcache")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, harness.DaemonPackage)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	return bin
}

// TestImageRunsInContainerd: the image `make image` builds (internal/ociimage) is imported
// with `ctr image import`, run by containerd with runc on the host network as its
// unprivileged user, and serves a pull as the mirror.
func TestImageRunsInContainerd(t *testing.T) {
	harness.RequireRoot(t)
	harness.Tools(t)
	if _, err := exec.LookPath("runc"); err != nil {
		harness.Unavailable(t, "ctr run needs runc (apt-get install -y runc)")
	}
	dir := t.TempDir()
	const name = "registry.invalid/containerd-blobcache:test"
	img, err := ociimage.Build(ociimage.Options{Binary: buildStaticDaemon(t, dir), Name: name, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "image.oci.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.WriteArchive(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	reg := harness.StartRegistry(t)
	o := origin{reg: reg, proxy: harness.StartCountingProxy(t, reg.URL)}
	im, ref := o.push(t, "test/through-image", "v1", harness.ImageSpec{Layers: []harness.LayerSpec{{Seed: 9400, Files: 2, FileSize: 256 << 10}}})
	hostsDir := t.TempDir()
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: hostsDir})
	const ns = "blobcache-image"
	out := ctrd.Ctr(t, ns, "image", "import", archive)
	t.Logf("ctr image import:\n%s", out)
	if images := ctrd.Ctr(t, ns, "image", "ls", "-q"); !strings.Contains(images, name) {
		t.Fatalf("imported image not listed as %s:\n%s", name, images)
	}

	// The daemon's configuration, bind-mounted read-only where the DaemonSet mounts its
	// ConfigMap; loopback ports of its own (host network).
	cfgDir := filepath.Join(dir, "config")
	if err := os.Mkdir(cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	addr, metrics := harness.FreeAddr(t), harness.FreeAddr(t)
	cfg := fmt.Sprintf(`log_level = "debug"
[mirror]
  address = %q
[metrics]
  address = %q
# ctr's default spec mounts a tmpfs over /run (the DaemonSet mounts an emptyDir there).
[admin]
  address = "/tmp/blobcache/admin.sock"
[upstream]
  plain_http = [%q]
  allow_private_networks = [%q]
`, addr, metrics, o.proxy.Host, o.proxy.Host)
	if err := os.WriteFile(filepath.Join(cfgDir, "config.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// t.TempDir is private to root; the container's user must reach the mount.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const id = "blobcache-image-test"
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = ctrd.CtrE(ctx, ns, "task", "kill", "-s", "SIGKILL", id)
		harness.WaitFor(t, "task "+id+" to stop", 30*time.Second, 50*time.Millisecond, func() error {
			if _, err := ctrd.CtrE(ctx, ns, "task", "delete", id); err != nil && !strings.Contains(err.Error(), "not found") {
				return err
			}
			return nil
		})
		_, _ = ctrd.CtrE(ctx, ns, "container", "delete", id)
	})
	logFile := filepath.Join(dir, "container.log")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("container log:\n%s", harness.TailFile(logFile, 8<<10))
		}
	})
	ctrd.Ctr(t, ns, "run", "-d", "--net-host", "--log-uri", "file://"+logFile,
		"--mount", "type=bind,src="+cfgDir+",dst=/etc/containerd-blobcache,options=rbind:ro",
		name, id, ociimage.BinaryPath, "serve", "--config", "/etc/containerd-blobcache/config.toml")

	client := &http.Client{Timeout: 2 * time.Second}
	harness.WaitFor(t, "the containerised mirror's /v2/", 60*time.Second, 50*time.Millisecond, func() error {
		resp, err := client.Get("http://" + addr + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
	if uid := taskUID(t, ctrd, ns, id); uid != ociimage.UID {
		t.Errorf("the daemon runs as uid %d, want the image's user %d", uid, ociimage.UID)
	}

	if _, err := harness.WriteHostsToml(hostsDir, o.proxy.Host, "http://"+addr); err != nil {
		t.Fatal(err)
	}
	o.proxy.Reset()
	ctrd.Pull(t, "through-image", ref, hostsDir)
	c := o.proxy.Snapshot()
	if direct := c.Direct(); len(direct.Requests) != 0 {
		t.Errorf("containerd went to the origin itself (%d requests):\n%s", len(direct.Requests), direct)
	}
	gets := c.ViaMirror().BlobGETs()
	for _, b := range im.Blobs() {
		if gets[b.Digest] != 1 {
			t.Errorf("blob %s fetched through the containerised mirror %d times, want 1", b.Digest, gets[b.Digest])
		}
	}
}

// taskUID is the real uid of the task's process, from /proc.
func taskUID(t *testing.T, c *harness.Containerd, ns, id string) int {
	t.Helper()
	var pid string
	for _, line := range strings.Split(c.Ctr(t, ns, "task", "ls"), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			pid = f[1]
		}
	}
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if pid == "" || err != nil {
		t.Fatalf("task %s: pid %q: %v", id, pid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			uid, err := strconv.Atoi(strings.Fields(rest)[0])
			if err != nil {
				t.Fatal(err)
			}
			return uid
		}
	}
	t.Fatalf("no Uid line in /proc/%s/status", pid)
	return -1
}

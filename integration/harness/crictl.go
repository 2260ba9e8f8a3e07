package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// crictlTimeout bounds every crictl invocation; crictl's own --timeout bounds each of its
// RPCs.
const crictlTimeout = 5 * time.Minute

// RequireCrictl fails (under CI) or skips the test when cri-tools' crictl is not in the
// tools directory, and returns its path.
func (tp *ToolPaths) RequireCrictl(t testing.TB) string {
	t.Helper()
	if !isExecutable(tp.Crictl) {
		Unavailable(t, "crictl not found in %s (run `make tools`: it installs cri-tools' crictl)", tp.Dir)
	}
	return tp.Crictl
}

// CrictlE runs the real crictl against this containerd's CRI services (runtime and image
// endpoint both its socket; an empty config file, so that nothing under /etc is read) and
// returns its stdout; on error the error includes stderr.
func (c *Containerd) CrictlE(ctx context.Context, t testing.TB, args ...string) (string, error) {
	t.Helper()
	bin := c.tools.RequireCrictl(t)
	cfg := filepath.Join(c.Dir, "crictl.yaml")
	if _, err := os.Stat(cfg); os.IsNotExist(err) {
		if err := os.WriteFile(cfg, nil, 0o644); err != nil {
			return "", err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, crictlTimeout)
	defer cancel()
	endpoint := "unix://" + c.Socket
	full := append([]string{"--config", cfg, "--runtime-endpoint", endpoint, "--image-endpoint", endpoint, "--timeout", "4m"}, args...)
	cmd := exec.CommandContext(ctx, bin, full...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("crictl %s: %w\nstdout:\n%s\nstderr:\n%s", strings.Join(full, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// CrictlPull runs `crictl pull image` and fails the test on error; it returns the image
// reference crictl prints ("Image is up to date for <ref>").
func (c *Containerd) CrictlPull(t testing.TB, image string) string {
	t.Helper()
	start := time.Now()
	out, err := c.CrictlE(context.Background(), t, "pull", image)
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimSpace(out)
	if i := strings.LastIndex(ref, " "); i >= 0 {
		ref = ref[i+1:]
	}
	t.Logf("crictl pulled %s as %s in %v", image, ref, time.Since(start).Round(time.Millisecond))
	return ref
}

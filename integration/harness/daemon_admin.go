package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Restart starts the daemon again with the same configuration (root, address, admin
// socket) after it stopped or was killed, and waits until /v2/ answers.
func (d *Daemon) Restart(t testing.TB) {
	t.Helper()
	if exited, _ := d.Process.Exited(); !exited {
		t.Fatalf("restart: daemon pid %d still running", d.Process.PID())
	}
	bin := d.bin
	if bin == "" {
		bin = DaemonBinary(t)
	}
	cmd := exec.Command(bin, "serve", "--config", d.ConfigPath)
	cmd.Dir = filepath.Dir(d.ConfigPath)
	d.Process = startProcess(t, "containerd-blobcache", d.Process.LogPath, d.NS.wrap(cmd))
	waitHTTP200With(t, d.Client, d.Process, d.URL+"/v2/", 60*time.Second)
}

// CLI runs `containerd-blobcache ARGS... --address ADMIN` and returns its stdout, stderr and
// exit code. The admin socket is appended so that every admin command reaches this daemon.
func (d *Daemon) CLI(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	full := append([]string{args[0], "--address", d.Config.AdminAddress}, args[1:]...)
	cmd := exec.CommandContext(ctx, DaemonBinary(t), full...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("run %v: %v", full, err)
	}
	return out.String(), errOut.String(), code
}

// MustCLI is CLI that fails the test on a non-zero exit.
func (d *Daemon) MustCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, code := d.CLI(t, args...)
	if code != 0 {
		t.Fatalf("containerd-blobcache %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// FillFiles lists what is in the daemon's fills/ directory.
func (d *Daemon) FillFiles(t testing.TB) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(d.Config.Root, "fills"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// String describes the daemon for messages.
func (d *Daemon) String() string { return fmt.Sprintf("daemon %s (root %s)", d.Addr, d.Config.Root) }

// ScrapeMetrics reads the daemon's /metrics and parses the families.
func (d *Daemon) ScrapeMetrics() (map[string]*dto.MetricFamily, error) {
	if d.MetricsURL == "" {
		return nil, errors.New("daemon has no metrics listener")
	}
	resp, err := d.Client.Get(d.MetricsURL + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("/metrics: %s: %s", resp.Status, b)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

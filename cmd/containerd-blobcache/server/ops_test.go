package server

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/internal/sdnotify"
)

// The daemon tells systemd READY=1 only once its listeners accept (a Type=notify unit is
// started then), and STOPPING=1 when a shutdown begins; /readyz follows the same states.
func TestReadinessNotificationAndProbes(t *testing.T) {
	sockPath := filepath.Join(t.TempDir(), "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	t.Setenv(sdnotify.SocketEnv, sockPath)

	cfg := config.Default()
	cfg.Root = t.TempDir()
	cfg.Mirror.Address = "127.0.0.1:0"
	cfg.Metrics.Address = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(url string) int {
		resp, err := client.Get(url)
		if err != nil {
			return -1
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()

	buf := make([]byte, 512)
	notify.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := notify.Read(buf)
	if err != nil {
		t.Fatalf("no readiness notification: %v", err)
	}
	if got := string(buf[:n]); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	// READY=1 promised that the listeners accept: no retry here.
	if code := get("http://" + srv.MirrorAddress() + "/v2/"); code != http.StatusOK {
		t.Fatalf("mirror after READY=1: %d", code)
	}
	ops := "http://" + srv.MetricsAddress()
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200} {
		if code := get(ops + path); code != want {
			t.Errorf("%s: %d, want %d", path, code, want)
		}
	}

	cancel()
	notify.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err = notify.Read(buf)
	if err != nil {
		t.Fatalf("no stopping notification: %v", err)
	}
	if got := string(buf[:n]); got != "STOPPING=1" {
		t.Fatalf("notification %q, want STOPPING=1", got)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if code := get(ops + "/healthz"); code != -1 {
		t.Errorf("metrics listener still answers after shutdown: %d", code)
	}
}

// A state directory or socket path that cannot be created stops the daemon at start with an
// error naming the path.
func TestUncreatablePathsGiveClearErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	base := config.Default()
	base.Root = filepath.Join(dir, "root")
	base.Mirror.Address = "127.0.0.1:0"
	base.Metrics.Address = ""

	rootUnderFile := base
	rootUnderFile.Root = filepath.Join(file, "state")
	socketUnderFile := base
	socketUnderFile.Content.Enabled = true
	socketUnderFile.Content.Address = filepath.Join(file, "run", "content.sock")
	metricsTaken := base
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	metricsTaken.Metrics.Address = taken.Addr().String()

	for name, tc := range map[string]struct {
		cfg  config.Config
		want []string
	}{
		"state directory": {rootUnderFile, []string{"(root)", rootUnderFile.Root, "not a directory"}},
		"content socket":  {socketUnderFile, []string{"content.address", socketUnderFile.Content.Address, "not a directory"}},
		"metrics address": {metricsTaken, []string{"metrics.address", taken.Addr().String(), "address already in use"}},
	} {
		srv, err := New(context.Background(), tc.cfg)
		if err == nil {
			srv.Close()
			t.Errorf("%s: New succeeded", name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", name, err, w)
			}
		}
	}
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// versionVar is the variable `make build` sets with -ldflags -X.
const versionVar = "github.com/containerd-blobcache/containerd-blobcache/internal/version.Version"

// A binary built the way `make build` builds it reports the -ldflags version everywhere it
// shows one: the version command, the start-up log line, build_info in /metrics and stats.
func TestVersionFromLdflags(t *testing.T) {
	const want = "v0.0.0-ldflags-test"
	dir := t.TempDir()
	bin := filepath.Join(dir, "containerd-blobcache")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X "+versionVar+"="+want, "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	out, err := exec.CommandContext(ctx, bin, "version").CombinedOutput()
	if err != nil || string(out) != "containerd-blobcache "+want+"\n" {
		t.Fatalf("version: %v, printed %q", err, out)
	}

	admin := filepath.Join(dir, "admin.sock")
	cfgPath := filepath.Join(dir, "config.toml")
	cfg := fmt.Sprintf("root = %q\n[mirror]\naddress = \"127.0.0.1:0\"\n[metrics]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = %q\n",
		filepath.Join(dir, "root"), admin)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	serve := exec.Command(bin, "serve", "--config", cfgPath)
	stderr, err := serve.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		serve.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			serve.Process.Kill()
			<-exited
		}
	})
	serving := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), `msg="containerd-blobcache serving"`) {
				serving <- sc.Text()
				break
			}
		}
		io.Copy(io.Discard, stderr) // the pipe must be drained before Wait
		exited <- serve.Wait()
	}()
	var line string
	select {
	case line = <-serving:
	case err := <-exited:
		exited <- err
		t.Fatalf("serve exited before serving: %v", err)
	case <-ctx.Done():
		t.Fatal("no start-up log line")
	}
	if !strings.Contains(line, " version="+want) {
		t.Errorf("start-up log line without version=%s: %s", want, line)
	}

	metricsAddr := logField(line, "metrics")
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("metrics (start-up line %s): %v", line, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	info := `containerd_blobcache_build_info{goversion="` + runtime.Version() + `",version="` + want + `"} 1`
	if !strings.Contains(string(body), info) {
		t.Errorf("/metrics lacks %s", info)
	}

	out, err = exec.CommandContext(ctx, bin, "stats", "--address", admin).CombinedOutput()
	if err != nil {
		t.Fatalf("stats: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "daemon:    containerd-blobcache "+want+"\n") {
		t.Errorf("stats does not show the version:\n%s", out)
	}
	out, err = exec.CommandContext(ctx, bin, "stats", "--json", "--address", admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"version": "`+want+`"`) {
		t.Errorf("stats --json: %v, no version:\n%s", err, out)
	}
}

// logField is the value of key=value in a text-format log line.
func logField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

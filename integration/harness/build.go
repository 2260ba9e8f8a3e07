package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// plainBuild is the daemon built without -race, for benchmarks: the race detector slows
// the daemon several times over and would measure the detector, not the code.
var plainBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// DaemonBinaryNoRace builds ./cmd/containerd-blobcache without -race once per test binary
// and returns its path. CleanupBuilds (called by Main) removes it.
func DaemonBinaryNoRace(t testing.TB) string {
	t.Helper()
	plainBuild.once.Do(func() {
		plainBuild.dir, plainBuild.path, plainBuild.err = buildDaemon()
	})
	if plainBuild.err != nil {
		t.Fatalf("building the daemon: %v", plainBuild.err)
	}
	return plainBuild.path
}

func buildDaemon(flags ...string) (dir, path string, err error) {
	root, err := RepoRoot()
	if err != nil {
		return "", "", err
	}
	dir, err = os.MkdirTemp("", "blobcache-build-")
	if err != nil {
		return "", "", err
	}
	path = filepath.Join(dir, "containerd-blobcache")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	args := append(append([]string{"build"}, flags...), "-o", path, DaemonPackage)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		return dir, "", fmt.Errorf("go %v: %v\n%s", args, err, b)
	}
	fmt.Fprintf(os.Stderr, "built %s %v in %v\n", DaemonPackage, flags, time.Since(start).Round(time.Millisecond))
	return dir, path, nil
}

func cleanupPlainBuild() {
	if plainBuild.dir != "" {
		os.RemoveAll(plainBuild.dir)
	}
}

// StartProcess starts cmd as a child of the test, known by its recorded PID, with its output
// in logPath; it is stopped (SIGTERM, then SIGKILL after a bound) when the test ends. For
// processes the harness has no helper for (benchmarks start nginx with it).
func StartProcess(t testing.TB, name, logPath string, cmd *exec.Cmd) *Process {
	t.Helper()
	return startProcess(t, name, logPath, cmd)
}

// WaitHTTP200 polls url until it answers 200, failing fast when p exits.
func WaitHTTP200(t testing.TB, p *Process, url string, timeout time.Duration) {
	t.Helper()
	waitHTTP200(t, p, url, timeout)
}

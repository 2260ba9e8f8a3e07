package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// VersionPackage is the package whose Version variable the builds set with -ldflags -X,
// as `make build` does.
const VersionPackage = ModulePath + "/internal/version"

// daemonBuild is one build of the daemon, made once per test binary.
type daemonBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// raceBuild is the daemon built with -race, for the integration tests (DaemonBinary);
// plainBuild without it, for benchmarks: the race detector slows the daemon several times
// over and would measure the detector, not the code.
var raceBuild, plainBuild daemonBuild

func (b *daemonBuild) binary(t testing.TB, flags ...string) string {
	t.Helper()
	b.once.Do(func() {
		b.dir, b.path, b.err = buildDaemon(flags...)
	})
	if b.err != nil {
		t.Fatalf("building the daemon: %v", b.err)
	}
	return b.path
}

func (b *daemonBuild) cleanup() {
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}

// DaemonBinaryNoRace builds ./cmd/containerd-blobcache without -race once per test binary
// and returns its path. CleanupBuilds (called by Main) removes it.
func DaemonBinaryNoRace(t testing.TB) string {
	t.Helper()
	return plainBuild.binary(t)
}

// SourceVersion is the version the harness builds into the daemon, as `make build` does:
// `git describe --tags --always --dirty` of the repository, "dev" outside git.
func SourceVersion() string {
	root, err := RepoRoot()
	if err != nil {
		return "dev"
	}
	out, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "dev"
	}
	return strings.TrimSpace(string(out))
}

// buildDaemon builds the daemon into a new temporary directory with the extra go build
// flags and the version of SourceVersion.
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
	args := append([]string{"build"}, flags...)
	args = append(args, "-ldflags", "-X "+VersionPackage+".Version="+SourceVersion(), "-o", path, DaemonPackage)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		return dir, "", fmt.Errorf("go %v: %v\n%s", args, err, b)
	}
	fmt.Fprintf(os.Stderr, "built %s %v in %v\n", DaemonPackage, flags, time.Since(start).Round(time.Millisecond))
	return dir, path, nil
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

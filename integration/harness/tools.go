package harness

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ModulePath is the module the harness belongs to; RepoRoot looks for its go.mod.
const ModulePath = "github.com/containerd-blobcache/containerd-blobcache"

// ToolsDirEnv names the directory holding containerd, ctr, the shim and registry.
const ToolsDirEnv = "BLOBCACHE_TOOLS_DIR"

// ToolPaths are the absolute paths of the pinned binaries the integration tests run.
type ToolPaths struct {
	Dir        string
	Containerd string
	Ctr        string
	Shim       string
	Registry   string
	// Crictl is cri-tools' crictl; only the tests that run it require it (RequireCrictl).
	Crictl string
}

// Unavailable fails a test whose prerequisite is missing here, whatever the environment:
// the suite never passes by skipping. The message says what to install; `make test` (as
// root) installs all of it.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Fatalf("integration prerequisite missing: %s", fmt.Sprintf(format, args...))
}

// RequireRoot fails the test unless it runs as root (containerd, overlayfs and mounts need it).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "integration tests need root (running as uid %d): run `make test` or `make integration` as root", os.Geteuid())
	}
}

// RequireDebianFile fails the test unless path exists, naming the Debian package that
// provides it.
func RequireDebianFile(t testing.TB, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		Unavailable(t, "%v: %s", err, debianHint(pkg))
	}
}

// RequireCommand returns the path of the command name on PATH (where containerd and its
// shim look too), or fails the test naming the Debian package that provides it.
func RequireCommand(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "%v: %s", err, debianHint(pkg))
	}
	return p
}

// debianHint says how to get a Debian package the tests use: .ci/install-deps lists them
// all, and `make test`, `make integration` and `make bench` run it.
func debianHint(pkg string) string {
	return fmt.Sprintf("install the Debian package %s (`apt-get install %s`); `make test` and `make bench` install the packages they need when run as root", pkg, pkg)
}

// Tools locates the pinned binaries: $BLOBCACHE_TOOLS_DIR, or <repo>/.tools/bin.
func Tools(t testing.TB) *ToolPaths {
	t.Helper()
	dir := os.Getenv(ToolsDirEnv)
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			Unavailable(t, "%s is not set and the repository root was not found: %v", ToolsDirEnv, err)
		}
		dir = filepath.Join(root, ".tools", "bin")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatalf("tools dir: %v", err)
	}
	tp := &ToolPaths{
		Dir:        dir,
		Containerd: filepath.Join(dir, "containerd"),
		Ctr:        filepath.Join(dir, "ctr"),
		Shim:       filepath.Join(dir, "containerd-shim-runc-v2"),
		Registry:   filepath.Join(dir, "registry"),
		Crictl:     filepath.Join(dir, "crictl"),
	}
	var missing []string
	for _, p := range []string{tp.Containerd, tp.Ctr, tp.Shim, tp.Registry} {
		if !isExecutable(p) {
			missing = append(missing, filepath.Base(p))
		}
	}
	if len(missing) > 0 {
		Unavailable(t, "tools %s not found in %s (run `make tools` or set %s)",
			strings.Join(missing, ", "), dir, ToolsDirEnv)
	}
	return tp
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// RepoRoot walks up from the working directory to the go.mod of this module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if isModuleRoot(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of " + ModulePath + " above the working directory")
		}
		dir = parent
	}
}

func isModuleRoot(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`) == ModulePath
		}
	}
	return false
}

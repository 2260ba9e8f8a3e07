package harness

import (
	"bufio"
	"errors"
	"fmt"
	"os"
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

// Unavailable stops a test that cannot run here. Under CI (CI set to anything) a missing
// prerequisite is a failure, so the suite never passes by skipping; elsewhere it is a skip.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatalf("integration prerequisite missing under CI: %s", msg)
	}
	t.Skipf("skipping: %s", msg)
}

// RequireRoot stops the test unless it runs as root (containerd, overlayfs and mounts need it).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "integration tests need root (running as uid %d)", os.Geteuid())
	}
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

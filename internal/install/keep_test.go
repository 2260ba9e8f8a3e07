package install

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	hostsconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
)

// hostsOrder is where containerd itself sends a registry's pulls, in order, as it reads
// hostsDir: scheme://host/path of each host, the registry last.
func hostsOrder(t *testing.T, hostsDir, registry string) []string {
	t.Helper()
	hosts, err := hostsconfig.ConfigureHosts(context.Background(), hostsconfig.HostOptions{
		HostDir: hostsconfig.HostDirFromRoot(hostsDir),
	})(registry)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, h := range hosts {
		out = append(out, h.Scheme+"://"+h.Host+h.Path)
	}
	return out
}

// install --fix carries registry.mirrors endpoints into hosts.toml, in order, after the
// cache; uninstall gives back the original config and removes what it wrote.
func TestInstallCarriesRegistryMirrors(t *testing.T) {
	n := newNode(t, "config-v2-mirrors.toml")
	withTwo := strings.Replace(n.original,
		`endpoint = ["https://mirror.example.invalid"]`,
		`endpoint = ["https://first.example.invalid", "second.example.invalid:5000", "https://registry-1.docker.io"]`, 1)
	if withTwo == n.original {
		t.Fatal("testdata changed: no docker.io endpoint to replace")
	}
	n.original = withTwo
	if err := os.WriteFile(n.config, []byte(withTwo), 0o640); err != nil {
		t.Fatal(err)
	}

	// Without --fix nothing is carried (registry.mirrors stays in force).
	if p := mustPlan(t, Install, n.opts(ModeMirror, false)); len(p.Changes) != 1 {
		t.Fatalf("without --fix: %d changes, want only _default:\n%s", len(p.Changes), p.Diff())
	}

	o := n.opts(ModeMirror, true)
	p := mustPlan(t, Install, o)
	if err := p.Apply(); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"docker.io":                {"http://127.0.0.1:5055/v2", "https://first.example.invalid/v2", "https://second.example.invalid:5000/v2", "https://registry-1.docker.io/v2"},
		"registry.example.invalid": {"http://127.0.0.1:5055/v2", "https://mirror.example.invalid/v2", "https://registry.example.invalid/v2"},
		"other.example.invalid":    {"http://127.0.0.1:5055/v2", "https://other.example.invalid/v2"},
	}
	for reg, w := range want {
		if got := hostsOrder(t, n.hosts, reg); fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("%s: containerd tries %v, want %v", reg, got, w)
		}
	}
	if len(p.Notes) == 0 || !strings.Contains(strings.Join(p.Notes, "\n"), "first.example.invalid, https://second.example.invalid:5000") {
		t.Errorf("notes do not say what was carried: %q", p.Notes)
	}
	if again := mustPlan(t, Install, o); len(again.Changes) != 0 || len(again.Findings) != 0 {
		t.Fatalf("second install: %+v\n%s", again.Findings, again.Diff())
	}
	if err := mustPlan(t, Uninstall, o).Apply(); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := n.read(t, n.config); cfg != n.original {
		t.Fatalf("config not restored:\n%s", unified(splitLines(n.original), splitLines(cfg), 2))
	}
	for _, reg := range []string{"docker.io", "registry.example.invalid", DefaultHostsName} {
		if _, err := os.Lstat(filepath.Join(n.hosts, reg)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left after uninstall (%v)", reg, err)
		}
	}
}

// A registry's own hosts.toml (which containerd reads instead of _default) is reported;
// with --fix it gets the cache first and keeps every other byte; uninstall restores it.
func TestInstallRegistryHostsFileGetsCacheFirst(t *testing.T) {
	n := newNode(t, "config-v4-containerd-2.4.2-default.toml")
	path := filepath.Join(n.hosts, "docker.io", "hosts.toml")
	original := `# the team's pull-through mirror
server = "https://registry-1.docker.io"

[host."https://pull-through.example.invalid:8443"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  [host."https://pull-through.example.invalid:8443".header]
    x-team = ["platform"]
`
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(original), 0o600); err != nil {
		t.Fatal(err)
	}

	report := mustPlan(t, Install, n.opts(ModeMirror, false))
	var found bool
	for _, f := range report.Unresolved() {
		found = found || strings.Contains(f.Problem, path+" exists") && strings.Contains(f.Problem, "bypass the cache")
	}
	if !found {
		t.Fatalf("not reported: %+v", report.Findings)
	}
	for _, c := range report.Changes {
		if c.Path == path {
			t.Fatal("changed without --fix")
		}
	}

	o := n.opts(ModeMirror, true)
	p := mustPlan(t, Install, o)
	if len(p.Unresolved()) != 0 {
		t.Fatalf("unresolved: %+v", p.Unresolved())
	}
	if err := p.Apply(); err != nil {
		t.Fatal(err)
	}
	got := hostsOrder(t, n.hosts, "docker.io")
	if w := []string{"http://127.0.0.1:5055/v2", "https://pull-through.example.invalid:8443/v2", "https://registry-1.docker.io/v2"}; fmt.Sprint(got) != fmt.Sprint(w) {
		t.Errorf("containerd tries %v, want %v", got, w)
	}
	after, _ := n.read(t, path)
	if kept := joinLines(withoutMarked(splitLines(after))); kept != original {
		t.Errorf("the file's own lines changed:\n%s", unified(splitLines(original), splitLines(kept), 2))
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode: %v %v", fi.Mode(), err)
	}
	if again := mustPlan(t, Install, o); len(again.Changes) != 0 {
		t.Fatalf("second install: %s", again.Diff())
	}
	if err := mustPlan(t, Uninstall, o).Apply(); err != nil {
		t.Fatal(err)
	}
	if b, _ := n.read(t, path); b != original {
		t.Fatalf("not restored:\n%s", b)
	}
	if _, err := os.Lstat(path + BackupSuffix); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("backup left")
	}
	if cfg, _ := n.read(t, n.config); cfg != n.original {
		t.Fatal("config not restored")
	}
}

// Proxy mode says what happens to the images in containerd's own content store and how to
// keep them; mirror mode does not touch that store and says nothing.
func TestProxyModeWarnsAboutContainerdContent(t *testing.T) {
	n := newNode(t, "config-v4-containerd-2.4.2-default.toml")
	root := filepath.Join(n.dir, "containerd-root")
	cfg := strings.Replace(n.original, "root = '/var/lib/containerd'", "root = "+quote(root), 1)
	if cfg == n.original {
		t.Fatal("testdata changed: no root line")
	}
	if err := os.WriteFile(n.config, []byte(cfg), 0o640); err != nil {
		t.Fatal(err)
	}
	notes := func(mode Mode) string { return strings.Join(mustPlan(t, Install, n.opts(mode, true)).Notes, "\n") }
	if s := notes(ModeProxy); strings.Contains(s, "content store") {
		t.Fatalf("warned about an empty store: %s", s)
	}
	blobs := filepath.Join(root, ContentPluginID, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := os.WriteFile(filepath.Join(blobs, fmt.Sprintf("%064d", i)), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := notes(ModeProxy)
	for _, want := range []string{"holds 3 blobs", "ctr -n NAMESPACE image export", "image import", "pull them again through the cache"} {
		if !strings.Contains(s, want) {
			t.Errorf("proxy-mode note lacks %q: %s", want, s)
		}
	}
	if s := notes(ModeMirror); strings.Contains(s, "content store") {
		t.Errorf("mirror mode warned: %s", s)
	}
}

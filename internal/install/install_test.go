package install

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// node is a copy of a config.toml in a temporary /etc/containerd, with an empty certs.d, and
// the daemon's own config.toml (content API off, no [diff] table).
type node struct {
	dir, config, hosts string
	original           string
	daemon             string
}

const daemonConfigText = `root = "/var/lib/containerd-blobcache"

[content]
  enabled = false
`

func newNode(t *testing.T, testdata string) *node {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", testdata))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	n := &node{dir: dir, config: filepath.Join(dir, "config.toml"), hosts: filepath.Join(dir, "certs.d"), original: string(b), daemon: filepath.Join(dir, "blobcache.toml")}
	if err := os.WriteFile(n.config, b, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.daemon, []byte(daemonConfigText), 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *node) read(t *testing.T, path string) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

// assertUntouched checks that what (a step that must write nothing) left containerd's config,
// the daemon's config and the hosts directory as they were.
func (n *node) assertUntouched(t *testing.T, what string) {
	t.Helper()
	if cfg, _ := n.read(t, n.config); cfg != n.original {
		t.Errorf("%s changed containerd's config", what)
	}
	if cfg, _ := n.read(t, n.daemon); cfg != daemonConfigText {
		t.Errorf("%s changed the daemon's config", what)
	}
	if _, err := os.Lstat(n.hosts); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s created the hosts directory", what)
	}
}

func (n *node) opts(mode Mode, fix bool) Options {
	return Options{Mode: mode, HostsDir: n.hosts, ContainerdConfig: n.config, DaemonConfig: n.daemon, Fix: fix, MirrorURL: "http://127.0.0.1:5055"}
}

func mustPlan(t *testing.T, f func(Options) (*Plan, error), o Options) *Plan {
	t.Helper()
	p, err := f(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Install with --fix then uninstall, on real containerd config files of every format: the
// result is what containerd needs, a second install changes nothing, and uninstall gives back
// the original bytes.
func TestInstallUninstallRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		file    string
		version string
		// findings in mirror mode; proxy mode adds 7 (5 in containerd's config, 2 in the
		// daemon's) on containerd 2.x and refuses version 2 configs.
		findings int
	}{
		{"config-v4-containerd-2.4.2-default.toml", "4", 1},  // config_path unset
		{"config-v2-containerd-1.6.20-default.toml", "2", 1}, // config_path unset
		{"config-v3-node.toml", "3", 1},                      // config_path a list
		{"config-v2-mirrors.toml", "2", 2},                   // no config_path, mirrors set
	} {
		for _, mode := range []Mode{ModeMirror, ModeProxy} {
			t.Run(tc.file+"/"+string(mode), func(t *testing.T) {
				n := newNode(t, tc.file)
				o := n.opts(mode, true)
				if mode == ModeProxy && tc.version == "2" {
					assertProxyRefused(t, n, o)
					return
				}
				p := mustPlan(t, Install, o)
				want := tc.findings
				if mode == ModeProxy {
					want += 7
				}
				if len(p.Findings) != want || len(p.Unresolved()) != 0 {
					t.Fatalf("findings %+v (fixed %v), want %d all fixed; notes %v", p.Findings, p.Fixed, want, p.Notes)
				}
				if err := p.Apply(); err != nil {
					t.Fatal(err)
				}
				cfg, _ := n.read(t, n.config)
				if cp, err := ConfigPath(cfg); err != nil || cp != n.hosts {
					t.Fatalf("config_path after install = %q (%v), want %q\n%s", cp, err, n.hosts, cfg)
				}
				doc, err := decode(cfg)
				if err != nil {
					t.Fatal(err)
				}
				if mirrors, _ := lookup(doc, append(registryKey(configVersion(doc)), "mirrors")...); mirrors != nil && len(mirrors.(map[string]any)) > 0 {
					t.Fatalf("mirrors left: %v", mirrors)
				}
				if mode == ModeProxy {
					if !strings.Contains(cfg, `"`+ContentPluginID+`"`) {
						t.Fatalf("content plugin not disabled:\n%s", cfg)
					}
					if v, _ := lookup(doc, "proxy_plugins", ProxyPluginName, "address"); v != o.ContentAddress && v != "/run/containerd-blobcache/content.sock" {
						t.Fatalf("proxy plugin address %v", v)
					}
					assertDiffInstalled(t, doc, n.daemon)
				}
				hosts, ok := n.read(t, filepath.Join(n.hosts, "_default", "hosts.toml"))
				if !ok || !strings.Contains(hosts, `[host."http://127.0.0.1:5055"]`) {
					t.Fatalf("hosts.toml: %q", hosts)
				}
				if b, ok := n.read(t, n.config+BackupSuffix); !ok || b != n.original {
					t.Fatal("no backup of the original config")
				}
				fi, err := os.Stat(n.config)
				if err != nil || fi.Mode().Perm() != 0o640 {
					t.Fatalf("config mode changed: %v %v", fi.Mode(), err)
				}

				// Idempotent: nothing left to do.
				again := mustPlan(t, Install, o)
				if len(again.Changes) != 0 || len(again.Findings) != 0 {
					t.Fatalf("second install: changes %d, findings %+v\n%s", len(again.Changes), again.Findings, again.Diff())
				}

				un := mustPlan(t, Uninstall, o)
				if err := un.Apply(); err != nil {
					t.Fatal(err)
				}
				if cfg, _ := n.read(t, n.config); cfg != n.original {
					t.Fatalf("uninstall did not restore the config:\n%s", unified(splitLines(n.original), splitLines(cfg), 2))
				}
				if cfg, _ := n.read(t, n.daemon); cfg != daemonConfigText {
					t.Fatalf("uninstall did not restore the daemon's config:\n%s", unified(splitLines(daemonConfigText), splitLines(cfg), 2))
				}
				for _, gone := range []string{n.config + BackupSuffix, n.daemon + BackupSuffix, filepath.Join(n.hosts, "_default", "hosts.toml"), filepath.Join(n.hosts, "_default")} {
					if _, err := os.Lstat(gone); !errors.Is(err, fs.ErrNotExist) {
						t.Errorf("%s left after uninstall (%v)", gone, err)
					}
				}
				if un2 := mustPlan(t, Uninstall, o); len(un2.Changes) != 0 {
					t.Fatalf("second uninstall changes: %s", un2.Diff())
				}
			})
		}
	}
}

// The reverted text itself equals the original (uninstall works without the backup too).
func TestRevertWithoutBackup(t *testing.T) {
	n := newNode(t, "config-v4-containerd-2.4.2-default.toml")
	p := mustPlan(t, Install, n.opts(ModeProxy, true))
	var cfg string
	for _, c := range p.Changes {
		if c.Path == n.config {
			cfg = c.After
		}
	}
	if cfg == "" || revertConfig(cfg) != n.original {
		t.Fatalf("revert differs:\n%s", unified(splitLines(n.original), splitLines(revertConfig(cfg)), 2))
	}
}

// --dry-run: the plan's diff shows every change and nothing is written.
func TestDryRunDiff(t *testing.T) {
	n := newNode(t, "config-v4-containerd-2.4.2-default.toml")
	p := mustPlan(t, Install, n.opts(ModeProxy, true))
	diff := p.Diff()
	for _, want := range []string{
		"--- /dev/null\n+++ " + filepath.Join(n.hosts, "_default", "hosts.toml") + "\n@@ -0,0 +1,4 @@\n",
		`+[host."http://127.0.0.1:5055"] # containerd-blobcache`,
		"--- " + n.config + "\n+++ " + n.config + "\n",
		"-      config_path = ''\n+# containerd-blobcache was:       config_path = ''\n+      config_path = " + quote(n.hosts) + " # containerd-blobcache\n",
		"-disabled_plugins = []\n+# containerd-blobcache was: disabled_plugins = []\n+disabled_plugins = [\"io.containerd.content.v1.content\"] # containerd-blobcache\n",
		"+[proxy_plugins.blobcache] # containerd-blobcache\n",
		"+[proxy_plugins.blobcache-diff] # containerd-blobcache\n+  type = \"diff\" # containerd-blobcache\n",
		"+[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]] # containerd-blobcache\n",
		"+  differ = \"blobcache-diff\" # containerd-blobcache\n",
		"-    default = ['walking']\n+# containerd-blobcache was:     default = ['walking']\n+    default = [\"blobcache-diff\", \"walking\"] # containerd-blobcache\n",
		"--- " + n.daemon + "\n+++ " + n.daemon + "\n",
		"+[diff] # containerd-blobcache\n+  enabled = true # containerd-blobcache\n",
		"(original saved as " + n.config + BackupSuffix + ")",
	} {
		if !strings.Contains(diff, want) {
			t.Errorf("diff lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("diff:\n%s", diff)
	}
	n.assertUntouched(t, "planning")
}

// Without --fix the problems are reported and containerd's config is left alone.
func TestReportWithoutFix(t *testing.T) {
	n := newNode(t, "config-v2-mirrors.toml")
	p := mustPlan(t, Install, n.opts(ModeMirror, false))
	if len(p.Unresolved()) != 2 {
		t.Fatalf("unresolved %+v", p.Unresolved())
	}
	joined := p.Findings[0].Problem + "\n" + p.Findings[1].Problem
	for _, want := range []string{"config_path is not set", "mirrors is set for docker.io, registry.example.invalid"} {
		if !strings.Contains(joined, want) {
			t.Errorf("findings lack %q: %s", want, joined)
		}
	}
	for _, c := range p.Changes {
		if c.Path == n.config {
			t.Fatal("config changed without --fix")
		}
	}
}

// The hosts directory containerd already reads is used when none is given.
func TestHostsDirFromConfigPath(t *testing.T) {
	n := newNode(t, "config-v3-node.toml")
	o := n.opts(ModeMirror, false)
	o.HostsDir = ""
	p := mustPlan(t, Install, o)
	if p.HostsDir != "/etc/containerd/certs.d" {
		t.Fatalf("hosts dir %q", p.HostsDir)
	}
}

// A registry's own hosts.toml gets the mirror in front of its hosts, and gets back exactly
// what it was on uninstall.
func TestExistingRegistryHostsToml(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.example.invalid", "hosts.toml")
	original := `server = "https://registry.example.invalid"

[host."https://pull-through.example.invalid"]
  capabilities = ["pull", "resolve"]
`
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	o := Options{HostsDir: dir, Registries: []string{"registry.example.invalid"}}
	p := mustPlan(t, Install, o)
	if err := p.Apply(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	got := string(b)
	if i, j := strings.Index(got, "127.0.0.1:5055"), strings.Index(got, "pull-through"); i < 0 || j < 0 || i > j || !strings.HasPrefix(got, `server = "https://registry.example.invalid"`) {
		t.Fatalf("mirror not first:\n%s", got)
	}
	if again := mustPlan(t, Install, o); len(again.Changes) != 0 {
		t.Fatalf("second install: %s", again.Diff())
	}
	if err := mustPlan(t, Uninstall, o).Apply(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != original {
		t.Fatalf("not restored:\n%s", b)
	}
	if _, err := os.Lstat(path + BackupSuffix); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("backup left")
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []Options{
		{Mode: "both"},
		{MirrorURL: "127.0.0.1:5055"},
		{Registries: []string{"../etc"}},
	} {
		if _, err := Install(o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

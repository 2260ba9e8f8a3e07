package install

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// assertDiffInstalled checks what proxy mode's diff surface needs in an installed containerd
// config (decoded) and in the daemon's config file.
func assertDiffInstalled(t *testing.T, doc map[string]any, daemonConfig string) {
	t.Helper()
	if v, _ := lookup(doc, "proxy_plugins", DiffPluginName, "type"); v != "diff" {
		t.Errorf("[proxy_plugins.%s] type = %v, want diff", DiffPluginName, v)
	}
	raw, _ := lookup(doc, unpackConfigKey...)
	entries, _ := raw.([]map[string]any)
	found := false
	for _, e := range entries {
		p, err := platforms.Parse(e["platform"].(string))
		found = found || (err == nil && platforms.Only(platforms.DefaultSpec()).Match(p) && e["snapshotter"] == "overlayfs" && e["differ"] == DiffPluginName)
	}
	if !found {
		t.Errorf("no unpack_config entry for the host's overlayfs unpacks with differ %s: %v", DiffPluginName, raw)
	}
	if v, _ := lookup(doc, append(diffServiceKey, "default")...); !slices.Equal(anyStrings(v), []string{DiffPluginName, "walking"}) {
		t.Errorf("diff service default = %v", v)
	}
	cfg, err := config.Load(daemonConfig)
	if err != nil || !cfg.Content.Enabled || !cfg.Diff.Enabled {
		t.Errorf("daemon config after install: content %v, diff %v (%v)", cfg.Content.Enabled, cfg.Diff.Enabled, err)
	}
}

func anyStrings(v any) []string {
	list, _ := v.([]any)
	out := make([]string, len(list))
	for i, s := range list {
		out[i], _ = s.(string)
	}
	return out
}

// assertProxyRefused checks that install --mode proxy refuses a containerd 1.x config with the
// reason, and that nothing was written.
func assertProxyRefused(t *testing.T, n *node, o Options) {
	t.Helper()
	_, err := Install(o)
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("install --mode proxy on a version 2 config: %v, want a failed precondition", err)
	}
	for _, want := range []string{"config version 2", "containerd 2.0", "unpack_config", "--mode mirror"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	n.assertUntouched(t, "refused install")
}

// An unpack_config the operator wrote: the host's overlayfs entry gets the differ, the others
// are left alone; an existing diff service list keeps its order after the daemon. Uninstall
// gives the bytes back.
func TestProxyModeExistingUnpackConfig(t *testing.T) {
	host := platforms.DefaultString()
	original := `version = 3
disabled_plugins = ["io.containerd.content.v1.content"]

[proxy_plugins]
  [proxy_plugins.blobcache]
    type = "content"
    address = "/run/containerd-blobcache/content.sock"

[plugins]
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "/etc/containerd/certs.d"
  [plugins."io.containerd.service.v1.diff-service"]
    default = ["walking", "erofs"]

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/s390x"
  snapshotter = "overlayfs"

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "` + host + `"
  snapshotter = "overlayfs"
  differ = "walking"
`
	n := newNode(t, "config-v3-node.toml")
	if err := os.WriteFile(n.config, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	o := n.opts(ModeProxy, true)
	p := mustPlan(t, Install, o)
	if left := p.Unresolved(); len(left) != 0 {
		t.Fatalf("unresolved %+v", left)
	}
	var after string
	for _, c := range p.Changes {
		if c.Path == n.config {
			after = c.After
		}
	}
	doc, err := decode(after)
	if err != nil {
		t.Fatalf("installed config does not parse: %v\n%s", err, after)
	}
	raw, _ := lookup(doc, unpackConfigKey...)
	entries := raw.([]map[string]any)
	if len(entries) != 2 || entries[0]["differ"] != nil || entries[1]["differ"] != DiffPluginName {
		t.Fatalf("unpack_config after install: %v\n%s", entries, after)
	}
	if v, _ := lookup(doc, append(diffServiceKey, "default")...); !slices.Equal(anyStrings(v), []string{DiffPluginName, "walking", "erofs"}) {
		t.Errorf("diff service default = %v", v)
	}
	if err := p.Apply(); err != nil {
		t.Fatal(err)
	}
	if again := mustPlan(t, Install, o); len(again.Changes) != 0 || len(again.Findings) != 0 {
		t.Fatalf("second install: %+v\n%s", again.Findings, again.Diff())
	}
	if err := mustPlan(t, Uninstall, o).Apply(); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := n.read(t, n.config); cfg != original {
		t.Fatalf("uninstall did not restore the config:\n%s", unified(splitLines(original), splitLines(cfg), 2))
	}
}

// Proxy mode without the daemon's config file cannot be checked: reported, not guessed.
func TestProxyModeNeedsDaemonConfig(t *testing.T) {
	n := newNode(t, "config-v4-containerd-2.4.2-default.toml")
	o := n.opts(ModeProxy, true)
	o.DaemonConfig = ""
	p := mustPlan(t, Install, o)
	left := p.Unresolved()
	if len(left) != 1 || !strings.Contains(left[0].Problem, "--config") {
		t.Fatalf("unresolved %+v, want the missing daemon config", left)
	}
	// Without --fix, the daemon config's problems are reported with their fix.
	o = n.opts(ModeProxy, false)
	p = mustPlan(t, Install, o)
	var names []string
	for _, f := range p.Unresolved() {
		if strings.HasPrefix(f.Problem, n.daemon) {
			names = append(names, f.Problem[len(n.daemon)+2:strings.Index(f.Problem, " is false")])
			if !strings.Contains(f.Fix, "enabled = true") {
				t.Errorf("finding %q has no fix", f.Problem)
			}
		}
	}
	if !slices.Equal(names, []string{"content.enabled", "diff.enabled"}) {
		t.Errorf("daemon config findings name %v", names)
	}
	for _, c := range p.Changes {
		if c.Path == n.daemon {
			t.Error("daemon config changed without --fix")
		}
	}
}

// A daemon config that ends with a blank line (as the integration harness writes it) gets
// its bytes back: the blank line install puts before an appended table is not marked.
func TestUninstallRestoresTrailingBlankLine(t *testing.T) {
	n := newNode(t, "config-v4-containerd-2.4.2-default.toml")
	original := daemonConfigText + "\n"
	if err := os.WriteFile(n.daemon, []byte(original), 0o600); err != nil {
		t.Fatal(err)
	}
	o := n.opts(ModeProxy, true)
	if err := mustPlan(t, Install, o).Apply(); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := n.read(t, n.daemon); cfg == original {
		t.Fatal("install did not change the daemon's config")
	}
	if err := mustPlan(t, Uninstall, o).Apply(); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := n.read(t, n.daemon); cfg != original {
		t.Fatalf("uninstall gave back %q, want %q", cfg, original)
	}
}

// The shipped proxy-mode example (contrib/containerd/config-v3-proxy.toml) is what install
// checks for: install on it finds nothing to change (its platform line set to this node's, as
// its comment asks).
func TestContribProxyConfigPassesInstall(t *testing.T) {
	b, err := os.ReadFile("../../contrib/containerd/config-v3-proxy.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(b), `platform = "linux/amd64"`, `platform = "`+platforms.DefaultString()+`"`, 1)
	n := newNode(t, "config-v3-node.toml")
	if err := os.WriteFile(n.config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.daemon, []byte("[content]\nenabled = true\n[diff]\nenabled = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := n.opts(ModeProxy, false)
	o.HostsDir = "/etc/containerd/certs.d" // the example's config_path; only planned, not written
	o.ContentAddress = config.DefaultContentAddress
	p := mustPlan(t, Install, o)
	for _, f := range p.Findings {
		t.Errorf("install finds in the example: %s", f.Problem)
	}
}

package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
	"github.com/containerd-blobcache/containerd-blobcache/internal/install"
)

// runInstall runs the built binary's install or uninstall and returns its exit code and
// combined output.
func runInstall(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(harness.DaemonBinary(t), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), out.String()
		}
		t.Fatal(err)
	}
	return 0, out.String()
}

// installEnv is an origin with an image, the daemon, and a hosts directory holding the
// registry's own hosts.toml (the registry itself, no mirror) as a node would have it.
type installEnv struct {
	origin   origin
	daemon   *harness.Daemon
	hostsDir string
	ref      string
	blobs    int
	im       *harness.Image
}

func newInstallEnv(t *testing.T, seed uint64) *installEnv {
	t.Helper()
	return newInstallEnvDaemon(t, seed, "")
}

// newInstallEnvDaemon is newInstallEnv with daemonExtra added to the daemon's configuration.
func newInstallEnvDaemon(t *testing.T, seed uint64, daemonExtra string) *installEnv {
	t.Helper()
	harness.RequireRoot(t)
	harness.Tools(t)
	reg := harness.StartRegistry(t)
	o := origin{reg: reg, proxy: harness.StartCountingProxy(t, reg.URL)}
	im, ref := o.push(t, "test/install", "v1", harness.ImageSpec{Layers: []harness.LayerSpec{
		{Seed: seed, Files: 3, FileSize: 1 << 20}, {Seed: seed + 1, Files: 2, FileSize: 1 << 20},
	}})
	e := &installEnv{origin: o, hostsDir: t.TempDir(), ref: ref, im: im, blobs: len(im.Blobs())}
	e.daemon = harness.StartDaemon(t, harness.DaemonConfig{Registries: []string{o.proxy.Host}, Extra: daemonExtra})
	if _, err := harness.WriteHostsToml(e.hostsDir, o.proxy.Host, ""); err != nil {
		t.Fatal(err)
	}
	return e
}

// installArgs are the install flags for this environment and containerd config.
func (e *installEnv) installArgs(cmd, config string, extra ...string) []string {
	return append([]string{cmd, "--hosts-dir", e.hostsDir, "--containerd-config", config,
		"--registry", e.origin.proxy.Host, "--mirror-url", e.daemon.URL}, extra...)
}

// pullAfterInstall stops the test if the install steps failed, then pulls the image with CRI
// PullImage and checks that every blob came through the daemon, once.
func (e *installEnv) pullAfterInstall(t *testing.T, ctrd *harness.Containerd) {
	t.Helper()
	if t.Failed() {
		t.FailNow()
	}
	e.origin.proxy.Reset()
	ctrd.CRIPull(t, e.ref)
	assertServedByDaemon(t, e.daemon, e.origin, e.im.Blobs())
}

// uninstallRestores runs uninstall with args and checks that containerd's config is back to
// its original bytes.
func uninstallRestores(t *testing.T, args []string, config string, original []byte) {
	t.Helper()
	code, out := runInstall(t, args...)
	t.Logf("uninstall (exit %d):\n%s", code, out)
	if code != 0 {
		t.Fatalf("uninstall: exit %d", code)
	}
	if b, _ := os.ReadFile(config); !bytes.Equal(b, original) {
		t.Errorf("uninstall did not restore containerd's config:\n%s", b)
	}
}

// `install` on containerd 2.4.2's config (config_path unset): it reports the problem, shows
// the diff in --dry-run, fixes it with --fix, and containerd then pulls through the mirror
// (CRI PullImage, which reads config_path). A second install changes nothing; uninstall
// gives both files back.
func TestInstallThenPullContainerd24(t *testing.T) {
	e := newInstallEnv(t, 6200)
	hostsFile := filepath.Join(e.hostsDir, e.origin.proxy.Host, "hosts.toml")
	originalHosts, err := os.ReadFile(hostsFile)
	if err != nil {
		t.Fatal(err)
	}
	var originalConfig []byte
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{
		HostsDir: "", // config_path = "": containerd ignores hosts.toml until install fixes it
		EditConfig: func(config string) error {
			originalConfig, _ = os.ReadFile(config)
			code, out := runInstall(t, e.installArgs("install", config, "--dry-run", "--fix")...)
			t.Logf("install --dry-run --fix (exit %d):\n%s", code, out)
			if code != 0 || !strings.Contains(out, "+    config_path = "+strconvQuote(e.hostsDir)) || !strings.Contains(out, `+[host."`+e.daemon.URL+`"]`) {
				t.Errorf("dry run: exit %d, diff lacks the config_path or host lines", code)
			}
			if b, _ := os.ReadFile(config); !bytes.Equal(b, originalConfig) {
				t.Error("--dry-run changed the config")
			}
			if b, _ := os.ReadFile(hostsFile); !bytes.Equal(b, originalHosts) {
				t.Error("--dry-run changed hosts.toml")
			}
			code, out = runInstall(t, e.installArgs("install", config)...)
			t.Logf("install without --fix (exit %d):\n%s", code, out)
			if code != 1 || !strings.Contains(out, "config_path is not set") {
				t.Errorf("install without --fix: exit %d, want 1 naming config_path", code)
			}
			code, out = runInstall(t, e.installArgs("install", config, "--fix")...)
			t.Logf("install --fix (exit %d):\n%s", code, out)
			if code != 0 {
				t.Errorf("install --fix: exit %d", code)
			}
			code, out = runInstall(t, e.installArgs("install", config, "--fix")...)
			if code != 0 || !strings.Contains(out, "nothing to change") {
				t.Errorf("second install: exit %d, output %q", code, out)
			}
			return nil
		},
	})
	e.pullAfterInstall(t, ctrd)

	uninstallRestores(t, e.installArgs("uninstall", ctrd.Config), ctrd.Config, originalConfig)
	if b, _ := os.ReadFile(hostsFile); !bytes.Equal(b, originalHosts) {
		t.Errorf("uninstall did not restore hosts.toml:\n%s", b)
	}
	for _, f := range []string{ctrd.Config + install.BackupSuffix, hostsFile + install.BackupSuffix} {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("backup %s left after uninstall", f)
		}
	}
}

func strconvQuote(s string) string { return `"` + s + `"` }

// `install --mode proxy` on containerd 2.4.2's config, reading the content socket from the
// daemon's own configuration (--config), which serves the content API but not yet the diff
// API: after --fix, the daemon's config enables the diff API (the daemon is restarted to read
// it), containerd starts with the daemon's content API as its content store and its diff API
// as its differ, and a CRI PullImage goes through the mirror and has every layer applied by
// the daemon. Every blob containerd keeps is the daemon's (and only the daemon's) file. A
// second install changes nothing; uninstall gives both configs back byte for byte.
func TestInstallProxyModeThenPull(t *testing.T) {
	socket := filepath.Join(harness.ShortTempDir(t, "bci-"), "content.sock")
	e := newInstallEnvDaemon(t, 6400, harness.ContentConfig(socket))
	originalDaemonConfig, err := os.ReadFile(e.daemon.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var originalConfig []byte
	args := func(cmd, config string, extra ...string) []string {
		return e.installArgs(cmd, config, append([]string{"--mode", "proxy", "--config", e.daemon.ConfigPath}, extra...)...)
	}
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{
		HostsDir: "",
		EditConfig: func(config string) error {
			originalConfig, _ = os.ReadFile(config)
			code, out := runInstall(t, args("install", config, "--fix")...)
			t.Logf("install --mode proxy --fix (exit %d):\n%s", code, out)
			if code != 0 {
				t.Errorf("install --mode proxy --fix: exit %d", code)
			}
			fixed, _ := os.ReadFile(config)
			for _, want := range []string{strconvQuote(socket), "[proxy_plugins", strconvQuote(harness.ContentPluginID),
				"[proxy_plugins." + install.DiffPluginName + "]", `differ = "` + install.DiffPluginName + `"`, `default = ["` + install.DiffPluginName + `", "walking"]`} {
				if !strings.Contains(string(fixed), want) {
					t.Errorf("containerd config after install --mode proxy lacks %s:\n%s", want, fixed)
				}
			}
			if code, out := runInstall(t, args("install", config, "--fix")...); code != 0 || !strings.Contains(out, "nothing to change") {
				t.Errorf("second install --mode proxy: exit %d, output %q", code, out)
			}
			// install said to restart the daemon: it reads [diff] enabled = true now.
			if err := e.daemon.Stop(); err != nil {
				t.Fatal(err)
			}
			e.daemon.Restart(t)
			return nil
		},
	})
	e.pullAfterInstall(t, ctrd)
	// containerd's content is the daemon's: every blob it lists is a daemon file, it keeps no
	// blob file of its own, and the daemon holds exactly what containerd lists.
	assertStoredOnce(t, ctrd, "k8s.io", e.daemon)
	if held, want := heldBlobs(t, socket), sortedContent(t, ctrd, "k8s.io"); !slices.Equal(held, want) {
		t.Errorf("content API holds %v, containerd lists %v", held, want)
	}
	// Every layer was unpacked by the daemon (the daemon restarted before the pull: its
	// counter started at zero).
	if got := diffOps(t, e.daemon, "apply", "ok"); got != float64(len(e.im.Layers)) {
		t.Errorf("the daemon applied %v layers, want %d", got, len(e.im.Layers))
	}
	applied := appliedLayers(t, e.daemon)
	for _, l := range e.im.Layers {
		if applied[l.Descriptor.Digest] != 1 {
			t.Errorf("layer %s applied %d times by the daemon (its debug log), want 1", l.Descriptor.Digest, applied[l.Descriptor.Digest])
		}
	}

	uninstallRestores(t, args("uninstall", ctrd.Config), ctrd.Config, originalConfig)
	if b, _ := os.ReadFile(e.daemon.ConfigPath); !bytes.Equal(b, originalDaemonConfig) {
		t.Errorf("uninstall did not restore the daemon's config:\n%s", b)
	}
}

// Debian's containerd 1.6 (config version 2, CRI registry config_path under
// io.containerd.grpc.v1.cri): install fixes its config, then pulls go through the mirror both
// with Debian's ctr 1.6 (--hosts-dir, resolved in ctr itself) and with CRI PullImage. The
// second pull of the image (a fresh namespace) takes no blob from the origin: the mirror
// serves every blob as a hit.
func TestDebianContainerd16PullThroughMirror(t *testing.T) {
	e := newInstallEnv(t, 6300)
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{
		Binary:        harness.DebianContainerd,
		CtrBinary:     harness.DebianCtr,
		ConfigVersion: 2,
		HostsDir:      "",
		EditConfig: func(config string) error {
			code, out := runInstall(t, e.installArgs("install", config, "--fix")...)
			t.Logf("install --fix (exit %d):\n%s", code, out)
			if code != 0 || !strings.Contains(out, `[plugins."io.containerd.grpc.v1.cri".registry] config_path is not set`) {
				t.Errorf("install --fix on a version 2 config: exit %d", code)
			}
			return nil
		},
	})
	if t.Failed() {
		t.FailNow()
	}
	if v := ctrd.Ctr(t, "", "version"); !strings.Contains(v, "1.6.") {
		t.Fatalf("not containerd 1.6:\n%s", v)
	}

	// ctr 1.6 resolves in its own process; --hosts-dir is read by ctr.
	e.origin.proxy.Reset()
	ctrd.Pull(t, "deb-ctr-1", e.ref, e.hostsDir)
	assertServedByDaemon(t, e.daemon, e.origin, e.im.Blobs())

	e.origin.proxy.Reset()
	ctrd.Pull(t, "deb-ctr-2", e.ref, e.hostsDir)
	if n := e.origin.proxy.Snapshot().TotalBlobGETs(); n != 0 {
		t.Errorf("second ctr pull: %d blob GETs reached the origin, want 0", n)
	}

	// CRI PullImage reads config_path, which install set.
	e.origin.proxy.Reset()
	ctrd.CRIPull(t, e.ref)
	c := e.origin.proxy.Snapshot()
	if n := c.TotalBlobGETs(); n != 0 {
		t.Errorf("CRI pull after the cache is warm: %d blob GETs reached the origin, want 0:\n%s", n, c)
	}
	if n := len(c.Direct().Requests); n != 0 {
		t.Errorf("CRI pull: %d requests went to the origin directly, not through the mirror:\n%s", n, c.Direct())
	}
	fams := scrape(t, e.daemon)
	if hits := metricValue(fams, "containerd_blobcache_requests_total", map[string]string{"kind": "blob", "result": "hit"}); hits < float64(2*e.blobs) {
		t.Errorf("mirror blob hits %v, want at least %d (two warm pulls)", hits, 2*e.blobs)
	}
}

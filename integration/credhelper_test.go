package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// rotationEnv is a token-auth registry with three private images and a containerd whose
// hosts.toml sends it to the daemon; the test supplies the daemon's credentials.
type rotationEnv struct {
	ts       *harness.TokenServer
	reg      *harness.Registry
	hostsDir string
	images   []*harness.Image
	repos    []string
}

func newRotationEnv(t *testing.T, password string) *rotationEnv {
	t.Helper()
	harness.RequireRoot(t)
	harness.Tools(t)
	e := &rotationEnv{hostsDir: t.TempDir()}
	e.ts = harness.StartTokenServer(t, map[string]string{authUser: password}, "public/", 5*time.Minute)
	plain := harness.StartRegistry(t)
	e.reg = harness.StartTokenRegistry(t, filepath.Join(plain.Dir, "storage"), e.ts)
	for i := range 3 {
		repo := fmt.Sprintf("private/rotate-%d", i)
		e.repos = append(e.repos, repo)
		e.images = append(e.images, harness.PushImage(t, plain.URL, repo, "v1", harness.ImageSpec{
			Layers: []harness.LayerSpec{{Seed: uint64(9300 + i), Files: 1, FileSize: 64 << 10}},
		}))
	}
	return e
}

// pullThroughDaemon pulls image i with ctr (containerd holds no credentials: only the
// daemon's make it work) and checks that the daemon stored its layers.
func (e *rotationEnv) pullThroughDaemon(t *testing.T, ctrd *harness.Containerd, d *harness.Daemon, i int) {
	t.Helper()
	if _, err := harness.WriteHostsToml(e.hostsDir, e.reg.Host, d.URL); err != nil {
		t.Fatal(err)
	}
	ref := harness.Ref(e.reg.Host, e.repos[i], "v1")
	ctrd.Pull(t, fmt.Sprintf("rotate-%d", i), ref, e.hostsDir)
	for _, l := range e.images[i].Layers {
		if !d.Cached(t, l.Descriptor.Digest, l.Descriptor.Size) {
			t.Fatalf("%s: layer %s not in the daemon's store: the pull did not go through it", ref, l.Descriptor.Digest)
		}
	}
}

// waitLog waits until the daemon's log contains want n times.
func waitLog(t *testing.T, d *harness.Daemon, want string, n int) {
	t.Helper()
	harness.WaitFor(t, "daemon log: "+want, 30*time.Second, 20*time.Millisecond, func() error {
		data, err := os.ReadFile(d.Process.LogPath)
		if err != nil {
			return err
		}
		if got := strings.Count(string(data), want); got < n {
			return fmt.Errorf("%d of %d", got, n)
		}
		return nil
	})
}

// TestCredentialHelperRotation: the daemon's credential for the registry comes from a
// docker-credential-* helper (credHelpers in a Docker config). The registry rotates the
// password and the helper hands out the new one: the next pull works without a restart or a
// reload, because the refused credential makes the daemon ask the helper again.
func TestCredentialHelperRotation(t *testing.T) {
	const first, second = "helper-Pa55-one", "helper-Pa55-two"
	e := newRotationEnv(t, first)
	helperDir := t.TempDir()
	secretFile := filepath.Join(helperDir, "secret")
	asked := filepath.Join(helperDir, "asked")
	if err := os.WriteFile(secretFile, []byte(first), 0o600); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("#!/bin/sh\nserver=$(cat)\necho \"$server\" >> %s\nprintf '{\"ServerURL\":\"%%s\",\"Username\":%q,\"Secret\":\"%%s\"}' \"$server\" \"$(cat %s)\"\n", asked, authUser, secretFile)
	if err := os.WriteFile(filepath.Join(helperDir, "docker-credential-rotating"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	dockerConfig := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(dockerConfig, []byte(fmt.Sprintf(`{"credHelpers":{%q:"rotating"}}`, e.reg.Host)), 0o600); err != nil {
		t.Fatal(err)
	}
	// node_public: what the daemon fetched with its credential is for every client of the node.
	credFile := filepath.Join(t.TempDir(), "credentials.toml")
	if err := os.WriteFile(credFile, []byte(fmt.Sprintf("[registries.%q]\n  node_public = true\n", e.reg.Host)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := harness.StartDaemon(t, harness.DaemonConfig{
		Registries:    []string{e.reg.Host},
		UpstreamExtra: fmt.Sprintf("docker_config = %q\ncredentials_file = %q\n", dockerConfig, credFile),
		Env:           []string{"PATH=" + helperDir + string(os.PathListSeparator) + os.Getenv("PATH")},
	})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})

	e.pullThroughDaemon(t, ctrd, d, 0)
	askedLines := func() []string {
		data, _ := os.ReadFile(asked)
		return strings.Fields(string(data))
	}
	if a := askedLines(); len(a) != 1 || a[0] != e.reg.Host {
		t.Fatalf("helper asked %q, want once for %s", a, e.reg.Host)
	}

	e.ts.SetPassword(authUser, second)
	if err := os.WriteFile(secretFile, []byte(second), 0o600); err != nil {
		t.Fatal(err)
	}
	e.pullThroughDaemon(t, ctrd, d, 1)
	if a := askedLines(); len(a) != 2 {
		t.Errorf("helper asked %d times, want 2 (once more after the registry refused the old password)", len(a))
	}
	if _, refused := e.ts.Requests(); refused == 0 {
		t.Error("the token server never refused the old password: the rotation was not exercised")
	}
	assertNoSecretIn(t, d, first, second)
}

// TestCredentialsFileReload: a changed credentials file is used after SIGHUP without a
// restart; a broken one is refused with a log line and the credentials in use stay.
func TestCredentialsFileReload(t *testing.T) {
	const first, second = "file-Pa55-one", "file-Pa55-two"
	e := newRotationEnv(t, first)
	credFile := filepath.Join(t.TempDir(), "credentials.toml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(credFile, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(pw string) string {
		return fmt.Sprintf("[registries.%q]\n  username = %q\n  password = %q\n  node_public = true\n", e.reg.Host, authUser, pw)
	}
	write(entry(first))
	// The interval check is off: only SIGHUP can reload here.
	d := harness.StartDaemon(t, harness.DaemonConfig{
		Registries:    []string{e.reg.Host},
		UpstreamExtra: fmt.Sprintf("credentials_file = %q\ncredentials_reload_interval = \"0s\"\n", credFile),
	})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})
	e.pullThroughDaemon(t, ctrd, d, 0)

	e.ts.SetPassword(authUser, second)
	write(entry(second))
	if err := d.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, d, "credentials reloaded", 1)
	e.pullThroughDaemon(t, ctrd, d, 1)

	write("[registries.broken\n  password = \"" + second + "\"\n")
	if err := d.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, d, "credentials not reloaded; keeping the ones in use", 1)
	e.pullThroughDaemon(t, ctrd, d, 2)
	if exited, err := d.Process.Exited(); exited {
		t.Fatalf("daemon exited after SIGHUP: %v", err)
	}
	assertNoSecretIn(t, d, first, second)
}

// TestCredentialsFileChangeNoticed: without any signal, a rewritten credentials file is
// picked up by the daemon's check of the file (upstream.credentials_reload_interval).
func TestCredentialsFileChangeNoticed(t *testing.T) {
	const first, second = "watch-Pa55-one", "watch-Pa55-two"
	e := newRotationEnv(t, first)
	credFile := filepath.Join(t.TempDir(), "credentials.toml")
	entry := func(pw string) []byte {
		return []byte(fmt.Sprintf("[registries.%q]\n  username = %q\n  password = %q\n  node_public = true\n", e.reg.Host, authUser, pw))
	}
	if err := os.WriteFile(credFile, entry(first), 0o600); err != nil {
		t.Fatal(err)
	}
	d := harness.StartDaemon(t, harness.DaemonConfig{
		Registries:    []string{e.reg.Host},
		UpstreamExtra: fmt.Sprintf("credentials_file = %q\ncredentials_reload_interval = \"100ms\"\n", credFile),
	})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})
	e.pullThroughDaemon(t, ctrd, d, 0)

	e.ts.SetPassword(authUser, second)
	// Replaced the way a Kubernetes Secret volume or an editor does: a new file renamed over.
	tmp := credFile + ".new"
	if err := os.WriteFile(tmp, entry(second), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, credFile); err != nil {
		t.Fatal(err)
	}
	waitLog(t, d, "credentials reloaded", 1)
	e.pullThroughDaemon(t, ctrd, d, 1)
	assertNoSecretIn(t, d, first, second)
}

func assertNoSecretIn(t *testing.T, d *harness.Daemon, secrets ...string) {
	t.Helper()
	data, err := os.ReadFile(d.Process.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if strings.Contains(string(data), s) {
			t.Errorf("daemon log contains the secret %q", s[:6]+"...")
		}
	}
}

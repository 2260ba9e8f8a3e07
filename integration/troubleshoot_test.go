package integration

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// logTail follows a log file from the current end.
type logTail struct {
	path string
	from int64
}

func tailFrom(t *testing.T, path string) *logTail {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return &logTail{path: path, from: fi.Size()}
}

// since returns what was logged since tailFrom.
func (l *logTail) since(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(l.path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[l.from:])
}

// The README's troubleshooting section quotes containerd 2.4.2's debug log lines for a pull
// through the cache and for the common misconfigurations; this test produces each situation
// with a real containerd and checks that those lines (the parts the README shows) appear, so
// that the README stays true.
func TestTroubleshootingLogLines(t *testing.T) {
	e := newInstallEnv(t, 6400)
	reg := e.origin.proxy.Host
	mirror := strings.TrimPrefix(e.daemon.URL, "http://")
	ns := url.QueryEscape(reg)
	good := t.TempDir()
	if _, err := harness.WriteHostsToml(good, reg, e.daemon.URL); err != nil {
		t.Fatal(err)
	}
	daemonLog := e.daemon.Process.LogPath
	expect := func(what, log string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(log, w) {
				t.Errorf("%s: log lacks %q", what, w)
			}
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", what, log)
		}
	}

	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: good, LogLevel: "debug"})

	// 1. Through the cache: containerd loads the registry's hosts.toml and resolves at the
	// mirror with ?ns=; the daemon logs one line per request with its result.
	cl, dl := tailFrom(t, ctrd.Process.LogPath), tailFrom(t, daemonLog)
	ctrd.CRIPull(t, e.ref)
	expect("CRI pull through the cache (containerd)", cl.since(t),
		`level=debug msg="loading host directory" dir="`+filepath.Join(good, reg)+`"`,
		`level=debug msg=resolving host="`+mirror+`" method=HEAD url="http://`+mirror+`/v2/test/install/manifests/v1?ns=`+ns+`"`)
	expect("CRI pull through the cache (daemon)", dl.since(t),
		`level=debug msg="mirror request" bytes=0 daemon=containerd-blobcache`,
		`method=HEAD ns="`+reg+`" ref=v1 repo=test/install result=miss status=200`,
		`result=miss status=200`, `level=debug msg="fill committed" daemon=containerd-blobcache digest="sha256:`)

	// 2. hosts.toml without the http:// scheme: containerd speaks TLS to the mirror, fails,
	// and goes on to the registry.
	noScheme := t.TempDir()
	if err := os.MkdirAll(filepath.Join(noScheme, reg), 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := "server = \"http://" + reg + "\"\n\n[host.\"" + mirror + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	if err := os.WriteFile(filepath.Join(noScheme, reg, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	cl = tailFrom(t, ctrd.Process.LogPath)
	ctrd.Pull(t, "no-scheme", e.ref, noScheme)
	expect("hosts.toml without http://", cl.since(t),
		`level=info msg="trying next host" error="failed to do request: Head \"https://`+mirror+`/v2/test/install/manifests/v1?ns=`+ns+`\": http: server gave HTTP response to HTTPS client" host="`+mirror+`"`)

	// 3. ctr without --hosts-dir: no hosts.toml is read at all.
	cl = tailFrom(t, ctrd.Process.LogPath)
	ctrd.Pull(t, "no-hosts-dir", e.ref, "")
	log := cl.since(t)
	expect("ctr without --hosts-dir", log, `level=debug msg=resolving host="`+reg+`" method=HEAD url="https://`+reg+`/v2/test/install/manifests/v1"`)
	if strings.Contains(log, "loading host directory") {
		t.Error("ctr without --hosts-dir: containerd loaded a host directory")
	}

	// 4. The daemon down: one refused connection, then the registry.
	if err := e.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	cl = tailFrom(t, ctrd.Process.LogPath)
	ctrd.Pull(t, "daemon-down", e.ref, good)
	expect("daemon down", cl.since(t),
		`level=info msg="trying next host" error="failed to do request: Head \"http://`+mirror+`/v2/test/install/manifests/v1?ns=`+ns+`\": dial tcp `+mirror+`: connect: connection refused" host="`+mirror+`"`)

	// 5. CRI config_path unset: containerd never reads hosts.toml, resolves at the registry
	// itself, and the daemon sees nothing.
	unset := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: "", LogLevel: "debug"})
	cl = tailFrom(t, unset.Process.LogPath)
	unset.CRIPull(t, e.ref)
	log = cl.since(t)
	expect("config_path unset", log, `level=debug msg=resolving host="`+reg+`" method=HEAD url="https://`+reg+`/v2/test/install/manifests/v1"`)
	if strings.Contains(log, "loading host directory") || strings.Contains(log, mirror) {
		t.Error("config_path unset: containerd still read hosts.toml or reached the mirror")
	}
}

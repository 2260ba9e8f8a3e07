package harness

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Registry is a distribution registry (v3) serving plain HTTP on 127.0.0.1, with filesystem
// storage in a temporary directory and no authentication.
type Registry struct {
	// Host is "127.0.0.1:<port>", the registry part of image references.
	Host string
	// URL is "http://" + Host.
	URL     string
	Dir     string
	Process *Process
	// Client reaches the registry (from inside its namespace when it runs in one).
	Client *http.Client
}

// StartRegistry starts `registry serve` with a config of its own and waits until /v2/
// answers.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	return startRegistryWith(t, registrySetup{})
}

// StartRegistry is StartRegistry inside the namespace, on its loopback; Client reaches it.
func (n *Netns) StartRegistry(t testing.TB) *Registry {
	t.Helper()
	return startRegistryWith(t, registrySetup{ns: n})
}

// StartPullThroughRegistry starts distribution as a pull-through cache of remoteURL (its
// `proxy: remoteurl:` mode): it serves that one remote whatever the request's ?ns= says.
// Benchmarks compare the daemon with it.
func StartPullThroughRegistry(t testing.TB, remoteURL string) *Registry {
	t.Helper()
	return startRegistryWith(t, registrySetup{extraYAML: fmt.Sprintf("proxy:\n  remoteurl: %s\n", remoteURL)})
}

// registrySetup is what differs between the registries a test starts.
type registrySetup struct {
	// extraYAML is appended at the top level; httpYAML inside `http:` (indented).
	extraYAML, httpYAML string
	// scheme is "http" (default) or "https".
	scheme string
	// storage is the filesystem root to serve; "" a new one.
	storage string
	// client checks readiness (default: a plain client, or one that dials inside ns).
	client *http.Client
	// ns, when set, is the network namespace the registry runs in.
	ns *Netns
}

func startRegistryWith(t testing.TB, setup registrySetup) *Registry {
	t.Helper()
	tools := Tools(t)
	dir := t.TempDir()
	storage := setup.storage
	if storage == "" {
		storage = filepath.Join(dir, "storage")
	}
	if err := os.MkdirAll(storage, 0o755); err != nil {
		t.Fatal(err)
	}
	host := FreeAddr(t)
	// Access lines are off: the counting proxy is the record of requests. The debug server,
	// health checks, notifications and the upload purger are off too.
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: blobcache-integration-test
  headers:
    X-Content-Type-Options: [nosniff]
`, storage, host) + setup.httpYAML + setup.extraYAML
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tools.Registry, "serve", cfgPath)
	cmd.Dir = dir
	// No OpenTelemetry exporter: the default would try an OTLP collector.
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none", "OTEL_SDK_DISABLED=true")
	scheme := setup.scheme
	if scheme == "" {
		scheme = "http"
	}
	client := setup.client
	if client == nil {
		client = setup.ns.HTTPClient(5 * time.Minute)
	}
	r := &Registry{Host: host, URL: scheme + "://" + host, Dir: dir, Client: client}
	r.Process = startProcess(t, "registry-"+host, logPathFor(dir, "registry"), setup.ns.wrap(cmd))
	waitHTTP200With(t, client, r.Process, r.URL+"/v2/", 30*time.Second)
	return r
}

// Stop stops the registry process.
func (r *Registry) Stop() error { return r.Process.Stop() }

// waitHTTP200 polls url until it answers 200, failing fast when the process exits.
func waitHTTP200(t testing.TB, p *Process, url string, timeout time.Duration) {
	t.Helper()
	waitHTTP200With(t, nil, p, url, timeout)
}

// waitHTTP200With is waitHTTP200 with a client of the caller's (TLS settings); nil: a plain one.
func waitHTTP200With(t testing.TB, client *http.Client, p *Process, url string, timeout time.Duration) {
	t.Helper()
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	WaitFor(t, p.Name+" readiness at "+url, timeout, 50*time.Millisecond, func() error {
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("%w: %s exited (%v); log:\n%s", errStop, p.Name, err, TailFile(p.LogPath, 8<<10))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	})
}

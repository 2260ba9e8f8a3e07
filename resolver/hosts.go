package resolver

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	hostsconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// upstreamHost is one place where a registry's requests may go, in the order hosts.toml
// lists them (mirrors first, the registry itself last).
type upstreamHost struct {
	client *http.Client
	scheme string
	host   string
	// path is the API root, "/v2" unless hosts.toml says override_path.
	path string
	// header is sent with every request to this host (hosts.toml [header]).
	header http.Header
	// resolve: the host may answer manifests by tag; pull: by digest, and blobs.
	resolve, pull bool
	// mirror is set for a host other than the registry itself: it gets ?ns= like
	// containerd sends it, so that a mirror serving several registries knows which.
	mirror bool
	// allowPrivate lets this host resolve to loopback or private addresses.
	allowPrivate bool
}

// hostsCache keeps the parsed hosts.toml of each registry, with one HTTP client per host
// (so connections are reused), until the file changes.
type hostsCache struct {
	dir string

	mu      sync.Mutex
	entries map[string]hostsEntry
}

type hostsEntry struct {
	path    string
	modTime time.Time
	size    int64
	hosts   []upstreamHost
}

// hostsFor returns where the requests for ep go. Without a hosts directory for the registry
// (the usual case) that is the registry itself, over the resolver's shared client.
func (r *Resolver) hostsFor(ctx context.Context, ep Endpoint) ([]upstreamHost, error) {
	direct := []upstreamHost{{
		client: r.client, scheme: ep.Scheme, host: ep.Host, path: "/v2",
		resolve: true, pull: true, allowPrivate: ep.AllowPrivate,
	}}
	if r.hosts == nil {
		return direct, nil
	}
	dir, err := hostsconfig.HostDirFromRoot(r.hosts.dir)(ep.Name)
	if errdefs.IsNotFound(err) {
		return direct, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hosts directory for %s: %w", ep.Name, err)
	}
	file := filepath.Join(dir, "hosts.toml")
	var modTime time.Time
	var size int64 = -1
	if fi, err := os.Stat(file); err == nil {
		modTime, size = fi.ModTime(), fi.Size()
	}
	r.hosts.mu.Lock()
	e, ok := r.hosts.entries[ep.Name]
	r.hosts.mu.Unlock()
	if ok && e.path == file && e.modTime.Equal(modTime) && e.size == size {
		return e.hosts, nil
	}
	hosts, err := r.configureHosts(ctx, ep, dir)
	if err != nil {
		return nil, err
	}
	r.hosts.mu.Lock()
	r.hosts.entries[ep.Name] = hostsEntry{path: file, modTime: modTime, size: size, hosts: hosts}
	r.hosts.mu.Unlock()
	return hosts, nil
}

// configureHosts reads dir with containerd's own hosts.toml parser, then puts the daemon's
// dial guard, timeouts and redirect policy on every client it made.
func (r *Resolver) configureHosts(ctx context.Context, ep Endpoint, dir string) ([]upstreamHost, error) {
	// The scheme is always given: left empty, containerd's parser reaches a loopback registry
	// by plain http first and skips TLS verification for it (its localhost rule); the daemon
	// verifies unless the registry is in plain_http or its hosts.toml says skip_verify.
	scheme := ep.Scheme
	registryHosts := hostsconfig.ConfigureHosts(ctx, hostsconfig.HostOptions{
		HostDir:       func(string) (string, error) { return dir, nil },
		DefaultScheme: scheme,
		UpdateClient:  r.adoptClient,
	})
	rhosts, err := registryHosts(ep.Name)
	if err != nil {
		return nil, fmt.Errorf("hosts.toml for %s in %s: %w: %w", ep.Name, dir, err, errdefs.ErrInvalidArgument)
	}
	var out []upstreamHost
	for _, h := range rhosts {
		if h.Host == ep.Name && ep.Host != ep.Name {
			// containerd's default host for a registry without `server`; the daemon knows
			// where docker.io really is.
			h.Host = ep.Host
		}
		out = append(out, upstreamHost{
			client:       h.Client,
			scheme:       h.Scheme,
			host:         h.Host,
			path:         h.Path,
			header:       h.Header,
			resolve:      h.Capabilities.Has(docker.HostCapabilityResolve),
			pull:         h.Capabilities.Has(docker.HostCapabilityPull),
			mirror:       h.Host != ep.Host,
			allowPrivate: ep.AllowPrivate || config.MatchRegistry(r.opts.AllowPrivateNetworks, h.Host),
		})
	}
	log.G(ctx).WithFields(log.Fields{"registry": ep.Name, "dir": dir, "hosts": len(out)}).Debug("loaded hosts.toml")
	return out, nil
}

// adoptClient makes a client built by containerd's hosts code behave like the resolver's own:
// guarded dial (no private networks, never the daemon itself), the daemon's forward proxy
// (containerd's would read the environment at every request), header timeout, no transparent
// decompression, the redirect policy. TLS settings from hosts.toml stay as containerd set them.
func (r *Resolver) adoptClient(c *http.Client) error {
	tr, ok := c.Transport.(*http.Transport)
	if !ok {
		return fmt.Errorf("unexpected transport %T from hosts config: %w", c.Transport, errdefs.ErrInternal)
	}
	tr.DialContext = r.guardedDial(&net.Dialer{Timeout: r.opts.DialTimeout, KeepAlive: 30 * time.Second})
	tr.Proxy = r.proxy
	tr.TLSHandshakeTimeout = r.opts.DialTimeout
	tr.ResponseHeaderTimeout = r.opts.ResponseHeaderTimeout
	tr.DisableCompression = true
	c.CheckRedirect = checkRedirect
	return nil
}

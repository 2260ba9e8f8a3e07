package install

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// What install keeps of the node's existing setup: the endpoints of containerd's old
// registry.mirrors (carried into hosts.toml after the cache), the per-registry hosts.toml
// files that would otherwise bypass the cache, and (proxy mode) a word about the images in
// containerd's own content store.

// carriedLine heads the hosts carried over from registry.mirrors.
const carriedLine = "# from registry.mirrors in containerd's config.toml " + Marker

// carriedBlock is one endpoint of registry.mirrors as a [host] table: the CRI plugin used
// mirror endpoints to pull and to resolve tags.
func carriedBlock(endpoint string) []string {
	return []string{
		"[host." + quote(endpoint) + "] " + Marker,
		`  capabilities = ["pull", "resolve"] ` + Marker,
	}
}

// mirrorEndpoints reads registry.mirrors of a config.toml: hosts.toml directory name
// ("*" becomes _default) → endpoint URLs in order, without the registry itself (hosts.toml
// always ends with it) or the cache.
func mirrorEndpoints(cfgText, mirrorURL string) map[string][]string {
	doc, err := decode(cfgText)
	if err != nil {
		return nil
	}
	v, _ := lookup(doc, append(registryKey(configVersion(doc)), "mirrors")...)
	mirrors, _ := v.(map[string]any)
	out := map[string][]string{}
	for name, m := range mirrors {
		mm, _ := m.(map[string]any)
		eps, _ := mm["endpoint"].([]any)
		dir := name
		if name == "*" {
			dir = DefaultHostsName
		} else if config.ValidRegistryHost(name) != nil {
			continue
		}
		for _, e := range eps {
			s, _ := e.(string)
			u := normalizeEndpoint(s)
			if u == "" || u == mirrorURL || isRegistryItself(name, u) {
				continue
			}
			out[dir] = append(out[dir], u)
		}
	}
	return out
}

func normalizeEndpoint(s string) string {
	s = strings.TrimSuffix(strings.TrimSpace(s), "/")
	if s == "" {
		return ""
	}
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	return s
}

func isRegistryItself(registry, u string) bool {
	host := strings.TrimPrefix(strings.TrimPrefix(u, "https://"), "http://")
	if registry == "docker.io" {
		return host == "registry-1.docker.io" || host == "index.docker.io" || host == "docker.io"
	}
	return host == registry
}

// registryHostsFiles lists the registries of hostsDir that have a hosts.toml of their own
// (not _default), sorted.
func registryHostsFiles(hostsDir string) []string {
	entries, err := os.ReadDir(hostsDir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.Name() == DefaultHostsName || !e.IsDir() {
			continue
		}
		if st, err := os.Stat(filepath.Join(hostsDir, e.Name(), "hosts.toml")); err == nil && st.Mode().IsRegular() {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// installedRegistries lists the registries of hostsDir whose hosts.toml install changed
// (they carry the marker), for uninstall.
func installedRegistries(hostsDir string, also []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range also {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	entries, err := os.ReadDir(hostsDir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		if seen[e.Name()] || !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(hostsDir, e.Name(), "hosts.toml"))
		if err == nil && strings.Contains(string(b), Marker) {
			seen[e.Name()] = true
			out = append(out, e.Name())
		}
	}
	return out
}

// planRegistryHosts handles the hosts.toml files beside _default: an existing one is
// reported (containerd reads it instead of _default, so that registry bypasses the cache)
// and, with fix, given the cache as its first host; a registry of registry.mirrors without
// one gets one, with its mirror endpoints after the cache.
func (p *Plan) planRegistryHosts(opts Options, carried map[string][]string) error {
	planned := map[string]bool{}
	for _, r := range opts.Registries {
		planned[r] = true
	}
	if planned[DefaultHostsName] {
		for _, reg := range registryHostsFiles(p.HostsDir) {
			if planned[reg] {
				continue
			}
			planned[reg] = true
			path := filepath.Join(p.HostsDir, reg, "hosts.toml")
			before, _, err := readOptional(path)
			if err != nil {
				return err
			}
			after, err := installHosts(before, opts.MirrorURL, carried[reg])
			if err != nil {
				p.Notes = append(p.Notes, fmt.Sprintf("%s: %v", path, err))
				continue
			}
			if after == before {
				continue
			}
			p.addFinding(Finding{
				Problem: fmt.Sprintf("%s exists: containerd reads it instead of %s/hosts.toml, so pulls from %s bypass the cache", path, DefaultHostsName, reg),
				Fix:     "add the cache as its first host (its other hosts and settings stay as they are)",
			}, opts.Fix)
			if opts.Fix {
				p.Changes = append(p.Changes, FileChange{Path: path, Before: before, After: after, Existed: true, Backup: backupFor(path, true)})
			}
		}
	}
	var regs []string
	for reg := range carried {
		regs = append(regs, reg)
	}
	sort.Strings(regs)
	for _, reg := range regs {
		if planned[reg] {
			continue
		}
		path := filepath.Join(p.HostsDir, reg, "hosts.toml")
		after, err := installHosts("", opts.MirrorURL, carried[reg])
		if err != nil {
			return err
		}
		p.Changes = append(p.Changes, FileChange{Path: path, After: after})
		p.Notes = append(p.Notes, fmt.Sprintf("registry.mirrors endpoints of %s (%s) are kept in %s, after the cache", reg, strings.Join(carried[reg], ", "), path))
	}
	return nil
}

// contentStoreNote warns, before proxy mode replaces containerd's content store, about the
// blobs containerd holds in its own: images pulled before stay listed, but containerd no
// longer finds their content.
func contentStoreNote(cfgText string) string {
	doc, err := decode(cfgText)
	if err != nil {
		return ""
	}
	if disabled, _ := doc["disabled_plugins"].([]any); len(disabled) > 0 {
		for _, d := range disabled {
			if d == ContentPluginID {
				return ""
			}
		}
	}
	root, _ := doc["root"].(string)
	if root == "" {
		root = "/var/lib/containerd"
	}
	dir := filepath.Join(root, ContentPluginID, "blobs", "sha256")
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		return ""
	}
	return fmt.Sprintf("containerd's own content store (%s) holds %d blobs. In proxy mode containerd uses the daemon's content store instead: images pulled before stay listed, but their content is no longer found (unpacked snapshots and running containers are not touched). "+
		"To keep them, pull them again through the cache after containerd's restart (`ctr -n NAMESPACE image pull REF`, `crictl pull REF`), or save them now with `ctr -n NAMESPACE image export FILE.tar REF` and load them after the restart with `ctr -n NAMESPACE image import FILE.tar`", dir, len(entries))
}

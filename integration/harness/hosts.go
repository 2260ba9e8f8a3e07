package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultHostsDirName is the hosts.toml directory containerd uses for any registry
// without a directory of its own.
const DefaultHostsDirName = "_default"

// WriteHostsToml writes <dir>/<registryHost>/hosts.toml in containerd's format and returns
// its path. registryHost is "host:port" of the registry named in image references, reached
// over plain HTTP as the last resort (`server`); its requests carry DirectHeader so the
// counting proxy can tell them from the daemon's. With mirrorURL ("http://127.0.0.1:PORT")
// non-empty, the mirror is tried first for pull and resolve, with a short dial timeout so a
// stopped mirror costs little.
//
// registryHost may be DefaultHostsDirName: the file then names no server and applies to every
// registry (containerd picks its default scheme for it).
func WriteHostsToml(dir, registryHost, mirrorURL string) (string, error) {
	if registryHost == "" || strings.ContainsAny(registryHost, "/\\\"") {
		return "", fmt.Errorf("invalid registry host %q", registryHost)
	}
	if mirrorURL != "" && !strings.HasPrefix(mirrorURL, "http://") && !strings.HasPrefix(mirrorURL, "https://") {
		return "", fmt.Errorf("mirror URL %q needs a scheme", mirrorURL)
	}
	var b strings.Builder
	b.WriteString("# Written by the containerd-blobcache integration harness.\n")
	if registryHost != DefaultHostsDirName {
		fmt.Fprintf(&b, "server = %q\n\n", "http://"+registryHost)
		fmt.Fprintf(&b, "[header]\n  %s = \"1\"\n\n", DirectHeader)
	}
	if mirrorURL != "" {
		fmt.Fprintf(&b, "[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"1s\"\n", strings.TrimSuffix(mirrorURL, "/"))
	}
	hostDir := filepath.Join(dir, registryHost)
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(hostDir, "hosts.toml")
	// Write then rename: containerd reads the file on every pull.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// Package resolver owns everything about upstream registries: which registries a request may
// name and how each is reached (scheme, docker.io's real host, the daemon's own hosts.toml
// read with containerd's parser: mirrors in order, TLS, headers, override_path), the HTTP
// clients with their dial, header and stall timeouts, the guard that keeps the daemon from
// dialling private networks or itself, redirects (no registry Authorization to another host,
// one retry when a signed URL has expired), the forwarding of the client's credentials, and
// the daemon's own credentials: challenges and token fetches (OAuth2 POST, GET fallback) with
// containerd's core/remotes/docker/auth through the resolver's own client, and the token
// cache (per registry, realm, service, scope and credential, one fetch at a time, refreshed
// before expiry). It knows nothing about the disk.
package resolver

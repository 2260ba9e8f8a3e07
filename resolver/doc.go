// Package resolver owns everything about upstream registries: which registries a request may
// name and how each is reached (scheme, docker.io's real host), the HTTP client with its dial,
// header and stall timeouts, the guard that keeps the daemon from dialling private networks or
// itself, and the forwarding of the client's credentials. It knows nothing about the disk.
package resolver

// Package version holds the daemon's version, set at build time with
// -ldflags "-X github.com/containerd-blobcache/containerd-blobcache/internal/version.Version=...".
package version

// Version is the release version; "dev" for builds from a checkout.
var Version = "dev"

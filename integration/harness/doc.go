// Package harness starts the real components the integration tests need — a distribution
// registry, a counting reverse proxy in front of it, containerd with its CRI plugin, and the
// containerd-blobcache daemon — each as a recorded child process in a temporary directory,
// stopped and removed when the test ends. It also builds OCI images in Go and pushes them
// with the registry HTTP API, so no test ever needs the internet.
//
// Every helper takes the *testing.T it belongs to, registers its own cleanup and fails the
// test, never skips it, when something it needs is missing, naming what to install.
package harness

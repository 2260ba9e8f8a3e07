// Package test renders the Helm chart contrib/helm/containerd-blobcache with the Helm library
// and checks what it renders against the containerd-blobcache binary. It is a Go module of
// its own so that Helm's dependencies stay out of the daemon's go.mod; `make test` runs it.
package test

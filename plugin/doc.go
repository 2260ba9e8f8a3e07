// Package plugin wires the containerd-facing surfaces to the store and the resolver: it opens
// the store, binds the listeners, serves until told to stop and shuts down cleanly (requests in
// flight finish or are cut after a bound, the index is closed). The surfaces themselves live
// in its sub-packages: mirror (the HTTP registry mirror) and content (containerd's content API
// on a unix socket, for a containerd [proxy_plugins] entry).
package plugin

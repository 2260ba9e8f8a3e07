// Package mirror is the registry mirror containerd reaches through hosts.toml: an HTTP handler
// for the read side of the OCI distribution API (/v2/, manifests and blobs, GET and HEAD,
// Range) that answers from the blob store when it can, fills the store from upstream on a
// miss while streaming to every waiting client, and falls back to plain proxying whenever the
// store cannot help, so the cache never turns a working pull into a failed one.
package mirror

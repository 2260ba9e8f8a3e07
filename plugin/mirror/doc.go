// Package mirror is the registry mirror containerd reaches through hosts.toml: an HTTP handler
// for the read side of the OCI distribution API (/v2/, manifests, blobs, tags/list and
// referrers, GET and HEAD, Range) that answers from the blob store when it can, fills the store from upstream on a
// miss while streaming to every waiting client, and falls back to plain proxying whenever the
// store cannot help, so the cache never turns a working pull into a failed one.
//
// One job per file:
//   - handler.go: options, ServeHTTP (dispatch) and the per-request log line
//   - request.go: routing, a /v2/ request parsed into a typed request (target, registry)
//   - manifest.go: manifests by tag (freshness, revalidation) and by digest, fetched in full
//   - manifest_flight.go: one upstream request per manifest (or tag revalidation) under concurrency
//   - listing.go: tags/list and referrers passed through (referrers tag schema fallback)
//   - blob.go: what happens to a blob GET, from the store or filled from upstream while streaming
//   - upstream.go: relaying upstream answers when the store cannot help
//   - response.go: results, error bodies and Range parsing, what goes back to the client
//   - tags.go: tag policy and remembered 404s; access.go: who may read a private object
//   - prefetch.go: the blobs of recently served manifests, filled when the content API's Info
//     asks for one (Prefetch, wired to plugin/content by the server)
package mirror

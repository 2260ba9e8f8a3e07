// Package metrics owns the daemon's Prometheus metrics (all named containerd_blobcache_*, in
// a registry of the daemon's own, never the global one) and the HTTP listener that serves
// them with /healthz and /readyz. The mirror is measured from outside its handler by a
// middleware reading the X-Blobcache-Result header; the store's fills and index are read at
// scrape time; other components report through Observer.
package metrics

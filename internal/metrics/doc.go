// Package metrics owns the daemon's Prometheus metrics (all named containerd_blobcache_*, in
// a registry of the daemon's own, never the global one) and the HTTP listener that serves
// them with /healthz and /readyz. Requests on both surfaces reach it as traffic.Request
// observations (ObserveRequest), the same ones that feed the admin API's stats; the store's
// fills and index are read at scrape time; other components report through Observer.
package metrics

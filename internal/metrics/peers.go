package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/containerd-blobcache/containerd-blobcache/internal/cluster"
)

// peerCollector reads the cluster tier's membership when scraped: one gauge per state.
type peerCollector struct {
	list  func() []cluster.PeerState
	peers *prometheus.Desc
}

func (c *peerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.peers }

func (c *peerCollector) Collect(ch chan<- prometheus.Metric) {
	count := map[cluster.State]int{cluster.StateSelf: 0, cluster.StateUp: 0, cluster.StateDown: 0}
	for _, p := range c.list() {
		count[p.State]++
	}
	for st, n := range count {
		ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(n), string(st))
	}
}

// WatchPeers adds the cluster tier's metrics: the peers by state (read at each scrape from
// list) and the outcomes of peer fetches (PeerFetched).
func (m *Metrics) WatchPeers(list func() []cluster.PeerState) {
	if m == nil {
		return
	}
	m.peerFetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "peer_fetches_total",
		Help: "Blob fetches from the owning peer on a local miss, by outcome (served: the whole blob; refused: the owner answered 401/403/404 about the content; failed: no connection, an error, an unsigned answer or no first byte in time, so the registry was asked; stalled: the owner stopped midway and the rest came from the registry).",
	}, []string{"outcome"})
	m.Registry.MustRegister(m.peerFetches, &peerCollector{list: list, peers: prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "", "peers"),
		"Nodes of the cluster tier by state (self, up, down: left out of the placement after a failure).",
		[]string{"state"}, nil)})
}

// PeerFetched counts one peer fetch's outcome.
func (m *Metrics) PeerFetched(outcome string) {
	if m == nil || m.peerFetches == nil {
		return
	}
	m.peerFetches.WithLabelValues(outcome).Inc()
}

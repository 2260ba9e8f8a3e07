package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// diffMetrics count the diff API's operations (proxy mode with [diff] enabled).
type diffMetrics struct {
	operations *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	applied    prometheus.Counter
}

func newDiffMetrics(reg prometheus.Registerer) *diffMetrics {
	d := &diffMetrics{
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "diff_operations_total",
			Help: "Diff API operations, by operation (apply: a layer unpacked into a snapshot; compare: a layer made from two snapshots) and result (ok, error).",
		}, []string{"operation", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "diff_operation_duration_seconds",
			Help:    "Time a diff API operation took, by operation and result.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 120},
		}, []string{"operation", "result"}),
		applied: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "diff_applied_bytes_total",
			Help: "Layer blob bytes (as stored, compressed) read from the store by successful applies.",
		}),
	}
	reg.MustRegister(d.operations, d.duration, d.applied)
	return d
}

// DiffCall counts one diff API operation (plugin/diff.Observer): op is "apply" or "compare",
// bytes the layer blob's size for an apply.
func (m *Metrics) DiffCall(op string, failed bool, d time.Duration, bytes int64) {
	if m == nil {
		return
	}
	// Labels of their own: the request results (hit, miss, ...) say nothing about a diff.
	result := "ok"
	if failed {
		result = "error"
	}
	m.diff.operations.WithLabelValues(op, result).Inc()
	m.diff.duration.WithLabelValues(op, result).Observe(d.Seconds())
	if !failed && op == "apply" {
		m.diff.applied.Add(float64(bytes))
	}
}

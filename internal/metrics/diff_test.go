package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestDiffCallCountsByOperationAndResult(t *testing.T) {
	m := New("test", nil)
	m.DiffCall("apply", false, time.Millisecond, 100)
	m.DiffCall("apply", false, time.Millisecond, 50)
	m.DiffCall("apply", true, time.Millisecond, 1000)
	m.DiffCall("compare", false, time.Millisecond, 0)
	for _, c := range []struct {
		op, result string
		want       float64
	}{
		{"apply", "ok", 2},
		{"apply", "error", 1},
		{"compare", "ok", 1},
		{"compare", "error", 0},
	} {
		if got := testutil.ToFloat64(m.diff.operations.WithLabelValues(c.op, c.result)); got != c.want {
			t.Errorf("diff_operations_total{%s,%s} = %v, want %v", c.op, c.result, got, c.want)
		}
	}
	// A failed apply read no layer into a snapshot: only the two that succeeded count.
	if got := testutil.ToFloat64(m.diff.applied); got != 150 {
		t.Errorf("diff_applied_bytes_total = %v, want 150", got)
	}
	var none *Metrics
	none.DiffCall("apply", false, time.Millisecond, 1) // a nil *Metrics records nothing
}

package bench

import (
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	in := []float64{3, 1, 2}
	Median(in)
	if in[0] != 3 {
		t.Errorf("Median sorted its argument: %v", in)
	}
	if got := MedianDuration([]time.Duration{3 * time.Second, time.Second, 2 * time.Second}); got != 2*time.Second {
		t.Errorf("MedianDuration = %v", got)
	}
}

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 100; i >= 1; i-- {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0.1, time.Millisecond}} {
		if got := Percentile(lat, tc.p); got != tc.want {
			t.Errorf("Percentile(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("Percentile of nothing is not 0")
	}
}

func TestRotate(t *testing.T) {
	list := []string{"a", "b", "c"}
	for i, want := range []string{"a b c", "b c a", "c a b", "a b c"} {
		if got := strings.Join(Rotate(list, i), " "); got != want {
			t.Errorf("Rotate(%d) = %q, want %q", i, got, want)
		}
	}
	if strings.Join(list, " ") != "a b c" {
		t.Errorf("Rotate changed its argument: %v", list)
	}
}

func TestReportMarkdown(t *testing.T) {
	var r Report
	r.Add(Row{Scenario: "cold", Measure: "wall", Ours: "1.00 s", Others: map[string]string{ColDirect: "1.10 s"}, Ratio: "0.91×", Target: "≤ 1.05×", Met: Bool(true)})
	r.Add(Row{Scenario: "hot", Measure: "a|b", Ours: "10", Target: "≥ x", Met: Bool(false)})
	r.Add(Row{Scenario: "info", Measure: "p50", Ours: "1 ms"})
	lines := strings.Split(strings.TrimSpace(r.Markdown()), "\n")
	if len(lines) != 5 {
		t.Fatalf("want header, rule and 3 rows, got:\n%s", r.Markdown())
	}
	want := []string{
		"| scenario | measure | containerd-blobcache | direct pull | distribution proxy | nginx sendfile | mirror mode (built-in content store) | cluster tier off | null content server | ratio | target | met? |",
		"| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
		"| cold | wall | 1.00 s | 1.10 s | — | — | — | — | — | 0.91× | ≤ 1.05× | yes |",
		`| hot | a\|b | 10 | — | — | — | — | — | — | — | ≥ x | **NO** |`,
		"| info | p50 | 1 ms | — | — | — | — | — | — | — | — | — |",
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d:\n got %s\nwant %s", i, lines[i], want[i])
		}
	}
}

func TestMBps(t *testing.T) {
	if got := MBps(500e6, 2*time.Second); got != 250 {
		t.Errorf("MBps = %v, want 250", got)
	}
}

package bench

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Comparison columns of the report table, in order.
const (
	ColDirect = "direct pull"
	ColDist   = "distribution proxy"
	ColNginx  = "nginx sendfile"
	// ColMirrorMode is containerd with its built-in content store and differ, pulling
	// through the daemon's mirror: the comparison of proxy mode's rows.
	ColMirrorMode = "mirror mode (built-in content store)"
	// ColTierOff is the cluster scenario's figure with the cluster tier switched off.
	ColTierOff = "cluster tier off"
	// ColNullContent is a grpc-go content server answering from memory and doing nothing
	// else (nullcontent.go): what containerd's proxy client can read from any server here.
	ColNullContent = "null content server"
)

var comparisonColumns = []string{ColDirect, ColDist, ColNginx, ColMirrorMode, ColTierOff, ColNullContent}

// Row is one line of the report: one measure of one scenario, with the figure of
// containerd-blobcache, the comparisons' figures by column, and the target it is judged by.
type Row struct {
	Scenario string
	Measure  string
	Ours     string
	Others   map[string]string
	// Ratio is "" when the target is absolute.
	Ratio  string
	Target string
	// Met is nil when the row is informational (no target).
	Met *bool
}

// Report collects rows and renders them as one markdown table.
type Report struct {
	Rows []Row
}

// Add appends a row.
func (r *Report) Add(row Row) { r.Rows = append(r.Rows, row) }

// Markdown renders the table.
func (r *Report) Markdown() string {
	header := append(append([]string{"scenario", "measure", "containerd-blobcache"}, comparisonColumns...), "ratio", "target", "met?")
	var b strings.Builder
	b.WriteString("| " + strings.Join(header, " | ") + " |\n")
	b.WriteString("|" + strings.Repeat(" --- |", len(header)) + "\n")
	for _, row := range r.Rows {
		cells := []string{row.Scenario, row.Measure, orDash(row.Ours)}
		for _, c := range comparisonColumns {
			cells = append(cells, orDash(row.Others[c]))
		}
		met := "—"
		if row.Met != nil {
			met = "yes"
			if !*row.Met {
				met = "**NO**"
			}
		}
		cells = append(cells, orDash(row.Ratio), orDash(row.Target), met)
		for i, c := range cells {
			cells[i] = strings.ReplaceAll(c, "|", `\|`)
		}
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// Bool returns a pointer to v, for Row.Met.
func Bool(v bool) *bool { return &v }

// Median of the samples (the mean of the middle two for an even count); NaN when empty.
func Median(samples []float64) float64 {
	if len(samples) == 0 {
		return math.NaN()
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// MedianDuration is Median over durations.
func MedianDuration(samples []time.Duration) time.Duration {
	f := make([]float64, len(samples))
	for i, d := range samples {
		f[i] = float64(d)
	}
	return time.Duration(Median(f))
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of samples by the nearest-rank
// method; 0 when empty.
func Percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = max(1, min(rank, len(s)))
	return s[rank-1]
}

// Rotate returns list rotated left by i, so that successive runs start with a different
// system and drift on a noisy machine hits every system alike.
func Rotate[T any](list []T, i int) []T {
	if len(list) == 0 {
		return nil
	}
	i %= len(list)
	return append(slices.Clone(list[i:]), list[:i]...)
}

// FormatSeconds renders a wall time as "12.34 s".
func FormatSeconds(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// FormatMillis renders a latency as "0.42 ms".
func FormatMillis(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// FormatRatio renders a ratio as "1.02×".
func FormatRatio(r float64) string { return fmt.Sprintf("%.2f×", r) }

// MBps is the throughput of n bytes in d, in MB/s (10^6 bytes).
func MBps(n int64, d time.Duration) float64 {
	if d <= 0 {
		return math.Inf(1)
	}
	return float64(n) / 1e6 / d.Seconds()
}

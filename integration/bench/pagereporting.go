//go:build bench

package bench

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"
)

// pageReportingOrder is the kernel's free page reporting knob (virtio-balloon's
// VIRTIO_BALLOON_F_REPORTING): free blocks of 2^order pages are handed back to the host
// within seconds, and the next write into them faults on the host. On such a VM (this
// machine: Firecracker, order 9) a case that frees gigabytes of page cache (a cluster torn
// down) slows the next case's writes several-fold: the cluster's later `ctr` pulls took
// 10-13 s after the four-at-once case, with 65 % of the CPU in the kernel's copy into the page
// cache (perf), and 2.7 s with reporting paused. The figures would measure the previous
// case's frees, not the systems.
const pageReportingOrder = "/sys/module/page_reporting/parameters/page_reporting_order"

// pausePageReporting stops free page reporting for the benchmark, for every system alike,
// and restores the kernel's setting when the test ends. An order above the buddy allocator's
// largest (10 on x86-64 and arm64 with 4 KiB pages) is never reached, so nothing is reported.
// It returns what the report says about it.
func pausePageReporting(t *testing.T) string {
	t.Helper()
	old, err := os.ReadFile(pageReportingOrder)
	if errors.Is(err, fs.ErrNotExist) {
		return "free page reporting: not in this kernel"
	}
	if err != nil {
		t.Fatalf("read %s: %v", pageReportingOrder, err)
	}
	prev := strings.TrimSpace(string(old))
	if err := os.WriteFile(pageReportingOrder, []byte("11"), 0); err != nil {
		// A kernel that refuses the order reports as before: say so beside the figures.
		t.Logf("free page reporting stays on: write %s: %v", pageReportingOrder, err)
		return fmt.Sprintf("free page reporting: on (order %s; could not pause it: %v)", prev, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(pageReportingOrder, []byte(prev), 0); err != nil {
			t.Errorf("restore %s to %s: %v", pageReportingOrder, prev, err)
		}
	})
	return fmt.Sprintf("free page reporting: paused for the run (order %s → 11, restored after; see pagereporting.go)", prev)
}

//go:build bench

package bench

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pageReportingOrder is the kernel's free page reporting knob (virtio-balloon's
// VIRTIO_BALLOON_F_REPORTING): free blocks of 2^order pages are handed back to the host
// within seconds, and the next write into such memory faults on the host. On this machine (a
// Firecracker VM, order 9) a write into memory the guest has not touched lately runs at
// 100-180 MB/s, against 2-4 GB/s into memory it has: dd of 2 GB into the page cache took
// 0.5 s, a second 2 GB file beside it 11.7 s. A scenario that needs more page cache than
// the previous one freed then measures the VM, not the systems: the cluster's three later
// `ctr` pulls took 10.4-13.5 s after the four-at-once case or after the other scenarios,
// with 65 % of all CPU in the kernel's copy into the page cache (perf), and 2.7-3.1 s on
// memory the guest had just used.
const pageReportingOrder = "/sys/module/page_reporting/parameters/page_reporting_order"

// steadyMemory makes the VM's memory behave like a physical machine's for the run, for every
// system alike: it pauses free page reporting (an order above the buddy allocator's largest,
// 10 on x86-64 and arm64 with 4 KiB pages, is never reached, so nothing is reported), and
// then touches the free memory once, so that every page the kernel hands out later is backed
// by the host. The kernel's setting is restored when the test ends. It returns what the
// report says about it.
func steadyMemory(t *testing.T) string {
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
	gib, took := touchFreeMemory(t)
	return fmt.Sprintf("free page reporting: paused for the run (order %s → 11, restored after), and %d GiB of free memory touched once before the first scenario (%v); see pagereporting.go", prev, gib, took.Round(time.Second))
}

// touchFreeMemory maps the available memory but 2 GiB, 1 GiB at a time, writes one byte per
// page, and unmaps it all: the pages return to the kernel's free lists backed by the host.
func touchFreeMemory(t *testing.T) (gib int, took time.Duration) {
	t.Helper()
	availKiB, ok := meminfoKiB("MemAvailable")
	if !ok {
		t.Fatal("no MemAvailable in /proc/meminfo")
	}
	const chunk = 1 << 30
	n := int(availKiB/(1<<20)) - 2
	start := time.Now()
	var regions [][]byte
	defer func() {
		for _, r := range regions {
			if err := syscall.Munmap(r); err != nil {
				t.Errorf("munmap: %v", err)
			}
		}
	}()
	page := os.Getpagesize()
	for range max(n, 0) {
		r, err := syscall.Mmap(-1, 0, chunk, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil {
			t.Fatalf("map 1 GiB to touch: %v", err)
		}
		regions = append(regions, r)
		for i := 0; i < len(r); i += page {
			r[i] = 1
		}
	}
	took = time.Since(start)
	t.Logf("touched %d GiB of free memory in %v", len(regions), took.Round(time.Millisecond))
	return len(regions), took
}

package blobcache_test

import (
	"context"
	"runtime"
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/blobcache/blobcachetest"
)

func benchmarkOpen(b *testing.B, n int) {
	root := b.TempDir()
	if err := blobcachetest.SeedRecords(context.Background(), root, n); err != nil {
		b.Fatal(err)
	}
	var ms runtime.MemStats
	var heap uint64
	b.ResetTimer()
	for b.Loop() {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		before := ms.HeapAlloc
		s, err := blobcache.Open(context.Background(), blobcache.Options{Root: root, MaxSize: 1 << 40})
		if err != nil {
			b.Fatal(err)
		}
		if _, count, err := s.Totals(); err != nil || count != int64(n) {
			b.Fatalf("totals: %d, %v", count, err)
		}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		heap = ms.HeapAlloc - min(before, ms.HeapAlloc)
		s.Close()
	}
	b.ReportMetric(float64(heap)/1024, "heap-KiB")
}

// BenchmarkOpen10k and BenchmarkOpen100k: Open reads the totals, not the records, so time
// and heap after Open do not grow with the number of blobs.
func BenchmarkOpen10k(b *testing.B)  { benchmarkOpen(b, 10000) }
func BenchmarkOpen100k(b *testing.B) { benchmarkOpen(b, 100000) }

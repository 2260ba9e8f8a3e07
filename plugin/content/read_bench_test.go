package content

import (
	"bytes"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
)

// BenchmarkReadThroughAPI reads a 256 MiB layer the way containerd's unpacker does through
// its proxy client (core/content/proxy): sequential 32 KiB ReadAt calls (the decompressor's
// buffer), each one a Read RPC. It measures what reading from the content proxy costs.
func BenchmarkReadThroughAPI(b *testing.B) {
	s, err := serve(b.Context(), b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.close(b.Context())
	data, d := testBlob(256 << 20)
	if err := content.WriteBlob(b.Context(), s.client, "x", bytes.NewReader(data), desc(d, data)); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(data)))
	cpu0 := cpuTime(b)
	for b.Loop() {
		ra, err := s.client.ReaderAt(b.Context(), desc(d, data))
		if err != nil {
			b.Fatal(err)
		}
		// Hide WriterTo so that the copy goes through buf, 32 KiB per ReadAt.
		if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{content.NewReader(ra)}, buf); err != nil {
			b.Fatal(err)
		}
		ra.Close()
	}
	// The CPU time of client and server together per 32 KiB read: what bounds the rate
	// on an idle machine, whatever else the machine runs while the benchmark does.
	b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N)/float64(len(data)/len(buf)), "cpu-µs/read")
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

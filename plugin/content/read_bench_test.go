package content

import (
	"bytes"
	"io"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
)

// BenchmarkReadThroughAPI reads a layer the way containerd's unpacker does through its proxy
// client: 32 KiB at a time (the decompressor's buffer), each read one Read RPC, each RPC an
// Info and an open on the server. It measures what unpacking from the content proxy costs.
func BenchmarkReadThroughAPI(b *testing.B) {
	s, err := serve(b.Context(), b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.close(b.Context())
	data, d := testBlob(16 << 20)
	if err := content.WriteBlob(b.Context(), s.client, "x", bytes.NewReader(data), desc(d, data)); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(data)))
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
}

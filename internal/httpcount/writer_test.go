package httpcount

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestWriterCountsStatusAndBytes(t *testing.T) {
	rec := httptest.NewRecorder()
	w := &Writer{ResponseWriter: rec}
	if _, err := w.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, strings.NewReader("defgh")); err != nil {
		t.Fatal(err)
	}
	w.WriteHeader(http.StatusTeapot) // too late: the first status stays
	if w.Status != http.StatusOK || w.Bytes != 8 || rec.Body.String() != "abcdefgh" {
		t.Fatalf("status %d bytes %d body %q", w.Status, w.Bytes, rec.Body.String())
	}
}

func TestWriterKeepsExplicitStatus(t *testing.T) {
	rec := httptest.NewRecorder()
	w := &Writer{ResponseWriter: rec}
	w.WriteHeader(http.StatusPartialContent)
	w.Flush()
	if w.Status != http.StatusPartialContent || !rec.Flushed || http.NewResponseController(w).Flush() != nil {
		t.Fatalf("status %d flushed %v", w.Status, rec.Flushed)
	}
}

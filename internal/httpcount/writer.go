package httpcount

import (
	"io"
	"net/http"
)

// Writer records the status and counts the body bytes written through it.
type Writer struct {
	http.ResponseWriter
	// Status is the first status written (200 when the body started without one); 0 while
	// nothing was written.
	Status int
	// Bytes is the number of body bytes written.
	Bytes int64
}

func (w *Writer) WriteHeader(code int) {
	if w.Status == 0 {
		w.Status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *Writer) Write(p []byte) (int, error) {
	if w.Status == 0 {
		w.Status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.Bytes += int64(n)
	return n, err
}

// ReadFrom hands the copy to the underlying writer's ReadFrom when it has one: net/http's
// uses sendfile for files.
func (w *Writer) ReadFrom(src io.Reader) (int64, error) {
	if w.Status == 0 {
		w.Status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(w.ResponseWriter, src)
	}
	w.Bytes += n
	return n, err
}

func (w *Writer) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

package mirror

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/containerd-blobcache/containerd-blobcache/internal/httpcount"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// recorder remembers what a handler sent, for the request's log line: the status and bytes
// (httpcount.Writer, which keeps sendfile working), the result and the error.
type recorder struct {
	httpcount.Writer
	result  traffic.Result
	err     error
	aborted bool
}

// fail answers with an OCI error body before any header went out.
func (h *Handler) fail(q *request, e *apiError) {
	q.w.result = traffic.Error
	q.w.err = e
	e.write(q.w, q.r)
}

// apiError is an error answered with the OCI distribution error body, so that containerd and
// people reading its logs see why a request was refused.
type apiError struct {
	status  int
	code    string
	message string
}

func newAPIError(status int, code, message string) *apiError {
	return &apiError{status: status, code: code, message: message}
}

func errNotFound(message string) *apiError {
	return newAPIError(http.StatusNotFound, "NOT_FOUND", message)
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func (e *apiError) write(w http.ResponseWriter, r *http.Request) {
	body, _ := json.Marshal(struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}{Errors: []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}{{Code: e.code, Message: e.message}}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// writeAs relays the captured answer with the given result.
func (e *statusError) writeAs(q *request, result traffic.Result) {
	for k, v := range e.header {
		q.w.Header()[k] = v
	}
	q.w.Header().Set("Content-Length", strconv.Itoa(len(e.body)))
	q.w.Header().Set(traffic.ResultHeader, string(result))
	q.w.result = result
	q.w.err = e
	q.w.WriteHeader(e.status)
	if q.r.Method != http.MethodHead {
		_, _ = q.w.Write(e.body)
	}
}

// errRange is a Range header that cannot be satisfied.
var errRange = errors.New("range not satisfiable")

// parseRange reads a single-range "bytes=" header against a blob of size bytes. It returns
// ok=false when the header should be ignored (several ranges, another unit, bad syntax: RFC
// 9110 lets a server answer those with the whole body) and an error when the range lies
// outside the blob or ends before it starts.
func parseRange(header string, size int64) (start, length int64, ok bool, err error) {
	spec, found := strings.CutPrefix(header, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, nil
	}
	first, last, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, nil
	}
	if first == "" {
		// Suffix range: the last N bytes.
		n, perr := strconv.ParseInt(last, 10, 64)
		if perr != nil || n < 0 {
			return 0, 0, false, nil
		}
		if n == 0 || size == 0 {
			// RFC 9110 14.1.1: a suffix range of an empty representation is unsatisfiable.
			return 0, 0, false, fmt.Errorf("empty suffix range: %w", errRange)
		}
		if n > size {
			n = size
		}
		return size - n, n, true, nil
	}
	s, perr := strconv.ParseInt(first, 10, 64)
	if perr != nil || s < 0 {
		return 0, 0, false, nil
	}
	if s >= size {
		return 0, 0, false, fmt.Errorf("range starts at %d, blob has %d bytes: %w", s, size, errRange)
	}
	e := size - 1
	if last != "" {
		v, perr := strconv.ParseInt(last, 10, 64)
		if perr != nil {
			return 0, 0, false, nil
		}
		if v < s {
			// An end before the start: 416, as http.ServeContent answers the same range
			// on a hit, so that a miss and a hit agree.
			return 0, 0, false, fmt.Errorf("range ends at %d before it starts at %d: %w", v, s, errRange)
		}
		if v < e {
			e = v
		}
	}
	return s, e - s + 1, true, nil
}

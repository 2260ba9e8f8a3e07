package mirror

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd-blobcache/containerd-blobcache/internal/httpcount"
)

// recorder remembers what a handler sent, for the request's log line: the status and bytes
// (httpcount.Writer, which keeps sendfile working), the result and the error.
type recorder struct {
	httpcount.Writer
	result  string
	err     error
	aborted bool
}

// errRange is a Range header that cannot be satisfied.
var errRange = errors.New("range not satisfiable")

// parseRange reads a single-range "bytes=" header against a blob of size bytes. It returns
// ok=false when the header should be ignored (several ranges, another unit, bad syntax: RFC
// 9110 lets a server answer those with the whole body) and an error when the range lies
// outside the blob.
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
		if perr != nil || v < s {
			return 0, 0, false, nil
		}
		if v < e {
			e = v
		}
	}
	return s, e - s + 1, true, nil
}

// declaredMediaType reads the mediaType field a manifest or index declares.
func declaredMediaType(body []byte) string {
	var m struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(body, &m) != nil {
		return ""
	}
	return m.MediaType
}

package mirror

import (
	"encoding/json"
	"net/http"
	"strconv"
)

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

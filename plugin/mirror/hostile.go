package mirror

import "net/http"

// refuseBody answers 400 and closes the connection for a request that carries a body. The
// mirror is read-only: GET and HEAD have no body, and one that announces a body (or both
// Content-Length and Transfer-Encoding) is either a confused client or an attempt to make
// this server and a proxy in front of it disagree on where the next request starts. The
// connection is closed so that no byte of that body is read as a request.
func (h *Handler) refuseBody(q *request) bool {
	r := q.r
	if r.ContentLength == 0 && len(r.TransferEncoding) == 0 {
		return false
	}
	q.w.Header().Set("Connection", "close")
	h.fail(q, newAPIError(http.StatusBadRequest, "UNSUPPORTED", "request bodies are not accepted"))
	return true
}

// Package httpcount wraps an http.ResponseWriter to record the status it answered and count
// the body bytes it sent, for request logs and metrics, without hiding what the server
// relies on: ReadFrom (so that serving a file still reaches sendfile), Flush (streaming) and
// Unwrap (http.ResponseController).
package httpcount

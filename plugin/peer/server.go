package peer

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// BlobsPath prefixes the peer API's blob requests.
const BlobsPath = "/peer/v1/blobs/"

// Server answers authenticated peers' blob requests. The answer itself comes from Blobs: a
// mirror handler over this node's store that never asks peers itself (so that two nodes
// that disagree about an owner cannot send a request around in circles), reached with the
// request rewritten to GET /v2/<repo>/blobs/<digest>?ns=<registry> and the asking client's
// credentials. That handler serves a stored blob (after the same private-content check as on
// one node), or joins or starts the store's single fill of it and streams it while it
// downloads.
type Server struct {
	auth  *Auth
	blobs http.Handler
}

// NewServer returns the peer listener's handler.
func NewServer(auth *Auth, blobs http.Handler) (*Server, error) {
	if auth == nil || blobs == nil {
		return nil, fmt.Errorf("peer server needs authentication and a blob handler: %w", errdefs.ErrInvalidArgument)
	}
	return &Server{auth: auth, blobs: blobs}, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if err := s.auth.verifyRequest(r); err != nil {
		// Debug: anyone who can reach the port can cause this line. The asking node of a
		// misconfigured peer (another key) warns on its side.
		log.G(ctx).WithError(err).WithField("remote", r.RemoteAddr).Debug("peer request refused: not authenticated")
		http.Error(w, "peer authentication required", http.StatusUnauthorized)
		return
	}
	nonce := r.Header.Get(headerNonce)
	sw := &signingWriter{ResponseWriter: w, sign: func(status int, h http.Header) { s.auth.signResponse(nonce, status, h) }}
	inner, err := s.innerRequest(r)
	if err != nil {
		http.Error(sw, err.Error(), http.StatusBadRequest)
		return
	}
	s.blobs.ServeHTTP(sw, inner)
}

// innerRequest is the mirror request that answers a peer's: only what the blob handler
// needs (the client's credentials and a Range) crosses over.
func (s *Server) innerRequest(r *http.Request) (*http.Request, error) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return nil, fmt.Errorf("method %s not allowed", r.Method)
	}
	rest, ok := strings.CutPrefix(r.URL.Path, BlobsPath)
	if !ok {
		return nil, fmt.Errorf("unknown path")
	}
	dgst, err := digest.Parse(rest)
	if err != nil {
		return nil, fmt.Errorf("bad digest: %v", err)
	}
	q := r.URL.Query()
	ns, repo := q.Get("ns"), q.Get("repo")
	if ns == "" {
		return nil, fmt.Errorf("ns is required")
	}
	if _, err := reference.WithName(repo); err != nil {
		return nil, fmt.Errorf("bad repository %q", repo)
	}
	cred, err := s.auth.openCredential(r)
	if err != nil {
		return nil, err
	}
	u := &url.URL{Path: "/v2/" + repo + "/blobs/" + dgst.String(), RawQuery: url.Values{"ns": {ns}}.Encode()}
	inner, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	inner.RemoteAddr = r.RemoteAddr
	inner.Host = r.Host
	if cred != "" {
		inner.Header.Set("Authorization", cred)
	}
	if rng := r.Header.Get("Range"); rng != "" {
		inner.Header.Set("Range", rng)
	}
	return inner, nil
}

// signingWriter signs the answer's headers as they go out.
type signingWriter struct {
	http.ResponseWriter
	sign  func(status int, h http.Header)
	wrote bool
}

func (w *signingWriter) WriteHeader(code int) {
	if !w.wrote && code >= 200 {
		w.wrote = true
		w.sign(code, w.Header())
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *signingWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// ReadFrom keeps net/http's sendfile for stored blobs (plain HTTP, key only).
func (w *signingWriter) ReadFrom(src io.Reader) (int64, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(w.ResponseWriter, src)
}

func (w *signingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *signingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// NewHTTPServer is the peer listener's http.Server: its own timeouts, TLS when configured.
func NewHTTPServer(h *Server, readHeaderTimeout time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       2 * time.Minute,
		TLSConfig:         h.auth.ServerTLS(),
	}
}

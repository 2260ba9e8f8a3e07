package peer

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// The shared-key scheme, for clusters without a PKI (a Kubernetes Secret holding 32 random
// bytes is all it needs). It is deliberately small:
//
//   - A request carries the time (unix seconds), a random nonce and
//     HMAC-SHA256(key, "blobcache-peer-request-v1", method, path, raw query, time, nonce,
//     credential header). The listener accepts it only within ±window of its own clock and
//     only once per nonce (nonces are remembered for the window), so a captured request
//     cannot be replayed; anything else is a 401 with no body worth reading.
//   - The answer carries HMAC-SHA256(key, "blobcache-peer-response-v1", the request's
//     nonce, status, Docker-Content-Digest, Content-Length as signed, Content-Range). The asking node
//     checks it before it reads a byte: it reached a peer, not whatever answers on that
//     address. The body itself is not signed: it is verified against its digest like bytes
//     from a registry.
//   - The client's Authorization (forwarded so that the owner can check the client's right
//     to a private blob, as on one node) is sealed with AES-256-GCM under a key derived
//     from the shared key, with the nonce as associated data: it crosses the node network
//     unreadable even without TLS.
//
// Mutual TLS (certificates from files, tls.RequireAndVerifyClientCert, peers verified
// against the CA) authenticates and encrypts everything, bodies included; with both, a peer
// must hold a certificate and the key.

const (
	headerTime       = "X-Blobcache-Peer-Time"
	headerNonce      = "X-Blobcache-Peer-Nonce"
	headerSignature  = "X-Blobcache-Peer-Signature"
	headerCredential = "X-Blobcache-Peer-Credential"
	headerLength     = "X-Blobcache-Peer-Length"

	// MinKeySize is the shortest shared key accepted.
	MinKeySize = 32
	// signatureWindow is how far a request's time may be from the listener's clock.
	signatureWindow = time.Minute
)

// Auth holds a node's peer credentials: a shared key, TLS configurations, or both.
type Auth struct {
	key     []byte
	sealKey []byte
	// serverTLS and clientTLS are nil without mutual TLS.
	serverTLS *tls.Config
	clientTLS *tls.Config
	now       func() time.Time

	mu     sync.Mutex
	nonces map[string]time.Time
}

// AuthOptions are the files of a node's peer credentials (see config.PeerConfig).
type AuthOptions struct {
	KeyFile                            string
	TLSCertFile, TLSKeyFile, TLSCAFile string
	// Now is the clock; tests set it.
	Now func() time.Time
}

// LoadAuth reads the key and certificates. Neither is an error: the listener must not
// answer peers it cannot authenticate.
func LoadAuth(opts AuthOptions) (*Auth, error) {
	a := &Auth{now: opts.Now, nonces: map[string]time.Time{}}
	if a.now == nil {
		a.now = time.Now
	}
	if opts.KeyFile != "" {
		key, err := os.ReadFile(opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("peer key (peer.key_file): %w", err)
		}
		if err := a.setKey([]byte(strings.TrimSpace(string(key)))); err != nil {
			return nil, fmt.Errorf("peer key %s (peer.key_file): %w", opts.KeyFile, err)
		}
	}
	if opts.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(opts.TLSCertFile, opts.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("peer certificate (peer.tls_cert_file, peer.tls_key_file): %w", err)
		}
		caPEM, err := os.ReadFile(opts.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("peer CA (peer.tls_ca_file): %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("peer CA %s (peer.tls_ca_file) holds no PEM certificate: %w", opts.TLSCAFile, errdefs.ErrInvalidArgument)
		}
		a.setTLS(cert, pool)
	}
	if a.key == nil && a.serverTLS == nil {
		return nil, fmt.Errorf("peer authentication needs a key file or TLS files: %w", errdefs.ErrInvalidArgument)
	}
	return a, nil
}

func (a *Auth) setKey(key []byte) error {
	if len(key) < MinKeySize {
		return fmt.Errorf("the key has %d bytes, at least %d are needed: %w", len(key), MinKeySize, errdefs.ErrInvalidArgument)
	}
	a.key = key
	a.sealKey = a.mac("blobcache-peer-credential-v1")
	return nil
}

func (a *Auth) setTLS(cert tls.Certificate, pool *x509.CertPool) {
	a.serverTLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
	}
	a.clientTLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS13,
	}
}

// ServerTLS is the listener's TLS configuration, nil without mutual TLS.
func (a *Auth) ServerTLS() *tls.Config { return a.serverTLS }

// scheme is the peer URL scheme.
func (a *Auth) scheme() string {
	if a.clientTLS != nil {
		return "https"
	}
	return "http"
}

// mac is HMAC-SHA256 under the shared key of the parts, each followed by a newline.
func (a *Auth) mac(parts ...string) []byte {
	m := hmac.New(sha256.New, a.key)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{'\n'})
	}
	return m.Sum(nil)
}

func (a *Auth) requestMAC(r *http.Request) []byte {
	return a.mac("blobcache-peer-request-v1", r.Method, r.URL.Path, r.URL.RawQuery,
		r.Header.Get(headerTime), r.Header.Get(headerNonce), r.Header.Get(headerCredential))
}

// responseMAC covers the headers the asking node acts on. The length is the one the answer
// had when it was signed (net/http adds a Content-Length to short answers only after the
// handler returned); the asking node checks the real one against it.
func (a *Auth) responseMAC(nonce string, status int, h http.Header) []byte {
	return a.mac("blobcache-peer-response-v1", nonce, strconv.Itoa(status),
		h.Get("Docker-Content-Digest"), h.Get(headerLength), h.Get("Content-Range"))
}

// signRequest adds the nonce, the time, the sealed client credential and the signature.
// It returns the nonce, which the answer's signature must name.
func (a *Auth) signRequest(r *http.Request, authorization string) (string, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	nonce := hex.EncodeToString(raw[:])
	r.Header.Set(headerNonce, nonce)
	r.Header.Set(headerTime, strconv.FormatInt(a.now().Unix(), 10))
	if authorization != "" {
		cred, err := a.sealCredential(nonce, authorization)
		if err != nil {
			return "", err
		}
		r.Header.Set(headerCredential, cred)
	}
	if a.key != nil {
		r.Header.Set(headerSignature, hex.EncodeToString(a.requestMAC(r)))
	}
	return nonce, nil
}

// verifyRequest checks a request's signature, time and nonce; with mutual TLS only, the
// handshake already authenticated the peer.
func (a *Auth) verifyRequest(r *http.Request) error {
	if a.serverTLS != nil && (r.TLS == nil || len(r.TLS.PeerCertificates) == 0) {
		return fmt.Errorf("no client certificate")
	}
	if a.key == nil {
		return nil
	}
	sig, err := hex.DecodeString(r.Header.Get(headerSignature))
	if err != nil || len(sig) != sha256.Size {
		return fmt.Errorf("no request signature")
	}
	if !hmac.Equal(sig, a.requestMAC(r)) {
		return fmt.Errorf("bad request signature")
	}
	sec, err := strconv.ParseInt(r.Header.Get(headerTime), 10, 64)
	if err != nil {
		return fmt.Errorf("bad request time")
	}
	now := a.now()
	if d := now.Sub(time.Unix(sec, 0)); d > signatureWindow || d < -signatureWindow {
		return fmt.Errorf("request time %s is off by %s", time.Unix(sec, 0).UTC().Format(time.RFC3339), d.Round(time.Second))
	}
	nonce := r.Header.Get(headerNonce)
	if len(nonce) != 32 {
		return fmt.Errorf("bad nonce")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if exp, seen := a.nonces[nonce]; seen && now.Before(exp) {
		return fmt.Errorf("replayed request")
	}
	if len(a.nonces) > 1<<16 {
		for n, exp := range a.nonces {
			if !now.Before(exp) {
				delete(a.nonces, n)
			}
		}
	}
	// Remembered as long as the request could still pass the time check.
	a.nonces[nonce] = time.Unix(sec, 0).Add(signatureWindow + time.Second)
	return nil
}

// signResponse adds the answer's signature (shared key only).
func (a *Auth) signResponse(nonce string, status int, h http.Header) {
	if a.key != nil {
		h.Del(headerLength)
		if l := h.Get("Content-Length"); l != "" {
			h.Set(headerLength, l)
		}
		h.Set(headerSignature, hex.EncodeToString(a.responseMAC(nonce, status, h)))
	}
}

// verifyResponse checks the answer's signature (shared key only).
func (a *Auth) verifyResponse(nonce string, resp *http.Response) error {
	if a.key == nil {
		return nil
	}
	sig, err := hex.DecodeString(resp.Header.Get(headerSignature))
	if err != nil || !hmac.Equal(sig, a.responseMAC(nonce, resp.StatusCode, resp.Header)) {
		return fmt.Errorf("peer answer not signed with the shared key")
	}
	if l := resp.Header.Get(headerLength); l != "" && l != strconv.FormatInt(resp.ContentLength, 10) {
		return fmt.Errorf("peer answer's length %d is not the signed %s", resp.ContentLength, l)
	}
	return nil
}

// sealCredential encrypts the client's Authorization for the owner; over TLS without a key
// it travels as it is (the channel is encrypted).
func (a *Auth) sealCredential(nonce, authorization string) (string, error) {
	if a.key == nil {
		return "plain " + authorization, nil
	}
	gcm, err := a.gcm()
	if err != nil {
		return "", err
	}
	iv := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(iv); err != nil {
		return "", err
	}
	return "sealed " + base64.RawStdEncoding.EncodeToString(gcm.Seal(iv, iv, []byte(authorization), []byte(nonce))), nil
}

// openCredential recovers the client's Authorization from a verified request.
func (a *Auth) openCredential(r *http.Request) (string, error) {
	v := r.Header.Get(headerCredential)
	switch {
	case v == "":
		return "", nil
	case a.key == nil && strings.HasPrefix(v, "plain "):
		return strings.TrimPrefix(v, "plain "), nil
	case a.key != nil && strings.HasPrefix(v, "sealed "):
		raw, err := base64.RawStdEncoding.DecodeString(strings.TrimPrefix(v, "sealed "))
		if err != nil {
			return "", err
		}
		gcm, err := a.gcm()
		if err != nil {
			return "", err
		}
		if len(raw) < gcm.NonceSize() {
			return "", fmt.Errorf("sealed credential too short")
		}
		plain, err := gcm.Open(nil, raw[:gcm.NonceSize()], raw[gcm.NonceSize():], []byte(r.Header.Get(headerNonce)))
		if err != nil {
			return "", fmt.Errorf("cannot open the forwarded credential: %w", err)
		}
		return string(plain), nil
	}
	return "", fmt.Errorf("credential header in an unknown form")
}

func (a *Auth) gcm() (cipher.AEAD, error) {
	block, err := aes.NewCipher(a.sealKey)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

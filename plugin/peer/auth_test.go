package peer

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/internal/cluster"
	"github.com/containerd-blobcache/containerd-blobcache/internal/testpki"
)

func keyAuth(t *testing.T, key string) *Auth {
	t.Helper()
	f := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(f, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := LoadAuth(AuthOptions{KeyFile: f})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

const (
	goodKey  = "0123456789abcdef0123456789abcdef-good"
	otherKey = "0123456789abcdef0123456789abcdef-other"
)

// blobEcho is the blob handler behind the listener in these tests: it answers with what
// the listener passed on.
var blobEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Content-Digest", strings.TrimPrefix(r.URL.Path[strings.LastIndex(r.URL.Path, "/"):], "/"))
	fmt.Fprintf(w, "path=%s ns=%s auth=%s", r.URL.Path, r.URL.Query().Get("ns"), r.Header.Get("Authorization"))
})

func newTestServer(t *testing.T, auth *Auth) *httptest.Server {
	t.Helper()
	srv, err := NewServer(auth, blobEcho)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv)
	if auth.ServerTLS() != nil {
		ts.TLS = auth.ServerTLS()
		ts.StartTLS()
	} else {
		ts.Start()
	}
	t.Cleanup(ts.Close)
	return ts
}

var testDigest = digest.FromString("a blob")

func blobURL(base string) string {
	return base + BlobsPath + testDigest.String() + "?ns=registry.example&repo=team/app"
}

func TestKeyAuthRefusesWhatIsNotSigned(t *testing.T) {
	srv := newTestServer(t, keyAuth(t, goodKey))
	send := func(req *http.Request) (int, string) {
		t.Helper()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	newReq := func() *http.Request {
		req, _ := http.NewRequest(http.MethodGet, blobURL(srv.URL), nil)
		return req
	}

	if code, body := send(newReq()); code != http.StatusUnauthorized || strings.Contains(body, "path=") {
		t.Fatalf("unsigned: %d %q, want 401 and nothing else", code, body)
	}
	wrong := newReq()
	if _, err := keyAuth(t, otherKey).signRequest(wrong, ""); err != nil {
		t.Fatal(err)
	}
	if code, _ := send(wrong); code != http.StatusUnauthorized {
		t.Fatalf("signed with another key: %d, want 401", code)
	}

	good := keyAuth(t, goodKey)
	req := newReq()
	if _, err := good.signRequest(req, "Bearer client-token"); err != nil {
		t.Fatal(err)
	}
	replay := req.Clone(context.Background())
	code, body := send(req)
	if code != http.StatusOK || body != "path=/v2/team/app/blobs/"+testDigest.String()+" ns=registry.example auth=Bearer client-token" {
		t.Fatalf("signed: %d %q", code, body)
	}
	if code, _ := send(replay); code != http.StatusUnauthorized {
		t.Fatalf("replayed: %d, want 401", code)
	}

	tampered := newReq()
	good.signRequest(tampered, "")
	tampered.URL.RawQuery = "ns=other.example&repo=team/app"
	if code, _ := send(tampered); code != http.StatusUnauthorized {
		t.Fatalf("query changed after signing: %d, want 401", code)
	}

	old := keyAuth(t, goodKey)
	old.now = func() time.Time { return time.Now().Add(-5 * time.Minute) }
	stale := newReq()
	old.signRequest(stale, "")
	if code, _ := send(stale); code != http.StatusUnauthorized {
		t.Fatalf("signed five minutes ago: %d, want 401", code)
	}
}

// The forwarded credential is sealed: it does not appear on the wire.
func TestForwardedCredentialSealed(t *testing.T) {
	a := keyAuth(t, goodKey)
	req, _ := http.NewRequest(http.MethodGet, blobURL("http://peer"), nil)
	a.signRequest(req, "Bearer secret-token")
	if v := req.Header.Get(headerCredential); v == "" || strings.Contains(v, "secret-token") {
		t.Fatalf("credential header %q", v)
	}
	if got, err := a.openCredential(req); err != nil || got != "Bearer secret-token" {
		t.Fatalf("opened %q, %v", got, err)
	}
	if _, err := keyAuth(t, otherKey).openCredential(req); err == nil {
		t.Fatal("another key opened the credential")
	}
}

func TestShortKeyRefused(t *testing.T) {
	f := filepath.Join(t.TempDir(), "key")
	os.WriteFile(f, []byte("short"), 0o600)
	if _, err := LoadAuth(AuthOptions{KeyFile: f}); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Fatalf("short key: %v", err)
	}
	if _, err := LoadAuth(AuthOptions{}); err == nil {
		t.Fatal("no key and no TLS accepted")
	}
}

// clientFor is a Client whose membership makes peerAddr the owner of testDigest.
func clientFor(t *testing.T, auth *Auth, peerAddr string) (*Client, *cluster.Membership) {
	t.Helper()
	self := "127.0.0.1:1"
	for port := 1; cluster.Owner([]string{self, peerAddr}, testDigest.String()) != peerAddr; port++ {
		self = fmt.Sprintf("127.0.0.1:%d", port)
	}
	m, err := cluster.New(cluster.Options{Self: self, Static: []string{peerAddr}, DownFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ClientOptions{Members: m, Auth: auth, ConnectTimeout: 5 * time.Second, StallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c, m
}

func stateOf(m *cluster.Membership, addr string) cluster.State {
	for _, p := range m.Peers() {
		if p.Address == addr {
			return p.State
		}
	}
	return ""
}

// The client takes an answer only from a server that signs it with the shared key: one
// with another key is a failed peer (marked down), and the caller goes to the registry.
func TestClientRefusesUnsignedAnswer(t *testing.T) {
	srv := newTestServer(t, keyAuth(t, otherKey))
	addr := strings.TrimPrefix(srv.URL, "http://")
	c, m := clientFor(t, keyAuth(t, goodKey), addr)
	if _, _, err := c.FetchBlob(context.Background(), "registry.example", "team/app", testDigest, ""); err == nil {
		t.Fatal("an answer under another key was taken")
	}
	if st := stateOf(m, addr); st != cluster.StateDown {
		t.Fatalf("peer state %q, want down", st)
	}

	good := newTestServer(t, keyAuth(t, goodKey))
	addr = strings.TrimPrefix(good.URL, "http://")
	c, m = clientFor(t, keyAuth(t, goodKey), addr)
	body, _, err := c.FetchBlob(context.Background(), "registry.example", "team/app", testDigest, "Bearer t")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(body)
	body.Close()
	if err != nil || !strings.Contains(string(b), "auth=Bearer t") {
		t.Fatalf("body %q, %v", b, err)
	}
	if st := stateOf(m, addr); st != cluster.StateUp {
		t.Fatalf("peer state %q, want up", st)
	}
}

func tlsAuth(t *testing.T, dir string) *Auth {
	t.Helper()
	f, err := testpki.Write(dir, net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := LoadAuth(AuthOptions{TLSCertFile: f.Cert, TLSKeyFile: f.Key, TLSCAFile: f.CA})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// With mutual TLS, a client without a certificate, or with one from another CA, gets no
// answer at all; a peer of the same CA is served.
func TestMutualTLS(t *testing.T) {
	serverAuth := tlsAuth(t, t.TempDir())
	srv := newTestServer(t, serverAuth)
	addr := strings.TrimPrefix(srv.URL, "https://")

	// Trusting the server but showing no certificate.
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: serverAuth.clientTLS.RootCAs}}}
	if resp, err := noCert.Get(blobURL(srv.URL)); err == nil {
		resp.Body.Close()
		t.Fatalf("a client without a certificate got %d", resp.StatusCode)
	}
	// A certificate from another CA.
	c, _ := clientFor(t, tlsAuth(t, t.TempDir()), addr)
	if _, _, err := c.FetchBlob(context.Background(), "registry.example", "team/app", testDigest, ""); err == nil {
		t.Fatal("a client with another CA's certificate was served")
	}
	// A peer of the same CA (the same certificate files, as two nodes of one cluster may).
	c, _ = clientFor(t, serverAuth, addr)
	body, _, err := c.FetchBlob(context.Background(), "registry.example", "team/app", testDigest, "Bearer over-tls")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(body)
	body.Close()
	if !strings.Contains(string(b), "auth=Bearer over-tls") {
		t.Fatalf("body %q", b)
	}
}

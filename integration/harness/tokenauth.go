package harness

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Token service names shared by the token server and the registry that trusts it.
const (
	TokenService = "blobcache-test-registry"
	TokenIssuer  = "blobcache-test-token-server"
)

// TokenServer is a small Docker token server (the registry token auth specification): it
// issues ES256-signed JWTs, GET with basic auth or anonymous, and the OAuth2 POST form.
// Repositories whose name starts with PublicPrefix may be pulled anonymously; every
// configured user may pull everything. It counts the tokens it issues per scope.
type TokenServer struct {
	URL     string
	Realm   string
	CertPEM string
	// Lifetime is the expires_in of every token.
	Lifetime time.Duration

	key          *ecdsa.PrivateKey
	x5c          string
	client       *http.Client
	users        map[string]string
	publicPrefix string
	srv          *http.Server

	mu       sync.Mutex
	requests map[string]int // scope -> token requests
	refused  int
}

// StartTokenServer starts a token server on loopback.
func StartTokenServer(t testing.TB, users map[string]string, publicPrefix string, lifetime time.Duration) *TokenServer {
	t.Helper()
	der, _, key := newSelfSigned(t, TokenIssuer)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveTokenServer(t, l, http.DefaultClient, key, der, users, publicPrefix, lifetime)
}

// StartTokenServer starts a token server listening on addr inside the namespace (its realm
// is then reachable from the other namespaces on the switch).
func (n *Netns) StartTokenServer(t testing.TB, addr string, users map[string]string, publicPrefix string, lifetime time.Duration) *TokenServer {
	t.Helper()
	der, _, key := newSelfSigned(t, TokenIssuer)
	l, err := n.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return serveTokenServer(t, l, n.HTTPClient(30*time.Second), key, der, users, publicPrefix, lifetime)
}

func serveTokenServer(t testing.TB, l net.Listener, client *http.Client, key *ecdsa.PrivateKey, der []byte, users map[string]string, publicPrefix string, lifetime time.Duration) *TokenServer {
	ts := &TokenServer{
		client:       client,
		URL:          "http://" + l.Addr().String(),
		CertPEM:      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		Lifetime:     lifetime,
		key:          key,
		x5c:          base64.StdEncoding.EncodeToString(der),
		users:        users,
		publicPrefix: publicPrefix,
		requests:     map[string]int{},
	}
	ts.Realm = ts.URL + "/token"
	ts.srv = &http.Server{Handler: http.HandlerFunc(ts.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = ts.srv.Serve(l) }()
	t.Cleanup(func() { _ = ts.srv.Close() })
	return ts
}

// AnonymousTokenSuffix marks, in Requests, the scopes asked for without credentials.
const AnonymousTokenSuffix = " (anonymous)"

// Requests returns the token requests per scope so far (anonymous ones under the scope plus
// AnonymousTokenSuffix), and how many were refused.
func (ts *TokenServer) Requests() (map[string]int, int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	out := map[string]int{}
	for k, v := range ts.requests {
		out[k] = v
	}
	return out, ts.refused
}

// SetPassword changes (or adds) a user's password: tokens are refused for the old one from
// now on (credential rotation).
func (ts *TokenServer) SetPassword(user, password string) {
	ts.mu.Lock()
	ts.users[user] = password
	ts.mu.Unlock()
}

// Reset clears the counts.
func (ts *TokenServer) Reset() {
	ts.mu.Lock()
	ts.requests = map[string]int{}
	ts.refused = 0
	ts.mu.Unlock()
}

func (ts *TokenServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/token" {
		http.NotFound(w, r)
		return
	}
	var user, pass string
	var scopes []string
	var authed bool
	switch r.Method {
	case http.MethodGet:
		user, pass, authed = r.BasicAuth()
		for _, s := range r.URL.Query()["scope"] {
			scopes = append(scopes, strings.Fields(s)...)
		}
	case http.MethodPost:
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "password" {
			http.Error(w, "unsupported grant", http.StatusBadRequest)
			return
		}
		user, pass, authed = r.PostForm.Get("username"), r.PostForm.Get("password"), true
		scopes = strings.Fields(r.PostForm.Get("scope"))
	default:
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	ts.mu.Lock()
	key := strings.Join(scopes, " ")
	if !authed {
		key += AnonymousTokenSuffix
	}
	ts.requests[key]++
	if authed && (user == "" || ts.users[user] != pass) {
		ts.refused++
		ts.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="token"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
		return
	}
	ts.mu.Unlock()

	type access struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	var granted []access
	for _, s := range scopes {
		parts := strings.Split(s, ":")
		if len(parts) != 3 || parts[0] != "repository" {
			continue
		}
		name := parts[1]
		if !authed && !strings.HasPrefix(name, ts.publicPrefix) {
			continue
		}
		var actions []string
		for _, a := range strings.Split(parts[2], ",") {
			if a == "pull" {
				actions = append(actions, a)
			}
		}
		if len(actions) > 0 {
			granted = append(granted, access{Type: "repository", Name: name, Actions: actions})
		}
	}
	now := time.Now()
	sub := user
	if !authed {
		sub = ""
	}
	claims := map[string]any{
		"iss": TokenIssuer, "sub": sub, "aud": TokenService,
		"exp": now.Add(ts.Lifetime).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti": fmt.Sprintf("%d", now.UnixNano()), "access": granted,
	}
	tok, err := ts.sign(claims)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token": tok, "access_token": tok, "expires_in": int(ts.Lifetime / time.Second), "issued_at": now.UTC().Format(time.RFC3339),
	})
}

// sign makes a compact JWS (ES256) with the certificate in x5c, which the registry checks
// against its rootcertbundle.
func (ts *TokenServer) sign(claims map[string]any) (string, error) {
	header, err := json.Marshal(map[string]any{"alg": "ES256", "typ": "JWT", "x5c": []string{ts.x5c}})
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(payload)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, ts.key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + enc.EncodeToString(sig), nil
}

// Token gets a token the way a client does: GET with basic auth (user "" for anonymous).
func (ts *TokenServer) Token(t testing.TB, user, pass, scope string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, ts.Realm+"?service="+TokenService+"&scope="+scope, nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("token for %s as %q: %s", scope, user, resp.Status)
	}
	var body struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return body.Token
}

// StartTokenRegistry starts a distribution registry with token auth trusting ts, serving the
// storage directory of another registry (storageDir; push there, through the registry
// without auth, and pull here).
func StartTokenRegistry(t testing.TB, storageDir string, ts *TokenServer) *Registry {
	t.Helper()
	return startTokenRegistry(t, storageDir, ts, nil, FreeAddr(t))
}

// StartTokenRegistry is StartTokenRegistry listening on addr inside the namespace.
func (n *Netns) StartTokenRegistry(t testing.TB, addr, storageDir string, ts *TokenServer) *Registry {
	t.Helper()
	return startTokenRegistry(t, storageDir, ts, n, addr)
}

func startTokenRegistry(t testing.TB, storageDir string, ts *TokenServer, ns *Netns, host string) *Registry {
	t.Helper()
	tools := Tools(t)
	dir := t.TempDir()
	certPath := filepath.Join(dir, "token-ca.pem")
	if err := os.WriteFile(certPath, []byte(ts.CertPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  maintenance:
    uploadpurging:
      enabled: false
auth:
  token:
    realm: %s
    service: %s
    issuer: %s
    rootcertbundle: %s
http:
  addr: %s
  secret: blobcache-integration-test
`, storageDir, ts.Realm, TokenService, TokenIssuer, certPath, host)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tools.Registry, "serve", cfgPath)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none", "OTEL_SDK_DISABLED=true")
	r := &Registry{Host: host, URL: "http://" + host, Dir: dir, Client: ns.HTTPClient(5 * time.Minute)}
	r.Process = startProcess(t, "token-registry-"+host, logPathFor(dir, "registry"), ns.wrap(cmd))
	// /v2/ answers 401 with token auth: wait for the challenge instead of a 200.
	client := ns.HTTPClient(2 * time.Second)
	WaitFor(t, "token registry readiness", 30*time.Second, 50*time.Millisecond, func() error {
		if exited, err := r.Process.Exited(); exited {
			return fmt.Errorf("%w: registry exited (%v); log:\n%s", errStop, err, TailFile(r.Process.LogPath, 8<<10))
		}
		resp, err := client.Get(r.URL + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), ts.Realm) {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
	return r
}

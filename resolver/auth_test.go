package resolver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
)

// ParseChallenges reads challenges as containerd does (one per header value, bearer first)
// and within its bounds.
func TestParseChallenges(t *testing.T) {
	bearer := func(params map[string]string) auth.Challenge {
		return auth.Challenge{Scheme: auth.BearerAuth, Parameters: params}
	}
	for _, tc := range []struct {
		name   string
		header []string
		want   []auth.Challenge
	}{
		{
			name:   "bearer",
			header: []string{`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"`},
			want:   []auth.Challenge{bearer(map[string]string{"realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull"})},
		},
		{
			name:   "scheme and parameter names in any case",
			header: []string{`BEARER Realm="https://a/t", Service=svc`},
			want:   []auth.Challenge{bearer(map[string]string{"realm": "https://a/t", "service": "svc"})},
		},
		{
			name:   "one challenge per header value",
			header: []string{`Basic realm="x", Bearer realm="https://a/t"`},
			want:   []auth.Challenge{{Scheme: auth.BasicAuth, Parameters: map[string]string{"realm": "x"}}},
		},
		{
			name:   "escaped quotes and commas in quoted values",
			header: []string{`Bearer realm="https://a/t?x=\"1\",y",scope="repository:a:pull,push"`},
			want:   []auth.Challenge{bearer(map[string]string{"realm": `https://a/t?x="1",y`, "scope": "repository:a:pull,push"})},
		},
		{name: "two headers, bearer first", header: []string{`Basic`, `Bearer realm="https://a/t"`}, want: []auth.Challenge{
			bearer(map[string]string{"realm": "https://a/t"}),
			{Scheme: auth.BasicAuth, Parameters: map[string]string{}},
		}},
		{name: "empty", header: []string{``}, want: nil},
		{name: "unknown scheme", header: []string{`Negotiate abc`}, want: nil},
		{name: "unterminated quote", header: []string{`Bearer realm="https://a/t`}, want: []auth.Challenge{bearer(map[string]string{"realm": ""})}},
		{name: "garbage", header: []string{`"=,=,"`}, want: nil},
		{name: "oversized header ignored", header: []string{"Bearer realm=\"" + strings.Repeat("a", maxChallengeHeader) + "\""}, want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.header {
				h.Add("WWW-Authenticate", v)
			}
			got := ParseChallenges(h)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestParseChallengesBoundsHostileInput(t *testing.T) {
	h := http.Header{}
	for range 500 {
		h.Add("WWW-Authenticate", `Bearer realm="https://a/t"`)
	}
	if n := len(ParseChallenges(h)); n != maxChallenges {
		t.Errorf("%d challenges, want the cap %d", n, maxChallenges)
	}
	var params strings.Builder
	params.WriteString("Bearer ")
	for i := range 500 {
		fmt.Fprintf(&params, "p%d=v,", i)
	}
	h.Set("WWW-Authenticate", params.String())
	if got := ParseChallenges(h); len(got) != 0 {
		t.Errorf("a challenge with 500 parameters was kept: %d challenges", len(got))
	}
}

func TestBearerRealmRefusesUnusableURLs(t *testing.T) {
	for realm, ok := range map[string]bool{
		"https://auth.example/token":      true,
		"http://127.0.0.1:5001/token":     true,
		"file:///etc/passwd":              false,
		"/token":                          false,
		"https://user:pw@auth.example/t":  false,
		"gopher://auth.example/":          false,
		"https://auth.example/t?service=": true,
		"a\x00b":                          false,
	} {
		if _, got := bearerRealm(auth.Challenge{Scheme: auth.BearerAuth, Parameters: map[string]string{"realm": realm}}); got != ok {
			t.Errorf("realm %q usable = %v, want %v", realm, got, ok)
		}
	}
}

func TestTokenCacheSharesOneFetch(t *testing.T) {
	c := newTokenCache(time.Now, 5*time.Second)
	var fetches atomic.Int32
	release := make(chan struct{})
	key := tokenKey{registry: "r", realm: "https://a/t", scope: "repository:x:pull", credential: "c"}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := c.get(context.Background(), key, func(context.Context) (fetchedToken, error) {
				fetches.Add(1)
				<-release
				return fetchedToken{token: "tok-1", lifetime: time.Minute}, nil
			})
			if err != nil || tok != "tok-1" {
				errs <- fmt.Errorf("got %q, %v", tok, err)
			}
		}()
	}
	// Wait until the one fetch is running, then let it finish.
	for fetches.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d fetches for 50 concurrent requests, want 1", n)
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestTokenCacheExpiryRefreshAndDrop(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := newTokenCache(clock.now, 5*time.Second)
	key := tokenKey{registry: "r", scope: "s"}
	var n atomic.Int32
	fetch := func(context.Context) (fetchedToken, error) {
		i := n.Add(1)
		// No expires_in: the 60 s default applies.
		return fetchedToken{token: fmt.Sprintf("tok-%d", i)}, nil
	}
	get := func() string {
		t.Helper()
		tok, err := c.get(context.Background(), key, fetch)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if tok := get(); tok != "tok-1" {
		t.Fatalf("first token %q", tok)
	}
	clock.add(30 * time.Second)
	if tok := get(); tok != "tok-1" || n.Load() != 1 {
		t.Fatalf("within lifetime: %q after %d fetches", tok, n.Load())
	}
	// 50 s into a 60 s token: inside the refresh margin (15 s). The old token is still
	// returned while the refresh runs in the background.
	clock.add(20 * time.Second)
	if tok := get(); tok != "tok-1" {
		t.Fatalf("inside the refresh margin: %q, want the old token while refreshing", tok)
	}
	deadline := time.Now().Add(5 * time.Second)
	for get() != "tok-2" {
		if time.Now().After(deadline) {
			t.Fatal("background refresh never landed")
		}
		time.Sleep(time.Millisecond)
	}
	// A 401 drops the token: the next request fetches a new one.
	c.drop(key, "tok-2")
	if tok := get(); tok != "tok-3" {
		t.Fatalf("after drop: %q", tok)
	}
	// Dropping a token that was already replaced keeps the current one.
	c.drop(key, "tok-2")
	if tok := get(); tok != "tok-3" {
		t.Fatalf("stale drop removed the current token: %q", tok)
	}
	// Past expiry (and past the refresh point): a request waits for a new token.
	clock.add(2 * time.Minute)
	if tok := get(); tok != "tok-4" {
		t.Fatalf("after expiry: %q", tok)
	}
	c.prune()
	clock.add(2 * time.Minute)
	c.prune()
	if len(c.slots) != 0 {
		t.Errorf("expired tokens not pruned: %d", len(c.slots))
	}
}

func TestTokenCacheDoesNotCacheErrors(t *testing.T) {
	c := newTokenCache(time.Now, time.Second)
	key := tokenKey{registry: "r"}
	calls := 0
	fetch := func(context.Context) (fetchedToken, error) {
		calls++
		if calls == 1 {
			return fetchedToken{}, errors.New("boom")
		}
		return fetchedToken{token: "ok", lifetime: time.Minute}, nil
	}
	if _, err := c.get(context.Background(), key, fetch); err == nil {
		t.Fatal("first fetch error not returned")
	}
	if tok, err := c.get(context.Background(), key, fetch); err != nil || tok != "ok" {
		t.Fatalf("second fetch: %q %v", tok, err)
	}
}

// tokenRegistry is a fake registry with Bearer auth and its token endpoint.
type tokenRegistry struct {
	t          *testing.T
	srv        *httptest.Server
	user, pass string
	postOK     bool
	anonOK     bool
	tokens     atomic.Int32
	posts      atomic.Int32
	gets       atomic.Int32
	// refuse makes the registry answer 401 to this token once (a revoked token).
	mu       sync.Mutex
	refuse   map[string]bool
	seenAuth []string
	// notPublic makes the registry refuse every token: the object exists only for others.
	notPublic bool
}

func newTokenRegistry(t *testing.T, postOK bool) *tokenRegistry {
	tr := &tokenRegistry{t: t, user: "alice", pass: "s3cret-pw", postOK: postOK, refuse: map[string]bool{}}
	tr.srv = httptest.NewServer(http.HandlerFunc(tr.serve))
	t.Cleanup(tr.srv.Close)
	return tr
}

func (tr *tokenRegistry) host() string { return strings.TrimPrefix(tr.srv.URL, "http://") }

func (tr *tokenRegistry) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		tr.serveToken(w, r)
		return
	}
	auth := r.Header.Get("Authorization")
	tr.mu.Lock()
	tr.seenAuth = append(tr.seenAuth, auth)
	refused := tr.refuse[auth]
	delete(tr.refuse, auth)
	tr.mu.Unlock()
	if !strings.HasPrefix(auth, "Bearer tok-") || refused || tr.notPublic {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="fake-registry"`, tr.srv.URL))
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	io.WriteString(w, "content")
}

func (tr *tokenRegistry) serveToken(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
		tr.posts.Add(1)
		if !tr.postOK {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "password" ||
			r.PostForm.Get("username") != tr.user || r.PostForm.Get("password") != tr.pass ||
			r.PostForm.Get("service") != "fake-registry" || r.PostForm.Get("scope") != "repository:app:pull" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	case http.MethodGet:
		tr.gets.Add(1)
		u, p, ok := r.BasicAuth()
		if !ok && tr.anonOK && r.URL.Query().Get("scope") == "repository:app:pull" {
			break
		}
		if !ok || u != tr.user || p != tr.pass || r.URL.Query().Get("scope") != "repository:app:pull" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	n := tr.tokens.Add(1)
	fmt.Fprintf(w, `{"access_token":"tok-%d","expires_in":300}`, n)
}

func authResolver(t *testing.T, tr *tokenRegistry, cred Credential) *Resolver {
	return newResolver(t, func(o *Options) {
		o.Credentials = Credentials{tr.host(): cred}
	})
}

func TestDaemonCredentialsAnswerBearerChallenge(t *testing.T) {
	for _, postOK := range []bool{true, false} {
		t.Run(fmt.Sprintf("post=%v", postOK), func(t *testing.T) {
			tr := newTokenRegistry(t, postOK)
			r := authResolver(t, tr, Credential{Username: tr.user, Password: tr.pass})
			ep, err := r.Endpoint(tr.host())
			if err != nil {
				t.Fatal(err)
			}
			// The client's own Authorization is not what the daemon sends.
			req := Request{Method: http.MethodGet, Endpoint: ep, Repository: "app", Kind: "blobs", Reference: "sha256:" + strings.Repeat("a", 64), Header: http.Header{"Authorization": {"Bearer client-token"}}}
			for range 5 {
				resp, err := r.Do(context.Background(), req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d", resp.StatusCode)
				}
			}
			if n := tr.tokens.Load(); n != 1 {
				t.Errorf("%d tokens issued for 5 requests, want 1", n)
			}
			if !postOK && tr.gets.Load() != 1 {
				t.Errorf("GET fallback not used: %d GETs", tr.gets.Load())
			}
			tr.mu.Lock()
			defer tr.mu.Unlock()
			for _, a := range tr.seenAuth {
				if strings.Contains(a, "client-token") {
					t.Errorf("client's token sent upstream with daemon credentials")
				}
			}
			// One anonymous 401 to learn the challenge, then the token on every request.
			if len(tr.seenAuth) != 6 {
				t.Errorf("registry saw %d requests, want 6: %q", len(tr.seenAuth), tr.seenAuth)
			}
		})
	}
}

func TestDaemonCredentialsRefetchTokenOnce(t *testing.T) {
	tr := newTokenRegistry(t, true)
	r := authResolver(t, tr, Credential{Username: tr.user, Password: tr.pass})
	ep, _ := r.Endpoint(tr.host())
	req := Request{Method: http.MethodGet, Endpoint: ep, Repository: "app", Kind: "manifests", Reference: "v1", Header: http.Header{}}
	resp, err := r.Do(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The registry revokes tok-1: the daemon drops it, fetches tok-2 and retries once.
	tr.mu.Lock()
	tr.refuse["Bearer tok-1"] = true
	tr.mu.Unlock()
	resp, err = r.Do(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || tr.tokens.Load() != 2 {
		t.Fatalf("status %d after %d tokens", resp.StatusCode, tr.tokens.Load())
	}
	// Both tokens refused: one retry only, the 401 goes back.
	tr.mu.Lock()
	tr.refuse["Bearer tok-2"] = true
	tr.refuse["Bearer tok-3"] = true
	tr.mu.Unlock()
	resp, err = r.Do(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || tr.tokens.Load() != 3 {
		t.Fatalf("status %d after %d tokens, want 401 after 3", resp.StatusCode, tr.tokens.Load())
	}
}

func TestWrongDaemonCredentialsReturnTheChallengeAndLeakNothing(t *testing.T) {
	tr := newTokenRegistry(t, true)
	r := authResolver(t, tr, Credential{Username: tr.user, Password: "wrong-password-xyz"})
	ep, _ := r.Endpoint(tr.host())
	resp, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "app", Kind: "manifests", Reference: "v1", Header: http.Header{}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("status %d, challenge %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	// The error from the token fetch (the realm's 401 to POST and GET) names no secret.
	ctx := context.WithValue(context.Background(), allowPrivateKey{}, true)
	to := auth.TokenOptions{Realm: tr.srv.URL + "/token", Service: "fake-registry", Scopes: []string{"repository:app:pull"}}
	posts, gets := tr.posts.Load(), tr.gets.Load()
	_, ferr := r.auth.fetchToken(ctx, to, Credential{Username: tr.user, Password: "wrong-password-xyz"})
	if ferr == nil || strings.Contains(ferr.Error(), "wrong-password-xyz") || !errors.Is(ferr, ErrTokenFetch) || !strings.Contains(ferr.Error(), "401") {
		t.Errorf("token fetch error %v", ferr)
	}
	if tr.posts.Load() != posts+1 || tr.gets.Load() != gets+1 {
		t.Errorf("token endpoint saw %d POSTs and %d GETs, want one of each", tr.posts.Load()-posts, tr.gets.Load()-gets)
	}
}

// Token requests go through the resolver's own transport: a realm on a private address is
// refused unless the registry that named it is allowed private networks.
func TestTokenRealmGoesThroughTheDialGuard(t *testing.T) {
	tr := newTokenRegistry(t, true)
	r := authResolver(t, tr, Credential{Username: tr.user, Password: tr.pass})
	to := auth.TokenOptions{Realm: tr.srv.URL + "/token", Service: "fake-registry", Scopes: []string{"repository:app:pull"}}
	_, err := r.auth.fetchToken(context.Background(), to, Credential{Username: tr.user, Password: tr.pass})
	if !errors.Is(err, ErrTokenFetch) || !strings.Contains(err.Error(), "allow_private_networks") {
		t.Errorf("token fetch from a loopback realm without allow_private_networks: %v", err)
	}
	if n := tr.posts.Load() + tr.gets.Load(); n != 0 {
		t.Errorf("the loopback realm got %d token requests", n)
	}
}

func TestBasicChallenge(t *testing.T) {
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "bob" || p != "pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		got.Store(r.Header.Get("Authorization"))
	}))
	defer srv.Close()
	host := hostOf(t, srv)
	r := newResolver(t, func(o *Options) { o.Credentials = Credentials{host: {Username: "bob", Password: "pw"}} })
	ep, _ := r.Endpoint(host)
	resp, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "manifests", Reference: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || got.Load() != "Basic "+base64.StdEncoding.EncodeToString([]byte("bob:pw")) {
		t.Fatalf("status %d, auth %v", resp.StatusCode, got.Load())
	}
}

func TestClientAuthModeIgnoresDaemonCredentials(t *testing.T) {
	tr := newTokenRegistry(t, true)
	r := authResolver(t, tr, Credential{Username: tr.user, Password: tr.pass})
	ep, _ := r.Endpoint(tr.host())
	resp, err := r.Do(context.Background(), Request{Method: http.MethodHead, Endpoint: ep, Repository: "app", Kind: "manifests", Reference: "v1", Header: http.Header{}, Auth: AuthClient})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || tr.tokens.Load() != 0 {
		t.Fatalf("client-mode request: status %d, %d tokens fetched", resp.StatusCode, tr.tokens.Load())
	}
}

func TestLoadCredentials(t *testing.T) {
	dir := t.TempDir()
	credFile := filepath.Join(dir, "credentials.toml")
	dockerFile := filepath.Join(dir, "config.json")
	os.WriteFile(dockerFile, []byte(`{"auths":{
		"https://index.docker.io/v1/":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("hub:hubpw"))+`"},
		"registry.example.com":{"username":"u1","password":"p1"},
		"ghcr.io":{"identitytoken":"refresh-1"}}}`), 0o600)
	os.WriteFile(credFile, []byte(`
[registries."registry.example.com"]
  username = "u2"
  password = "p2"
  node_public = true
[registries."ghcr.io"]
  node_public = true
`), 0o600)
	store, err := NewCredentialStore(CredentialStoreOptions{CredentialsFile: credFile, DockerConfig: dockerFile})
	if err != nil {
		t.Fatal(err)
	}
	want := Credentials{
		"docker.io":            {Username: "hub", Password: "hubpw"},
		"registry.example.com": {Username: "u2", Password: "p2", NodePublic: true},
		"ghcr.io":              {IdentityToken: "refresh-1", NodePublic: true},
	}
	creds := Credentials{}
	for reg := range want {
		if c, ok := store.Lookup(t.Context(), reg); ok {
			creds[reg] = c
		}
	}
	if fmt.Sprintf("%#v", creds) != fmt.Sprintf("%#v", want) {
		t.Errorf("got %#v\nwant %#v", creds, want)
	}
	if s := fmt.Sprint(creds["docker.io"]); strings.Contains(s, "hubpw") {
		t.Errorf("credential prints its secret: %s", s)
	}

	for name, body := range map[string]string{
		"unknown key":      `[registries."a.example"]` + "\nusername=\"u\"\npasword=\"secret-typo\"\n",
		"user without pw":  `[registries."a.example"]` + "\nusername=\"u\"\n",
		"bad registry":     `[registries."a b"]` + "\nusername=\"u\"\npassword=\"p\"\n",
		"not toml, secret": "password = \"leaked-secret\n",
	} {
		os.WriteFile(credFile, []byte(body), 0o600)
		_, err := NewCredentialStore(CredentialStoreOptions{CredentialsFile: credFile})
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error shows a secret: %v", name, err)
		}
	}
}

func TestRedirectTargetRefusalRetriesFromRegistry(t *testing.T) {
	var storageHits, registryHits atomic.Int32
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			t.Errorf("registry Authorization sent to object storage")
		}
		if storageHits.Add(1) == 1 {
			// The first signed URL has expired.
			w.WriteHeader(http.StatusForbidden)
			return
		}
		io.WriteString(w, "blob")
	}))
	defer storage.Close()
	// Loopback under another name, so that the redirect really leaves the registry's host.
	storageURL := strings.Replace(storage.URL, "127.0.0.1", "localhost", 1)
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		registryHits.Add(1)
		http.Redirect(w, r, storageURL+"/signed?n="+fmt.Sprint(registryHits.Load()), http.StatusTemporaryRedirect)
	}))
	defer reg.Close()
	r := newResolver(t, nil)
	ep, _ := r.Endpoint(hostOf(t, reg))
	resp, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "blobs", Reference: "sha256:" + strings.Repeat("b", 64), Header: http.Header{"Authorization": {"Bearer reg-token"}}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "blob" || registryHits.Load() != 2 {
		t.Fatalf("status %d body %q after %d registry requests", resp.StatusCode, body, registryHits.Load())
	}
}

func TestHostsTomlMirrorOrderHeadersAndOverridePath(t *testing.T) {
	var mirrorSeen, registrySeen atomic.Value
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mirrorSeen.Store(r.URL.String() + " " + r.Header.Get("X-Custom"))
		w.WriteHeader(http.StatusNotFound)
	}))
	defer mirror.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		registrySeen.Store(r.URL.Path)
		io.WriteString(w, "ok")
	}))
	defer reg.Close()
	regHost := hostOf(t, reg)
	dir := t.TempDir()
	hostDir := filepath.Join(dir, strings.Replace(regHost, ":", "_", 1)+"_")
	os.MkdirAll(hostDir, 0o755)
	os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(fmt.Sprintf(`server = "http://%s"
[host."%s/custom/v2"]
  capabilities = ["pull", "resolve"]
  override_path = true
  [host."%s/custom/v2".header]
    X-Custom = "yes"
`, regHost, mirror.URL, mirror.URL)), 0o644)
	r := newResolver(t, func(o *Options) { o.HostsDir = dir })
	ep, _ := r.Endpoint(regHost)
	resp, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a/b", Kind: "manifests", Reference: "v1", Header: http.Header{}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := "/custom/v2/a/b/manifests/v1?ns=" + strings.Replace(regHost, ":", "%3A", 1) + " yes"
	if resp.StatusCode != http.StatusOK || mirrorSeen.Load() != want || registrySeen.Load() != "/v2/a/b/manifests/v1" {
		t.Fatalf("status %d; mirror saw %v (want %q); registry saw %v", resp.StatusCode, mirrorSeen.Load(), want, registrySeen.Load())
	}
}

func TestHostsTomlCannotPointAtTheDaemon(t *testing.T) {
	self := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("daemon's own listener dialled via hosts.toml")
	}))
	defer self.Close()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "registry.example.com"), 0o755)
	os.WriteFile(filepath.Join(dir, "registry.example.com", "hosts.toml"), []byte(fmt.Sprintf(`server = "%s"
[host."%s"]
  capabilities = ["pull", "resolve"]
`, self.URL, self.URL)), 0o644)
	r := newResolver(t, func(o *Options) {
		o.HostsDir = dir
		o.AllowPrivateNetworks = []string{"*"}
		o.SelfAddresses = []string{hostOf(t, self)}
	})
	ep, _ := r.Endpoint("registry.example.com")
	_, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "manifests", Reference: "v1", Header: http.Header{}})
	// Both the mirror and the server are the daemon itself: refused at dial time.
	if !errors.Is(err, ErrBlockedAddress) {
		t.Fatalf("request through hosts.toml hosts pointing at the daemon: %v", err)
	}
}

func TestAnonymousModeFetchesAnonymousToken(t *testing.T) {
	tr := newTokenRegistry(t, true)
	tr.anonOK = true
	r := newResolver(t, nil)
	ep, _ := r.Endpoint(tr.host())
	req := Request{Method: http.MethodHead, Endpoint: ep, Repository: "app", Kind: "manifests", Reference: "v1", Header: http.Header{"Authorization": {"Bearer client-token"}}, Auth: AuthAnonymous}
	for range 3 {
		resp, err := r.Do(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("anonymous probe: %d", resp.StatusCode)
		}
	}
	if tr.tokens.Load() != 1 || tr.posts.Load() != 0 {
		t.Errorf("%d tokens, %d POSTs; want one anonymous GET token", tr.tokens.Load(), tr.posts.Load())
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, a := range tr.seenAuth {
		if strings.Contains(a, "client-token") {
			t.Error("client's token sent with an anonymous probe")
		}
	}
}

// An object anonymous clients may not read: each probe is answered 401, and the anonymous
// token, which is not stale, is fetched once and kept rather than dropped and fetched again.
func TestAnonymousProbeOfPrivateObjectFetchesOneToken(t *testing.T) {
	tr := newTokenRegistry(t, true)
	tr.anonOK = true
	tr.notPublic = true
	r := newResolver(t, nil)
	ep, _ := r.Endpoint(tr.host())
	req := Request{Method: http.MethodHead, Endpoint: ep, Repository: "app", Kind: "manifests", Reference: "v1", Header: http.Header{}, Auth: AuthAnonymous}
	for range 3 {
		resp, err := r.Do(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("anonymous probe of a private object: %d, want 401", resp.StatusCode)
		}
	}
	if n := tr.tokens.Load(); n != 1 {
		t.Errorf("%d anonymous tokens fetched for 3 probes, want 1", n)
	}
}

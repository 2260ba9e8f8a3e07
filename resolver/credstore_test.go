package resolver

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeHelper is a docker-credential-<name> script in its own directory: it records each
// server it is asked for and answers the registry it knows with the user and secret in its
// files, anything else with the protocol's not-found.
type fakeHelper struct {
	dir, name, registry string
}

func newFakeHelper(t *testing.T, name, serverURL, user, secret string) *fakeHelper {
	t.Helper()
	h := &fakeHelper{dir: t.TempDir(), name: name, registry: serverURL}
	script := fmt.Sprintf(`#!/bin/sh
server=$(cat)
echo "$server" >> %[1]s/asked
echo "helper diagnostics: $(cat %[1]s/secret)" >&2
if [ -e %[1]s/fail ]; then echo "broken: $(cat %[1]s/secret)"; exit 3; fi
if [ -e %[1]s/hang ]; then exec sleep 60; fi
if [ "$server" = %[2]q ]; then
  printf '{"ServerURL":"%%s","Username":"%%s","Secret":"%%s"}' "$server" "$(cat %[1]s/user)" "$(cat %[1]s/secret)"
  exit 0
fi
echo "credentials not found in native keychain"
exit 1
`, h.dir, serverURL)
	h.set(t, user, secret)
	if err := os.WriteFile(filepath.Join(h.dir, helperPrefix+name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *fakeHelper) set(t *testing.T, user, secret string) {
	t.Helper()
	for name, v := range map[string]string{"user": user, "secret": secret} {
		if err := os.WriteFile(filepath.Join(h.dir, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func (h *fakeHelper) flag(t *testing.T, name string, on bool) {
	t.Helper()
	p := filepath.Join(h.dir, name)
	if on {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	os.Remove(p)
}

// asked lists the server URLs the helper was asked for, in order.
func (h *fakeHelper) asked(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(h.dir, "asked"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(data))
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newStore(t *testing.T, opts CredentialStoreOptions) *CredentialStore {
	t.Helper()
	s, err := NewCredentialStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCredentialHelperProtocol(t *testing.T) {
	ctx := context.Background()
	hub := newFakeHelper(t, "hub", "https://index.docker.io/v1/", "hubuser", "hub-secret")
	tok := newFakeHelper(t, "tok", "ghcr.io", "<token>", "refresh-secret")
	cfg := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, cfg, `{"credsStore":"hub","credHelpers":{"ghcr.io":"tok"},
		"auths":{"other.example":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("o:opw"))+`"}}}`)
	credFile := filepath.Join(t.TempDir(), "credentials.toml")
	writeFile(t, credFile, "[registries.\"ghcr.io\"]\n  node_public = true\n[registries.\"file.example\"]\n  username = \"f\"\n  password = \"fpw\"\n")
	s := newStore(t, CredentialStoreOptions{DockerConfig: cfg, CredentialsFile: credFile, Path: hub.dir + string(os.PathListSeparator) + tok.dir})

	for i := 0; i < 3; i++ {
		c, ok := s.Lookup(ctx, "docker.io")
		if !ok || c.Username != "hubuser" || c.Password != "hub-secret" {
			t.Fatalf("docker.io through credsStore: %v %v", c, ok)
		}
	}
	if got := hub.asked(t); len(got) != 1 || got[0] != "https://index.docker.io/v1/" {
		t.Errorf("credsStore asked %q, want one ask for Docker Hub's server URL", got)
	}
	c, ok := s.Lookup(ctx, "ghcr.io")
	if !ok || c.IdentityToken != "refresh-secret" || c.Username != "" || !c.NodePublic {
		t.Errorf("ghcr.io through credHelpers (<token> user, node_public from the file): %#v %v", c, ok)
	}
	if got := tok.asked(t); len(got) != 1 || got[0] != "ghcr.io" {
		t.Errorf("credHelpers asked %q", got)
	}
	// The store knows nothing of other.example: the auths entry stands.
	if c, ok := s.Lookup(ctx, "other.example"); !ok || c.Username != "o" || c.Password != "opw" {
		t.Errorf("other.example falls back to auths: %v %v", c, ok)
	}
	// The credentials file wins over every helper, without running one.
	before := len(hub.asked(t))
	if c, ok := s.Lookup(ctx, "file.example"); !ok || c.Username != "f" {
		t.Errorf("file.example from the credentials file: %v %v", c, ok)
	}
	if len(hub.asked(t)) != before {
		t.Error("a helper was run for a registry the credentials file covers")
	}
	if _, ok := s.Lookup(ctx, "none.example"); ok {
		t.Error("none.example: a credential out of nowhere")
	}
}

func TestCredentialHelperExpiryAndRefusal(t *testing.T) {
	ctx := context.Background()
	h := newFakeHelper(t, "rot", "reg.example", "u", "first")
	cfg := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, cfg, `{"credHelpers":{"reg.example":"rot"}}`)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s := newStore(t, CredentialStoreOptions{DockerConfig: cfg, Path: h.dir, HelperTTL: time.Minute})
	s.opts.now = clock.now

	first, _ := s.Lookup(ctx, "reg.example")
	h.set(t, "u", "second")
	clock.add(59 * time.Second)
	if c, _ := s.Lookup(ctx, "reg.example"); c.Password != "first" || len(h.asked(t)) != 1 {
		t.Fatalf("within the TTL: %q after %d asks, want the cached answer", c.Password, len(h.asked(t)))
	}
	clock.add(2 * time.Second)
	if c, _ := s.Lookup(ctx, "reg.example"); c.Password != "second" || len(h.asked(t)) != 2 {
		t.Fatalf("after the TTL: %q after %d asks, want the helper asked again", c.Password, len(h.asked(t)))
	}

	// A refusal of an older credential does not throw away the newer answer.
	s.Refused("reg.example", first)
	s.Lookup(ctx, "reg.example")
	if n := len(h.asked(t)); n != 2 {
		t.Errorf("refusal of a stale credential made %d asks, want 2", n)
	}
	h.set(t, "u", "third")
	cur, _ := s.Lookup(ctx, "reg.example")
	s.Refused("reg.example", cur)
	if c, _ := s.Lookup(ctx, "reg.example"); c.Password != "third" || len(h.asked(t)) != 3 {
		t.Errorf("after a refusal: %q after %d asks, want the helper asked again", c.Password, len(h.asked(t)))
	}
}

func TestCredentialHelperFailuresShowNoSecret(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []string{"fail", "hang", "missing"} {
		t.Run(mode, func(t *testing.T) {
			h := newFakeHelper(t, "bad", "reg.example", "u", "helper-secret-value")
			cfg := filepath.Join(t.TempDir(), "config.json")
			name := "bad"
			if mode == "missing" {
				name = "absent"
			} else {
				h.flag(t, mode, true)
			}
			writeFile(t, cfg, `{"credHelpers":{"reg.example":"`+name+`"},"auths":{"reg.example":{"username":"au","password":"apw"}}}`)
			s := newStore(t, CredentialStoreOptions{DockerConfig: cfg, Path: h.dir, HelperTimeout: 200 * time.Millisecond})
			_, err := runHelper(ctx, h.dir, name, "reg.example", 200*time.Millisecond)
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), "helper-secret-value") {
				t.Errorf("error shows the helper's output: %v", err)
			}
			if mode == "hang" && !strings.Contains(err.Error(), "no answer within") {
				t.Errorf("hung helper: %v", err)
			}
			// The failed helper leaves the auths entry in use.
			if c, ok := s.Lookup(ctx, "reg.example"); !ok || c.Username != "au" {
				t.Errorf("fallback to auths: %v %v", c, ok)
			}
		})
	}
	for _, bad := range []string{"../x", "a b", "-rm", ""} {
		if validHelperName(bad) == nil && bad != "" {
			t.Errorf("helper name %q accepted", bad)
		}
	}
	cfg := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, cfg, `{"credsStore":"../../bin/sh"}`)
	if _, err := NewCredentialStore(CredentialStoreOptions{DockerConfig: cfg}); err == nil {
		t.Error("credsStore with a path accepted")
	}
}

func TestCredentialReload(t *testing.T) {
	ctx := context.Background()
	credFile := filepath.Join(t.TempDir(), "credentials.toml")
	entry := func(pw string) string {
		return "[registries.\"reg.example\"]\n  username = \"u\"\n  password = \"" + pw + "\"\n"
	}
	writeFile(t, credFile, entry("one"))
	s := newStore(t, CredentialStoreOptions{CredentialsFile: credFile})
	writeFile(t, credFile, entry("two"))
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Lookup(ctx, "reg.example"); c.Password != "two" {
		t.Fatalf("after Reload: %q", c.Password)
	}
	writeFile(t, credFile, "password = \"broken-secret\n")
	err := s.Reload(ctx)
	if err == nil || strings.Contains(err.Error(), "broken-secret") {
		t.Fatalf("bad file: %v", err)
	}
	if c, _ := s.Lookup(ctx, "reg.example"); c.Password != "two" {
		t.Fatalf("a bad file replaced the credentials: %q", c.Password)
	}

	// Watch notices a change by itself.
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); s.Watch(wctx, 10*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	writeFile(t, credFile, entry("three-longer"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, _ := s.Lookup(ctx, "reg.example"); c.Password == "three-longer" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Watch did not reload the changed file")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRefusedHelperCredentialAskedAgain: the registry's token endpoint stops accepting the
// credential the helper gave (rotated); the next request asks the helper again and succeeds
// without any reload.
func TestRefusedHelperCredentialAskedAgain(t *testing.T) {
	var password atomic.Value
	password.Store("pw-1")
	var tokens atomic.Int32
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			u, p, ok := r.BasicAuth()
			if r.Method != http.MethodGet || !ok || u != "robot" || p != password.Load().(string) {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			fmt.Fprintf(w, `{"token":"t-%d-%s","expires_in":300}`, tokens.Add(1), r.URL.Query().Get("scope"))
			return
		}
		repo := strings.Split(strings.TrimPrefix(r.URL.Path, "/v2/"), "/")[0]
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer t-") || !strings.HasSuffix(r.Header.Get("Authorization"), "repository:"+repo+":pull") {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="svc"`, srv.URL))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, "content")
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	h := newFakeHelper(t, "rot", host, "robot", "pw-1")
	cfg := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, cfg, `{"credHelpers":{"`+host+`":"rot"}}`)
	store := newStore(t, CredentialStoreOptions{DockerConfig: cfg, Path: h.dir})
	r := newResolver(t, func(o *Options) { o.CredentialStore = store })
	ep, err := r.Endpoint(host)
	if err != nil {
		t.Fatal(err)
	}
	get := func(repo string) int {
		resp, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: repo, Kind: "manifests", Reference: "v1", Header: http.Header{}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := get("a"); s != 200 || len(h.asked(t)) != 1 {
		t.Fatalf("first request: %d after %d helper runs", s, len(h.asked(t)))
	}
	// Rotation: the registry and the helper move on; the daemon still holds pw-1.
	password.Store("pw-2")
	h.set(t, "robot", "pw-2")
	if s := get("b"); s != 200 {
		t.Fatalf("after rotation: %d, want 200 with the helper asked again", s)
	}
	if n := len(h.asked(t)); n != 2 {
		t.Errorf("helper runs: %d, want 2 (one more after the refusal)", n)
	}
	// A credential the helper cannot fix is asked for once per request, not in a loop.
	password.Store("pw-3")
	if s := get("c"); s != http.StatusUnauthorized {
		t.Fatalf("with no valid credential: %d, want 401", s)
	}
	if n := len(h.asked(t)); n != 3 {
		t.Errorf("helper runs after a hopeless request: %d, want 3", n)
	}
}

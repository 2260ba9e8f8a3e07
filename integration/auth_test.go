package integration

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

const (
	authUser     = "alice"
	authPassword = "alice-Pa55word-not-in-logs"
	privateRepo  = "private/app"
	publicRepo   = "public/base"
)

// authEnv is a distribution registry with token auth (a token server from the harness),
// behind the counting proxy, and the daemon allowed to reach it.
type authEnv struct {
	ts       *harness.TokenServer
	plain    *harness.Registry // the same storage without auth, to push to
	origin   origin
	daemon   *harness.Daemon
	hostsDir string
	private  *harness.Image
	public   *harness.Image
}

// newAuthEnv starts the registry and pushes a private and a public image. With
// daemonCreds the daemon gets alice's credentials in a credentials file (node_public).
func newAuthEnv(t *testing.T, daemonCreds bool) *authEnv {
	t.Helper()
	harness.RequireRoot(t)
	harness.Tools(t)
	e := &authEnv{hostsDir: t.TempDir()}
	e.ts = harness.StartTokenServer(t, map[string]string{authUser: authPassword}, "public/", 5*time.Minute)
	e.plain = harness.StartRegistry(t)
	reg := harness.StartTokenRegistry(t, filepath.Join(e.plain.Dir, "storage"), e.ts)
	e.origin = origin{reg: reg, proxy: harness.StartCountingProxy(t, reg.URL)}
	e.private = harness.PushImage(t, e.plain.URL, privateRepo, "v1", harness.ImageSpec{
		Layers: []harness.LayerSpec{{Seed: 9100, Files: 2, FileSize: 512 << 10}, {Seed: 9101, Files: 2, FileSize: 256 << 10}},
		Labels: map[string]string{"private": "yes"},
	})
	e.public = harness.PushImage(t, e.plain.URL, publicRepo, "v1", harness.ImageSpec{
		Layers: []harness.LayerSpec{{Seed: 9200, Files: 1, FileSize: 128 << 10}},
	})
	cfg := harness.DaemonConfig{Registries: []string{e.origin.proxy.Host}}
	if daemonCreds {
		credFile := filepath.Join(t.TempDir(), "credentials.toml")
		body := fmt.Sprintf("[registries.%q]\n  username = %q\n  password = %q\n  node_public = true\n", e.origin.proxy.Host, authUser, authPassword)
		if err := os.WriteFile(credFile, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.UpstreamExtra = fmt.Sprintf("credentials_file = %q\n", credFile)
	}
	e.daemon = harness.StartDaemon(t, cfg)
	if _, err := harness.WriteHostsToml(e.hostsDir, e.origin.proxy.Host, e.daemon.URL); err != nil {
		t.Fatal(err)
	}
	return e
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

func (e *authEnv) get(t *testing.T, repo string, d ocispec.Descriptor, kind string, hdr http.Header) harness.MirrorResponse {
	t.Helper()
	h := http.Header{"Accept": {ocispec.MediaTypeImageManifest}}
	for k, v := range hdr {
		h[k] = v
	}
	resp, err := e.daemon.Do(context.Background(), http.MethodGet, "/v2/"+repo+"/"+kind+"/"+d.Digest.String(), e.origin.proxy.Host, h)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// assertNoSecretsInLog checks the daemon's debug log for the password and for any JWT
// (base64url of '{"' starts every JWT: "eyJ").
func assertNoSecretsInLog(t *testing.T, d *harness.Daemon) {
	t.Helper()
	data, err := os.ReadFile(d.Process.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) == 0 {
		t.Fatal("daemon log is empty: nothing was checked")
	}
	assertNoSecretsIn(t, "daemon log", string(data))
	if d.MetricsURL == "" {
		t.Fatal("daemon has no metrics listener: its metrics were not checked for secrets")
	}
	resp, err := d.Client.Get(d.MetricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	metrics, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecretsIn(t, "daemon metrics", string(metrics))
}

// assertNoSecretsIn fails when text holds the test password, its Basic encoding or a JWT.
func assertNoSecretsIn(t *testing.T, what, text string) {
	t.Helper()
	basic := base64.StdEncoding.EncodeToString([]byte(authUser + ":" + authPassword))
	for _, secret := range []string{authPassword, basic, "eyJ"} {
		if i := strings.Index(text, secret); i >= 0 {
			t.Errorf("%s contains a secret (%q...) near: %q", what, secret[:3], text[max(0, i-200):i])
		}
	}
}

// TestPrivateContentMatrix: what was pulled with credentials is served from the cache only
// to clients whose credentials the registry accepts for that repository and object.
func TestPrivateContentMatrix(t *testing.T) {
	e := newAuthEnv(t, false)
	host := e.origin.proxy.Host
	blobs := append([]ocispec.Descriptor{e.private.Config}, descriptorsOf(e.private.Layers)...)

	// An authorised client pulls: misses, fetched with its token, stored as private.
	tok := e.ts.Token(t, authUser, authPassword, "repository:"+privateRepo+":pull")
	if r := e.get(t, privateRepo, e.private.Manifest, "manifests", bearer(tok)); r.Status != 200 {
		t.Fatalf("authorised manifest: %d", r.Status)
	}
	for _, b := range blobs {
		if r := e.get(t, privateRepo, b, "blobs", bearer(tok)); r.Status != 200 || r.Digest != b.Digest {
			t.Fatalf("authorised blob %s: %d %s", b.Digest, r.Status, r.Result())
		}
	}
	harness.WaitFor(t, "blobs committed", 30*time.Second, 20*time.Millisecond, func() error {
		for _, b := range blobs {
			if !e.daemon.Cached(t, b.Digest, b.Size) {
				return fmt.Errorf("%s not stored", b.Digest)
			}
		}
		return nil
	})
	e.origin.proxy.Reset()

	// Anonymous: the registry's challenge, no bytes.
	for _, b := range append(blobs, e.private.Manifest) {
		kind := "blobs"
		if b.Digest == e.private.Manifest.Digest {
			kind = "manifests"
		}
		r := e.get(t, privateRepo, b, kind, nil)
		if r.Status != http.StatusUnauthorized || !strings.Contains(r.Header.Get("WWW-Authenticate"), e.ts.Realm) || r.Digest == b.Digest || r.Size >= b.Size {
			t.Errorf("anonymous %s %s: %d %q, %d bytes", kind, b.Digest, r.Status, r.Header.Get("WWW-Authenticate"), r.Size)
		}
	}
	// Wrong credentials: refused.
	anonTok := e.ts.Token(t, "", "", "repository:"+privateRepo+":pull")
	for name, hdr := range map[string]http.Header{
		"garbage token":           bearer("not-a-token"),
		"anonymous token":         bearer(anonTok),
		"basic, wrong password":   {"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(authUser+":wrong"))}},
		"token for another scope": bearer(e.ts.Token(t, authUser, authPassword, "repository:"+publicRepo+":pull")),
	} {
		r := e.get(t, privateRepo, e.private.Layers[0].Descriptor, "blobs", hdr)
		if r.Status == 200 || r.Digest == e.private.Layers[0].Descriptor.Digest {
			t.Errorf("%s: served (%d %s)", name, r.Status, r.Result())
		}
	}
	// The private blob asked for under a public repository name, with a token valid for
	// that public repository: not served from the cache.
	pubTok := e.ts.Token(t, "", "", "repository:"+publicRepo+":pull")
	for _, hdr := range []http.Header{nil, bearer(pubTok), bearer(e.ts.Token(t, authUser, authPassword, "repository:"+publicRepo+":pull"))} {
		r := e.get(t, publicRepo, e.private.Layers[0].Descriptor, "blobs", hdr)
		if r.Status == 200 || r.Digest == e.private.Layers[0].Descriptor.Digest {
			t.Errorf("private blob under %s with %v: served (%d %s)", publicRepo, hdr != nil, r.Status, r.Result())
		}
	}
	// Valid credentials (a new token, another client): from the cache, no blob bytes upstream.
	tok2 := e.ts.Token(t, authUser, authPassword, "repository:"+privateRepo+":pull")
	for _, b := range blobs {
		r := e.get(t, privateRepo, b, "blobs", bearer(tok2))
		if r.Status != 200 || r.Result() != harness.ResultHit || r.Digest != b.Digest {
			t.Errorf("valid credentials, blob %s: %d %s", b.Digest, r.Status, r.Result())
		}
	}
	c := e.origin.proxy.Snapshot()
	if n, bytes := c.TotalBlobGETs(), c.BlobBytes(); n != 0 || bytes != 0 {
		t.Errorf("cache hits for a checked client made %d blob GETs (%d bytes) at the origin", n, bytes)
	}
	if len(c.BlobHEADs()) == 0 {
		t.Errorf("no upstream check (HEAD) was made for private blobs:\n%s", c)
	}
	_ = host
	assertNoSecretsInLog(t, e.daemon)
}

func descriptorsOf(layers []harness.Layer) []ocispec.Descriptor {
	var out []ocispec.Descriptor
	for _, l := range layers {
		out = append(out, l.Descriptor)
	}
	return out
}

// TestCtrPullPrivateImagePassthrough: containerd holds the credentials (ctr --user); the
// daemon passes its Authorization through and caches; a pull without credentials fails.
func TestCtrPullPrivateImagePassthrough(t *testing.T) {
	e := newAuthEnv(t, false)
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})
	ref := harness.Ref(e.origin.proxy.Host, privateRepo, "v1")

	ctrd.Pull(t, "auth-pass", ref, e.hostsDir, "--user", authUser+":"+authPassword)
	assertServedByDaemon(t, e.daemon, e.origin, e.private.Blobs())

	// No credentials: neither the mirror nor the registry gives the image away.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, _, err := ctrd.PullE(ctx, "auth-anon", ref, e.hostsDir); err == nil {
		t.Fatalf("pull without credentials succeeded:\n%s", out)
	}
	// With credentials again, in a fresh namespace: from the cache.
	e.origin.proxy.Reset()
	ctrd.Pull(t, "auth-pass-2", ref, e.hostsDir, "--user", authUser+":"+authPassword)
	if n := e.origin.proxy.Snapshot().TotalBlobGETs(); n != 0 {
		t.Errorf("second authorised pull made %d blob GETs at the origin", n)
	}
	assertNoSecretsInLog(t, e.daemon)
}

// TestCtrPullPrivateImageDaemonCredentials: the daemon holds the credentials (node_public);
// 20 concurrent pulls of the private image without any credentials in containerd work, and
// the token server sees one token request per scope. Writes a MEASURE line.
func TestCtrPullPrivateImageDaemonCredentials(t *testing.T) {
	e := newAuthEnv(t, true)
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})
	ref := harness.Ref(e.origin.proxy.Host, privateRepo, "v1")
	e.ts.Reset()
	const tokenFetches = "containerd_blobcache_token_fetches_total"
	fetchesBefore := metricValue(scrape(t, e.daemon), tokenFetches, nil)

	const pulls = 20
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, pulls)
	start := time.Now()
	for i := range pulls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, _, err := ctrd.PullE(ctx, fmt.Sprintf("daemon-creds-%d", i), ref, e.hostsDir); err != nil {
				errs <- fmt.Errorf("pull %d: %v\n%s", i, err, out)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	requests, refused := e.ts.Requests()
	total := 0
	for scope, n := range requests {
		total += n
		if n != 1 {
			t.Errorf("scope %q: %d token requests, want 1 per token lifetime", scope, n)
		}
	}
	if refused != 0 || requests["repository:"+privateRepo+":pull"] != 1 {
		t.Errorf("token requests %v (refused %d)", requests, refused)
	}
	if got := metricValue(scrape(t, e.daemon), tokenFetches, nil) - fetchesBefore; got != float64(total) {
		t.Errorf("%s grew by %v during the pulls; the token server answered %d requests", tokenFetches, got, total)
	}
	c := e.origin.proxy.Snapshot()
	if direct := c.Direct(); len(direct.Requests) != 0 {
		t.Errorf("containerd went to the registry itself:\n%s", direct)
	}
	for _, b := range e.private.Blobs() {
		if n := c.ViaMirror().BlobGETs()[b.Digest]; n != 1 {
			t.Errorf("blob %s fetched %d times from the origin, want 1", b.Digest, n)
		}
	}
	line := fmt.Sprintf("MEASURE token_requests=%d scopes=%d concurrent_pulls=%d token_lifetime=%v wall=%v (ctr image pull of a private image, daemon credentials, distribution token auth)",
		total, len(requests), pulls, e.ts.Lifetime, elapsed.Round(time.Millisecond))
	t.Log(line)
	if f := os.Getenv("BLOBCACHE_MEASURE_FILE"); f != "" {
		if err := appendLine(f, line); err != nil {
			t.Errorf("write %s: %v", f, err)
		}
	}
	assertNoSecretsInLog(t, e.daemon)
}

package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// DaemonPackage is the package of the containerd-blobcache binary.
const DaemonPackage = "./cmd/containerd-blobcache"

// ResultHeader is the mirror's response header saying how a request was served.
const ResultHeader = traffic.ResultHeader

// Values of ResultHeader.
const (
	ResultHit    = string(traffic.Hit)
	ResultMiss   = string(traffic.Miss)
	ResultBypass = string(traffic.Bypass)
	ResultStale  = string(traffic.Stale)
	// ResultPeer: the cluster tier's owner of the blob served it.
	ResultPeer = string(traffic.Peer)
)

// DaemonConfig is the daemon's TOML configuration. Zero fields get test defaults from
// StartDaemon: Root a temporary directory, Address a free loopback port, log level debug,
// AllowedRegistries ["*"], short timeouts.
type DaemonConfig struct {
	Root     string
	LogLevel string

	Address         string
	DefaultRegistry string
	// ReadHeaderTimeout is mirror.read_header_timeout; VerifyBeforeServe
	// mirror.verify_before_serve.
	ReadHeaderTimeout string
	VerifyBeforeServe bool

	AllowedRegistries []string
	// PlainHTTP and AllowPrivateNetworks: every loopback registry or proxy a test uses must
	// be in both; use Registries to add a host to both at once.
	PlainHTTP             []string
	AllowPrivateNetworks  []string
	DialTimeout           string
	ResponseHeaderTimeout string
	StallTimeout          string

	TagFreshness string

	// AdminAddress is the admin socket; StartDaemon puts it in a short temporary directory.
	AdminAddress string
	// Store is appended to the [store] table verbatim ("max_size = \"10MiB\"").
	Store string

	// Registries are "host:port" entries added to both PlainHTTP and AllowPrivateNetworks.
	Registries []string
	// UpstreamExtra is written verbatim inside [upstream] (credentials_file, hosts_dir...).
	UpstreamExtra string
	// MetricsAddress is the [metrics] listener; StartDaemon picks a free loopback port
	// when empty ("-" disables the listener).
	MetricsAddress string
	// Extra is appended to the generated file verbatim (for options newer than this struct).
	Extra string

	// Env is added to the daemon's environment (HTTPS_PROXY=...).
	Env []string
	// EtcHosts, when set, is the /etc/hosts the daemon resolves names with (WriteEtcHosts),
	// in a mount namespace of its own.
	EtcHosts string
}

// TOML renders the configuration file.
func (c DaemonConfig) TOML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "root = %s\nlog_level = %s\n\n", tomlString(c.Root), tomlString(c.LogLevel))
	fmt.Fprintf(&b, "[mirror]\naddress = %s\ndefault_registry = %s\n", tomlString(c.Address), tomlString(c.DefaultRegistry))
	if c.ReadHeaderTimeout != "" {
		fmt.Fprintf(&b, "read_header_timeout = %s\n", tomlString(c.ReadHeaderTimeout))
	}
	if c.VerifyBeforeServe {
		b.WriteString("verify_before_serve = true\n")
	}
	b.WriteString("\n")
	plain := appendUnique(append([]string(nil), c.PlainHTTP...), c.Registries...)
	private := appendUnique(append([]string(nil), c.AllowPrivateNetworks...), c.Registries...)
	fmt.Fprintf(&b, "[upstream]\nallowed_registries = %s\nplain_http = %s\nallow_private_networks = %s\n",
		tomlStrings(c.AllowedRegistries), tomlStrings(plain), tomlStrings(private))
	for _, kv := range [][2]string{{"dial_timeout", c.DialTimeout}, {"response_header_timeout", c.ResponseHeaderTimeout}, {"stall_timeout", c.StallTimeout}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, "%s = %s\n", kv[0], tomlString(kv[1]))
		}
	}
	if c.UpstreamExtra != "" {
		b.WriteString(c.UpstreamExtra + "\n")
	}
	if c.AdminAddress != "" {
		fmt.Fprintf(&b, "\n[admin]\naddress = %s\n", tomlString(c.AdminAddress))
	}
	b.WriteString("\n[store]\n")
	if c.Store != "" {
		b.WriteString(c.Store + "\n")
	}
	if c.TagFreshness != "" {
		fmt.Fprintf(&b, "tag_freshness = %s\n", tomlString(c.TagFreshness))
	}
	if c.MetricsAddress != "" {
		addr := c.MetricsAddress
		if addr == "-" {
			addr = ""
		}
		fmt.Fprintf(&b, "\n[metrics]\naddress = %s\n", tomlString(addr))
	}
	if c.Extra != "" {
		b.WriteString("\n" + c.Extra + "\n")
	}
	return b.String()
}

func appendUnique(list []string, more ...string) []string {
	seen := map[string]bool{}
	for _, s := range list {
		seen[s] = true
	}
	for _, s := range more {
		if !seen[s] {
			seen[s] = true
			list = append(list, s)
		}
	}
	return list
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func tomlStrings(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = tomlString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// Daemon is a running containerd-blobcache serve.
type Daemon struct {
	Config     DaemonConfig
	ConfigPath string
	// Addr is the mirror's "127.0.0.1:port"; URL is "http://" + Addr, the hosts.toml mirror.
	Addr string
	URL  string
	// MetricsURL is "http://" + the metrics listener, or "" when it is disabled.
	MetricsURL string
	Process    *Process
	// Client reaches the mirror and metrics listeners (from inside NS when it is set).
	Client *http.Client
	// NS is the network namespace the daemon runs in, nil for the test's own.
	NS *Netns

	bin string
}

// DaemonBinary builds ./cmd/containerd-blobcache with -race once per test binary and
// returns its path; a build failure fails every test that needs it. Call CleanupBuilds from
// TestMain to remove the build directory.
func DaemonBinary(t testing.TB) string {
	t.Helper()
	return raceBuild.binary(t, "-race")
}

// CleanupBuilds removes what DaemonBinary and DaemonBinaryNoRace built.
func CleanupBuilds() {
	raceBuild.cleanup()
	plainBuild.cleanup()
}

// Main runs the tests and removes the daemon build afterwards; use it as TestMain's body.
func Main(m *testing.M) {
	code := m.Run()
	CleanupBuilds()
	os.Exit(code)
}

// StartDaemon writes cfg (with test defaults filled in) and runs
// `containerd-blobcache serve --config FILE`, waiting until GET /v2/ answers 200.
func StartDaemon(t testing.TB, cfg DaemonConfig) *Daemon {
	t.Helper()
	return startDaemon(t, DaemonBinary(t), cfg, nil, "", nil)
}

// StartDaemonFrom is StartDaemon with the daemon binary at bin (for example
// DaemonBinaryNoRace for benchmarks).
func StartDaemonFrom(t testing.TB, bin string, cfg DaemonConfig) *Daemon {
	t.Helper()
	return startDaemon(t, bin, cfg, nil, "", nil)
}

// StartDaemonAs is StartDaemon running the daemon with the given credentials (nil: as this
// process). dir holds the configuration file, the log and a copy of the binary; it must be
// reachable by that user ("" makes a test temporary directory, which is not).
func StartDaemonAs(t testing.TB, cfg DaemonConfig, cred *syscall.Credential, dir string) *Daemon {
	t.Helper()
	return startDaemon(t, DaemonBinary(t), cfg, cred, dir, nil)
}

// StartDaemon is StartDaemon (bin "": the race build) run inside the namespace: its
// loopback mirror and metrics listeners are the namespace's own, and the Daemon's Client
// connects from inside it.
func (n *Netns) StartDaemon(t testing.TB, bin string, cfg DaemonConfig) *Daemon {
	t.Helper()
	if bin == "" {
		bin = DaemonBinary(t)
	}
	return startDaemon(t, bin, cfg, nil, "", n)
}

func startDaemon(t testing.TB, bin string, cfg DaemonConfig, cred *syscall.Credential, dir string, ns *Netns) *Daemon {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	if cred != nil {
		// The build directory is private to this process's user: run a copy.
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(dir, "containerd-blobcache")
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if cfg.Root == "" {
		cfg.Root = filepath.Join(dir, "root")
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "debug"
	}
	if cfg.Address == "" {
		cfg.Address = FreeAddr(t)
	}
	if cfg.MetricsAddress == "" {
		cfg.MetricsAddress = FreeAddr(t)
	}
	if cfg.AllowedRegistries == nil {
		cfg.AllowedRegistries = []string{"*"}
	}
	if cfg.DialTimeout == "" {
		cfg.DialTimeout = "2s"
	}
	if cfg.ResponseHeaderTimeout == "" {
		cfg.ResponseHeaderTimeout = "30s"
	}
	if cfg.StallTimeout == "" {
		cfg.StallTimeout = "15s"
	}
	if cfg.AdminAddress == "" {
		cfg.AdminAddress = filepath.Join(ShortTempDir(t, "bc-admin-"), "admin.sock")
	}
	d := &Daemon{
		Config:     cfg,
		ConfigPath: filepath.Join(dir, "config.toml"),
		Addr:       cfg.Address,
		URL:        "http://" + cfg.Address,
		MetricsURL: metricsURL(cfg.MetricsAddress),
		Client:     ns.HTTPClient(2 * time.Minute),
		NS:         ns,
		bin:        bin,
	}
	if err := os.WriteFile(d.ConfigPath, []byte(cfg.TOML()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", d.ConfigPath)
	if cfg.EtcHosts != "" {
		cmd = withEtcHosts(t, cfg.EtcHosts, bin, "serve", "--config", d.ConfigPath)
	}
	if len(cfg.Env) > 0 {
		cmd.Env = append(os.Environ(), cfg.Env...)
	}
	cmd.Dir = dir
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	d.Process = startProcess(t, "containerd-blobcache", filepath.Join(dir, "daemon.log"), ns.wrap(cmd))
	waitHTTP200With(t, d.Client, d.Process, d.URL+"/v2/", 60*time.Second)
	return d
}

func metricsURL(addr string) string {
	if addr == "" || addr == "-" {
		return ""
	}
	return "http://" + addr
}

// Stop sends SIGTERM and waits (SIGKILL after a bound).
func (d *Daemon) Stop() error { return d.Process.Stop() }

// Kill sends SIGKILL.
func (d *Daemon) Kill() error { return d.Process.Kill() }

// BlobPath is where the daemon keeps a committed blob.
func (d *Daemon) BlobPath(dg digest.Digest) string {
	return filepath.Join(d.Config.Root, "blobs", dg.Algorithm().String(), dg.Encoded())
}

// HasBlob reports whether the blob file exists with the given size (any size when size<0).
func (d *Daemon) HasBlob(dg digest.Digest, size int64) bool {
	fi, err := os.Stat(d.BlobPath(dg))
	return err == nil && fi.Mode().IsRegular() && (size < 0 || fi.Size() == size)
}

// Cached reports whether the blob is in the store, waiting up to 10 s for it: a fill commits
// (verify, rename, index) just after its last byte reached the client, so a pull that has
// returned may be a moment ahead of its last commit.
func (d *Daemon) Cached(t testing.TB, dg digest.Digest, size int64) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !d.HasBlob(dg, size) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// StoredBlobs lists the digests of the blob files under root/blobs/sha256.
func (d *Daemon) StoredBlobs(t testing.TB) []digest.Digest {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(d.Config.Root, "blobs", "sha256"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []digest.Digest
	for _, e := range entries {
		if e.Type().IsRegular() {
			out = append(out, digest.NewDigestFromEncoded(digest.SHA256, e.Name()))
		}
	}
	return out
}

// VerifyBlobFile hashes the stored blob file and checks it against its name.
func (d *Daemon) VerifyBlobFile(dg digest.Digest) error {
	f, err := os.Open(d.BlobPath(dg))
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dg.String() {
		return fmt.Errorf("blob file %s hashes to %s", d.BlobPath(dg), got)
	}
	return nil
}

// MirrorResponse is what a direct request to the mirror returned.
type MirrorResponse struct {
	Status int
	Header http.Header
	// Digest is the sha256 of the body, Size its length (GET only).
	Digest digest.Digest
	Size   int64
}

// Result is the X-Blobcache-Result header.
func (r MirrorResponse) Result() string { return r.Header.Get(ResultHeader) }

// Do sends method to the mirror for path ("/v2/<name>/blobs/<digest>"), with ?ns=registry
// when registry is set, hashing the body as it streams.
func (d *Daemon) Do(ctx context.Context, method, path, registry string, header http.Header) (MirrorResponse, error) {
	u := d.URL + path
	if registry != "" {
		u += "?ns=" + url.QueryEscape(registry)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return MirrorResponse{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := d.Client.Do(req)
	if err != nil {
		return MirrorResponse{}, err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return MirrorResponse{}, fmt.Errorf("%s %s: body after %d bytes: %w", method, u, n, err)
	}
	return MirrorResponse{Status: resp.StatusCode, Header: resp.Header, Digest: digest.NewDigest(digest.SHA256, h), Size: n}, nil
}

// GetBlob GETs a blob through the mirror for registry (the ?ns= value).
func (d *Daemon) GetBlob(ctx context.Context, registry, repo string, dg digest.Digest) (MirrorResponse, error) {
	return d.GetBlobWith(ctx, registry, repo, dg, nil)
}

// GetBlobWith is GetBlob with the given request headers (an Authorization).
func (d *Daemon) GetBlobWith(ctx context.Context, registry, repo string, dg digest.Digest, header http.Header) (MirrorResponse, error) {
	return d.Do(ctx, http.MethodGet, "/v2/"+repo+"/blobs/"+dg.String(), registry, header)
}

// PortClosed reports whether nothing accepts connections on the mirror's address.
func (d *Daemon) PortClosed() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	dial := (&net.Dialer{}).DialContext
	if d.NS != nil {
		dial = d.NS.DialContext
	}
	conn, err := dial(ctx, "tcp", d.Addr)
	if err != nil {
		return true
	}
	conn.Close()
	return false
}

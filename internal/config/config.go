package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
)

// DefaultMirrorAddress is where the mirror listens unless configured otherwise: loopback only,
// because the mirror is for the node's own containerd and must not be reachable from the network.
const DefaultMirrorAddress = "127.0.0.1:5055"

// DefaultContentAddress is the unix socket of the content API, where containerd's
// [proxy_plugins] entry points.
const DefaultContentAddress = "/run/containerd-blobcache/content.sock"

// maxSocketPath is the longest content socket path: a unix socket address holds 107 bytes,
// and the socket is bound under the path plus ".tmp" before it is renamed into place.
const maxSocketPath = 107 - len(".tmp")

// Config is the daemon's whole configuration.
type Config struct {
	Root     string         `toml:"root"`
	LogLevel string         `toml:"log_level"`
	Mirror   MirrorConfig   `toml:"mirror"`
	Upstream UpstreamConfig `toml:"upstream"`
	Store    StoreConfig    `toml:"store"`
	Content  ContentConfig  `toml:"content"`
	Diff     DiffConfig     `toml:"diff"`
	Metrics  MetricsConfig  `toml:"metrics"`
	Debug    DebugConfig    `toml:"debug"`
	Admin    AdminConfig    `toml:"admin"`
	Peer     PeerConfig     `toml:"peer"`
}

// DebugConfig configures the optional debug listener (Go's pprof handlers).
type DebugConfig struct {
	Address string `toml:"address"`
}

// MirrorConfig configures the HTTP registry mirror that containerd's hosts.toml points at.
type MirrorConfig struct {
	Address         string   `toml:"address"`
	DefaultRegistry string   `toml:"default_registry"`
	ReadTimeout     Duration `toml:"read_header_timeout"`
	// VerifyBeforeServe holds a cold blob's bytes until the whole blob is verified.
	VerifyBeforeServe bool     `toml:"verify_before_serve"`
	ShutdownTimeout   Duration `toml:"shutdown_timeout"`
}

// ContentConfig configures the content API (containerd's content service over gRPC) that a
// containerd [proxy_plugins] entry of type "content" uses as its content store.
type ContentConfig struct {
	Enabled         bool     `toml:"enabled"`
	Address         string   `toml:"address"`
	SocketGroup     string   `toml:"socket_group"`
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// InfoFillWait bounds how long an Info waits for the mirror to fill a blob that a
	// manifest it served lists; 0 turns that off.
	InfoFillWait Duration `toml:"info_fill_wait"`
}

// DiffConfig configures containerd's diff API (Apply, Compare), served on the content API's
// socket for a containerd [proxy_plugins] entry of type "diff".
type DiffConfig struct {
	Enabled bool `toml:"enabled"`
	// ContainerdAddress is containerd's own socket: Compare writes the layers it makes
	// through containerd's content API, so that they belong to the caller's namespace.
	ContainerdAddress string `toml:"containerd_address"`
}

// DefaultContainerdAddress is containerd's socket on a node.
const DefaultContainerdAddress = "/run/containerd/containerd.sock"

// MetricsConfig configures the listener of /metrics, /healthz and /readyz.
type MetricsConfig struct {
	// Address is host:port; empty disables the listener.
	Address string `toml:"address"`
}

// DefaultMetricsAddress is where /metrics, /healthz and /readyz are served unless configured
// otherwise: loopback, next to the mirror.
const DefaultMetricsAddress = "127.0.0.1:5056"

// UpstreamConfig configures how the daemon reaches the registries.
type UpstreamConfig struct {
	AllowedRegistries     []string `toml:"allowed_registries"`
	PlainHTTP             []string `toml:"plain_http"`
	AllowPrivateNetworks  []string `toml:"allow_private_networks"`
	DialTimeout           Duration `toml:"dial_timeout"`
	ResponseHeaderTimeout Duration `toml:"response_header_timeout"`
	StallTimeout          Duration `toml:"stall_timeout"`
	// HostsDir is the daemon's own hosts.toml directory (containerd's certs.d layout).
	HostsDir string `toml:"hosts_dir"`
	// CredentialsFile holds the daemon's own registry credentials (TOML, see README).
	CredentialsFile string `toml:"credentials_file"`
	// DockerConfig is a Docker config.json whose "auths", "credHelpers" and "credsStore" are
	// read as credentials too.
	DockerConfig string `toml:"docker_config"`
	// CredentialHelperTimeout bounds one run of a docker-credential-* helper.
	CredentialHelperTimeout Duration `toml:"credential_helper_timeout"`
	// CredentialHelperTTL is how long a helper's answer is used before it is asked again.
	CredentialHelperTTL Duration `toml:"credential_helper_ttl"`
	// CredentialsReloadInterval is how often the two credential files are checked for a
	// change (0 disables; SIGHUP always reloads).
	CredentialsReloadInterval Duration `toml:"credentials_reload_interval"`
	// PrivateAccessTTL is how long a client's upstream-checked right to read a private
	// object is remembered.
	PrivateAccessTTL Duration `toml:"private_access_ttl"`
	// Proxy is the forward proxy: "" the environment's (HTTPS_PROXY, HTTP_PROXY, NO_PROXY),
	// "direct" none, or a proxy URL for every registry.
	Proxy string `toml:"proxy"`
	// RegistryProxies overrides Proxy per registry (glob pattern = proxy URL or "direct").
	RegistryProxies map[string]string `toml:"registry_proxies"`
	// LowSpeedLimit (bytes per second) over LowSpeedTime: a slower download is abandoned.
	LowSpeedLimit Size     `toml:"low_speed_limit"`
	LowSpeedTime  Duration `toml:"low_speed_time"`
	// CircuitBreakerCooldown is how long a registry host that did not answer gets fast
	// failures instead of requests; 0 turns the breaker off.
	CircuitBreakerCooldown Duration `toml:"circuit_breaker_cooldown"`
}

// DefaultHostsDir is the daemon's own hosts.toml directory. It is deliberately not
// containerd's /etc/containerd/certs.d, whose files point containerd at this daemon.
const DefaultHostsDir = "/etc/containerd-blobcache/certs.d"

// StoreConfig configures the blob store and its index.
type StoreConfig struct {
	TagFreshness    Duration `toml:"tag_freshness"`
	MaxManifestSize int64    `toml:"max_manifest_size"`

	// Size limit and eviction (see store_limits.go).
	MaxSize             Size     `toml:"max_size"`
	HighWatermark       int      `toml:"high_watermark"`
	LowWatermark        int      `toml:"low_watermark"`
	AccessFlushInterval Duration `toml:"access_flush_interval"`

	// Tag policy.
	RegistryTagFreshness map[string]Duration `toml:"registry_tag_freshness"`
	AlwaysRevalidate     []string            `toml:"always_revalidate"`
	MaxStaleness         Duration            `toml:"max_staleness"`
	NegativeTTL          Duration            `toml:"negative_ttl"`
}

// Default returns the embedded defaults: a configuration that works on a real node as it is.
func Default() Config {
	return Config{
		Root:     "/var/lib/containerd-blobcache",
		LogLevel: "info",
		Mirror: MirrorConfig{
			Address:         DefaultMirrorAddress,
			ReadTimeout:     Duration(10 * time.Second),
			ShutdownTimeout: Duration(10 * time.Second),
		},
		Upstream: UpstreamConfig{
			AllowedRegistries:     []string{"*"},
			PlainHTTP:             []string{},
			AllowPrivateNetworks:  []string{},
			DialTimeout:           Duration(5 * time.Second),
			ResponseHeaderTimeout: Duration(10 * time.Second),
			// A few seconds: a registry that sends nothing for that long is not coming back
			// soon, and every second of it is a second containerd waits.
			StallTimeout:     Duration(5 * time.Second),
			HostsDir:         DefaultHostsDir,
			PrivateAccessTTL: Duration(time.Minute),
			Proxy:            "",
			RegistryProxies:  map[string]string{},
			// Far below any link a registry is used over, far above a registry that is
			// broken: 10 s of a 1 KiB/s upstream is abandoned, containerd then goes to the
			// registry itself.
			LowSpeedLimit: Size(10 << 10),
			LowSpeedTime:  Duration(10 * time.Second),
			// Long enough that a pull (a few dozen requests over seconds) pays one timeout,
			// short enough that a registry back up is used again soon.
			CircuitBreakerCooldown: Duration(30 * time.Second),
			// The helper protocol says nothing of expiry: a few minutes keeps rotated
			// credentials (ECR: 12 h) fresh at one helper run per registry per TTL.
			CredentialHelperTimeout:   Duration(10 * time.Second),
			CredentialHelperTTL:       Duration(5 * time.Minute),
			CredentialsReloadInterval: Duration(10 * time.Second),
		},
		Store: StoreConfig{
			TagFreshness: 0,
			// containerd refuses manifests larger than 4 MiB; anything bigger is not worth keeping.
			MaxManifestSize: 4 << 20,

			MaxSize:              Size(20 << 30),
			HighWatermark:        90,
			LowWatermark:         80,
			AccessFlushInterval:  Duration(10 * time.Second),
			RegistryTagFreshness: map[string]Duration{},
			AlwaysRevalidate:     []string{},
			MaxStaleness:         Duration(24 * time.Hour),
			NegativeTTL:          Duration(15 * time.Second),
		},
		Content: ContentConfig{
			// Off by default: serving containerd's content store is a choice made together
			// with containerd's own configuration (its content plugin disabled), and the
			// mirror alone must not need /run.
			Enabled:         false,
			Address:         DefaultContentAddress,
			SocketGroup:     "",
			ShutdownTimeout: Duration(5 * time.Second),
			InfoFillWait:    Duration(5 * time.Second),
		},
		// Off by default: applying layers writes into containerd's snapshot directories and
		// mounts, which needs root's capabilities (proxy mode's unit grants them).
		Diff:    DiffConfig{Enabled: false, ContainerdAddress: DefaultContainerdAddress},
		Metrics: MetricsConfig{Address: DefaultMetricsAddress},
		Admin:   AdminConfig{Address: DefaultAdminAddress},
		Peer:    defaultPeer(),
	}
}

// Load reads the TOML file at path over the defaults. Unknown keys and bad values are errors
// that name the key.
func Load(file string) (Config, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", file, err)
	}
	return cfg, nil
}

// Parse decodes TOML over the defaults and validates the result.
func Parse(data []byte) (Config, error) {
	cfg := Default()
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&cfg)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			if perr.LastKey != "" {
				return Config{}, fmt.Errorf("invalid %s (line %d): %s: %w", perr.LastKey, perr.Position.Line, perr.Message, errdefs.ErrInvalidArgument)
			}
			return Config{}, fmt.Errorf("line %d: %s: %w", perr.Position.Line, perr.Message, errdefs.ErrInvalidArgument)
		}
		return Config{}, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("unknown key %s: %w", strings.Join(keys, ", "), errdefs.ErrInvalidArgument)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks every value and names the first key that is wrong.
func (c Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("invalid %s: %s: %w", key, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	if c.Root == "" {
		return bad("root", "must not be empty")
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "warning", "error", "fatal", "panic":
	default:
		return bad("log_level", "%q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	if _, _, err := net.SplitHostPort(c.Mirror.Address); err != nil {
		return bad("mirror.address", "%q is not host:port", c.Mirror.Address)
	}
	if a := c.Metrics.Address; a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return bad("metrics.address", "%q is not host:port (empty disables the listener)", a)
		}
	}
	if c.Mirror.DefaultRegistry != "" {
		if err := ValidRegistryHost(c.Mirror.DefaultRegistry); err != nil {
			return bad("mirror.default_registry", "%v", err)
		}
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"mirror.read_header_timeout", c.Mirror.ReadTimeout},
		{"mirror.shutdown_timeout", c.Mirror.ShutdownTimeout},
		{"upstream.dial_timeout", c.Upstream.DialTimeout},
		{"upstream.response_header_timeout", c.Upstream.ResponseHeaderTimeout},
		{"upstream.stall_timeout", c.Upstream.StallTimeout},
		{"upstream.private_access_ttl", c.Upstream.PrivateAccessTTL},
		{"upstream.credential_helper_timeout", c.Upstream.CredentialHelperTimeout},
		{"upstream.credential_helper_ttl", c.Upstream.CredentialHelperTTL},
		{"content.shutdown_timeout", c.Content.ShutdownTimeout},
	} {
		if d.v <= 0 {
			return bad(d.key, "must be a positive duration such as \"5s\"")
		}
	}
	if c.Content.InfoFillWait < 0 {
		return bad("content.info_fill_wait", "must not be negative (0 turns it off)")
	}
	if c.Upstream.CredentialsReloadInterval < 0 {
		return bad("upstream.credentials_reload_interval", "must not be negative (0 disables the check)")
	}
	for _, list := range []struct {
		key  string
		pats []string
	}{
		{"upstream.allowed_registries", c.Upstream.AllowedRegistries},
		{"upstream.plain_http", c.Upstream.PlainHTTP},
		{"upstream.allow_private_networks", c.Upstream.AllowPrivateNetworks},
	} {
		for _, p := range list.pats {
			if p == "" {
				return bad(list.key, "empty pattern")
			}
			if _, err := path.Match(p, ""); err != nil {
				return bad(list.key, "pattern %q: %v", p, err)
			}
		}
	}
	for _, f := range []struct{ key, path string }{
		{"upstream.hosts_dir", c.Upstream.HostsDir},
		{"upstream.credentials_file", c.Upstream.CredentialsFile},
		{"upstream.docker_config", c.Upstream.DockerConfig},
	} {
		if f.path != "" && !path.IsAbs(f.path) {
			return bad(f.key, "%q is not an absolute path", f.path)
		}
	}
	if d := path.Clean(c.Upstream.HostsDir); d == "/etc/containerd/certs.d" {
		// containerd's hosts.toml files send containerd to this daemon; read by the daemon
		// they would send it to itself.
		return bad("upstream.hosts_dir", "%q is containerd's directory; the daemon needs its own", c.Upstream.HostsDir)
	}
	if err := c.Upstream.validateSlowUpstreams(bad); err != nil {
		return err
	}
	if err := c.Upstream.validateProxies(bad); err != nil {
		return err
	}
	if c.Store.MaxManifestSize <= 0 || c.Store.MaxManifestSize > 64<<20 {
		return bad("store.max_manifest_size", "%d is not between 1 and 67108864 bytes", c.Store.MaxManifestSize)
	}
	switch a := c.Content.Address; {
	case !path.IsAbs(a):
		return bad("content.address", "%q is not an absolute path", a)
	case len(a) > maxSocketPath:
		return bad("content.address", "%q is longer than %d bytes (unix socket addresses are limited)", a, maxSocketPath)
	case path.Clean(a) != a || strings.HasSuffix(a, "/"):
		return bad("content.address", "%q is not a clean path to a file", a)
	}
	if c.Diff.Enabled && !c.Content.Enabled {
		// The diff API is served on the content API's socket and gRPC server; containerd's
		// proxy diff plugin points at that socket.
		return bad("diff.enabled", "the diff API is served on the content socket: set content.enabled = true as well")
	}
	if a := c.Diff.ContainerdAddress; !path.IsAbs(a) || len(a) > 107 {
		return bad("diff.containerd_address", "%q is not an absolute path of at most 107 bytes (containerd's socket)", a)
	}
	if err := validDebugAddress(c.Debug.Address); err != nil {
		return bad("debug.address", "%v", err)
	}
	if g := c.Content.SocketGroup; g != "" && (strings.ContainsAny(g, " \t\n:/") || strings.HasPrefix(g, "-")) {
		return bad("content.socket_group", "%q is not a group name or numeric gid", g)
	}
	if err := c.validatePeer(bad); err != nil {
		return err
	}
	return c.validateCache(bad)
}

// MatchRegistry reports whether host matches one of the glob patterns (path.Match syntax,
// where "*" does not cross a "/"; a registry host has none).
func MatchRegistry(patterns []string, host string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, host); ok {
			return true
		}
	}
	return false
}

// Duration is a time.Duration written as a Go duration string ("5s", "1m30s") in TOML.
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as \"5s\"", string(text))
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

var anchoredDomain = regexp.MustCompile(`^` + reference.DomainRegexp.String() + `$`)

// ValidRegistryHost checks that host is a registry host with an optional port, as in an image
// reference ("registry-1.docker.io", "127.0.0.1:5000", "[::1]:5000"). Anything else — a path,
// a scheme, user info, spaces — is refused, so that it can be used safely to build a URL.
func ValidRegistryHost(host string) error {
	if host == "" || len(host) > 255 || !anchoredDomain.MatchString(host) {
		return fmt.Errorf("%q is not a registry host[:port]: %w", host, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Write encodes cfg as TOML.
func Write(w io.Writer, cfg Config) error {
	return toml.NewEncoder(w).Encode(cfg)
}

package config

import (
	"bytes"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

func TestDefaultTOMLMatchesDefault(t *testing.T) {
	cfg, err := Parse([]byte(DefaultTOML))
	if err != nil {
		t.Fatalf("default config does not parse: %v", err)
	}
	if !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf("DefaultTOML decodes to\n%+v\nwant Default()\n%+v", cfg, Default())
	}
	if err := Default().Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

// Every key the code knows must be written, with its comment, in the printed default.
func TestDefaultTOMLNamesEveryKey(t *testing.T) {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(Default()); err != nil {
		t.Fatal(err)
	}
	var encoded, printed map[string]any
	if _, err := toml.Decode(buf.String(), &encoded); err != nil {
		t.Fatal(err)
	}
	if _, err := toml.Decode(DefaultTOML, &printed); err != nil {
		t.Fatal(err)
	}
	if got, want := flatKeys("", printed), flatKeys("", encoded); !reflect.DeepEqual(got, want) {
		t.Fatalf("printed keys %v, code keys %v", got, want)
	}
	for _, key := range flatKeys("", encoded) {
		leaf := key[strings.LastIndex(key, ".")+1:]
		i := strings.Index(DefaultTOML, "\n"+leaf+" =")
		if i < 0 {
			i = strings.Index(DefaultTOML, "  "+leaf+" =")
		}
		if i < 0 {
			t.Fatalf("key %s not found", key)
		}
		before := strings.TrimRight(DefaultTOML[:i], " \n")
		if !strings.HasPrefix(strings.TrimSpace(before[strings.LastIndex(before, "\n")+1:]), "#") {
			t.Errorf("key %s has no comment above it", key)
		}
	}
}

func flatKeys(prefix string, m map[string]any) []string {
	var keys []string
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			keys = append(keys, flatKeys(prefix+k+".", sub)...)
			continue
		}
		keys = append(keys, prefix+k)
	}
	sort.Strings(keys)
	return keys
}

func TestParseOverrides(t *testing.T) {
	cfg, err := Parse([]byte(`
root = "/tmp/x"
[mirror]
address = "127.0.0.1:6000"
[upstream]
plain_http = ["127.0.0.1:5000"]
stall_timeout = "3s"
[store]
tag_freshness = "10s"
[content]
enabled = true
address = "/run/bc/c.sock"
socket_group = "containerd"
[diff]
enabled = true
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Root != "/tmp/x" || cfg.Mirror.Address != "127.0.0.1:6000" || cfg.Upstream.StallTimeout.D() != 3*time.Second ||
		cfg.Store.TagFreshness.D() != 10*time.Second || !reflect.DeepEqual(cfg.Upstream.PlainHTTP, []string{"127.0.0.1:5000"}) {
		t.Fatalf("overrides not applied: %+v", cfg)
	}
	if want := (ContentConfig{Enabled: true, Address: "/run/bc/c.sock", SocketGroup: "containerd", ShutdownTimeout: Default().Content.ShutdownTimeout, InfoFillWait: Default().Content.InfoFillWait}); cfg.Content != want {
		t.Fatalf("content = %+v, want %+v", cfg.Content, want)
	}
	if !cfg.Diff.Enabled {
		t.Fatal("diff.enabled = true not applied")
	}
	// Keys not in the file keep their defaults.
	if cfg.Upstream.DialTimeout != Default().Upstream.DialTimeout || cfg.LogLevel != "info" {
		t.Fatalf("defaults lost: %+v", cfg)
	}
}

func TestParseRefusesAndNamesTheKey(t *testing.T) {
	for _, tc := range []struct {
		name, toml, key string
	}{
		{"unknown top-level key", `rot = "/x"`, "rot"},
		{"unknown nested key", "[mirror]\nadress = \"127.0.0.1:1\"", "mirror.adress"},
		{"unknown table", "[mirrors]\naddress = \"x\"", "mirrors"},
		{"bad duration", "[upstream]\ndial_timeout = \"soon\"", "dial_timeout"},
		{"negative duration", "[store]\ntag_freshness = \"-1s\"", "store.tag_freshness"},
		{"bad address", "[mirror]\naddress = \"5055\"", "mirror.address"},
		{"bad log level", `log_level = "loud"`, "log_level"},
		{"bad default registry", "[mirror]\ndefault_registry = \"http://x/y\"", "mirror.default_registry"},
		{"bad glob", "[upstream]\nallowed_registries = [\"[\"]", "upstream.allowed_registries"},
		{"wrong type", "[upstream]\nplain_http = \"127.0.0.1\"", "plain_http"},
		{"empty root", `root = ""`, "root"},
		{"manifest size", "[store]\nmax_manifest_size = 0", "store.max_manifest_size"},
		{"relative content socket", "[content]\naddress = \"run/c.sock\"", "content.address"},
		{"content socket too long", "[content]\naddress = \"/" + strings.Repeat("a", 110) + "\"", "content.address"},
		{"content socket is a directory", "[content]\naddress = \"/run/x/\"", "content.address"},
		{"bad socket group", "[content]\nsocket_group = \"a b\"", "content.socket_group"},
		{"content shutdown timeout", "[content]\nshutdown_timeout = \"0s\"", "content.shutdown_timeout"},
		{"negative content info fill wait", "[content]\ninfo_fill_wait = \"-1s\"", "content.info_fill_wait"},
		{"content enabled not a bool", "[content]\nenabled = \"yes\"", "enabled"},
		{"diff without content", "[diff]\nenabled = true", "content.enabled"},
		{"relative containerd socket", "[diff]\ncontainerd_address = \"containerd.sock\"", "diff.containerd_address"},
		{"diff enabled not a bool", "[diff]\nenabled = 1", "enabled"},
		{"not toml", "root = ", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %v is not invalid argument", err)
			}
			if !strings.Contains(err.Error(), tc.key) {
				t.Errorf("error %q does not name %q", err, tc.key)
			}
		})
	}
}

func TestValidRegistryHost(t *testing.T) {
	for _, ok := range []string{"docker.io", "registry-1.docker.io", "127.0.0.1:5000", "localhost:5000", "[::1]:5000", "ghcr.io", "my-registry.example.com:443"} {
		if err := ValidRegistryHost(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "http://x", "a/b", "x y", "user@host", "host:port", "..", "a:1:2", "host/../x", strings.Repeat("a", 300)} {
		if err := ValidRegistryHost(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestMatchRegistry(t *testing.T) {
	pats := []string{"docker.io", "*.example.com", "127.0.0.1:*"}
	for host, want := range map[string]bool{
		"docker.io": true, "ghcr.io": false, "a.example.com": true, "example.com": false,
		"127.0.0.1:5000": true, "127.0.0.2:5000": false,
	} {
		if got := MatchRegistry(pats, host); got != want {
			t.Errorf("MatchRegistry(%q) = %v, want %v", host, got, want)
		}
	}
}

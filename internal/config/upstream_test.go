package config

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestUpstreamProxyKeys(t *testing.T) {
	cfg, err := Parse([]byte(`
[upstream]
proxy = "http://user:secret@proxy.example.com:3128"
registry_proxies = { "ghcr.io" = "socks5://127.0.0.1:1080", "*.corp" = "direct" }
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream.Proxy != "http://user:secret@proxy.example.com:3128" || cfg.Upstream.RegistryProxies["*.corp"] != "direct" {
		t.Fatalf("got %+v", cfg.Upstream)
	}
	for _, bad := range []string{
		`proxy = "proxy.example.com:3128"`,
		`proxy = "ftp://user:secret@proxy.example.com"`,
		`proxy = "http://user:secret@proxy.example.com/path"`,
		`registry_proxies = { "ghcr.io" = "" }`,
		`registry_proxies = { "[" = "direct" }`,
	} {
		_, err := Parse([]byte("[upstream]\n" + bad + "\n"))
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "upstream.") {
			t.Errorf("%s: err %v, want invalid argument naming the key", bad, err)
		}
		if strings.Contains(fmt.Sprint(err), "secret") {
			t.Errorf("%s: error shows the password: %v", bad, err)
		}
	}
}

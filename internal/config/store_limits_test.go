package config

import (
	"strings"
	"testing"
	"time"
)

func TestCacheKeys(t *testing.T) {
	cfg, err := Parse([]byte(`
[store]
max_size = "1.5GiB"
registry_tag_freshness = { "docker.io" = "10m", "*.io" = "1m" }
[admin]
address = "/tmp/a.sock"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store.MaxSize != Size(3<<29) {
		t.Errorf("max_size = %d", cfg.Store.MaxSize)
	}
	if got := cfg.Store.TagFreshnessFor("docker.io"); got != 10*time.Minute {
		t.Errorf("docker.io freshness %v", got)
	}
	if got := cfg.Store.TagFreshnessFor("ghcr.io"); got != time.Minute {
		t.Errorf("ghcr.io freshness %v", got)
	}
	if got := cfg.Store.TagFreshnessFor("quay.example"); got != cfg.Store.TagFreshness.D() {
		t.Errorf("default freshness %v", got)
	}
	if cfg, err := Parse([]byte("[store]\nmax_size = 1048576\n")); err != nil || cfg.Store.MaxSize != 1<<20 {
		t.Errorf("integer max_size: %v %v", cfg.Store.MaxSize, err)
	}
	for _, tc := range []struct{ toml, key string }{
		{"[store]\nmax_size = \"lots\"", "store.max_size"},
		{"[store]\nlow_watermark = 95", "store.low_watermark"},
		{"[store]\nhigh_watermark = 101", "store.high_watermark"},
		{"[store]\nmax_staleness = \"0s\"", "store.max_staleness"},
		{"[store]\nnegative_ttl = \"-1s\"", "store.negative_ttl"},
		{"[store]\nregistry_tag_freshness = { \"[\" = \"1m\" }", "store.registry_tag_freshness"},
		{"[admin]\naddress = \"admin.sock\"", "admin.address"},
	} {
		_, err := Parse([]byte(tc.toml))
		if err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: error %v does not name %s", tc.toml, err, tc.key)
		}
	}
}

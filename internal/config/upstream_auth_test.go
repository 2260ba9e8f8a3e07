package config

import (
	"strings"
	"testing"
)

func TestUpstreamAuthKeys(t *testing.T) {
	cfg, err := Parse([]byte(`[upstream]
hosts_dir = "/srv/blobcache/certs.d"
credentials_file = "/etc/containerd-blobcache/credentials.toml"
docker_config = "/root/.docker/config.json"
private_access_ttl = "30s"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream.HostsDir != "/srv/blobcache/certs.d" || cfg.Upstream.PrivateAccessTTL.D().Seconds() != 30 {
		t.Fatalf("parsed %+v", cfg.Upstream)
	}
	for body, key := range map[string]string{
		`hosts_dir = "/etc/containerd/certs.d"`:  "upstream.hosts_dir",
		`hosts_dir = "/etc/containerd/certs.d/"`: "upstream.hosts_dir",
		`hosts_dir = "relative/dir"`:             "upstream.hosts_dir",
		`credentials_file = "creds.toml"`:        "upstream.credentials_file",
		`docker_config = "config.json"`:          "upstream.docker_config",
		`private_access_ttl = "0s"`:              "upstream.private_access_ttl",
	} {
		_, err := Parse([]byte("[upstream]\n" + body + "\n"))
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: error %v does not name %s", body, err, key)
		}
	}
}

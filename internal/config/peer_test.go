package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestPeerConfigParses(t *testing.T) {
	cfg, err := Parse([]byte(`
[peer]
enabled = true
listen = "10.0.0.1:5057"
static_peers = ["10.0.0.1:5057", "10.0.0.2:5057"]
dns_name = "blobcache-peers.kube-system.svc.cluster.local"
dns_server = "127.0.0.1:5353"
key_file = "/etc/containerd-blobcache/peer.key"
connect_timeout = "100ms"
`))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Peer
	if !p.Enabled || p.AdvertiseAddress() != "10.0.0.1:5057" || p.ConnectTimeout.D() != 100*time.Millisecond ||
		!reflect.DeepEqual(p.StaticPeers, []string{"10.0.0.1:5057", "10.0.0.2:5057"}) || p.DNSPort != 5057 || p.StallTimeout.D() != 2*time.Second {
		t.Fatalf("peer config %+v", p)
	}
}

func TestPeerConfigRefusesAndNamesTheKey(t *testing.T) {
	const base = "[peer]\nenabled = true\nkey_file = \"/k\"\nstatic_peers = [\"10.0.0.2:5057\"]\n"
	for _, tc := range []struct {
		name, toml, key, says string
	}{
		{"no listen", base, "peer.listen", "required"},
		{"no authentication", "[peer]\nenabled = true\nlisten = \"10.0.0.1:5057\"\nstatic_peers = [\"10.0.0.2:5057\"]", "peer.key_file", "authenticated"},
		{"no peers", "[peer]\nenabled = true\nlisten = \"10.0.0.1:5057\"\nkey_file = \"/k\"", "peer.static_peers", "dns_name"},
		{"loopback listen, remote peer", base + "listen = \"127.0.0.1:5057\"", "peer.listen", "loopback"},
		{"wildcard listen without advertise", base + "listen = \"0.0.0.0:5057\"", "peer.advertise", "wildcard"},
		{"bad peer", "[peer]\nstatic_peers = [\"10.0.0.2\"]", "peer.static_peers", "host:port"},
		{"partial TLS", base + "listen = \"10.0.0.1:5057\"\ntls_cert_file = \"/c\"", "peer.tls_cert_file", "together"},
		{"relative key", "[peer]\nkey_file = \"k\"", "peer.key_file", "absolute"},
		{"zero connect timeout", "[peer]\nconnect_timeout = \"0s\"", "peer.connect_timeout", "positive"},
		{"bad dns port", "[peer]\ndns_port = 70000", "peer.dns_port", "port"},
		{"bad dns server", "[peer]\ndns_server = \"10.0.0.53\"", "peer.dns_server", "host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml))
			if err == nil || !strings.Contains(err.Error(), tc.key) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("error %v, want one naming %s and saying %q", err, tc.key, tc.says)
			}
		})
	}
	// Loopback peers with a loopback listener (tests, one host) are fine, and so is TLS alone.
	if _, err := Parse([]byte("[peer]\nenabled = true\nlisten = \"127.0.0.1:5057\"\nstatic_peers = [\"127.0.0.1:5058\"]\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\ntls_ca_file = \"/ca\"")); err != nil {
		t.Fatal(err)
	}
}

package config

import (
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
	"time"
)

// PeerConfig configures the cluster tier: nodes fetch blobs from each other on a listener of
// their own (plugin/peer), authenticated with a shared key, mutual TLS, or both.
type PeerConfig struct {
	Enabled bool `toml:"enabled"`
	// Listen is host:port on the node's address.
	Listen string `toml:"listen"`
	// Advertise is this node's address as the peer lists name it; empty: Listen.
	Advertise   string   `toml:"advertise"`
	StaticPeers []string `toml:"static_peers"`
	// DNSName is resolved every DNSInterval; each A/AAAA record with DNSPort is a peer.
	DNSName     string   `toml:"dns_name"`
	DNSPort     int      `toml:"dns_port"`
	DNSInterval Duration `toml:"dns_interval"`
	// DNSServer is "host:port" of the one server to ask; empty: the system resolver.
	DNSServer      string   `toml:"dns_server"`
	KeyFile        string   `toml:"key_file"`
	TLSCertFile    string   `toml:"tls_cert_file"`
	TLSKeyFile     string   `toml:"tls_key_file"`
	TLSCAFile      string   `toml:"tls_ca_file"`
	ConnectTimeout Duration `toml:"connect_timeout"`
	StallTimeout   Duration `toml:"stall_timeout"`
	DownFor        Duration `toml:"down_for"`
}

// DefaultPeerPort is the peer listener's port unless configured otherwise.
const DefaultPeerPort = 5057

func defaultPeer() PeerConfig {
	return PeerConfig{
		StaticPeers: []string{},
		DNSPort:     DefaultPeerPort,
		DNSInterval: Duration(10 * time.Second),
		// A peer on the same network connects in a millisecond; a quarter second is already
		// a peer that is not there, and every millisecond of it delays the registry.
		ConnectTimeout: Duration(250 * time.Millisecond),
		StallTimeout:   Duration(2 * time.Second),
		DownFor:        Duration(30 * time.Second),
	}
}

// TLS reports whether mutual TLS is configured.
func (p PeerConfig) TLS() bool { return p.TLSCertFile != "" }

// AdvertiseAddress is this node's address in the peer lists.
func (p PeerConfig) AdvertiseAddress() string {
	if p.Advertise != "" {
		return p.Advertise
	}
	return p.Listen
}

func (c Config) validatePeer(bad func(key, format string, args ...any) error) error {
	p := c.Peer
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"peer.dns_interval", p.DNSInterval},
		{"peer.connect_timeout", p.ConnectTimeout},
		{"peer.stall_timeout", p.StallTimeout},
		{"peer.down_for", p.DownFor},
	} {
		if d.v <= 0 {
			return bad(d.key, "must be a positive duration such as \"5s\"")
		}
	}
	if p.DNSPort <= 0 || p.DNSPort > 65535 {
		return bad("peer.dns_port", "%d is not a port", p.DNSPort)
	}
	for _, f := range []struct{ key, path string }{
		{"peer.key_file", p.KeyFile},
		{"peer.tls_cert_file", p.TLSCertFile},
		{"peer.tls_key_file", p.TLSKeyFile},
		{"peer.tls_ca_file", p.TLSCAFile},
	} {
		if f.path != "" && !path.IsAbs(f.path) {
			return bad(f.key, "%q is not an absolute path", f.path)
		}
	}
	tlsSet := 0
	for _, f := range []string{p.TLSCertFile, p.TLSKeyFile, p.TLSCAFile} {
		if f != "" {
			tlsSet++
		}
	}
	if tlsSet != 0 && tlsSet != 3 {
		return bad("peer.tls_cert_file", "mutual TLS needs tls_cert_file, tls_key_file and tls_ca_file together")
	}
	for i, a := range p.StaticPeers {
		if err := validPeerAddress(a); err != nil {
			return bad("peer.static_peers", "entry %d: %v", i, err)
		}
	}
	if p.Advertise != "" {
		if err := validPeerAddress(p.Advertise); err != nil {
			return bad("peer.advertise", "%v", err)
		}
	}
	if p.DNSServer != "" {
		if _, _, err := net.SplitHostPort(p.DNSServer); err != nil {
			return bad("peer.dns_server", "%q is not host:port (empty: the system resolver)", p.DNSServer)
		}
	}
	if p.DNSName != "" && (strings.ContainsAny(p.DNSName, " /:") || len(p.DNSName) > 253) {
		return bad("peer.dns_name", "%q is not a DNS name", p.DNSName)
	}
	if !p.Enabled {
		return nil
	}
	if p.Listen == "" {
		return bad("peer.listen", "required when peer.enabled is true (host:port on the node's address)")
	}
	host, _, err := net.SplitHostPort(p.Listen)
	if err != nil {
		return bad("peer.listen", "%q is not host:port", p.Listen)
	}
	if p.KeyFile == "" && !p.TLS() {
		return bad("peer.key_file", "the peer listener needs key_file or tls_cert_file/tls_key_file/tls_ca_file (or both): it answers only authenticated peers")
	}
	if len(p.StaticPeers) == 0 && p.DNSName == "" {
		return bad("peer.static_peers", "peer.enabled needs static_peers or dns_name")
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		for _, a := range p.StaticPeers {
			h, _, _ := net.SplitHostPort(a)
			if pip := net.ParseIP(h); pip == nil || !pip.IsLoopback() {
				return bad("peer.listen", "%q is loopback but peer %q is not: other nodes could not reach this one", p.Listen, a)
			}
		}
	}
	if p.Advertise == "" && (host == "" || host == "0.0.0.0" || host == "::") {
		return bad("peer.advertise", "required when peer.listen (%q) is a wildcard: the node must find itself in the peer list", p.Listen)
	}
	return nil
}

// validPeerAddress checks a peer's host:port.
func validPeerAddress(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return fmt.Errorf("%q is not host:port", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("%q has no valid port", a)
	}
	return nil
}

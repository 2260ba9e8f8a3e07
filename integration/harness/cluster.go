package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The cluster tier's test bed: nodes in namespaces on one switch, each running the daemon
// (and, on some, containerd pointed at it), and a registry in a namespace of its own behind
// a counting proxy on the registry's address and, optionally, a rate-limited link.

// RegistryHostNum is the registry namespace's host number on the switch; node i (from 0) is
// NodeHostNum+i.
const (
	RegistryHostNum = 9
	NodeHostNum     = 11
	// PeerPort is the peer listener's port on every node (the tier's default dns_port).
	PeerPort = 5057
	// ClusterDNSName is the name dnsmasq answers with the peers' addresses.
	ClusterDNSName = "peers.cluster.test"
)

// ClusterOptions configures StartCluster.
type ClusterOptions struct {
	// Nodes is how many nodes (default 4); Containerd lists the nodes (from 0) that also run
	// containerd.
	Nodes      int
	Containerd []int
	// RegistryRate shapes the registry's link ("400mbit"); empty leaves it unshaped.
	RegistryRate string
	// Tier switches the cluster tier on; DNS makes membership come from dnsmasq (records
	// for the first Members nodes, default all) instead of a static list of every node.
	Tier    bool
	DNS     bool
	Members int
	// PeerExtra is written inside each node's [peer] table (connect_timeout, ...).
	PeerExtra string
	// DaemonBin is the daemon binary ("" : the race build); DaemonConfig, when set, edits a
	// node's configuration before it starts.
	DaemonBin    string
	DaemonConfig func(node int, cfg *DaemonConfig)
	// RegistryAuth, when set, starts a token-authenticated registry instead of an open one.
	RegistryAuth bool
}

// Cluster is a running test bed.
type Cluster struct {
	Switch *Switch
	RegNS  *Netns
	// Registry is on the registry namespace's loopback; Proxy counts every request on
	// RegistryHost ("10.213.0.9:5000"), the registry of the image references.
	Registry     *Registry
	Proxy        *CountingProxy
	RegistryHost string
	DNS          *DNSServer
	// KeyFile is the shared peer key every node is configured with.
	KeyFile string
	Nodes   []*ClusterNode

	opts ClusterOptions
}

// ClusterNode is one node: its namespace, daemon, and containerd (nil on nodes without).
type ClusterNode struct {
	Index      int
	NS         *Netns
	Daemon     *Daemon
	Containerd *Containerd
	// HostsDir holds hosts.toml for the registry: the node's own mirror first.
	HostsDir string
	// PeerAddr is the node's peer listener, "10.213.0.1x:5057".
	PeerAddr string
}

// StartCluster creates the namespaces, the registry with its counting proxy, dnsmasq (with
// DNS) and the nodes, and waits until each is ready.
func StartCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 4
	}
	if opts.Members == 0 {
		opts.Members = opts.Nodes
	}
	c := &Cluster{Switch: NewSwitch(t), opts: opts}
	c.RegNS = c.Switch.AddHost(t, "reg", RegistryHostNum)
	c.Registry = c.RegNS.StartRegistry(t)
	c.RegistryHost = net.JoinHostPort(c.RegNS.Addr, "5000")
	c.Proxy = c.RegNS.StartCountingProxy(t, c.RegistryHost, c.Registry.URL)
	if opts.RegistryRate != "" {
		c.RegNS.RateLimit(t, opts.RegistryRate)
	}
	c.KeyFile = WritePeerKey(t)
	if opts.DNS {
		c.DNS = c.Switch.NS.StartDNS(t, c.Switch.Addr)
		var ips []string
		for i := 0; i < opts.Members; i++ {
			ips = append(ips, NodeAddr(i))
		}
		c.DNS.SetRecords(t, ClusterDNSName, ips...)
	}
	for i := 0; i < opts.Nodes; i++ {
		c.Nodes = append(c.Nodes, c.startNode(t, i))
	}
	return c
}

// WritePeerKey writes a new peer key file: 32 random bytes as 64 hex digits and a newline,
// as `openssl rand -hex 32` makes one (the daemon trims surrounding whitespace, so raw random
// bytes could come out shorter than 32).
func WritePeerKey(t testing.TB) string {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "peer.key")
	if err := os.WriteFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// NodeAddr is node i's address on the switch.
func NodeAddr(i int) string { return SubnetPrefix + strconv.Itoa(NodeHostNum+i) }

// PeerConfig is the [peer] table of node i: the tier on, listening on the node's address,
// with the cluster's key and membership ("" with the tier off: the default).
func (c *Cluster) PeerConfig(i int, keyFile string) string {
	if !c.opts.Tier {
		return ""
	}
	var b strings.Builder
	b.WriteString("[peer]\nenabled = true\n")
	fmt.Fprintf(&b, "listen = %s\n", tomlString(net.JoinHostPort(NodeAddr(i), strconv.Itoa(PeerPort))))
	fmt.Fprintf(&b, "key_file = %s\n", tomlString(keyFile))
	if c.opts.DNS {
		fmt.Fprintf(&b, "dns_name = %s\ndns_port = %d\ndns_server = %s\n", tomlString(ClusterDNSName), PeerPort, tomlString(c.DNS.Addr))
	} else {
		fmt.Fprintf(&b, "static_peers = %s\n", tomlStrings(PeerAddrs(c.opts.Nodes)))
	}
	if c.opts.PeerExtra != "" {
		b.WriteString(c.opts.PeerExtra + "\n")
	}
	return b.String()
}

func (c *Cluster) startNode(t testing.TB, i int) *ClusterNode {
	t.Helper()
	n := &ClusterNode{Index: i, PeerAddr: net.JoinHostPort(NodeAddr(i), strconv.Itoa(PeerPort))}
	n.NS = c.Switch.AddHost(t, "n"+strconv.Itoa(i), NodeHostNum+i)
	cfg := DaemonConfig{
		// Any port: the namespace's loopback is the node's own.
		Address:    "127.0.0.1:5000",
		Registries: []string{c.RegistryHost},
		Extra:      c.PeerConfig(i, c.KeyFile),
	}
	if c.opts.DaemonConfig != nil {
		c.opts.DaemonConfig(i, &cfg)
	}
	n.Daemon = n.NS.StartDaemon(t, c.opts.DaemonBin, cfg)
	n.HostsDir = t.TempDir()
	if _, err := WriteHostsToml(n.HostsDir, c.RegistryHost, n.Daemon.URL); err != nil {
		t.Fatal(err)
	}
	for _, j := range c.opts.Containerd {
		if j == i {
			n.Containerd = StartContainerd(t, ContainerdOptions{HostsDir: n.HostsDir, NS: n.NS})
		}
	}
	return n
}

// PushImage builds spec and pushes it (Push) as repo:tag.
func (c *Cluster) PushImage(t testing.TB, repo, tag string, spec ImageSpec) (*Image, string) {
	t.Helper()
	im := BuildImage(t, spec)
	return im, c.Push(t, repo, tag, im)
}

// Push pushes a built image to the registry (straight, not through the counting proxy) as
// repo:tag and returns its reference at RegistryHost.
func (c *Cluster) Push(t testing.TB, repo, tag string, im *Image) string {
	t.Helper()
	p := NewPusher(c.Registry.URL)
	p.Client = c.Registry.Client
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := p.PushImage(ctx, repo, tag, im); err != nil {
		t.Fatalf("push %s:%s: %v", repo, tag, err)
	}
	return Ref(c.RegistryHost, repo, tag)
}

// PeerAddrs are the peer listeners of nodes 0..n-1, as the placement names them.
func PeerAddrs(n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, net.JoinHostPort(NodeAddr(i), strconv.Itoa(PeerPort)))
	}
	return out
}

// MembersRecords sets the DNS records of the cluster name to the given nodes' addresses.
func (c *Cluster) MembersRecords(t testing.TB, nodes ...int) {
	t.Helper()
	var ips []string
	for _, i := range nodes {
		ips = append(ips, NodeAddr(i))
	}
	c.DNS.SetRecords(t, ClusterDNSName, ips...)
}

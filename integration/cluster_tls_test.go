package integration

import (
	"context"
	"crypto/tls"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// TestClusterMutualTLS: the peers authenticate with mutual TLS instead of a shared key, across
// namespaces. Nodes 0-2 hold certificates of one CA, node 3 one of another CA (it trusts only
// that one). Node 0's pull gets the blobs that nodes 1 and 2 own from them over TLS (the
// registry serves those blobs to their owners only); a client without a certificate is
// refused by a peer listener; node 3, whose certificate nobody trusts and who trusts nobody,
// is served nothing by a peer and fetches every blob from the registry itself.
func TestClusterMutualTLS(t *testing.T) {
	cluster := harness.NewTestCA(t, "cluster peers")
	stranger := harness.NewTestCA(t, "another cluster")
	c := harness.StartCluster(t, harness.ClusterOptions{Tier: true, Containerd: []int{0, 3}, DaemonConfig: func(i int, cfg *harness.DaemonConfig) {
		ca := cluster
		if i == 3 {
			ca = stranger
		}
		cert, key := ca.IssuePeer(t, "node"+strconv.Itoa(i), harness.NodeAddr(i))
		tlsFiles := "tls_cert_file = " + strconv.Quote(cert) + "\ntls_key_file = " + strconv.Quote(key) + "\ntls_ca_file = " + strconv.Quote(ca.CertFile)
		cfg.Extra = keyFileLine.ReplaceAllLiteralString(cfg.Extra, tlsFiles)
	}})
	im, ref := c.PushImage(t, "cluster/tls", "v1", clusterImage(900))
	var viaPeer int
	for _, b := range im.Blobs() {
		if o := ownerOf(allNodes(c), b.Digest); o == 1 || o == 2 {
			viaPeer++
		}
	}
	if viaPeer == 0 {
		t.Fatal("no blob is owned by node 1 or 2: the test would show nothing; change the image's seed")
	}

	c.Proxy.Reset()
	waitPulls(t, "tls_node0", pullAt(c, []int{0}, ref, "tls"))
	if t.Failed() {
		t.FailNow()
	}
	n0 := c.Nodes[0].NS.Addr
	for _, b := range im.Blobs() {
		owner := ownerOf(allNodes(c), b.Digest)
		gets := registryGETsFrom(c, b.Digest)
		switch owner {
		case 1, 2:
			// Over mutual TLS from its owner, which fetched it from the registry.
			if len(gets) != 1 || gets[c.Nodes[owner].NS.Addr] != 1 {
				t.Errorf("blob %s owned by node %d: registry GETs %v, want one from its owner only", b.Digest, owner, gets)
			}
		default:
			// Node 0's own, or node 3's, which node 0 cannot reach: from the registry by node 0.
			if gets[n0] != 1 {
				t.Errorf("blob %s owned by node %d: registry GETs %v, want one from node 0 (%s)", b.Digest, owner, gets, n0)
			}
		}
		if !keepsBlob(c.Nodes[0].Daemon, b.Digest, b.Size) {
			t.Errorf("node 0 does not hold %s", b.Digest)
		}
	}

	// From node 3's namespace: a client trusting the cluster's CA but with no certificate of
	// its own gets no answer from node 1's peer listener, nor with the stranger's certificate.
	b0 := im.Blobs()[0]
	u := peerBlobURL(c, "https", 1, "cluster/tls", b0.Digest)
	strangerCert, strangerKey := stranger.IssuePeer(t, "intruder", harness.NodeAddr(3))
	pair, err := tls.LoadX509KeyPair(strangerCert, strangerKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, cert := range map[string]*tls.Certificate{"no certificate": {}, "another CA's certificate": &pair} {
		client := c.Nodes[3].NS.HTTPClient(30 * time.Second)
		client.Transport.(*http.Transport).TLSClientConfig = &tls.Config{
			RootCAs: cluster.Pool(), MinVersion: tls.VersionTLS13,
			// Sent whatever CAs the listener names, so that it is the listener that refuses.
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		resp, err := client.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			t.Errorf("peer request with %s: %s, want the TLS handshake refused", name, resp.Status)
		} else {
			t.Logf("peer request with %s refused: %v", name, err)
		}
	}

	c.Proxy.Reset()
	waitPulls(t, "tls_stranger", pullAt(c, []int{3}, ref, "tls"))
	requireAllFromRegistry(t, c, im, 3)
}

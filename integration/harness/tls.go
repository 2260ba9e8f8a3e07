package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestCA is a private certificate authority made by a test, with its certificate in a PEM
// file (for hosts.toml `ca`).
type TestCA struct {
	CertFile string
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	dir      string
	serial   int64
}

// NewTestCA makes a CA valid for a day around now.
func NewTestCA(t testing.TB, name string) *TestCA {
	t.Helper()
	der, cert, key := newSelfSigned(t, name)
	ca := &TestCA{cert: cert, key: key, dir: t.TempDir(), serial: 1}
	ca.CertFile = filepath.Join(ca.dir, "ca.pem")
	writePEM(t, ca.CertFile, "CERTIFICATE", der)
	return ca
}

// newSelfSigned makes a self-signed CA certificate (DER and parsed) and its key: a test CA,
// or a token issuer whose key signs tokens.
func newSelfSigned(t testing.TB, cn string) ([]byte, *x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return der, cert, key
}

// Issue makes a certificate signed by the CA: a server certificate for names (DNS names or
// IP addresses) or, with client set, a client certificate. It returns the PEM files.
func (ca *TestCA) Issue(t testing.TB, cn string, client bool, names ...string) (certFile, keyFile string) {
	t.Helper()
	usage := x509.ExtKeyUsageServerAuth
	if client {
		usage = x509.ExtKeyUsageClientAuth
	}
	return ca.issue(t, cn, []x509.ExtKeyUsage{usage}, names)
}

// IssuePeer makes a certificate for both ends of a connection, as a cluster node's peer
// certificate is (peer.tls_cert_file: its listener's and its client's), for names.
func (ca *TestCA) IssuePeer(t testing.TB, cn string, names ...string) (certFile, keyFile string) {
	t.Helper()
	return ca.issue(t, cn, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, names)
}

func (ca *TestCA) issue(t testing.TB, cn string, usages []x509.ExtKeyUsage, names []string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usages,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(ca.dir, fmt.Sprintf("%s-%d", cn, ca.serial))
	certFile, keyFile = base+".pem", base+"-key.pem"
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile
}

// Pool is a certificate pool holding only the CA.
func (ca *TestCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TLSRegistryOptions configure StartTLSRegistry.
type TLSRegistryOptions struct {
	// CA signs the server certificate (for 127.0.0.1 and TestRegistryName).
	CA *TestCA
	// ClientCA, when set, makes the registry demand a client certificate signed by it.
	ClientCA *TestCA
	// StorageOf, when set, serves the storage of that (plain HTTP) registry: images pushed
	// there are served here too, so a test pushes over plain HTTP.
	StorageOf *Registry
}

// StartTLSRegistry starts a distribution registry serving https on 127.0.0.1.
func StartTLSRegistry(t testing.TB, opts TLSRegistryOptions) *Registry {
	t.Helper()
	cert, key := opts.CA.Issue(t, "registry", false, "127.0.0.1", TestRegistryName)
	tlsYAML := fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", cert, key)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: opts.CA.Pool()}}}
	if opts.ClientCA != nil {
		tlsYAML += fmt.Sprintf("    clientcas:\n      - %s\n", opts.ClientCA.CertFile)
		ccert, ckey := opts.ClientCA.Issue(t, "readiness", true)
		pair, err := tls.LoadX509KeyPair(ccert, ckey)
		if err != nil {
			t.Fatal(err)
		}
		client.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{pair}
	}
	storage := ""
	if opts.StorageOf != nil {
		storage = filepath.Join(opts.StorageOf.Dir, "storage")
	}
	return startRegistryWith(t, registrySetup{httpYAML: tlsYAML, scheme: "https", storage: storage, client: client})
}

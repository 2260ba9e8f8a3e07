package resolver

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
)

// explainTLS adds to a TLS failure what to change in the daemon's hosts.toml for that
// registry: the bare x509 or alert text names neither the file nor the key.
func explainTLS(err error, hostsDir, registry string) error {
	file := "hosts.toml"
	if hostsDir != "" {
		file = hostsDir + "/" + registry + "/hosts.toml"
	}
	var (
		verr    *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		nameErr x509.HostnameError
		invalid x509.CertificateInvalidError
		operr   *net.OpError
	)
	switch {
	case errors.As(err, &verr) || errors.As(err, &unknown) || errors.As(err, &nameErr) || errors.As(err, &invalid):
		return fmt.Errorf("%w (TLS: the registry's certificate is not trusted: name its CA with `ca` in %s, or `skip_verify = true`)", err, file)
	case errors.As(err, &operr) && operr.Op == "remote error" && isClientCertAlert(operr.Err):
		return fmt.Errorf("%w (TLS: the registry wants a client certificate: `client = [[\"cert.pem\", \"key.pem\"]]` in %s)", err, file)
	}
	return err
}

// isClientCertAlert recognises the alerts a server sends when it refuses the client's
// certificate (or the lack of one); crypto/tls does not export its alert type.
func isClientCertAlert(err error) bool {
	msg := err.Error()
	for _, s := range []string{"certificate required", "bad certificate", "unknown certificate authority", "certificate unknown"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

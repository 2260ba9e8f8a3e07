package test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	corev1 "k8s.io/api/core/v1"
)

// peerConfig is the [peer] part of `containerd-blobcache config check` output.
type peerConfig struct {
	Enabled     bool   `toml:"enabled"`
	Listen      string `toml:"listen"`
	DNSName     string `toml:"dns_name"`
	DNSPort     int    `toml:"dns_port"`
	KeyFile     string `toml:"key_file"`
	TLSCertFile string `toml:"tls_cert_file"`
	TLSKeyFile  string `toml:"tls_key_file"`
	TLSCAFile   string `toml:"tls_ca_file"`
	// ConnectTimeout stands for the keys peer.extraConfig may set.
	ConnectTimeout string `toml:"connect_timeout"`
}

// peerListen is the serve command's --peer-listen value, or "".
func peerListen(c corev1.Container) string {
	for _, a := range c.Command {
		if v, ok := strings.CutPrefix(a, "--peer-listen="); ok {
			return v
		}
	}
	return ""
}

// checkPeerTier checks the rendered cluster tier against the daemon's binary: serve's
// --peer-listen on the node's address (status.hostIP) makes the ConfigMap's effective
// configuration (checkOut, config check's output) a valid enabled tier; the port is opened
// on the host and is the one the peers are dialled on; a headless Service over the pods whose
// name and namespace form the configured dns_name; the key and TLS Secrets mounted where the
// configuration points. Without --peer-listen nothing of the tier may be rendered.
func checkPeerTier(t *testing.T, r *rendered, cfg peerConfig, checkOut string) {
	t.Helper()
	pod := r.ds.Spec.Template.Spec
	serve := container(t, pod.Containers, "blobcache")
	listen := peerListen(serve)
	if listen == "" {
		if cfg.DNSName != "" || cfg.KeyFile != "" || cfg.TLSCertFile != "" {
			t.Errorf("[peer] %+v configured without serve --peer-listen", cfg)
		}
		for _, p := range serve.Ports {
			if p.Name == "peer" || p.ContainerPort == int32(cfg.DNSPort) {
				t.Errorf("peer port %+v opened without the tier", p)
			}
		}
		for name := range r.services {
			if strings.HasSuffix(name, "-peers") {
				t.Errorf("Service %s rendered without the tier", name)
			}
		}
		for _, v := range pod.Volumes {
			if strings.HasPrefix(v.Name, "peer-") {
				t.Errorf("volume %s without the tier", v.Name)
			}
		}
		if len(serve.Env) != 0 {
			t.Errorf("env %+v without the tier", serve.Env)
		}
		return
	}

	host, port, ok := strings.Cut(listen, ":")
	envVar, isVar := strings.CutPrefix(host, "$(")
	envVar, closed := strings.CutSuffix(envVar, ")")
	hostIP := false
	for _, e := range serve.Env {
		hostIP = hostIP || (e.Name == envVar && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.hostIP")
	}
	if !ok || !isVar || !closed || !hostIP {
		t.Errorf("--peer-listen=%s: want $(VAR):port with VAR from status.hostIP (env %+v)", listen, serve.Env)
	}

	// What serve does with --peer-listen (peer.enabled and peer.listen set over the
	// ConfigMap's configuration), checked by the binary: the tier's configuration is complete.
	var eff map[string]any
	if _, err := toml.Decode(checkOut, &eff); err != nil {
		t.Fatalf("config check output: %v", err)
	}
	peerTable, _ := eff["peer"].(map[string]any)
	if peerTable == nil {
		t.Fatalf("config check output has no [peer]:\n%s", checkOut)
	}
	peerTable["enabled"], peerTable["listen"] = true, "10.0.0.1:"+port
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(eff); err != nil {
		t.Fatal(err)
	}
	withFlag := filepath.Join(t.TempDir(), "with-peer-listen.toml")
	if err := os.WriteFile(withFlag, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := runBinary(t, "config", "check", "--config", withFlag); code != 0 {
		t.Errorf("the ConfigMap with --peer-listen=10.0.0.1:%s: config check exit %d\n%s", port, code, out)
	}

	// The peers dial dns_port on each address: the port this node listens on, opened on it.
	if itoa(int32(cfg.DNSPort)) != port {
		t.Errorf("peer.dns_port %d, --peer-listen port %s", cfg.DNSPort, port)
	}
	opened := false
	for _, p := range serve.Ports {
		opened = opened || (itoa(p.ContainerPort) == port && itoa(p.HostPort) == port && p.Protocol == corev1.ProtocolTCP)
	}
	if !opened {
		t.Errorf("peer port %s is not a host port of the daemon: %+v", port, serve.Ports)
	}

	// dns_name resolves to the pods through the headless Service of the release's namespace.
	domain, _ := r.values["clusterDomain"].(string)
	var svc *corev1.Service
	for _, s := range r.services {
		if s.Name+"."+s.Namespace+".svc."+domain == cfg.DNSName {
			svc = s
		}
	}
	if svc == nil {
		t.Fatalf("peer.dns_name %q is no rendered Service's name.namespace.svc.%s (%v)", cfg.DNSName, domain, r.manifests)
	}
	if svc.Namespace != r.ds.Namespace {
		t.Errorf("Service in namespace %s, the DaemonSet in %s", svc.Namespace, r.ds.Namespace)
	}
	if svc.Spec.ClusterIP != "None" || len(svc.Spec.Ports) != 1 || itoa(svc.Spec.Ports[0].Port) != port || svc.Spec.Ports[0].TargetPort.String() != port {
		t.Errorf("Service %s: clusterIP %q, ports %+v; want headless on %s", svc.Name, svc.Spec.ClusterIP, svc.Spec.Ports, port)
	}
	if len(svc.Spec.Selector) == 0 {
		t.Errorf("Service %s selects nothing", svc.Name)
	}
	for k, v := range svc.Spec.Selector {
		if r.ds.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the pods", k, v)
		}
	}

	// The credentials of the tier: each file in the Secret the values name, under its key.
	peerValues, _ := r.values["peer"].(map[string]any)
	tlsValues, _ := peerValues["tls"].(map[string]any)
	if cfg.KeyFile == "" && cfg.TLSCertFile == "" {
		t.Error("the tier has neither key_file nor TLS")
	}
	for file, want := range map[string]struct{ secret, key any }{
		cfg.KeyFile:     {peerValues["keySecretName"], peerValues["keySecretKey"]},
		cfg.TLSCertFile: {tlsValues["secretName"], "tls.crt"},
		cfg.TLSKeyFile:  {tlsValues["secretName"], "tls.key"},
		cfg.TLSCAFile:   {tlsValues["secretName"], "ca.crt"},
	} {
		if file == "" {
			continue
		}
		if secret := secretMountedAt(pod, serve, filepath.Dir(file)); secret != want.secret || filepath.Base(file) != want.key {
			t.Errorf("%s: Secret %q mounted at its directory, want key %v of Secret %v", file, secret, want.key, want.secret)
		}
	}
}

// secretMountedAt is the name of the Secret container c mounts at dir, or "".
func secretMountedAt(pod corev1.PodSpec, c corev1.Container, dir string) string {
	for _, m := range c.VolumeMounts {
		if m.MountPath != dir {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.Secret != nil {
				return v.Secret.SecretName
			}
		}
	}
	return ""
}

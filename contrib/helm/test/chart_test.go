package test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/plugin/diff"
)

// The chart's defaults, installed under the manifest's names, render today's DaemonSet
// (contrib/kubernetes/daemonset.yaml), cluster tier included.
func TestChartDefaultsRenderTheDaemonSet(t *testing.T) {
	r, err := renderRelease(t, manifestRelease, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := checkAgainstBinary(t, r)
	if len(cfg.Upstream.AllowedRegistries) != 1 || cfg.Upstream.AllowedRegistries[0] != "*" || cfg.Content.Enabled || cfg.Diff.Enabled {
		t.Errorf("defaults: %+v", cfg)
	}
	if r.monitor != nil || r.services["containerd-blobcache-metrics"] != nil {
		t.Errorf("metrics Service or ServiceMonitor rendered without metrics.serviceMonitor.enabled: %v", r.manifests)
	}
	if cfg.Peer.DNSName != "containerd-blobcache-peers.containerd-blobcache.svc.cluster.local" || cfg.Peer.KeyFile == "" {
		t.Errorf("defaults: [peer] %+v", cfg.Peer)
	}
	compareWithManifest(t, r, "daemonset.yaml")
}

// mode: proxy renders contrib/kubernetes/daemonset-proxy.yaml: the content and diff APIs on,
// install --mode=proxy writing both proxy plugins and the differ, and the daemon with exactly
// the capabilities the diff API needs.
func TestChartProxyModeRendersTheProxyDaemonSet(t *testing.T) {
	r, err := renderRelease(t, manifestRelease, map[string]any{"mode": "proxy"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, installOut := checkAgainstBinary(t, r)
	if !cfg.Content.Enabled || !cfg.Diff.Enabled {
		t.Errorf("config.toml: content %v, diff %v; proxy mode needs both", cfg.Content.Enabled, cfg.Diff.Enabled)
	}
	pod := r.ds.Spec.Template.Spec
	init := container(t, pod.InitContainers, "install").Command
	for _, want := range []string{"--mode=proxy", "--fix"} {
		if !slices.Contains(init, want) {
			t.Errorf("init command %v lacks %s", init, want)
		}
	}
	for _, want := range []string{"+[proxy_plugins.blobcache]", "+[proxy_plugins.blobcache-diff]", `differ = "blobcache-diff"`} {
		if !strings.Contains(installOut, want) {
			t.Errorf("install dry run lacks %q:\n%s", want, installOut)
		}
	}

	sc := container(t, pod.Containers, "blobcache").SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("the daemon has no capabilities set")
	}
	var want, got []string
	for _, name := range diff.RequiredCapabilities() {
		want = append(want, strings.TrimPrefix(name, "CAP_"))
	}
	for _, c := range sc.Capabilities.Add {
		got = append(got, string(c))
	}
	if slices.Sort(want); !slices.Equal(slices.Sorted(slices.Values(got)), want) {
		t.Errorf("the daemon adds capabilities %v, the diff API needs %v", got, want)
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || (sc.Privileged != nil && *sc.Privileged) {
		t.Errorf("the daemon drops %v, privileged %v: want ALL, not privileged", sc.Capabilities.Drop, sc.Privileged)
	}

	compareWithManifest(t, r, "daemonset-proxy.yaml")
}

// Every value the chart offers reaches the daemon: proxy mode, the registries, the size, a
// credentials Secret, a ServiceMonitor, and the cluster tier on another port with its own key
// Secret, mutual TLS, extra [peer] keys and another cluster domain.
func TestChartValues(t *testing.T) {
	r, err := render(t, map[string]any{
		"mode":       "proxy",
		"registries": []any{"docker.io", "ghcr.io"},
		"store":      map[string]any{"maxSize": "50GiB"},
		"credentials": map[string]any{
			"secretName": "registry-creds", "credentialsFileKey": "credentials.toml", "dockerConfigKey": ".dockerconfigjson",
		},
		"metrics": map[string]any{"address": "0.0.0.0:9156", "serviceMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}}},
		"peer": map[string]any{
			"port": 6057, "keySecretName": "cache-key", "keySecretKey": "shared",
			"tls":         map[string]any{"secretName": "cache-peer-tls"},
			"extraConfig": `connect_timeout = "500ms"`,
		},
		"clusterDomain": "corp.internal",
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg, installOut := checkAgainstBinary(t, r)
	if !cfg.Content.Enabled || cfg.Store.MaxSize != "50GiB" || strings.Join(cfg.Upstream.AllowedRegistries, ",") != "docker.io,ghcr.io" {
		t.Errorf("effective configuration %+v", cfg)
	}
	if cfg.Upstream.CredentialsFile != "/etc/containerd-blobcache/credentials/credentials.toml" || cfg.Upstream.DockerConfig != "/etc/containerd-blobcache/credentials/.dockerconfigjson" {
		t.Errorf("credentials paths %q %q", cfg.Upstream.CredentialsFile, cfg.Upstream.DockerConfig)
	}
	pod := r.ds.Spec.Template.Spec
	var secret, run string
	for _, v := range pod.Volumes {
		if v.Name == "credentials" && v.Secret != nil {
			secret = v.Secret.SecretName
		}
		if v.Name == "run" && v.HostPath != nil {
			run = v.HostPath.Path
		}
	}
	if secret != "registry-creds" {
		t.Errorf("credentials volume from Secret %q", secret)
	}
	// containerd dials the content socket on the node: it must be on a hostPath there.
	if run != filepath.Dir(cfg.Content.Address) {
		t.Errorf("content socket %s, /run volume on the node %q", cfg.Content.Address, run)
	}
	init := strings.Join(container(t, pod.InitContainers, "install").Command, " ")
	for _, want := range []string{"--mode=proxy", "--registry=docker.io", "--registry=ghcr.io"} {
		if !strings.Contains(init, want) {
			t.Errorf("init command lacks %s: %s", want, init)
		}
	}
	for _, want := range []string{"docker.io/hosts.toml", "ghcr.io/hosts.toml", "[proxy_plugins.blobcache]"} {
		if !strings.Contains(installOut, want) {
			t.Errorf("install dry run lacks %q", want)
		}
	}
	p := cfg.Peer
	if p.DNSName != "blobcache-containerd-blobcache-peers.kube-system.svc.corp.internal" || p.DNSPort != 6057 || p.ConnectTimeout != "500ms" {
		t.Errorf("[peer] %+v", p)
	}
	if p.KeyFile != "/etc/containerd-blobcache-peer/shared" || p.TLSCertFile == "" || p.TLSKeyFile == "" || p.TLSCAFile == "" {
		t.Errorf("[peer] files: key %q, TLS %q %q %q", p.KeyFile, p.TLSCertFile, p.TLSKeyFile, p.TLSCAFile)
	}
	if l := peerListen(container(t, pod.Containers, "blobcache")); l != "$(NODE_IP):6057" {
		t.Errorf("--peer-listen=%s", l)
	}
	metricsSvc := r.services["blobcache-containerd-blobcache-metrics"]
	if metricsSvc == nil || r.monitor == nil {
		t.Fatalf("Service/ServiceMonitor not rendered: %v", r.manifests)
	}
	if p := metricsSvc.Spec.Ports; len(p) != 1 || p[0].Port != 9156 || p[0].TargetPort.String() != "metrics" {
		t.Errorf("metrics Service ports %+v", p)
	}
	spec, _ := r.monitor["spec"].(map[string]any)
	eps, _ := spec["endpoints"].([]any)
	if len(eps) != 1 || eps[0].(map[string]any)["port"] != "metrics" || eps[0].(map[string]any)["path"] != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %v", eps)
	}
	if labels := r.monitor["metadata"].(map[string]any)["labels"].(map[string]any); labels["release"] != "prom" {
		t.Errorf("ServiceMonitor labels %v", labels)
	}
}

// Values that would give a broken node are refused at render time.
func TestChartRefusesBadValues(t *testing.T) {
	for name, vals := range map[string]map[string]any{
		"unknown mode":                {"mode": "both"},
		"ServiceMonitor on loopback":  {"metrics": map[string]any{"serviceMonitor": map[string]any{"enabled": true}}},
		"Secret without a key":        {"credentials": map[string]any{"secretName": "s"}},
		"peers without credentials":   {"peer": map[string]any{"keySecretName": ""}},
		"peer key Secret without key": {"peer": map[string]any{"keySecretKey": ""}},
		"peer port 0":                 {"peer": map[string]any{"port": 0}},
		"peer port not a number":      {"peer": map[string]any{"port": "http"}},
		"peer port 70000":             {"peer": map[string]any{"port": 70000}},
		"peer port of the mirror":     {"peer": map[string]any{"port": 5055}},
		"no cluster domain":           {"clusterDomain": ""},
	} {
		if _, err := render(t, vals); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
}

// peer.enabled=false renders no cluster tier: no flag, no env, no port, no [peer], no
// Service, no Secret volume; the rest is the default DaemonSet.
func TestChartPeerDisabled(t *testing.T) {
	r, err := renderRelease(t, manifestRelease, map[string]any{"peer": map[string]any{"enabled": false}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := checkAgainstBinary(t, r)
	if cfg.Peer != (peerConfig{DNSPort: cfg.Peer.DNSPort, ConnectTimeout: cfg.Peer.ConnectTimeout}) {
		t.Errorf("[peer] %+v without the tier", cfg.Peer)
	}
	if strings.Contains(r.cm.Data["config.toml"], "[peer]") || len(r.services) != 0 {
		t.Errorf("[peer] or a Service rendered without the tier: %v\n%s", r.manifests, r.cm.Data["config.toml"])
	}
	serve := container(t, r.ds.Spec.Template.Spec.Containers, "blobcache")
	if peerListen(serve) != "" || len(serve.Ports) != 2 || len(serve.Env) != 0 || mountPath(serve, "peer-key") != "" {
		t.Errorf("the daemon without the tier: command %v, ports %+v, env %+v, mounts %+v", serve.Command, serve.Ports, serve.Env, serve.VolumeMounts)
	}
}

// Mutual TLS alone: the three files from the TLS Secret, no key, no key volume.
func TestChartPeerTLSOnly(t *testing.T) {
	r, err := render(t, map[string]any{"peer": map[string]any{"keySecretName": "", "tls": map[string]any{"secretName": "peer-tls"}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := checkAgainstBinary(t, r)
	want := "/etc/containerd-blobcache-peer-tls/"
	if p := cfg.Peer; p.KeyFile != "" || p.TLSCertFile != want+"tls.crt" || p.TLSKeyFile != want+"tls.key" || p.TLSCAFile != want+"ca.crt" {
		t.Errorf("[peer] %+v", p)
	}
	for _, v := range r.ds.Spec.Template.Spec.Volumes {
		if v.Name == "peer-key" {
			t.Errorf("key volume %+v without peer.keySecretName", v)
		}
	}
}

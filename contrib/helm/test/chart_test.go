package test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// effectiveConfig is the part of `containerd-blobcache config check` output the chart
// decides.
type effectiveConfig struct {
	Mirror struct {
		Address string `toml:"address"`
	} `toml:"mirror"`
	Metrics struct {
		Address string `toml:"address"`
	} `toml:"metrics"`
	Store struct {
		MaxSize string `toml:"max_size"`
	} `toml:"store"`
	Upstream struct {
		AllowedRegistries []string `toml:"allowed_registries"`
		CredentialsFile   string   `toml:"credentials_file"`
		DockerConfig      string   `toml:"docker_config"`
	} `toml:"upstream"`
	Content struct {
		Enabled bool   `toml:"enabled"`
		Address string `toml:"address"`
	} `toml:"content"`
	Admin struct {
		Address string `toml:"address"`
	} `toml:"admin"`
}

// checkAgainstBinary checks a rendering with the daemon's binary: the ConfigMap is a valid
// configuration, the serve and install commands take the rendered flags, the probes and
// ports match the configured listeners, and every path the configuration names is mounted.
// It returns the effective configuration and the install dry run's output.
func checkAgainstBinary(t *testing.T, r *rendered) (effectiveConfig, string) {
	t.Helper()
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgFile, []byte(r.cm.Data["config.toml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runBinary(t, "config", "check", "--config", cfgFile)
	if code != 0 {
		t.Fatalf("config check of the ConfigMap: exit %d\n%s\n%s", code, out, r.cm.Data["config.toml"])
	}
	var cfg effectiveConfig
	if _, err := toml.Decode(out, &cfg); err != nil {
		t.Fatalf("config check output: %v\n%s", err, out)
	}

	pod := r.ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("not on the host network: containerd reaches the mirror on the node's loopback")
	}
	serve := container(t, pod.Containers, "blobcache")
	if len(serve.Command) < 3 || serve.Command[0] != "/usr/local/bin/containerd-blobcache" || serve.Command[1] != "serve" {
		t.Fatalf("serve command %v", serve.Command)
	}
	// -h after the rendered flags: an unknown flag is reported before the help.
	if code, out := runBinary(t, append(append([]string{}, serve.Command[1:]...), "-h")...); strings.Contains(out, "not defined") || code == 0 {
		t.Errorf("serve %v: exit %d\n%s", serve.Command[2:], code, out)
	}
	configMount := mountPath(serve, "config")
	if serve.Command[2] != "--config="+configMount+"/config.toml" {
		t.Errorf("serve reads %s, the ConfigMap is mounted at %s", serve.Command[2], configMount)
	}
	metricsPort := cfg.Metrics.Address[strings.LastIndex(cfg.Metrics.Address, ":")+1:]
	mirrorPort := cfg.Mirror.Address[strings.LastIndex(cfg.Mirror.Address, ":")+1:]
	for _, p := range []*corev1.Probe{serve.LivenessProbe, serve.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != metricsPort {
			t.Errorf("probe %+v does not use metrics.address %s", p, cfg.Metrics.Address)
		}
	}
	if serve.LivenessProbe.HTTPGet.Path != "/healthz" || serve.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("probe paths %s %s", serve.LivenessProbe.HTTPGet.Path, serve.ReadinessProbe.HTTPGet.Path)
	}
	ports := map[string]string{}
	for _, p := range serve.Ports {
		ports[p.Name] = itoa(p.ContainerPort)
	}
	if ports["mirror"] != mirrorPort || ports["metrics"] != metricsPort {
		t.Errorf("ports %v, config mirror %s metrics %s", ports, cfg.Mirror.Address, cfg.Metrics.Address)
	}
	// Every file and socket the daemon uses is on a mounted volume (the root is read-only).
	for what, p := range map[string]string{"root": "/var/lib/containerd-blobcache/x", "admin.address": cfg.Admin.Address, "credentials_file": cfg.Upstream.CredentialsFile, "docker_config": cfg.Upstream.DockerConfig, "content.address": contentAddress(cfg)} {
		if p == "" {
			continue
		}
		mounted := false
		for _, m := range serve.VolumeMounts {
			mounted = mounted || strings.HasPrefix(p, m.MountPath+"/")
		}
		if !mounted {
			t.Errorf("%s %s is on no mounted volume", what, p)
		}
	}

	// The init container's install, as a dry run on containerd 2.4.2's default config:
	// later flags override the rendered paths.
	initC := container(t, pod.InitContainers, "install")
	if len(initC.Command) < 2 || initC.Command[1] != "install" {
		t.Fatalf("init command %v", initC.Command)
	}
	ctrdCfg := filepath.Join(dir, "containerd.toml")
	def, err := os.ReadFile("../../../internal/install/testdata/config-v4-containerd-2.4.2-default.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ctrdCfg, def, 0o600); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, initC.Command[1:]...), "--config="+cfgFile, "--hosts-dir="+filepath.Join(dir, "certs.d"), "--containerd-config="+ctrdCfg, "--dry-run")
	code, out = runBinary(t, args...)
	if code != 0 {
		t.Fatalf("init container's install %v: exit %d\n%s", initC.Command[1:], code, out)
	}
	if !strings.Contains(out, `+[host."http://`+cfg.Mirror.Address+`"]`) {
		t.Errorf("install does not point hosts.toml at %s:\n%s", cfg.Mirror.Address, out)
	}
	return cfg, out
}

func contentAddress(c effectiveConfig) string {
	if !c.Content.Enabled {
		return ""
	}
	return c.Content.Address
}

func itoa(i int32) string {
	b := []byte{}
	if i == 0 {
		return "0"
	}
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

// readDaemonSetManifest decodes contrib/kubernetes/daemonset.yaml.
func readDaemonSetManifest(t *testing.T) (*appsv1.DaemonSet, *corev1.ConfigMap) {
	t.Helper()
	b, err := os.ReadFile("../../kubernetes/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var r rendered
	r.decode(t, "daemonset.yaml", b)
	if r.ds == nil || r.cm == nil {
		t.Fatal("daemonset.yaml lacks the DaemonSet or the ConfigMap")
	}
	return r.ds, r.cm
}

// The chart's defaults render today's DaemonSet (contrib/kubernetes/daemonset.yaml): the
// same pod — commands, ports, probes, security, resources, volumes — and a configuration the
// binary reads the same way.
func TestChartDefaultsRenderTheDaemonSet(t *testing.T) {
	r, err := render(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := checkAgainstBinary(t, r)
	if len(cfg.Upstream.AllowedRegistries) != 1 || cfg.Upstream.AllowedRegistries[0] != "*" || cfg.Content.Enabled {
		t.Errorf("defaults: %+v", cfg)
	}
	for _, kind := range r.manifests {
		if kind == "ServiceMonitor" || kind == "Service" {
			t.Errorf("%s rendered without metrics.serviceMonitor.enabled", kind)
		}
	}

	ds, cm := readDaemonSetManifest(t)
	want, got := ds.Spec.Template.Spec, r.ds.Spec.Template.Spec
	// What differs on purpose: the image reference and the ConfigMap's name (release-scoped).
	for _, spec := range []*corev1.PodSpec{&want, &got} {
		for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
			for i := range cs {
				cs[i].Image, cs[i].ImagePullPolicy = "", ""
			}
		}
		for i := range spec.Volumes {
			if spec.Volumes[i].ConfigMap != nil {
				spec.Volumes[i].ConfigMap.Name = ""
			}
		}
	}
	if !reflect.DeepEqual(want, got) {
		wb, _ := yaml.Marshal(want)
		gb, _ := yaml.Marshal(got)
		t.Errorf("the chart's pod differs from daemonset.yaml:\n--- daemonset.yaml\n%s\n--- chart\n%s", wb, gb)
	}
	if !reflect.DeepEqual(ds.Spec.UpdateStrategy, r.ds.Spec.UpdateStrategy) {
		t.Errorf("update strategy %+v, daemonset.yaml %+v", r.ds.Spec.UpdateStrategy, ds.Spec.UpdateStrategy)
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.toml"), filepath.Join(dir, "b.toml")
	os.WriteFile(a, []byte(cm.Data["config.toml"]), 0o600)
	os.WriteFile(b, []byte(r.cm.Data["config.toml"]), 0o600)
	codeA, outA := runBinary(t, "config", "check", "--config", a)
	codeB, outB := runBinary(t, "config", "check", "--config", b)
	// The chart states max_size; the manifest relies on its default of the same value.
	if codeA != 0 || codeB != 0 || outA != outB {
		t.Errorf("effective configurations differ (exit %d, %d):\n--- daemonset.yaml\n%s\n--- chart\n%s", codeA, codeB, outA, outB)
	}
}

// Every value the chart offers reaches the daemon: proxy mode, the registries, the size, a
// credentials Secret and a ServiceMonitor.
func TestChartValues(t *testing.T) {
	r, err := render(t, map[string]any{
		"mode":       "proxy",
		"registries": []any{"docker.io", "ghcr.io"},
		"store":      map[string]any{"maxSize": "50GiB"},
		"credentials": map[string]any{
			"secretName": "registry-creds", "credentialsFileKey": "credentials.toml", "dockerConfigKey": ".dockerconfigjson",
		},
		"metrics": map[string]any{"address": "0.0.0.0:9156", "serviceMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}}},
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
	if r.service == nil || r.monitor == nil {
		t.Fatalf("Service/ServiceMonitor not rendered: %v", r.manifests)
	}
	if p := r.service.Spec.Ports; len(p) != 1 || p[0].Port != 9156 || p[0].TargetPort.String() != "metrics" {
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
		"unknown mode":               {"mode": "both"},
		"ServiceMonitor on loopback": {"metrics": map[string]any{"serviceMonitor": map[string]any{"enabled": true}}},
		"Secret without a key":       {"credentials": map[string]any{"secretName": "s"}},
	} {
		if _, err := render(t, vals); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
}

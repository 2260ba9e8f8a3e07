package test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
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
	Diff struct {
		Enabled           bool   `toml:"enabled"`
		ContainerdAddress string `toml:"containerd_address"`
	} `toml:"diff"`
	Admin struct {
		Address string `toml:"address"`
	} `toml:"admin"`
	Peer peerConfig `toml:"peer"`
}

// checkAgainstBinary checks a rendering with the daemon's binary: the ConfigMap is a valid
// configuration, the serve and install commands take the rendered flags, the probes and
// ports match the configured listeners, every path the configuration names is mounted, and
// the init container's install, run on containerd 2.4.2's default config, finds nothing it
// cannot fix. It returns the effective configuration and the install dry run's output.
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
	for what, p := range map[string]string{"root": "/var/lib/containerd-blobcache/x", "admin.address": cfg.Admin.Address, "credentials_file": cfg.Upstream.CredentialsFile, "docker_config": cfg.Upstream.DockerConfig, "content.address": contentAddress(cfg), "diff.containerd_address": diffContainerdAddress(cfg), "peer.key_file": cfg.Peer.KeyFile, "peer.tls_cert_file": cfg.Peer.TLSCertFile, "peer.tls_key_file": cfg.Peer.TLSKeyFile, "peer.tls_ca_file": cfg.Peer.TLSCAFile} {
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
	checkPeerTier(t, r, cfg.Peer, out)

	// The init container's install, as a dry run on containerd 2.4.2's default config:
	// later flags override the rendered paths.
	initC := container(t, pod.InitContainers, "install")
	if len(initC.Command) < 2 || initC.Command[1] != "install" {
		t.Fatalf("init command %v", initC.Command)
	}
	// install reads the mirror address and content socket from the daemon's config, and in
	// proxy mode checks content and diff enabled in it.
	if want := "--config=" + mountPath(initC, "config") + "/config.toml"; !slices.Contains(initC.Command, want) {
		t.Errorf("init command %v lacks %s", initC.Command, want)
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
	if code != 0 || strings.Contains(out, "PROBLEM") {
		t.Fatalf("init container's install %v: exit %d\n%s", initC.Command[1:], code, out)
	}
	// The ConfigMap is mounted read-only: install cannot fix anything in it.
	if strings.Contains(out, "--- "+cfgFile+"\n") {
		t.Errorf("install would change the daemon's config, a read-only ConfigMap in the pod:\n%s", out)
	}
	if !strings.Contains(out, `+[host."http://`+cfg.Mirror.Address+`"]`) {
		t.Errorf("install does not point hosts.toml at %s:\n%s", cfg.Mirror.Address, out)
	}
	if cfg.Diff.Enabled {
		// The daemon applies layers into the snapshot directories containerd names, and
		// Compare dials containerd's socket: both host paths, mounted at the same path.
		var ctrd struct {
			Root string `toml:"root"`
		}
		if _, err := toml.Decode(string(def), &ctrd); err != nil || ctrd.Root == "" {
			t.Fatalf("containerd's default root: %q, %v", ctrd.Root, err)
		}
		for _, hostDir := range []string{filepath.Join(ctrd.Root, "io.containerd.snapshotter.v1.overlayfs"), filepath.Dir(cfg.Diff.ContainerdAddress)} {
			if !mountsHostPath(pod, serve, hostDir) {
				t.Errorf("the daemon does not mount host path %s at the same path", hostDir)
			}
		}
	}
	return cfg, out
}

// mountsHostPath reports whether container c mounts the hostPath volume of path at path.
func mountsHostPath(pod corev1.PodSpec, c corev1.Container, path string) bool {
	for _, v := range pod.Volumes {
		if v.HostPath == nil || v.HostPath.Path != path {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name && m.MountPath == path {
				return true
			}
		}
	}
	return false
}

func contentAddress(c effectiveConfig) string {
	if !c.Content.Enabled {
		return ""
	}
	return c.Content.Address
}

func diffContainerdAddress(c effectiveConfig) string {
	if !c.Diff.Enabled {
		return ""
	}
	return c.Diff.ContainerdAddress
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

// readDaemonSetManifest decodes a manifest of contrib/kubernetes.
func readDaemonSetManifest(t *testing.T, file string) *rendered {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../../kubernetes", file))
	if err != nil {
		t.Fatal(err)
	}
	var r rendered
	r.decode(t, file, b)
	if r.ds == nil || r.cm == nil {
		t.Fatalf("%s lacks the DaemonSet or the ConfigMap", file)
	}
	return &r
}

// compareWithManifest checks that a rendering has the pod — commands, ports, probes,
// security, resources, volumes —, the update strategy and the effective configuration of
// the DaemonSet in contrib/kubernetes/file, and its Services (the peers').
func compareWithManifest(t *testing.T, r *rendered, file string) {
	t.Helper()
	m := readDaemonSetManifest(t, file)
	ds, cm := m.ds, m.cm
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
		t.Errorf("the chart's pod differs from %s:\n--- %s\n%s\n--- chart\n%s", file, file, wb, gb)
	}
	if !reflect.DeepEqual(ds.Spec.UpdateStrategy, r.ds.Spec.UpdateStrategy) {
		t.Errorf("update strategy %+v, %s %+v", r.ds.Spec.UpdateStrategy, file, ds.Spec.UpdateStrategy)
	}
	// The chart's Services carry the release's labels and select its instance too.
	for name, want := range m.services {
		got := r.services[name]
		if got == nil || got.Namespace != want.Namespace || got.Spec.ClusterIP != want.Spec.ClusterIP || !reflect.DeepEqual(got.Spec.Ports, want.Spec.Ports) {
			t.Errorf("Service %s/%s of %s: the chart renders %+v", want.Namespace, name, file, got)
		}
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.toml"), filepath.Join(dir, "b.toml")
	os.WriteFile(a, []byte(cm.Data["config.toml"]), 0o600)
	os.WriteFile(b, []byte(r.cm.Data["config.toml"]), 0o600)
	codeA, outA := runBinary(t, "config", "check", "--config", a)
	codeB, outB := runBinary(t, "config", "check", "--config", b)
	// The chart states max_size; the manifests rely on its default of the same value.
	if codeA != 0 || codeB != 0 || outA != outB {
		t.Errorf("effective configurations differ (exit %d, %d):\n--- %s\n%s\n--- chart\n%s", codeA, codeB, file, outA, outB)
	}
}

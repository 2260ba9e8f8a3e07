package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

type k8sContainer struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Env     []struct {
		Name      string `yaml:"name"`
		ValueFrom struct {
			FieldRef struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		HostPort      int    `yaml:"hostPort"`
	} `yaml:"ports"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
	LivenessProbe struct {
		HTTPGet struct {
			Path string `yaml:"path"`
			Port int    `yaml:"port"`
		} `yaml:"httpGet"`
	} `yaml:"livenessProbe"`
	ReadinessProbe struct {
		HTTPGet struct {
			Path string `yaml:"path"`
			Port int    `yaml:"port"`
		} `yaml:"httpGet"`
	} `yaml:"readinessProbe"`
}

type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		// Service.
		ClusterIP string         `yaml:"clusterIP"`
		Selector  map[string]any `yaml:"selector"` // DaemonSet: matchLabels
		Ports     []struct {
			Port int `yaml:"port"`
		} `yaml:"ports"`
		Template struct {
			Spec struct {
				HostNetwork    bool           `yaml:"hostNetwork"`
				InitContainers []k8sContainer `yaml:"initContainers"`
				Containers     []k8sContainer `yaml:"containers"`
				Volumes        []struct {
					Name   string `yaml:"name"`
					Secret struct {
						SecretName string `yaml:"secretName"`
					} `yaml:"secret"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// The DaemonSet's commands are ones this binary accepts, its configuration is valid, and
// its probes point at the metrics listener that configuration opens.
func TestKubernetesDaemonSet(t *testing.T) {
	b, err := os.ReadFile("../../contrib/kubernetes/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds, cm, svc *k8sObject
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("manifest: %v", err)
		}
		switch o.Kind {
		case "DaemonSet":
			ds = &o
		case "ConfigMap":
			cm = &o
		case "Service":
			svc = &o
		}
	}
	if ds == nil || cm == nil {
		t.Fatal("manifest lacks the DaemonSet or the ConfigMap")
	}
	cfg, err := config.Parse([]byte(cm.Data["config.toml"]))
	if err != nil {
		t.Fatalf("ConfigMap config.toml: %v", err)
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || len(pod.InitContainers) != 1 || len(pod.Containers) != 1 {
		t.Fatalf("pod spec: hostNetwork %v, %d init containers, %d containers", pod.HostNetwork, len(pod.InitContainers), len(pod.Containers))
	}
	port := cfg.Metrics.Address[strings.LastIndex(cfg.Metrics.Address, ":")+1:]
	c := pod.Containers[0]
	if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" ||
		itoa(c.LivenessProbe.HTTPGet.Port) != port || itoa(c.ReadinessProbe.HTTPGet.Port) != port {
		t.Errorf("probes %+v %+v do not match metrics.address %s", c.LivenessProbe, c.ReadinessProbe, cfg.Metrics.Address)
	}
	if len(c.Command) < 2 || c.Command[1] != "serve" {
		t.Errorf("container command %v", c.Command)
	}
	checkPeerTier(t, cfg, c, ds, svc)

	// The init container's install, run as a dry run against local copies: later flags
	// override the manifest's paths.
	dir := t.TempDir()
	daemonCfg := filepath.Join(dir, "config.toml")
	ctrdCfg := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(daemonCfg, []byte(cm.Data["config.toml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	def, err := os.ReadFile("../../internal/install/testdata/config-v4-containerd-2.4.2-default.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ctrdCfg, def, 0o600); err != nil {
		t.Fatal(err)
	}
	init := pod.InitContainers[0].Command
	if len(init) < 2 || init[1] != "install" {
		t.Fatalf("init command %v", init)
	}
	args := append(append([]string{}, init[1:]...), "--config="+daemonCfg, "--hosts-dir="+filepath.Join(dir, "certs.d"), "--containerd-config="+ctrdCfg, "--dry-run")
	var out, errOut bytes.Buffer
	if code := run(args, &out, &errOut); code != 0 {
		t.Fatalf("init container's install: exit %d\n%s", code, errOut.String())
	}
	if !strings.Contains(out.String(), `+[host."http://`+cfg.Mirror.Address+`"]`) {
		t.Errorf("install does not point hosts.toml at %s:\n%s", cfg.Mirror.Address, out.String())
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// checkPeerTier checks the DaemonSet's cluster tier: --peer-listen (a flag serve accepts)
// on the node's address, which makes the ConfigMap's [peer] a valid configuration; the peer
// port opened on the host; a headless Service over the pods whose name is the configured
// dns_name; the key Secret mounted where key_file points.
func checkPeerTier(t *testing.T, cfg config.Config, c k8sContainer, ds, svc *k8sObject) {
	t.Helper()
	var listen string
	for _, a := range c.Command {
		if v, ok := strings.CutPrefix(a, "--peer-listen="); ok {
			listen = v
		}
	}
	if listen == "" {
		t.Fatalf("container command %v has no --peer-listen", c.Command)
	}
	if !strings.Contains(serveUsage(t), "-peer-listen") {
		t.Fatal("serve does not accept --peer-listen")
	}
	host, port, _ := strings.Cut(listen, ":")
	envVar := strings.TrimSuffix(strings.TrimPrefix(host, "$("), ")")
	hostIP := false
	for _, e := range c.Env {
		hostIP = hostIP || (e.Name == envVar && e.ValueFrom.FieldRef.FieldPath == "status.hostIP")
	}
	if !hostIP {
		t.Errorf("--peer-listen host %q is not an env var set from status.hostIP", host)
	}
	cfg.Peer.Enabled, cfg.Peer.Listen = true, "10.0.0.1:"+port
	if err := cfg.Validate(); err != nil {
		t.Fatalf("ConfigMap config with --peer-listen: %v", err)
	}
	if itoa(cfg.Peer.DNSPort) != port {
		t.Errorf("dns_port %d, listen port %s", cfg.Peer.DNSPort, port)
	}
	opened := false
	for _, p := range c.Ports {
		opened = opened || (itoa(p.ContainerPort) == port && itoa(p.HostPort) == port)
	}
	if !opened {
		t.Errorf("peer port %s not among the container's ports", port)
	}
	if svc == nil {
		t.Fatal("manifest lacks the headless Service")
	}
	if svc.Spec.ClusterIP != "None" || len(svc.Spec.Ports) != 1 || itoa(svc.Spec.Ports[0].Port) != port {
		t.Errorf("Service: clusterIP %q, ports %+v; want headless on %s", svc.Spec.ClusterIP, svc.Spec.Ports, port)
	}
	for k, v := range svc.Spec.Selector {
		if ds.Spec.Template.Metadata.Labels[k] != fmt.Sprint(v) {
			t.Errorf("Service selector %s=%s does not select the pods", k, v)
		}
	}
	if want := svc.Metadata.Name + "." + svc.Metadata.Namespace + ".svc."; !strings.HasPrefix(cfg.Peer.DNSName, want) {
		t.Errorf("dns_name %q is not the Service's (%s...)", cfg.Peer.DNSName, want)
	}
	keyDir := filepath.Dir(cfg.Peer.KeyFile)
	mounted := ""
	for _, m := range c.VolumeMounts {
		if m.MountPath == keyDir {
			mounted = m.Name
		}
	}
	secret := false
	for _, v := range ds.Spec.Template.Spec.Volumes {
		secret = secret || (v.Name == mounted && v.Secret.SecretName != "")
	}
	if !secret {
		t.Errorf("key_file %s is not in a mounted Secret", cfg.Peer.KeyFile)
	}
}

// serveUsage is serve's flag list as the binary prints it.
func serveUsage(t *testing.T) string {
	var out, errOut bytes.Buffer
	run([]string{"serve", "-h"}, &out, &errOut)
	return out.String() + errOut.String()
}

package main

import (
	"bytes"
	"errors"
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
	Name          string   `yaml:"name"`
	Command       []string `yaml:"command"`
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
	Kind string            `yaml:"kind"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Template struct {
			Spec struct {
				HostNetwork    bool           `yaml:"hostNetwork"`
				InitContainers []k8sContainer `yaml:"initContainers"`
				Containers     []k8sContainer `yaml:"containers"`
			} `yaml:"spec"`
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
	var ds, cm *k8sObject
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

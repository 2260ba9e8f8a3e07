package test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const chartDir = "../containerd-blobcache"

// rendered is what the chart produced for one set of values, decoded.
type rendered struct {
	ds        *appsv1.DaemonSet
	cm        *corev1.ConfigMap
	service   *corev1.Service
	monitor   map[string]any
	manifests []string
}

// render runs the chart through Helm's engine as `helm template` does.
// decode adds the YAML documents of one file to r. Kubernetes objects are decoded strictly:
// a misspelt field in a template is an error, not a silently dropped key.
func (r *rendered) decode(t *testing.T, name string, data []byte) {
	t.Helper()
	reader := yamlutil.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, doc)
		}
		r.manifests = append(r.manifests, meta.Kind)
		switch meta.Kind {
		case "DaemonSet":
			r.ds = &appsv1.DaemonSet{}
			err = yaml.UnmarshalStrict(doc, r.ds)
		case "ConfigMap":
			r.cm = &corev1.ConfigMap{}
			err = yaml.UnmarshalStrict(doc, r.cm)
		case "Service":
			r.service = &corev1.Service{}
			err = yaml.UnmarshalStrict(doc, r.service)
		case "ServiceMonitor":
			err = yaml.Unmarshal(doc, &r.monitor)
		case "Namespace":
		default:
			t.Fatalf("%s renders an unexpected %s", name, meta.Kind)
		}
		if err != nil {
			t.Fatalf("%s: %s: %v\n%s", name, meta.Kind, err, doc)
		}
	}
}

func render(t *testing.T, values map[string]any) (*rendered, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ToRenderValues(ch, values, chartutil.ReleaseOptions{Name: "blobcache", Namespace: "kube-system", IsInstall: true}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		return nil, err
	}
	r := &rendered{}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if strings.HasSuffix(name, ".yaml") {
			r.decode(t, name, []byte(files[name]))
		}
	}
	if r.ds == nil || r.cm == nil {
		t.Fatalf("no DaemonSet or ConfigMap rendered: %v", r.manifests)
	}
	return r, nil
}

var binary struct {
	once sync.Once
	path string
	err  error
}

// daemonBinary builds containerd-blobcache from the repository (with its own go.mod), once.
func daemonBinary(t *testing.T) string {
	t.Helper()
	binary.once.Do(func() {
		dir, err := os.MkdirTemp("", "helm-test-bin-")
		if err != nil {
			binary.err = err
			return
		}
		binary.path = filepath.Join(dir, "containerd-blobcache")
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", binary.path, "./cmd/containerd-blobcache")
		cmd.Dir = "../../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			binary.err = errors.New(string(out))
		}
	})
	if binary.err != nil {
		t.Fatalf("build containerd-blobcache: %v", binary.err)
	}
	return binary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binary.path != "" {
		os.RemoveAll(filepath.Dir(binary.path))
	}
	os.Exit(code)
}

// runBinary runs the daemon's binary and returns its exit code and output.
func runBinary(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, daemonBinary(t), args...).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

func mountPath(c corev1.Container, volume string) string {
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return m.MountPath
		}
	}
	return ""
}

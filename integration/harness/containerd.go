package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRINamespace is the containerd namespace the CRI plugin keeps its images in.
const CRINamespace = "k8s.io"

// ctrTimeout bounds every ctr invocation.
const ctrTimeout = 5 * time.Minute

// ContainerdOptions configures StartContainerd.
type ContainerdOptions struct {
	// HostsDir is the CRI registry config_path: ONE directory of <host>/hosts.toml (the
	// transfer service does not split a list). Empty leaves it unset.
	HostsDir string
	// ContentSharingPolicy is the metadata plugin's policy, "shared" (containerd's default)
	// or "isolated" (the default here: a blob in one namespace is fetched again for another,
	// so request counts do not depend on what other namespaces hold).
	ContentSharingPolicy string
	// LogLevel of the daemon, default "info".
	LogLevel string
	// Binary and CtrBinary are the containerd and ctr to run; default the pinned 2.4.2 in
	// the tools directory (DebianContainerd names Debian's 1.6).
	Binary    string
	CtrBinary string
	// ConfigVersion is 3 (containerd 2.x, the default) or 2 (containerd 1.6/1.7: the CRI
	// plugin's registry config_path is under io.containerd.grpc.v1.cri).
	ConfigVersion int
	// Diff, in proxy mode (StartContainerdContentProxy), makes the daemon's diff API
	// containerd's differ as well: a [proxy_plugins] entry of type "diff" on the content
	// socket, chosen by the transfer service's unpack_config and first in the diff service's
	// default list (see ProxyDiffConfig). The daemon needs DiffConfig then.
	Diff bool
	// NS, when set, is the network namespace containerd runs in (its socket, a file, stays
	// reachable from the test); its registry hosts are the namespace's.
	NS *Netns
	// EditConfig, when set, is called with the written config.toml before containerd
	// starts (for example to run `containerd-blobcache install` on it).
	EditConfig func(path string) error
}

// Debian's containerd 1.6 package (apt-get install containerd), for compatibility tests.
const (
	DebianContainerd = "/usr/bin/containerd"
	DebianCtr        = "/usr/bin/ctr"
)

// Containerd is a containerd daemon with everything in one short temporary directory.
type Containerd struct {
	Dir     string
	Root    string
	State   string
	Socket  string
	Config  string
	Options ContainerdOptions
	Process *Process

	tools *ToolPaths
	ctr   string
}

// pluginsNotNeeded are disabled: pulling, unpacking on overlayfs and the CRI image service
// need none of them, and some would reach outside the temporary directory.
var pluginsNotNeeded = []string{
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.zfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.snapshotter.v1.blockfile",
	"io.containerd.snapshotter.v1.erofs",
	"io.containerd.differ.v1.erofs",
	"io.containerd.mount-handler.v1.erofs",
	"io.containerd.nri.v1.nri",
	"io.containerd.tracing.processor.v1.otlp",
	"io.containerd.internal.v1.tracing",
	"io.containerd.monitor.container.v1.restart",
	"io.containerd.image-verifier.v1.bindir",
}

// StartContainerd starts containerd (version 3 config, no imports, overlayfs, CRI image
// service reading opts.HostsDir) and waits until both its API and the CRI image service answer.
func StartContainerd(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	c := newContainerd(t, opts, "bc-")
	text := c.configTOML()
	if c.Options.ConfigVersion == 2 {
		text = c.configV2TOML()
	}
	if err := os.WriteFile(c.Config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if c.Options.EditConfig != nil {
		if err := c.Options.EditConfig(c.Config); err != nil {
			t.Fatalf("edit containerd config: %v", err)
		}
	}
	c.launch(t)
	c.waitReady(t)
	return c
}

// newContainerd fills in opts' defaults and lays out a containerd's directories in a new
// short temporary directory named with prefix; the configuration is the caller's to write.
func newContainerd(t testing.TB, opts ContainerdOptions, prefix string) *Containerd {
	t.Helper()
	RequireRoot(t)
	tools := Tools(t)
	if opts.ContentSharingPolicy == "" {
		opts.ContentSharingPolicy = "isolated"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	if opts.Binary == "" {
		opts.Binary = tools.Containerd
	}
	if opts.CtrBinary == "" {
		opts.CtrBinary = tools.Ctr
	}
	if opts.ConfigVersion == 0 {
		opts.ConfigVersion = 3
	}
	if opts.ConfigVersion != 2 && opts.ConfigVersion != 3 {
		t.Fatalf("containerd config version %d: the harness writes 2 or 3", opts.ConfigVersion)
	}
	for _, bin := range []string{opts.Binary, opts.CtrBinary} {
		if isExecutable(bin) {
			continue
		}
		if bin == DebianContainerd || bin == DebianCtr {
			Unavailable(t, "%s not found: %s", bin, debianHint("containerd"))
		}
		Unavailable(t, "%s not found (run `make tools` or set %s)", bin, ToolsDirEnv)
	}
	dir := ShortTempDir(t, prefix)
	c := &Containerd{
		Dir:     dir,
		Root:    filepath.Join(dir, "root"),
		State:   filepath.Join(dir, "state"),
		Socket:  filepath.Join(dir, "c.sock"),
		Config:  filepath.Join(dir, "config.toml"),
		Options: opts,
		tools:   tools,
		ctr:     opts.CtrBinary,
	}
	for _, d := range []string{c.Root, c.State, filepath.Join(dir, "tmp"), filepath.Join(dir, "opt"), filepath.Join(dir, "cni", "net.d"), filepath.Join(dir, "cni", "bin")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	// Unmount what containerd may leave mounted (none expected: nothing runs) before the
	// directory is removed; registered before the process starts, so it runs after the
	// process is stopped.
	t.Cleanup(func() { unmountUnder(t, dir) })
	return c
}

// launch starts containerd on its configuration file, without waiting for it.
func (c *Containerd) launch(t testing.TB) {
	t.Helper()
	cmd := exec.Command(c.Options.Binary, "--config", c.Config)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), "PATH="+c.tools.Dir+":"+os.Getenv("PATH"), "TMPDIR="+filepath.Join(c.Dir, "tmp"))
	c.Process = startProcess(t, "containerd", filepath.Join(c.Dir, "containerd.log"), c.Options.NS.wrap(cmd))
}

func (c *Containerd) configTOML() string {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	var disabled []string
	for _, p := range pluginsNotNeeded {
		disabled = append(disabled, q(p))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `version = 3
root = %s
state = %s
temp = %s
imports = []
disabled_plugins = [%s]

[grpc]
  address = %s

[ttrpc]
  address = %s

[debug]
  address = ""
  level = %s

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %s
  [plugins."io.containerd.metadata.v1.bolt"]
    content_sharing_policy = %s
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%s]
    conf_dir = %s
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = %s
`,
		q(c.Root), q(c.State), q(filepath.Join(c.Dir, "tmp")), strings.Join(disabled, ", "),
		q(c.Socket), q(c.Socket+".ttrpc"), q(c.Options.LogLevel),
		q(filepath.Join(c.Dir, "opt")), q(c.Options.ContentSharingPolicy),
		q(filepath.Join(c.Dir, "cni", "bin")), q(filepath.Join(c.Dir, "cni", "net.d")),
		q(c.Options.HostsDir))
	return b.String()
}

func (c *Containerd) waitReady(t testing.TB) {
	t.Helper()
	c.waitSocket(t)
	// The CRI plugin finishes initialising after the socket is served.
	WaitFor(t, "CRI image service", 60*time.Second, 100*time.Millisecond, func() error {
		if exited, err := c.Process.Exited(); exited {
			return fmt.Errorf("%w: containerd exited (%v)", errStop, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return c.withCRI(ctx, func(_ runtime.RuntimeServiceClient, is runtime.ImageServiceClient) error {
			_, err := is.ImageFsInfo(ctx, &runtime.ImageFsInfoRequest{})
			return err
		})
	})
	if out, err := c.CtrE(context.Background(), "", "version"); err != nil {
		t.Fatalf("ctr version: %v\n%s", err, out)
	}
}

// CtrE runs ctr against this containerd in namespace ns ("" for ctr's default) and returns
// its stdout; on error the error includes stderr.
func (c *Containerd) CtrE(ctx context.Context, ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, ctrTimeout)
	defer cancel()
	full := []string{"--address", c.Socket}
	if ns != "" {
		full = append(full, "--namespace", ns)
	}
	full = append(full, args...)
	ctr := c.ctr
	if ctr == "" {
		ctr = c.tools.Ctr
	}
	cmd := exec.CommandContext(ctx, ctr, full...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("ctr %s: %w\nstdout:\n%s\nstderr:\n%s", strings.Join(full, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// Ctr runs ctr in namespace ns ("" for ctr's default) and fails the test on error.
func (c *Containerd) Ctr(t testing.TB, ns string, args ...string) string {
	t.Helper()
	out, err := c.CtrE(context.Background(), ns, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// PullArgs are the ctr arguments that pull ref through containerd's transfer service with
// the hosts.toml files of hostsDir, read by the daemon (no --local: ctr would then resolve
// in its own process). No --plain-http: the hosts.toml files name http:// URLs.
func PullArgs(ref, hostsDir string, extra ...string) []string {
	args := []string{"image", "pull"}
	if hostsDir != "" {
		// containerd reads the directory, from its own working directory: make it absolute.
		if abs, err := filepath.Abs(hostsDir); err == nil {
			hostsDir = abs
		}
		args = append(args, "--hosts-dir", hostsDir)
	}
	args = append(args, extra...)
	return append(args, ref)
}

// PullE pulls ref in namespace ns (see PullArgs) and returns ctr's output and how long the
// pull took.
func (c *Containerd) PullE(ctx context.Context, ns, ref, hostsDir string, extra ...string) (string, time.Duration, error) {
	start := time.Now()
	out, err := c.CtrE(ctx, ns, PullArgs(ref, hostsDir, extra...)...)
	return out, time.Since(start), err
}

// Pull pulls ref in namespace ns through the transfer service with hostsDir's hosts.toml
// and fails the test on error. It returns the wall time of the pull.
func (c *Containerd) Pull(t testing.TB, ns, ref, hostsDir string, extra ...string) time.Duration {
	t.Helper()
	_, d, err := c.PullE(context.Background(), ns, ref, hostsDir, extra...)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	t.Logf("pulled %s in namespace %s in %v", ref, ns, d.Round(time.Millisecond))
	return d
}

// ContentDigests lists the digests of the blobs namespace ns holds.
func (c *Containerd) ContentDigests(t testing.TB, ns string) []string {
	t.Helper()
	return strings.Fields(c.Ctr(t, ns, "content", "ls", "--quiet"))
}

// Snapshots lists the snapshot keys namespace ns holds in the overlayfs snapshotter.
func (c *Containerd) Snapshots(t testing.TB, ns string) []string {
	t.Helper()
	out := c.Ctr(t, ns, "snapshots", "--snapshotter", "overlayfs", "ls")
	var keys []string
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if i == 0 || strings.TrimSpace(line) == "" { // header
			continue
		}
		keys = append(keys, strings.Fields(line)[0])
	}
	return keys
}

// RemoveImageAndContent removes the image ref from namespace ns with a synchronous garbage
// collection, deletes every blob left in the namespace and waits until neither blobs nor
// snapshots remain, so that the next pull must fetch (and unpack) everything again.
func (c *Containerd) RemoveImageAndContent(t testing.TB, ns, ref string) {
	t.Helper()
	if _, err := c.CtrE(context.Background(), ns, "image", "rm", "--sync", ref); err != nil {
		t.Fatalf("remove image: %v", err)
	}
	if left := c.ContentDigests(t, ns); len(left) > 0 {
		c.Ctr(t, ns, append([]string{"content", "rm"}, left...)...)
	}
	WaitFor(t, "namespace "+ns+" to hold no content and no snapshots", 30*time.Second, 100*time.Millisecond, func() error {
		if left := c.ContentDigests(t, ns); len(left) > 0 {
			return fmt.Errorf("content left: %v", left)
		}
		if left := c.Snapshots(t, ns); len(left) > 0 {
			return fmt.Errorf("snapshots left: %v", left)
		}
		return nil
	})
}

// withCRI dials the CRI services on containerd's socket.
func (c *Containerd) withCRI(ctx context.Context, f func(runtime.RuntimeServiceClient, runtime.ImageServiceClient) error) error {
	conn, err := grpc.NewClient("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	return f(runtime.NewRuntimeServiceClient(conn), runtime.NewImageServiceClient(conn))
}

// CRIPullE calls the CRI ImageService.PullImage RPC — what `crictl pull image` does — and
// returns the image reference containerd reports.
func (c *Containerd) CRIPullE(ctx context.Context, image string) (string, error) {
	return c.CRIPullAuthE(ctx, image, nil)
}

// CRIPullAuthE is CRIPullE with credentials in the request, as the kubelet sends those of an
// imagePullSecret (auth nil: none).
func (c *Containerd) CRIPullAuthE(ctx context.Context, image string, auth *runtime.AuthConfig) (string, error) {
	var ref string
	err := c.withCRI(ctx, func(_ runtime.RuntimeServiceClient, is runtime.ImageServiceClient) error {
		resp, err := is.PullImage(ctx, &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: image}, Auth: auth})
		if err != nil {
			return err
		}
		ref = resp.GetImageRef()
		if ref == "" {
			return errors.New("PullImage returned an empty image ref")
		}
		return nil
	})
	return ref, err
}

// CRIPull pulls image through CRI (namespace k8s.io, registry hosts from the CRI
// config_path) and fails the test on error.
func (c *Containerd) CRIPull(t testing.TB, image string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	ref, err := c.CRIPullE(ctx, image)
	if err != nil {
		t.Fatalf("CRI PullImage %s: %v", image, err)
	}
	t.Logf("CRI pulled %s as %s in %v", image, ref, time.Since(start).Round(time.Millisecond))
	return ref
}

// CRIImageStatus returns the CRI's view of image, or nil when it does not know it.
func (c *Containerd) CRIImageStatus(t testing.TB, image string) *runtime.Image {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var img *runtime.Image
	err := c.withCRI(ctx, func(_ runtime.RuntimeServiceClient, is runtime.ImageServiceClient) error {
		resp, err := is.ImageStatus(ctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: image}})
		if err != nil {
			return err
		}
		img = resp.GetImage()
		return nil
	})
	if err != nil {
		t.Fatalf("CRI ImageStatus %s: %v", image, err)
	}
	return img
}

// CRIRemoveImage removes image through CRI.
func (c *Containerd) CRIRemoveImage(t testing.TB, image string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := c.withCRI(ctx, func(_ runtime.RuntimeServiceClient, is runtime.ImageServiceClient) error {
		_, err := is.RemoveImage(ctx, &runtime.RemoveImageRequest{Image: &runtime.ImageSpec{Image: image}})
		return err
	})
	if err != nil {
		t.Fatalf("CRI RemoveImage %s: %v", image, err)
	}
}

// Stop stops containerd.
func (c *Containerd) Stop() error { return c.Process.Stop() }

// waitSocket waits until containerd accepts connections on its socket, failing at once if
// it exited.
func (c *Containerd) waitSocket(t testing.TB) {
	t.Helper()
	WaitFor(t, "containerd socket "+c.Socket, 60*time.Second, 50*time.Millisecond, func() error {
		if exited, err := c.Process.Exited(); exited {
			return fmt.Errorf("%w: containerd exited (%v); log:\n%s", errStop, err, TailFile(c.Process.LogPath, 8<<10))
		}
		conn, err := net.DialTimeout("unix", c.Socket, time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	})
}

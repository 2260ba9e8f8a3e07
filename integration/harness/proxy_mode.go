package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/platforms"
)

// ContentPluginID is containerd's built-in content store, disabled when the daemon's content
// API takes its place.
const ContentPluginID = "io.containerd.content.v1.content"

// ContentProxyName is the name of the [proxy_plugins] entry; it must not clash with a
// built-in plugin ID.
const ContentProxyName = "blobcache"

// DiffProxyName is the name of the [proxy_plugins] entry of type "diff": the differ ID that
// unpack_config and the diff service's default list name.
const DiffProxyName = "blobcache-diff"

// DiffConfig is the daemon configuration (for DaemonConfig.Extra, after ContentConfig) that
// serves the diff API on the content socket. Compare then writes its layers through
// containerd at the default socket (/run/containerd/containerd.sock); a test that compares
// through its own containerd uses DiffConfigFor.
const DiffConfig = "[diff]\nenabled = true\n"

// DiffConfigFor is DiffConfig with containerd's socket, through which Compare writes the
// layers it makes in the caller's namespace.
func DiffConfigFor(containerdSocket string) string {
	return DiffConfig + "containerd_address = " + tomlString(containerdSocket) + "\n"
}

// ProxyDiffConfig is the containerd configuration (version 3) that makes the daemon's diff
// API on socket containerd's differ: for the transfer service's unpacks (ctr image pull, CRI)
// through unpack_config's differ, for the diff service (ctr image pull --local, ctr snapshot
// diff) through its default list, with containerd's own walking differ after it.
func ProxyDiffConfig(socket string) string {
	return fmt.Sprintf(`
  [proxy_plugins.%[1]s]
    type = "diff"
    address = %[2]q

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = %[3]q
  snapshotter = "overlayfs"
  differ = %[1]q

[plugins."io.containerd.service.v1.diff-service"]
  default = [%[1]q, "walking"]
`, DiffProxyName, socket, platforms.DefaultString())
}

// ContentConfig returns the daemon configuration lines (for DaemonConfig.Extra) that serve
// the content API on socket.
func ContentConfig(socket string) string {
	return fmt.Sprintf("[content]\nenabled = true\naddress = %s\nshutdown_timeout = \"5s\"\n", tomlString(socket))
}

// StartContainerdContentProxy starts containerd like StartContainerd, but with its built-in
// content store disabled and the daemon's content API on socket as its content store:
//
//	disabled_plugins = ["io.containerd.content.v1.content", ...]
//	[proxy_plugins.blobcache]
//	  type = "content"
//	  address = socket
//
// With opts.Diff, the daemon's diff API on the same socket is containerd's differ too (see
// ProxyDiffConfig). containerd connects to the socket lazily, so the daemon need not be up
// yet. With waitCRI, it also waits for the CRI image service (as StartContainerd does);
// otherwise only for containerd's own API, which is what a test starting the daemon later can
// rely on.
func StartContainerdContentProxy(t testing.TB, opts ContainerdOptions, socket string, waitCRI bool) *Containerd {
	t.Helper()
	if opts.ConfigVersion == 2 {
		t.Fatal("proxy mode is set up on a version 3 containerd config only")
	}
	c := newContainerd(t, opts, "bcp-")
	cfg := c.configTOML()
	const disabledKey = "disabled_plugins = ["
	if !strings.Contains(cfg, disabledKey) {
		t.Fatalf("containerd config has no %q line to extend", disabledKey)
	}
	cfg = strings.Replace(cfg, disabledKey, disabledKey+fmt.Sprintf("%q, ", ContentPluginID), 1)
	cfg += fmt.Sprintf("\n[proxy_plugins]\n  [proxy_plugins.%s]\n    type = \"content\"\n    address = %q\n", ContentProxyName, socket)
	if opts.Diff {
		cfg += ProxyDiffConfig(socket)
	}
	if err := os.WriteFile(c.Config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.startProxyMode(t, waitCRI)
	return c
}

// RestartProxyMode stops containerd (if it runs) and starts it again on the same root, state
// and configuration, waiting as StartContainerdContentProxy does.
func (c *Containerd) RestartProxyMode(t testing.TB, waitCRI bool) {
	t.Helper()
	if err := c.Process.Stop(); err != nil {
		t.Fatalf("stop containerd: %v", err)
	}
	c.startProxyMode(t, waitCRI)
}

func (c *Containerd) startProxyMode(t testing.TB, waitCRI bool) {
	t.Helper()
	c.launch(t)
	if waitCRI {
		c.waitReady(t)
		return
	}
	c.waitSocket(t)
	WaitFor(t, "ctr version", 60*time.Second, 100*time.Millisecond, func() error {
		_, err := c.CtrE(context.Background(), "", "version")
		return err
	})
}

// BlobFiles lists the regular files under dir/blobs/<algorithm>/ of a content store root,
// with their sizes, keyed "<algorithm>:<hex>".
func BlobFiles(t testing.TB, root string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	algs, err := os.ReadDir(filepath.Join(root, "blobs"))
	if os.IsNotExist(err) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, alg := range algs {
		if !alg.IsDir() {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(root, "blobs", alg.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			out[alg.Name()+":"+e.Name()] = fi.Size()
		}
	}
	return out
}

// ErrStopWaiting, wrapped into the error of a WaitFor condition, ends the wait at once.
var ErrStopWaiting = errStop

package harness

import (
	"fmt"
	"path/filepath"
	"strings"
)

// pluginsNotNeededV2 are disabled in a version 2 (containerd 1.6) config for the same reasons
// as pluginsNotNeeded.
var pluginsNotNeededV2 = []string{
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.zfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.snapshotter.v1.aufs",
	"io.containerd.tracing.processor.v1.otlp",
	"io.containerd.internal.v1.tracing",
	"io.containerd.internal.v1.restart",
}

// configV2TOML is the version 2 configuration of containerd 1.6/1.7: one CRI plugin
// (io.containerd.grpc.v1.cri) with the registry's config_path under it.
func (c *Containerd) configV2TOML() string {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	var disabled []string
	for _, p := range pluginsNotNeededV2 {
		disabled = append(disabled, q(p))
	}
	return fmt.Sprintf(`version = 2
root = %s
state = %s
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
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %s
      conf_dir = %s
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = %s
`,
		q(c.Root), q(c.State), strings.Join(disabled, ", "),
		q(c.Socket), q(c.Socket+".ttrpc"), q(c.Options.LogLevel),
		q(filepath.Join(c.Dir, "opt")), q(c.Options.ContentSharingPolicy),
		q(filepath.Join(c.Dir, "cni", "bin")), q(filepath.Join(c.Dir, "cni", "net.d")),
		q(c.Options.HostsDir))
}

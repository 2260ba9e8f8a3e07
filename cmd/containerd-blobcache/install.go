package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/containerd-blobcache/containerd-blobcache/internal/install"
)

const installUsage = `
  containerd-blobcache install [--mode mirror|proxy] [--hosts-dir DIR]
                               [--containerd-config FILE] [--registry HOST]...
                               [--config FILE] [--dry-run] [--fix]
      Point containerd at the daemon: write hosts.toml (_default, or each
      --registry), check containerd's config.toml and, with --fix (or --yes),
      fix what would keep containerd from using the cache. --dry-run prints
      the diff and changes nothing. Exits 1 while a problem is left.
      --mode proxy (containerd 2.x only; refused for a 1.x config) also makes
      the daemon containerd's content store and differ: [proxy_plugins]
      content and diff entries, the transfer service's unpack_config differ,
      the diff service's default list, and, in the daemon's --config file,
      [content] and [diff] enabled.
  containerd-blobcache uninstall [same flags]
      Undo install: restore the backups, remove what install created.
`

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func installCmd(uninstall bool, args []string, stdout, stderr io.Writer) error {
	name := "install"
	if uninstall {
		name = "uninstall"
	}
	fs := newFlags(name, stderr)
	mode := fs.String("mode", "mirror", "mirror (hosts.toml only) or proxy (also containerd's content store and differ)")
	hostsDir := fs.String("hosts-dir", "", "containerd's hosts directory (default: the config's config_path, else "+install.DefaultHostsDir+")")
	ctrdConfig := fs.String("containerd-config", install.DefaultContainerdConfig, "containerd's config.toml to check (empty: do not check)")
	daemonConfig := fs.String("config", "", "the daemon's configuration, for the mirror address and content socket; proxy mode checks (and with --fix sets) content and diff enabled in it (default: built-in defaults)")
	mirrorURL := fs.String("mirror-url", "", "the mirror's URL in hosts.toml (default: http:// + mirror.address)")
	var registries stringList
	fs.Var(&registries, "registry", "write hosts.toml for this registry (repeatable; default: _default, every registry)")
	dryRun := fs.Bool("dry-run", false, "print the changes as a diff, change nothing")
	fix := fs.Bool("fix", false, "fix containerd's config.toml (a backup is kept)")
	yes := fs.Bool("yes", false, "same as --fix")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", name, fs.Args())}
	}
	cfg, err := loadConfig(*daemonConfig)
	if err != nil {
		return err
	}
	opts := install.Options{
		Mode:             install.Mode(*mode),
		HostsDir:         *hostsDir,
		ContainerdConfig: *ctrdConfig,
		MirrorURL:        *mirrorURL,
		ContentAddress:   cfg.Content.Address,
		DaemonConfig:     *daemonConfig,
		Registries:       registries,
		Fix:              *fix || *yes,
	}
	if opts.MirrorURL == "" {
		opts.MirrorURL = "http://" + cfg.Mirror.Address
	}
	plan := install.Install
	if uninstall {
		plan = install.Uninstall
	}
	p, err := plan(opts)
	if err != nil {
		return err
	}
	if *dryRun {
		io.WriteString(stdout, p.Diff())
	} else if err := p.Apply(); err != nil {
		return err
	}
	verb := "changed"
	if *dryRun {
		verb = "would change"
	}
	configChanged, daemonChanged := false, false
	for _, c := range p.Changes {
		fmt.Fprintf(stderr, "%s %s\n", verb, c.Path)
		configChanged = configChanged || c.Path == opts.ContainerdConfig
		daemonChanged = daemonChanged || (opts.DaemonConfig != "" && c.Path == opts.DaemonConfig)
	}
	if len(p.Changes) == 0 {
		fmt.Fprintln(stderr, "nothing to change")
	}
	for _, n := range p.Notes {
		fmt.Fprintf(stderr, "note: %s\n", n)
	}
	for i, f := range p.Findings {
		state := "fixed"
		if *dryRun {
			state = "would fix"
		}
		if !p.Fixed[i] {
			state = "PROBLEM"
		}
		fmt.Fprintf(stderr, "%s: %s\n", state, f.Problem)
		if !p.Fixed[i] && f.Fix != "" {
			fmt.Fprintf(stderr, "  fix with --fix: %s\n", f.Fix)
		}
	}
	if daemonChanged && !*dryRun {
		fmt.Fprintf(stderr, "restart containerd-blobcache to read %s, before containerd\n", opts.DaemonConfig)
	}
	if configChanged && !*dryRun {
		fmt.Fprintf(stderr, "restart containerd to read %s (hosts.toml files are read at every pull)\n", opts.ContainerdConfig)
	}
	if !uninstall {
		if left := p.Unresolved(); len(left) > 0 {
			return errors.New("containerd will not use the cache until the problems above are fixed")
		}
	}
	return nil
}

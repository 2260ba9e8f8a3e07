// Command containerd-blobcache is the node-local pull-through cache daemon for containerd and
// its administration commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"

	"github.com/containerd-blobcache/containerd-blobcache/cmd/containerd-blobcache/server"
	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/internal/version"
)

const usage = `containerd-blobcache: a node-local pull-through cache for containerd

Usage:
  containerd-blobcache serve [--config FILE] [--root DIR] [--log-level LEVEL]
                             [--content-address SOCKET] [--admin-address SOCKET]
      Run the daemon. Without --config it runs on the embedded defaults
      (see "config default"). --content-address serves containerd's content
      API on SOCKET (content.enabled and content.address).
  containerd-blobcache config default
      Print the complete default configuration, with a comment for every key.
  containerd-blobcache config check --config FILE
      Check a configuration file and print the configuration it results in.
  containerd-blobcache version
      Print the version.

Commands for a running daemon (over its admin socket; --address SOCKET or
--config FILE to find it, --json for JSON output):
  containerd-blobcache stats
      Store size and limit, counts, hit ratio and bytes per registry.
  containerd-blobcache ls [tags|manifests|blobs] [--registry R] [--repository R]
                          [--digest PREFIX] [--limit N]
      What is cached, most recently used first.
  containerd-blobcache gc [--target SIZE]
      Evict least recently used blobs down to SIZE (default the low watermark).
  containerd-blobcache verify [DIGEST...]
      Re-hash blobs (all by default); quarantine corrupt ones.
  containerd-blobcache rm DIGEST | REGISTRY | REGISTRY/REPOSITORY[:TAG]
      Forget a blob, a tag, a repository or a registry.
  containerd-blobcache prefetch [--platform P] IMAGE...
      Fetch images into the cache the way a pull would.
` + installUsage

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit code: 0 success, 1 failure, 2 usage.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stderr)
	case "config":
		err = configCmd(args[1:], stdout, stderr)
	case "install", "uninstall":
		err = installCmd(args[0] == "uninstall", args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "containerd-blobcache %s\n", version.Version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		if cmd, ok := adminCommands[args[0]]; ok {
			err = cmd(args[1:], stdout, stderr)
			break
		}
		fmt.Fprintf(stderr, "containerd-blobcache: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err == nil {
		return 0
	}
	// -h: the flag set printed the command's usage, which is the whole answer.
	if !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stderr, "containerd-blobcache: %s\n", forTerminal(err))
	}
	var uerr usageError
	if errors.As(err, &uerr) {
		return 2
	}
	return 1
}

// usageError is a command line that is wrong (exit code 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// newFlags is a command's flag set. A parse error is printed once, by run, after the
// command's usage: the flag package would print it a second time, before the usage, so its
// own output is discarded and Usage writes to stderr.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage of %s:\n", name)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// loadConfig reads --config over the defaults, or the defaults alone.
func loadConfig(file string) (config.Config, error) {
	if file == "" {
		return config.Default(), nil
	}
	return config.Load(file)
}

func serve(args []string, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	configFile := fs.String("config", "", "configuration file (TOML); embedded defaults when not given")
	root := fs.String("root", "", "state directory (overrides the config's root)")
	level := fs.String("log-level", "", "log level (overrides the config's log_level)")
	contentAddress := fs.String("content-address", "", "serve the content API on this unix socket (sets content.enabled and content.address)")
	adminAddress := fs.String("admin-address", "", "serve the admin API on this unix socket (sets admin.address)")
	peerListen := fs.String("peer-listen", "", "serve the cluster tier's peer listener on this host:port, the node's address (sets peer.enabled and peer.listen)")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("serve takes no arguments, got %q", fs.Args())}
	}
	cfg, err := loadConfig(*configFile)
	if err != nil {
		return err
	}
	if *root != "" {
		cfg.Root = *root
	}
	if *level != "" {
		cfg.LogLevel = *level
	}
	if *contentAddress != "" {
		cfg.Content.Enabled = true
		cfg.Content.Address = *contentAddress
	}
	if *adminAddress != "" {
		cfg.Admin.Address = *adminAddress
	}
	if *peerListen != "" {
		cfg.Peer.Enabled = true
		cfg.Peer.Listen = *peerListen
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := log.SetLevel(cfg.LogLevel); err != nil {
		return fmt.Errorf("log_level: %w", err)
	}
	if err := log.SetFormat(log.TextFormat); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("daemon", "containerd-blobcache"))

	srv, err := server.New(ctx, cfg)
	if err != nil {
		return err
	}
	return srv.Serve(ctx)
}

func configCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New("config needs a subcommand: default or check")}
	}
	switch args[0] {
	case "default":
		if len(args) > 1 {
			return usageError{fmt.Errorf("config default takes no arguments")}
		}
		_, err := io.WriteString(stdout, config.DefaultTOML)
		return err
	case "check":
		fs := newFlags("config check", stderr)
		configFile := fs.String("config", "", "configuration file (TOML) to check")
		if err := fs.Parse(args[1:]); err != nil {
			return usageError{err}
		}
		if *configFile == "" {
			return usageError{errors.New("config check needs --config FILE")}
		}
		cfg, err := config.Load(*configFile)
		if err != nil {
			return err
		}
		return config.Write(stdout, cfg)
	default:
		return usageError{fmt.Errorf("unknown config subcommand %q", args[0])}
	}
}

package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// Mode is how containerd uses the daemon.
type Mode string

const (
	// ModeMirror: hosts.toml only (containerd falls back to the registry without the daemon).
	ModeMirror Mode = "mirror"
	// ModeProxy: the mirror plus the daemon's content API as containerd's content store.
	ModeProxy Mode = "proxy"
)

// BackupSuffix names the copy of a file taken before install first changed it.
const BackupSuffix = ".blobcache-backup"

// Defaults for a node.
const (
	DefaultHostsDir         = "/etc/containerd/certs.d"
	DefaultContainerdConfig = "/etc/containerd/config.toml"
)

// Options say what to install.
type Options struct {
	Mode Mode
	// HostsDir is the certs.d directory; empty: the config's config_path when it names one
	// directory, else DefaultHostsDir.
	HostsDir string
	// ContainerdConfig is containerd's config.toml; empty: not checked.
	ContainerdConfig string
	// MirrorURL is the daemon's mirror, "http://127.0.0.1:5055" by default.
	MirrorURL string
	// ContentAddress is the daemon's content socket (proxy mode).
	ContentAddress string
	// DaemonConfig is the daemon's own config.toml; in proxy mode it must enable the content
	// and diff APIs (--fix sets them).
	DaemonConfig string
	// Registries get a hosts.toml each; empty: _default (every registry without its own).
	Registries []string
	// Fix lets install change containerd's config.toml.
	Fix bool
}

// FileChange is one file written or removed.
type FileChange struct {
	Path   string
	Before string // "" when the file does not exist
	After  string
	Remove bool
	// Existed: the file is there now (Before is its content).
	Existed bool
	// Backup is where Before is saved first (install), or the backup to delete (uninstall).
	Backup       string
	RemoveBackup bool
}

// Plan is what install or uninstall would do.
type Plan struct {
	HostsDir string
	Changes  []FileChange
	// Findings are what keeps containerd from using the cache; Fixed says which the plan
	// fixes (the rest are left to the operator).
	Findings []Finding
	Fixed    []bool
	Notes    []string
}

// Unresolved reports the findings the plan does not fix.
func (p *Plan) Unresolved() []Finding {
	var out []Finding
	for i, f := range p.Findings {
		if !p.Fixed[i] {
			out = append(out, f)
		}
	}
	return out
}

func (o *Options) normalize() error {
	if o.Mode == "" {
		o.Mode = ModeMirror
	}
	if o.Mode != ModeMirror && o.Mode != ModeProxy {
		return fmt.Errorf("mode %q is not mirror or proxy: %w", o.Mode, errdefs.ErrInvalidArgument)
	}
	if o.MirrorURL == "" {
		o.MirrorURL = "http://" + config.DefaultMirrorAddress
	}
	if !strings.HasPrefix(o.MirrorURL, "http://") && !strings.HasPrefix(o.MirrorURL, "https://") {
		return fmt.Errorf("mirror URL %q needs http:// (the daemon speaks plain HTTP): %w", o.MirrorURL, errdefs.ErrInvalidArgument)
	}
	o.MirrorURL = strings.TrimSuffix(o.MirrorURL, "/")
	if o.ContentAddress == "" {
		o.ContentAddress = config.DefaultContentAddress
	}
	for _, r := range o.Registries {
		if r != DefaultHostsName {
			if err := config.ValidRegistryHost(r); err != nil {
				return fmt.Errorf("registry: %w", err)
			}
		}
	}
	if len(o.Registries) == 0 {
		o.Registries = []string{DefaultHostsName}
	}
	return nil
}

func readOptional(path string) (string, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return string(b), true, nil
}

// resolveHostsDir picks the hosts directory: the one asked for, or the one containerd
// already reads, or the default.
func resolveHostsDir(opts Options, cfgText string) string {
	if opts.HostsDir != "" {
		return filepath.Clean(opts.HostsDir)
	}
	if cp, err := ConfigPath(cfgText); err == nil && cp != "" {
		return filepath.Clean(strings.Split(cp, string(filepath.ListSeparator))[0])
	}
	return DefaultHostsDir
}

// Install plans the installation; nothing is written until Apply.
func Install(opts Options) (*Plan, error) {
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	var cfgText string
	var cfgExists bool
	if opts.ContainerdConfig != "" {
		var err error
		cfgText, cfgExists, err = readOptional(opts.ContainerdConfig)
		if err != nil {
			return nil, fmt.Errorf("read containerd config: %w", err)
		}
	}
	if opts.Mode == ModeProxy && cfgExists {
		// Refused before anything is planned: nothing of proxy mode would work.
		if doc, err := decode(cfgText); err == nil {
			if v := configVersion(doc); v == 2 {
				return nil, fmt.Errorf("%s: %w", opts.ContainerdConfig, proxyVersionError(v))
			}
		}
	}
	p := &Plan{HostsDir: resolveHostsDir(opts, cfgText)}
	// --fix comments registry.mirrors out: their endpoints go into hosts.toml after the cache.
	var carried map[string][]string
	if opts.Fix && cfgExists {
		carried = mirrorEndpoints(cfgText, opts.MirrorURL)
	}
	for _, r := range opts.Registries {
		path := filepath.Join(p.HostsDir, r, "hosts.toml")
		before, existed, err := readOptional(path)
		if err != nil {
			return nil, err
		}
		after, err := installHosts(before, opts.MirrorURL, carried[r])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if after != before {
			p.Changes = append(p.Changes, FileChange{Path: path, Before: before, After: after, Existed: existed, Backup: backupFor(path, existed)})
		}
	}
	if err := p.planRegistryHosts(opts, carried); err != nil {
		return nil, err
	}
	if opts.Mode == ModeProxy {
		if err := p.planDaemonConfig(opts.DaemonConfig, opts.Fix); err != nil {
			return nil, err
		}
	}
	if opts.ContainerdConfig == "" {
		return p, nil
	}
	if opts.Mode == ModeProxy && cfgExists {
		if note := contentStoreNote(cfgText); note != "" {
			p.Notes = append(p.Notes, note)
		}
	}
	if !cfgExists {
		p.Notes = append(p.Notes, fmt.Sprintf("%s does not exist: containerd runs on its defaults, which set no config_path. Write it with `containerd config default > %s`, then run install again", opts.ContainerdConfig, opts.ContainerdConfig))
		p.addFinding(Finding{Problem: opts.ContainerdConfig + " does not exist, so config_path is not set"}, false)
		return p, nil
	}
	check := configCheck{mode: opts.Mode, hostsDir: p.HostsDir, contentAddress: opts.ContentAddress}
	findings, fixes, err := check.analyze(cfgText)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", opts.ContainerdConfig, err)
	}
	fixed := make([]bool, len(findings))
	// The containerd config's findings are added whatever happens below.
	defer func() {
		for i, f := range findings {
			p.addFinding(f, fixed[i])
		}
	}()
	if !opts.Fix {
		return p, nil
	}
	lines := splitLines(cfgText)
	for i, fix := range fixes {
		if fix == nil {
			continue
		}
		next, err := fix(lines)
		if err != nil {
			p.Notes = append(p.Notes, fmt.Sprintf("%s: cannot fix %q: %v", opts.ContainerdConfig, findings[i].Problem, err))
			continue
		}
		lines = next
		fixed[i] = true
	}
	after := joinLines(lines)
	// Every edit is checked by parsing the result and analysing it again.
	left, _, err := check.analyze(after)
	if err != nil {
		return nil, fmt.Errorf("%s: the edited file does not parse (%v); change it by hand", opts.ContainerdConfig, err)
	}
	for _, f := range left {
		for i, g := range findings {
			if g.Problem == f.Problem && fixed[i] {
				return nil, fmt.Errorf("%s: the edit did not fix %q; change it by hand", opts.ContainerdConfig, f.Problem)
			}
		}
	}
	if after != cfgText {
		p.Changes = append(p.Changes, FileChange{Path: opts.ContainerdConfig, Before: cfgText, After: after, Existed: true, Backup: backupFor(opts.ContainerdConfig, true)})
	}
	return p, nil
}

// backupFor is where a file's original goes: only a file that exists and has no backup yet
// (a second install must not overwrite the original with the installed version).
func backupFor(path string, existed bool) string {
	if !existed {
		return ""
	}
	if _, err := os.Lstat(path + BackupSuffix); err == nil {
		return ""
	}
	return path + BackupSuffix
}

// Uninstall plans the removal: files install created are removed, files it changed get their
// backup back. A file edited after install keeps those edits: the installer's lines are taken
// out and the backup is left in place, with a note.
func Uninstall(opts Options) (*Plan, error) {
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	var cfgText string
	if opts.ContainerdConfig != "" {
		var err error
		cfgText, _, err = readOptional(opts.ContainerdConfig)
		if err != nil {
			return nil, err
		}
	}
	p := &Plan{HostsDir: resolveHostsDir(opts, revertConfig(cfgText))}
	// Every hosts.toml install wrote into, including those of other registries it gave the
	// cache to or carried registry.mirrors into.
	for _, r := range installedRegistries(p.HostsDir, opts.Registries) {
		path := filepath.Join(p.HostsDir, r, "hosts.toml")
		current, existed, err := readOptional(path)
		if err != nil {
			return nil, err
		}
		if !existed {
			continue
		}
		reverted, remove := uninstallHosts(current)
		p.addRevert(path, current, reverted, remove)
	}
	if opts.ContainerdConfig != "" && cfgText != "" {
		p.addRevert(opts.ContainerdConfig, cfgText, revertConfig(cfgText), false)
	}
	if opts.DaemonConfig != "" {
		// Only what install marked is taken out: a daemon config install never touched
		// stays as it is.
		text, _, err := readOptional(opts.DaemonConfig)
		if err != nil {
			return nil, err
		}
		if text != "" {
			p.addRevert(opts.DaemonConfig, text, revertConfig(text), false)
		}
	}
	return p, nil
}

func (p *Plan) addRevert(path, current, reverted string, remove bool) {
	backup, hasBackup, _ := readOptional(path + BackupSuffix)
	c := FileChange{Path: path, Before: current, After: reverted, Remove: remove, Existed: true}
	if hasBackup {
		c.Backup = path + BackupSuffix
		// The blank lines install put before the tables it appended are not marked: a file
		// that ended with a blank line of its own reverts to one fewer. That is still the
		// unedited original, so the backup's bytes come back.
		if reverted == backup || remove || strings.TrimRight(reverted, "\n") == strings.TrimRight(backup, "\n") {
			c.After, c.Remove, c.RemoveBackup = backup, false, true
		} else {
			p.Notes = append(p.Notes, fmt.Sprintf("%s was edited after install: its installer lines are taken out, and the original stays in %s", path, c.Backup))
		}
	}
	if c.After != c.Before || c.Remove || c.RemoveBackup {
		p.Changes = append(p.Changes, c)
	}
}

// Apply carries the plan out: backups first, then each file replaced atomically (written
// beside it and renamed), keeping the file's mode.
func (p *Plan) Apply() error {
	for _, c := range p.Changes {
		mode := fs.FileMode(0o644)
		if fi, err := os.Stat(c.Path); err == nil {
			mode = fi.Mode().Perm()
		}
		if c.Backup != "" && !c.RemoveBackup {
			if err := writeAtomic(c.Backup, c.Before, mode); err != nil {
				return fmt.Errorf("back up %s: %w", c.Path, err)
			}
		}
		if c.Remove {
			if err := os.Remove(c.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			// The registry's directory goes too when install made it and nothing else is in it.
			_ = os.Remove(filepath.Dir(c.Path))
		} else {
			if err := os.MkdirAll(filepath.Dir(c.Path), 0o755); err != nil {
				return err
			}
			if err := writeAtomic(c.Path, c.After, mode); err != nil {
				return err
			}
		}
		if c.RemoveBackup {
			if err := os.Remove(c.Backup); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

func writeAtomic(path, text string, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(text); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

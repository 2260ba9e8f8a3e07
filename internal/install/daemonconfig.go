package install

import (
	"fmt"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// planDaemonConfig checks, in proxy mode, that the daemon's own configuration serves what
// containerd is pointed at: the content API and the diff API on its socket. With fix, the
// missing keys are set (marked, so that uninstall takes them out again).
func (p *Plan) planDaemonConfig(path string, fix bool) error {
	if path == "" {
		p.addFinding(Finding{Problem: "the daemon's configuration file is not given (--config): proxy mode needs [content] enabled = true and [diff] enabled = true in it"}, false)
		return nil
	}
	text, exists, err := readOptional(path)
	if err != nil {
		return fmt.Errorf("read the daemon's config: %w", err)
	}
	if !exists {
		p.addFinding(Finding{Problem: fmt.Sprintf("the daemon's configuration %s does not exist: write it (containerd-blobcache config default > %s) and run install again", path, path)}, false)
		return nil
	}
	cfg, err := config.Parse([]byte(text))
	if err != nil {
		return fmt.Errorf("the daemon's config %s: %w", path, err)
	}
	lines := splitLines(text)
	for _, need := range []struct {
		table   string
		enabled bool
		why     string
	}{
		{"content", cfg.Content.Enabled, "containerd's content store would be a socket nobody serves"},
		{"diff", cfg.Diff.Enabled, "containerd's unpacks would be sent to a diff API the daemon does not serve"},
	} {
		if need.enabled {
			continue
		}
		f := Finding{
			Problem: fmt.Sprintf("%s: %s.enabled is false: %s", path, need.table, need.why),
			Fix:     fmt.Sprintf("set [%s] enabled = true in %s", need.table, path),
		}
		if !fix {
			p.addFinding(f, false)
			continue
		}
		next, err := setKey(lines, []string{need.table}, "enabled", "true")
		if err != nil {
			p.Notes = append(p.Notes, fmt.Sprintf("%s: cannot fix %q: %v", path, f.Problem, err))
			p.addFinding(f, false)
			continue
		}
		lines = next
		p.addFinding(f, true)
	}
	after := joinLines(lines)
	if after == text {
		return nil
	}
	// The edit is checked the way the daemon will read the file.
	if got, err := config.Parse([]byte(after)); err != nil || !got.Content.Enabled || !got.Diff.Enabled {
		return fmt.Errorf("the daemon's config %s: the edit does not enable content and diff (%v); change it by hand", path, err)
	}
	p.Changes = append(p.Changes, FileChange{Path: path, Before: text, After: after, Existed: true, Backup: backupFor(path, true)})
	return nil
}

func (p *Plan) addFinding(f Finding, fixed bool) {
	p.Findings = append(p.Findings, f)
	p.Fixed = append(p.Fixed, fixed)
}

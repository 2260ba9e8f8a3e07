package install

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
)

// WasPrefix starts a line the installer commented out; uninstall puts it back.
const WasPrefix = "# containerd-blobcache was: "

// ContentPluginID is containerd's built-in content store, disabled in proxy mode.
const ContentPluginID = "io.containerd.content.v1.content"

// ProxyPluginName is the [proxy_plugins] entry of type content install writes (not a
// built-in plugin ID).
const ProxyPluginName = "blobcache"

// Finding is something in containerd's config.toml that keeps the cache from being used.
type Finding struct {
	Problem string
	// Fix says what --fix changes; empty when it must be changed by hand.
	Fix string
}

// registryKey is the CRI registry table of a config version: the CRI plugin was split in
// containerd 2.0 (version 3), and version 4 (containerd 2.4) keeps the same plugin IDs.
func registryKey(version int64) []string {
	if version == 2 {
		return []string{"plugins", "io.containerd.grpc.v1.cri", "registry"}
	}
	return []string{"plugins", "io.containerd.cri.v1.images", "registry"}
}

func configVersion(doc map[string]any) int64 {
	if v, ok := doc["version"].(int64); ok {
		return v
	}
	return 1
}

// ConfigPath is containerd's CRI config_path in a config.toml text ("" when unset).
func ConfigPath(text string) (string, error) {
	doc, err := decode(text)
	if err != nil {
		return "", err
	}
	v, _ := lookup(doc, registryKey(configVersion(doc))...)
	m, _ := v.(map[string]any)
	s, _ := m["config_path"].(string)
	return s, nil
}

type configCheck struct {
	mode           Mode
	hostsDir       string
	contentAddress string
}

// analyze lists the findings in a config.toml text, each with the edit that fixes it (nil
// when it cannot be fixed automatically).
func (c configCheck) analyze(text string) ([]Finding, []func([]string) ([]string, error), error) {
	doc, err := decode(text)
	if err != nil {
		return nil, nil, fmt.Errorf("parse: %w", err)
	}
	var findings []Finding
	var fixes []func([]string) ([]string, error)
	add := func(f Finding, fix func([]string) ([]string, error)) {
		if fix == nil {
			f.Fix = ""
		}
		findings = append(findings, f)
		fixes = append(fixes, fix)
	}
	version := configVersion(doc)
	if version < 2 || version > 4 {
		add(Finding{Problem: fmt.Sprintf("config version %d is not one install knows (2, 3 or 4); run `containerd config migrate` first", version)}, nil)
		return findings, fixes, nil
	}
	regKey := registryKey(version)
	regName := tableName(regKey)
	reg, _ := lookup(doc, regKey...)
	regMap, _ := reg.(map[string]any)
	cp, _ := regMap["config_path"].(string)
	setPath := func(lines []string) ([]string, error) { return setKey(lines, regKey, "config_path", quote(c.hostsDir)) }
	switch {
	case cp == "":
		add(Finding{
			Problem: fmt.Sprintf("%s config_path is not set: containerd's CRI ignores every hosts.toml", regName),
			Fix:     fmt.Sprintf("set config_path = %q", c.hostsDir),
		}, setPath)
	case strings.Contains(cp, string(filepath.ListSeparator)):
		add(Finding{
			Problem: fmt.Sprintf("%s config_path %q lists several directories: containerd 2.x's transfer service does not split the list and then reads no hosts.toml at all", regName, cp),
			Fix:     fmt.Sprintf("set config_path = %q", c.hostsDir),
		}, setPath)
	case filepath.Clean(cp) != filepath.Clean(c.hostsDir):
		add(Finding{
			Problem: fmt.Sprintf("%s config_path is %q, but the mirror's hosts.toml is in %q", regName, cp, c.hostsDir),
			Fix:     fmt.Sprintf("set config_path = %q (or rerun install with --hosts-dir %s)", c.hostsDir, cp),
		}, setPath)
	}
	if mirrors, ok := regMap["mirrors"].(map[string]any); ok && len(mirrors) > 0 {
		names := sortedKeys(mirrors)
		add(Finding{
			Problem: fmt.Sprintf("%s.mirrors is set for %s: containerd refuses mirrors together with config_path (the CRI plugin does not start), and never uses both", regName, strings.Join(names, ", ")),
			Fix:     "comment out the registry.mirrors tables (hosts.toml replaces them)",
		}, func(lines []string) ([]string, error) {
			return commentOutTables(lines, append(regKey, "mirrors"), names)
		})
	}
	if c.mode != ModeProxy {
		return findings, fixes, nil
	}
	if version < 3 {
		// Install refuses this before analysing (proxyVersionError); a config edited by
		// hand in between is reported, not fixed.
		add(Finding{Problem: proxyVersionError(version).Error()}, nil)
		return findings, fixes, nil
	}
	c.analyzeProxy(doc, add)
	return findings, fixes, nil
}

func sortedKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// tableName writes a key as a table header would name it.
func tableName(key []string) string {
	parts := make([]string, len(key))
	for i, k := range key {
		if strings.Trim(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == "" {
			parts[i] = k
		} else {
			parts[i] = quote(k)
		}
	}
	return "[" + strings.Join(parts, ".") + "]"
}

// replaceLine comments out line i (WasPrefix) and puts newLine, marked, after it.
func replaceLine(lines []string, i int, newLine string) []string {
	out := append([]string{}, lines[:i]...)
	out = append(out, WasPrefix+lines[i], newLine+" "+Marker)
	return append(out, lines[i+1:]...)
}

// setKey sets name = value in the table key: replaces a one-line value, inserts the key after
// the header, or appends the table.
func setKey(lines []string, key []string, name, value string) ([]string, error) {
	start, end, ok := tableRange(lines, key)
	if !ok {
		return appendTable(lines, key, []string{name + " = " + value}), nil
	}
	return setKeyIn(lines, start, end, tableName(key), name, value)
}

// setTopLevel sets a top-level key: replaces its one-line value or adds it before the first
// table.
func setTopLevel(lines []string, name, value string) ([]string, error) {
	end := topLevelEnd(lines)
	i, oneLine := findKeyLine(lines, 0, end, name)
	switch {
	case i < 0:
		at := end
		for at > 0 && strings.TrimSpace(lines[at-1]) == "" {
			at--
		}
		out := append([]string{}, lines[:at]...)
		out = append(out, name+" = "+value+" "+Marker)
		return append(out, lines[at:]...), nil
	case !oneLine:
		return nil, fmt.Errorf("%s spans several lines: change it by hand", name)
	default:
		return replaceLine(lines, i, name+" = "+value), nil
	}
}

func appendTable(lines []string, key []string, body []string) []string {
	out := append([]string{}, lines...)
	if len(out) > 0 && strings.TrimSpace(out[len(out)-1]) != "" {
		out = append(out, "")
	}
	out = append(out, tableName(key)+" "+Marker)
	for _, b := range body {
		out = append(out, "  "+b+" "+Marker)
	}
	return out
}

// commentOutTables comments out the tables parent.<name> (and their sub-tables).
func commentOutTables(lines []string, parent []string, names []string) ([]string, error) {
	out := append([]string{}, lines...)
	hs := tableHeaders(out)
	covered := map[string]bool{}
	for i, h := range hs {
		if len(h.key) <= len(parent) || !keyHasPrefix(h.key, parent) {
			continue
		}
		covered[h.key[len(parent)]] = true
		end := len(out)
		if i+1 < len(hs) {
			end = hs[i+1].line
		}
		for j := h.line; j < end; j++ {
			if strings.TrimSpace(out[j]) != "" && !strings.HasPrefix(out[j], WasPrefix) {
				out[j] = WasPrefix + out[j]
			}
		}
	}
	for _, n := range names {
		if !covered[n] {
			return nil, fmt.Errorf("%s.%s is not written as a table of its own: change it by hand", tableName(parent), quote(n))
		}
	}
	return out, nil
}

// revertConfig undoes every edit: drops marked lines and restores commented-out ones.
func revertConfig(text string) string {
	var out []string
	for _, l := range splitLines(text) {
		if strings.HasSuffix(strings.TrimRight(l, " \t"), Marker) {
			continue
		}
		if rest, ok := strings.CutPrefix(l, WasPrefix); ok {
			l = rest
		}
		out = append(out, l)
	}
	// appendTable put a blank line before its table.
	for len(out) > 0 && strings.TrimSpace(out[len(out)-1]) == "" && !strings.HasSuffix(text, "\n\n") {
		out = out[:len(out)-1]
	}
	return joinLines(out)
}

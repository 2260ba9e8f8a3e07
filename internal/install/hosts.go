package install

import (
	"fmt"
	"strings"
)

// DefaultHostsName is the hosts.toml directory containerd reads for every registry that has
// no directory of its own.
const DefaultHostsName = "_default"

// newFileLine heads a hosts.toml the installer created; it goes with the file on uninstall.
const newFileLine = "# The containerd-blobcache mirror, written by install and removed by uninstall. " + Marker

// mirrorBlock is the mirror's [host] table: pull and resolve through it, and a short dial
// timeout so that a stopped daemon costs one refused connection.
func mirrorBlock(mirrorURL string) []string {
	return []string{
		"[host." + quote(mirrorURL) + "] " + Marker,
		`  capabilities = ["pull", "resolve"] ` + Marker,
		`  dial_timeout = "1s" ` + Marker,
	}
}

// withoutMarked drops the lines the installer wrote.
func withoutMarked(lines []string) []string {
	var out []string
	for _, l := range lines {
		if !strings.HasSuffix(strings.TrimRight(l, " \t"), Marker) {
			out = append(out, l)
		}
	}
	return out
}

// installHosts returns the hosts.toml text with the mirror tried first, then the carried
// hosts (registry.mirrors endpoints) the file does not name yet. existing is the current
// text ("" when the file does not exist). A file install already wrote the mirror into is
// left as it is, and so is a mirror block the operator wrote themselves (without the marker).
func installHosts(existing, mirrorURL string, carried []string) (string, error) {
	if strings.Contains(existing, mirrorBlock(mirrorURL)[0]) {
		return existing, nil
	}
	base := withoutMarked(splitLines(existing))
	doc, err := decode(joinLines(base))
	if err != nil {
		return "", fmt.Errorf("parse: %w", err)
	} else if _, ok := lookup(doc, "host", mirrorURL); ok {
		return joinLines(base), nil
	}
	block := mirrorBlock(mirrorURL)
	headed := false
	for _, u := range carried {
		if _, ok := lookup(doc, "host", u); ok {
			continue
		}
		if !headed {
			block = append(block, carriedLine)
			headed = true
		}
		block = append(block, carriedBlock(u)...)
	}
	var out []string
	if strings.TrimSpace(joinLines(base)) == "" {
		out = append([]string{newFileLine}, block...)
	} else {
		// containerd tries the hosts in the order of the file: the mirror goes before the
		// first [host] table, or at the end when there is none (the server comes last anyway).
		at := len(base)
		for _, h := range tableHeaders(base) {
			if len(h.key) > 0 && h.key[0] == "host" {
				at = h.line
				break
			}
		}
		out = append(out, base[:at]...)
		if at == len(base) && at > 0 && strings.TrimSpace(base[at-1]) != "" {
			out = append(out, "")
		}
		out = append(out, block...)
		out = append(out, base[at:]...)
	}
	text := joinLines(out)
	doc, err = decode(text)
	if err != nil {
		return "", fmt.Errorf("the edited file does not parse (%v); add the mirror by hand", err)
	}
	if _, ok := lookup(doc, "host", mirrorURL); !ok {
		return "", fmt.Errorf("the edited file does not name the mirror; add it by hand")
	}
	return text, nil
}

// uninstallHosts removes the lines installHosts added. remove is true when nothing but the
// installer's lines was in the file (it created it).
func uninstallHosts(existing string) (text string, remove bool) {
	lines := splitLines(existing)
	base := withoutMarked(lines)
	if len(base) == len(lines) {
		return existing, false
	}
	if strings.TrimSpace(joinLines(base)) == "" {
		return "", true
	}
	return joinLines(base), false
}

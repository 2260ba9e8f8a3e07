package install

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"
)

// Marker ends every line the installer writes, so that an operator sees what it wrote.
const Marker = "# containerd-blobcache"

// header is a table header line of a TOML file.
type header struct {
	line  int      // index in the file's lines
	key   []string // the table's key, unquoted
	array bool     // [[array of tables]]
}

// splitLines splits text into lines without their newline; a final newline makes no extra
// line.
func splitLines(text string) []string {
	if text == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(text, "\n"), "\n")
}

func joinLines(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// tableHeaders finds the table headers. Each candidate line is decoded on its own by the
// TOML parser, so every quoting style ('a.b', "a.b", bare, spaces around dots) is read the
// way containerd reads it. Lines inside multi-line strings are not headers: they are skipped
// by tracking the triple quotes.
func tableHeaders(lines []string) []header {
	var out []header
	inMulti := ""
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if inMulti != "" {
			if strings.Count(t, inMulti)%2 == 1 {
				inMulti = ""
			}
			continue
		}
		for _, q := range []string{`"""`, `'''`} {
			if strings.Count(t, q)%2 == 1 {
				inMulti = q
			}
		}
		if !strings.HasPrefix(t, "[") {
			continue
		}
		var md toml.MetaData
		var err error
		var v map[string]any
		md, err = toml.Decode(t, &v)
		if err != nil {
			continue
		}
		keys := md.Keys()
		if len(keys) == 0 {
			continue
		}
		out = append(out, header{line: i, key: []string(keys[len(keys)-1]), array: strings.HasPrefix(t, "[[")})
	}
	return out
}

func keyEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func keyHasPrefix(k, prefix []string) bool {
	return len(k) >= len(prefix) && keyEqual(k[:len(prefix)], prefix)
}

// tableRange is the lines of the table with key: from its header to the line before the next
// header (or the end). ok is false when there is no such table.
func tableRange(lines []string, key []string) (start, end int, ok bool) {
	hs := tableHeaders(lines)
	for i, h := range hs {
		if !h.array && keyEqual(h.key, key) {
			end = len(lines)
			if i+1 < len(hs) {
				end = hs[i+1].line
			}
			return h.line, end, true
		}
	}
	return 0, 0, false
}

// topLevelEnd is the index of the first table header (the end of the top-level keys).
func topLevelEnd(lines []string) int {
	if hs := tableHeaders(lines); len(hs) > 0 {
		return hs[0].line
	}
	return len(lines)
}

// findKeyLine finds "name = ..." in lines[start:end] and reports whether its value is on
// that one line (a value the line-based editor can replace).
func findKeyLine(lines []string, start, end int, name string) (idx int, oneLine bool) {
	for i := start; i < end; i++ {
		t := strings.TrimSpace(lines[i])
		k, rest, found := strings.Cut(t, "=")
		if !found || strings.Trim(strings.TrimSpace(k), `"'`) != name {
			continue
		}
		var v map[string]any
		_, err := toml.Decode(name+" = "+strings.TrimSpace(rest), &v)
		return i, err == nil
	}
	return -1, false
}

// quote writes s as a TOML basic string.
func quote(s string) string {
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(map[string]string{"v": s}); err != nil {
		return fmt.Sprintf("%q", s)
	}
	_, v, _ := strings.Cut(strings.TrimSpace(b.String()), "= ")
	return v
}

func quoteList(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// indentOf returns the leading white space of the first non-empty line of lines[start:end],
// or def.
func indentOf(lines []string, start, end int, def string) string {
	for i := start; i < end && i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != "" {
			return lines[i][:len(lines[i])-len(strings.TrimLeft(lines[i], " \t"))]
		}
	}
	return def
}

// decode parses a TOML document into a generic map.
func decode(text string) (map[string]any, error) {
	var v map[string]any
	if _, err := toml.Decode(text, &v); err != nil {
		return nil, err
	}
	return v, nil
}

// lookup walks a decoded document along key.
func lookup(doc map[string]any, key ...string) (any, bool) {
	var cur any = doc
	for _, k := range key {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		cur, ok = m[k]
		if !ok {
			return nil, false
		}
	}
	return cur, true
}

// arrayTableRanges are the lines of each [[key]] table, in file order: from its header to the
// line before the next header (or the end).
func arrayTableRanges(lines []string, key []string) [][2]int {
	hs := tableHeaders(lines)
	var out [][2]int
	for i, h := range hs {
		if h.array && keyEqual(h.key, key) {
			end := len(lines)
			if i+1 < len(hs) {
				end = hs[i+1].line
			}
			out = append(out, [2]int{h.line, end})
		}
	}
	return out
}

// appendArrayTable appends a new [[key]] table with body.
func appendArrayTable(lines []string, key []string, body []string) []string {
	out := appendTable(lines, key, body)
	for i := len(out) - 1; i >= 0; i-- {
		if strings.HasPrefix(out[i], "[") {
			out[i] = "[" + strings.TrimSuffix(out[i], " "+Marker) + "] " + Marker
			break
		}
	}
	return out
}

// setKeyIn sets name = value in the table whose lines are lines[start:end] (start is its
// header): replaces a one-line value or inserts the key after the header.
func setKeyIn(lines []string, start, end int, tableDesc, name, value string) ([]string, error) {
	indent := indentOf(lines, start+1, end, strings.Repeat(" ", 2)+lines[start][:len(lines[start])-len(strings.TrimLeft(lines[start], " \t"))])
	i, oneLine := findKeyLine(lines, start+1, end, name)
	switch {
	case i < 0:
		out := append([]string{}, lines[:start+1]...)
		out = append(out, indent+name+" = "+value+" "+Marker)
		return append(out, lines[start+1:]...), nil
	case !oneLine:
		return nil, fmt.Errorf("%s %s spans several lines: change it by hand", tableDesc, name)
	default:
		return replaceLine(lines, i, lines[i][:len(lines[i])-len(strings.TrimLeft(lines[i], " \t"))]+name+" = "+value), nil
	}
}

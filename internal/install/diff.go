package install

import (
	"fmt"
	"strings"
)

// Diff writes the plan as unified diffs (3 lines of context), one per file, the way
// `diff -u` would show them.
func (p *Plan) Diff() string {
	var b strings.Builder
	for _, c := range p.Changes {
		before, after := c.Before, c.After
		from, to := c.Path, c.Path
		if !c.Existed {
			from = "/dev/null"
		}
		if c.Remove {
			after, to = "", "/dev/null"
		}
		fmt.Fprintf(&b, "--- %s\n+++ %s\n", from, to)
		b.WriteString(unified(splitLines(before), splitLines(after), 3))
		if c.RemoveBackup {
			fmt.Fprintf(&b, "(restored from %s, which is then removed)\n", c.Backup)
		} else if c.Backup != "" && !c.Remove {
			fmt.Fprintf(&b, "(original saved as %s)\n", c.Backup)
		}
	}
	return b.String()
}

type edit struct {
	op   byte // ' ', '-', '+'
	text string
}

// lineEdits is the shortest edit script from a to b (LCS by dynamic programming: config
// files are a few hundred lines).
func lineEdits(a, b []string) []edit {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []edit
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			out = append(out, edit{' ', a[i]})
			i++
			j++
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			out = append(out, edit{'-', a[i]})
			i++
		default:
			out = append(out, edit{'+', b[j]})
			j++
		}
	}
	return out
}

func unified(a, b []string, context int) string {
	edits := lineEdits(a, b)
	var sb strings.Builder
	for start := 0; start < len(edits); {
		// Find the next change.
		k := start
		for k < len(edits) && edits[k].op == ' ' {
			k++
		}
		if k == len(edits) {
			break
		}
		lo := max(k-context, start)
		// Extend the hunk while changes are within 2*context of each other.
		hi := k
		for {
			for hi < len(edits) && edits[hi].op != ' ' {
				hi++
			}
			next := hi
			for next < len(edits) && edits[next].op == ' ' {
				next++
			}
			if next < len(edits) && next-hi <= 2*context {
				hi = next
				continue
			}
			hi = min(hi+context, len(edits))
			break
		}
		// Line numbers of the hunk's start in a and b.
		ai, bi := 1, 1
		for _, e := range edits[:lo] {
			if e.op != '+' {
				ai++
			}
			if e.op != '-' {
				bi++
			}
		}
		var an, bn int
		for _, e := range edits[lo:hi] {
			if e.op != '+' {
				an++
			}
			if e.op != '-' {
				bn++
			}
		}
		if an == 0 {
			ai--
		}
		if bn == 0 {
			bi--
		}
		fmt.Fprintf(&sb, "@@ -%d,%d +%d,%d @@\n", ai, an, bi, bn)
		for _, e := range edits[lo:hi] {
			sb.WriteByte(e.op)
			sb.WriteString(e.text)
			sb.WriteByte('\n')
		}
		start = hi
	}
	return sb.String()
}

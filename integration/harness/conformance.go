package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ConformanceBinary is the OCI distribution-spec conformance suite
// (github.com/opencontainers/distribution-spec/conformance), installed by .ci/install-tools
// next to the other tools.
const ConformanceBinary = "oci-conformance"

// ConformanceTool locates the conformance binary in the tools directory; a missing one stops
// the test as every missing tool does (Unavailable: a failure under CI), with how to install it.
func ConformanceTool(t testing.TB) string {
	t.Helper()
	p := filepath.Join(Tools(t).Dir, ConformanceBinary)
	if !isExecutable(p) {
		Unavailable(t, "%s not found in %s: run `make tools` (.ci/install-tools installs github.com/opencontainers/distribution-spec/conformance)", ConformanceBinary, filepath.Dir(p))
	}
	return p
}

// ConformanceResult is what one run of the suite reported, test by test.
type ConformanceResult struct {
	Passed, Failed, Skipped int
	// FailedTests are the full names of the failed tests with their messages.
	FailedTests []string
	// SkippedTests are the tests the suite skipped with a reason (an API it found
	// unsupported), with the reason.
	SkippedTests []string
	// PassedTests are the full names of the passed tests (and of groups whose tests all passed).
	PassedTests []string
	// Output is the suite's summary on stdout.
	Output string
}

// RunConformance runs the suite against registryHost (plain HTTP) with env (OCI_* settings
// beyond the registry and results directory) and reads its report. A run that reports no
// counts fails the test.
func RunConformance(t testing.TB, registryHost string, env map[string]string) ConformanceResult {
	t.Helper()
	bin := ConformanceTool(t)
	results := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = results
	// The suite reads its configuration from the environment only: nothing of this
	// process's OCI_* variables may leak in.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + results}
	base := map[string]string{
		"OCI_REGISTRY":    registryHost,
		"OCI_TLS":         "disabled",
		"OCI_RESULTS_DIR": results,
		"OCI_LOG":         "warn",
		// An empty file: the default oci-conformance.yaml is looked up in the working directory.
		"OCI_CONFIGURATION": filepath.Join(results, "none.yaml"),
	}
	for k, v := range env {
		base[k] = v
	}
	if err := os.WriteFile(base["OCI_CONFIGURATION"], nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for k, v := range base {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.Output()
	// A failing test makes the suite exit 1; the report says which.
	if ctx.Err() != nil {
		t.Fatalf("conformance suite did not finish in time: %v\n%s", err, out)
	}
	res, rerr := parseReport(string(out))
	if rerr != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("conformance suite reported no results (%v, exit %v):\n%s\n%s", rerr, err, out, stderr)
	}
	res.Output = string(out)
	return res
}

// parseReport reads the summary the suite prints on stdout: the tree of tests with their
// status, then the counts. (The JUnit file is not used: the suite's pinned version crashes
// writing results.yaml, before junit.xml, when push is disabled.)
func parseReport(out string) (ConformanceResult, error) {
	var res ConformanceResult
	counts := map[string]*int{"Pass": &res.Passed, "FAIL": &res.Failed, "Error": &res.Failed, "Skip": &res.Skipped, "Disabled": &res.Skipped}
	found := false
	lines := strings.Split(out, "\n")
	for i, line := range lines {
		trimmed := strings.TrimSpace(line)
		if name, status, ok := strings.Cut(trimmed, ": "); ok && strings.HasPrefix(name, "OCI Conformance Test/") {
			switch status {
			case "Pass":
				res.PassedTests = append(res.PassedTests, name)
			case "FAIL", "Error", "Skip":
				// Only tests with their own errors (the lines after them start with "- ").
				if i+1 < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[i+1]), "- ") {
					entry := name + ": " + truncate(strings.TrimPrefix(strings.TrimSpace(lines[i+1]), "- "), 400)
					if status == "Skip" {
						res.SkippedTests = append(res.SkippedTests, entry)
					} else {
						res.FailedTests = append(res.FailedTests, entry)
					}
				}
			}
			continue
		}
		// "  Pass..........................:         21"
		key, value, ok := strings.Cut(trimmed, ":")
		if !ok {
			continue
		}
		key = strings.TrimRight(key, ".")
		if p, known := counts[key]; known && strings.Contains(trimmed, "....") {
			n, err := strconv.Atoi(strings.TrimSpace(value))
			if err != nil {
				return res, fmt.Errorf("count %q: %w", trimmed, err)
			}
			*p += n
			found = true
		}
	}
	if !found {
		return res, errors.New("no result counts in the suite's output")
	}
	sort.Strings(res.FailedTests)
	return res, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

package resolver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// helperPrefix names the executables of Docker credential helpers: credsStore "ecr-login"
// runs docker-credential-ecr-login.
const helperPrefix = "docker-credential-"

// helperNotFound is what helpers print (docker-credential-helpers' credentials.ErrCredentialsNotFound)
// when they hold nothing for the server.
const helperNotFound = "credentials not found in native keychain"

// maxHelperOutput bounds what a helper may print.
const maxHelperOutput = 1 << 20

var helperName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// validHelperName refuses helper names that are not a plain suffix (a path, spaces, options).
func validHelperName(name string) error {
	if !helperName.MatchString(name) {
		return fmt.Errorf("%q is not a credential helper name: %w", name, errdefs.ErrInvalidArgument)
	}
	return nil
}

// helperServerURL is what a helper is asked for: the registry's host, and for Docker Hub the
// key docker login stores it under.
func helperServerURL(registry string) string {
	if registry == "docker.io" {
		return "https://index.docker.io/v1/"
	}
	return registry
}

// errHelperNoCredential means the helper holds no credential for the registry.
var errHelperNoCredential = fmt.Errorf("credential helper has no credential: %w", errdefs.ErrNotFound)

// runHelper runs "docker-credential-<name> get" with the registry on stdin (the Docker
// credential helper protocol) and returns what it printed on stdout. Neither the helper's
// stdout nor its stderr goes into an error: either may hold a secret.
func runHelper(ctx context.Context, path, name, registry string, timeout time.Duration) (Credential, error) {
	exe, err := lookHelper(path, helperPrefix+name)
	if err != nil {
		return Credential{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "get")
	cmd.Stdin = strings.NewReader(helperServerURL(registry))
	var stdout bytes.Buffer
	cmd.Stdout = &limitedWriter{w: &stdout, n: maxHelperOutput}
	// The helper's stderr is dropped: it is not ours to log, and may echo a secret.
	cmd.Stderr = io.Discard
	// A helper that leaves a child holding its stdout open must not hang the request.
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		return Credential{}, fmt.Errorf("%s get: no answer within %s: %w", helperPrefix+name, timeout, errdefs.ErrUnavailable)
	}
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) && strings.TrimSpace(stdout.String()) == helperNotFound {
			return Credential{}, errHelperNoCredential
		}
		return Credential{}, fmt.Errorf("%s get for %s failed (%v): %w", helperPrefix+name, registry, exitSummary(err), errdefs.ErrUnavailable)
	}
	var out struct {
		Username string
		Secret   string
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return Credential{}, fmt.Errorf("%s get for %s: output is not the helper protocol's JSON: %w", helperPrefix+name, registry, errdefs.ErrUnavailable)
	}
	if out.Secret == "" {
		return Credential{}, errHelperNoCredential
	}
	// Docker's convention: the user "<token>" means the secret is an identity (refresh) token.
	if out.Username == "<token>" {
		return Credential{IdentityToken: out.Secret}, nil
	}
	if out.Username == "" {
		return Credential{}, fmt.Errorf("%s get for %s: a secret without a username: %w", helperPrefix+name, registry, errdefs.ErrUnavailable)
	}
	return Credential{Username: out.Username, Password: out.Secret}, nil
}

// lookHelper finds the helper executable in path (a PATH list; empty: the process's PATH).
func lookHelper(path, exe string) (string, error) {
	if path == "" {
		p, err := exec.LookPath(exe)
		if err != nil {
			return "", fmt.Errorf("%s not found in PATH: %w", exe, errdefs.ErrNotFound)
		}
		return p, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, exe)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in %s: %w", exe, path, errdefs.ErrNotFound)
}

// exitSummary is the exit status alone (the error of exec also only says that).
func exitSummary(err error) string {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ProcessState.String()
	}
	return err.Error()
}

// limitedWriter keeps the first n bytes and drops the rest, so a runaway helper costs no
// more memory than that.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return len(p), nil
	}
	k := min(len(p), l.n)
	l.n -= k
	if _, err := l.w.Write(p[:k]); err != nil {
		return 0, err
	}
	return len(p), nil
}

package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

func TestConfigDefaultPrintsTheEmbeddedDefaults(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"config", "default"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if out.String() != config.DefaultTOML {
		t.Fatal("config default does not print config.DefaultTOML")
	}
	// What it prints is a file serve accepts as it is.
	file := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(file, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run([]string{"config", "check", "--config", file}, &out, &errOut); code != 0 {
		t.Fatalf("config check of the default: exit %d: %s", code, errOut.String())
	}
}

func TestBadConfigIsRefusedNamingTheKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(file, []byte("[mirror]\nadress = \"127.0.0.1:1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"serve", "--config", file},
		{"config", "check", "--config", file},
	} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 1 {
			t.Fatalf("%v: exit %d, want 1", args, code)
		}
		if !strings.Contains(errOut.String(), "mirror.adress") {
			t.Fatalf("%v: error does not name the key: %q", args, errOut.String())
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"frobnicate"},
		{"serve", "--no-such-flag"},
		{"serve", "extra"},
		{"config"},
		{"config", "check"},
		{"serve", "--config", filepath.Join(t.TempDir(), "missing.toml")},
	} {
		var out, errOut bytes.Buffer
		code := run(args, &out, &errOut)
		if code == 0 || errOut.Len() == 0 {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut.String())
		}
	}
}

// Errors are printed for people: without the errdefs category the code wraps them in
// (": invalid argument"), once, with the exit code of their kind.
func TestErrorsArePrintedForPeople(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(bad, []byte("[mirror]\nadress = \"127.0.0.1:1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"config", "check", "--config", bad}, 1, "containerd-blobcache: config " + bad + ": unknown key mirror.adress\n"},
		{[]string{"rm", "bad!!"}, 2, "containerd-blobcache: \"bad!!\" is not a registry host[:port]\n"},
	} {
		var out, errOut bytes.Buffer
		if code := run(tc.args, &out, &errOut); code != tc.code {
			t.Errorf("%v: exit %d, want %d", tc.args, code, tc.code)
		}
		if errOut.String() != tc.want {
			t.Errorf("%v: stderr %q, want %q", tc.args, errOut.String(), tc.want)
		}
	}
}

// The daemon's own errors come over the admin API as text; the HTTP status says which
// errdefs category they are, and the CLI drops that category's words as for its own errors.
func TestAdminAPIErrorsArePrintedForPeople(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":"target size -2: invalid argument"}`)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := run([]string{"gc", "--address", sock}, &out, &errOut); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if want := "containerd-blobcache: target size -2\n"; errOut.String() != want {
		t.Errorf("stderr %q, want %q", errOut.String(), want)
	}
}

func TestForTerminalKeepsWhatPeopleNeed(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("unknown key x: %w", errdefs.ErrInvalidArgument), "unknown key x"},
		{fmt.Errorf("upstream: %w: %w", errdefs.ErrUnavailable, errdefs.ErrInternal), "upstream"},
		// The point of the message.
		{fmt.Errorf("tag r/a:v1: %w", errdefs.ErrNotFound), "tag r/a:v1: not found"},
		// The same words from elsewhere: not an errdefs category.
		{errors.New("peer said: invalid argument"), "peer said: invalid argument"},
		{&os.PathError{Op: "open", Path: "/x", Err: syscall.EINVAL}, "open /x: invalid argument"},
	} {
		if got := forTerminal(tc.err); got != tc.want {
			t.Errorf("forTerminal(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// An unknown flag is reported once, after the command's usage; -h prints only the usage.
func TestFlagErrorsPrintedOnce(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"serve", "--no-such-flag"}, &out, &errOut); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if n := strings.Count(errOut.String(), "flag provided but not defined: -no-such-flag"); n != 1 {
		t.Errorf("the flag error is printed %d times:\n%s", n, errOut.String())
	}
	if !strings.Contains(errOut.String(), "Usage of serve:\n  -admin-address") {
		t.Errorf("no usage of serve:\n%s", errOut.String())
	}
	errOut.Reset()
	run([]string{"gc", "-h"}, &out, &errOut)
	if s := errOut.String(); !strings.HasPrefix(s, "Usage of gc:\n") || strings.Contains(s, "help requested") {
		t.Errorf("gc -h printed:\n%s", s)
	}
}

// A start that fails (here: the mirror's port is taken) creates nothing: not the --root
// directory, not the directories of the content socket (bound before the mirror) and of
// the admin socket. An existing root stays.
func TestFailedStartCreatesNothing(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	body := fmt.Sprintf("[mirror]\naddress = %q\n[metrics]\naddress = \"\"\n", taken.Addr().String())
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing")
	if err := os.MkdirAll(existing, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{filepath.Join(dir, "new", "state"), existing} {
		var out, errOut bytes.Buffer
		code := run([]string{"serve", "--config", cfg, "--root", root,
			"--content-address", filepath.Join(dir, "content", "c.sock"), "--admin-address", filepath.Join(dir, "run", "admin.sock")}, &out, &errOut)
		if code != 1 || !strings.Contains(errOut.String(), "address already in use") {
			t.Fatalf("serve with the mirror port taken: exit %d, stderr %q", code, errOut.String())
		}
		for _, p := range []string{filepath.Join(dir, "new"), filepath.Join(dir, "content"), filepath.Join(dir, "run")} {
			if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("root %s: a failed start left %s (%v)", root, p, err)
			}
		}
		if _, err := os.Stat(existing); err != nil {
			t.Errorf("root %s: the existing root is gone: %v", root, err)
		}
	}
}

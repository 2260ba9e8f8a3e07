package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

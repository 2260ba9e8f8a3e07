package server

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// removeCreated returns what undoes the directories a start creates: the store's root and
// the directories of the admin and content sockets. Called before anything is created, it
// notes the topmost of each that does not exist yet; the function it returns removes those
// (with what New put in them), so that a start that fails (a port in use) leaves nothing
// behind. Directories that existed before are left alone.
func removeCreated(cfg config.Config) func() {
	paths := []string{cfg.Root}
	if cfg.Admin.Address != "" {
		paths = append(paths, filepath.Dir(cfg.Admin.Address))
	}
	if cfg.Content.Enabled {
		paths = append(paths, filepath.Dir(cfg.Content.Address))
	}
	var created []string
	for _, p := range paths {
		if top := firstMissing(p); top != "" {
			created = append(created, top)
		}
	}
	return func() {
		for _, dir := range created {
			os.RemoveAll(dir)
		}
	}
}

// firstMissing is the topmost directory that os.MkdirAll(path) would create, or "" when
// path exists or cannot be looked at (an ancestor that is a file, no permission).
func firstMissing(path string) string {
	top := ""
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			return top
		}
		top = p
		if filepath.Dir(p) == p {
			return top
		}
	}
}

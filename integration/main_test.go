// Package integration runs containerd-blobcache against a real containerd, a real registry
// and ctr / the CRI image service; see the harness package for how each is started.
package integration

import (
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

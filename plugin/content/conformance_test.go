package content

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/testsuite"
)

// TestContentSuite runs containerd's content conformance suite against the daemon's gRPC
// service through containerd's gRPC proxy client, as containerd's proxy plugin uses it.
func TestContentSuite(t *testing.T) {
	testsuite.ContentSuite(t, "blobcache", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		s, err := serve(ctx, root, nil)
		if err != nil {
			return nil, nil, nil, err
		}
		return ctx, s.client, func() error { return s.close(context.WithoutCancel(ctx)) }, nil
	})
}

package bench

import (
	"context"
	"fmt"

	digest "github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
)

// WriteIndexRecords fills the store at root with n small committed blobs, each recorded in
// its index, through the store's public API, so that the records have exactly the format the
// daemon reads at start. It stands for a node that has cached n blobs; the start-up scenario
// starts the daemon on it. Kept in one function so that a change of the store's API (for
// example access-time records) needs a change here only.
func WriteIndexRecords(ctx context.Context, root string, n int) error {
	store, err := blobcache.Open(ctx, blobcache.Options{Root: root})
	if err != nil {
		return err
	}
	for i := range n {
		data := fmt.Appendf(nil, "containerd-blobcache benchmark record %d\n", i)
		src := blobcache.Source{Registry: "registry.bench.invalid", Repository: fmt.Sprintf("bench/repo-%d", i%100)}
		if err := store.PutBlob(ctx, digest.FromBytes(data), "application/octet-stream", src, data); err != nil {
			store.Close()
			return fmt.Errorf("record %d: %w", i, err)
		}
	}
	return store.Close()
}

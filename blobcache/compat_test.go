package blobcache

import (
	"bytes"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/content/local"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestContainerdLocalStoreReadsBlobs checks the layout promise: containerd's own content
// store, opened on the same root, serves what the cache committed.
func TestContainerdLocalStoreReadsBlobs(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	data, d := testBlob(4096)
	up := &countingFetch{data: data, size: int64(len(data))}
	waitFinished(t, mustFill(t, s, d, FillMeta{}, up.fetch))

	cs, err := local.NewStore(s.Root())
	if err != nil {
		t.Fatal(err)
	}
	info, err := cs.Info(ctx, d)
	if err != nil || info.Size != int64(len(data)) {
		t.Fatalf("local store Info = %+v, %v", info, err)
	}
	got, err := content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: d, Size: int64(len(data))})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("local store ReadBlob: %d bytes, %v", len(got), err)
	}
}

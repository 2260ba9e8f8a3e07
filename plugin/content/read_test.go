package content

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	digest "github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
)

// TestReadRehashesUnverified: after an index loss, a blob is hashed before the content API
// serves it, as before the mirror does: a file whose bytes no longer match its name is
// refused (and quarantined), never served; an intact one is served.
func TestReadRehashesUnverified(t *testing.T) {
	root := t.TempDir()
	s, err := serve(t.Context(), root, nil)
	if err != nil {
		t.Fatal(err)
	}
	bad, badDgst := testBlob(64 << 10)
	good, goodDgst := testBlob(65 << 10)
	for _, b := range []struct {
		data []byte
		desc content.Info
	}{{bad, content.Info{Digest: badDgst}}, {good, content.Info{Digest: goodDgst}}} {
		if err := content.WriteBlob(t.Context(), s.client, "w-"+b.desc.Digest.Encoded(), bytes.NewReader(b.data), desc(b.desc.Digest, b.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.close(t.Context()); err != nil {
		t.Fatal(err)
	}
	badPath := filepath.Join(root, "blobs", "sha256", badDgst.Encoded())
	os.Chmod(badPath, 0o644)
	if err := os.WriteFile(badPath, bytes.Repeat([]byte{'x'}, len(bad)), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "index.db")); err != nil {
		t.Fatal(err)
	}

	s, err = serve(t.Context(), root, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close(t.Context())
	got, err := content.ReadBlob(t.Context(), s.client, desc(badDgst, bad))
	if !errdefs.IsNotFound(err) {
		t.Errorf("read of a corrupt unverified blob: %d bytes, %v; want not found", len(got), err)
	}
	if _, err := os.Stat(filepath.Join(root, "quarantine", badDgst.Encoded())); err != nil {
		t.Errorf("corrupt blob not quarantined: %v", err)
	}
	got, err = content.ReadBlob(t.Context(), s.client, desc(goodDgst, good))
	if err != nil || !bytes.Equal(got, good) {
		t.Errorf("read of an intact unverified blob: %d bytes, %v", len(got), err)
	}
}

// TestReaderPinsAgainstEviction: a blob open through the content API's ReaderAt is not
// evicted under it; once closed (and idle), it is.
func TestReaderPinsAgainstEviction(t *testing.T) {
	s := newServed(t)
	data, d := testBlob(40 << 10)
	if err := s.cache.PutBlob(t.Context(), d, "", blobcache.Source{}, data); err != nil {
		t.Fatal(err)
	}
	ra, err := s.svc.Store().ReaderAt(t.Context(), desc(d, data))
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.cache.EvictTo(t.Context(), 0)
	if err != nil || res.Blobs != 0 || res.InUse != 1 {
		t.Errorf("eviction while a reader is open: %+v %v, want the blob skipped as in use", res, err)
	}
	got := make([]byte, len(data))
	if n, err := ra.ReadAt(got, 0); n != len(data) || !bytes.Equal(got, data) {
		t.Errorf("ReadAt after the eviction: %d bytes, %v", n, err)
	}
	ra.Close()
	res, err = s.cache.EvictTo(t.Context(), 0)
	if err != nil || res.Blobs != 1 {
		t.Errorf("eviction after the reader closed: %+v %v, want the blob removed", res, err)
	}
}

// TestReadTouchesLRU: a blob read through the content API's Read is recently used: eviction
// takes the other, older-read one first.
func TestReadTouchesLRU(t *testing.T) {
	s := newServed(t)
	read, readDgst := testBlob(30 << 10)
	other, otherDgst := testBlob(31 << 10)
	// read is stored first, so it is the least recently used until it is read.
	for _, b := range [][]byte{read, other} {
		if err := s.cache.PutBlob(t.Context(), blobDigest(b), "", blobcache.Source{}, b); err != nil {
			t.Fatal(err)
		}
	}
	// A bare Read RPC (the proxy client's ReaderAt would ask Info first, which holds).
	stream, err := api.NewContentClient(s.conn).Read(t.Context(), &api.ReadContentRequest{Digest: readDgst.String()})
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for {
		resp, err := stream.Recv()
		if err != nil {
			break
		}
		got = append(got, resp.Data...)
	}
	if !bytes.Equal(got, read) {
		t.Fatalf("Read returned %d bytes, want %d", len(got), len(read))
	}
	// Whether or not the read held it, only the access time may keep it from eviction.
	if err := s.cache.Release(t.Context(), readDgst); err != nil {
		t.Fatal(err)
	}
	res, err := s.cache.EvictTo(t.Context(), int64(len(read)))
	if err != nil || res.Blobs != 1 {
		t.Fatalf("evict: %+v %v", res, err)
	}
	if _, err := s.cache.Info(t.Context(), otherDgst); !errdefs.IsNotFound(err) {
		t.Errorf("the blob not read is still stored: %v", err)
	}
	if _, err := s.cache.Info(t.Context(), readDgst); err != nil {
		t.Errorf("the blob read was evicted first: %v", err)
	}
}

// TestReadErrors: Read refuses a bad digest and an offset past the end like containerd's
// server, and reports a blob the store lacks as not found.
func TestReadErrors(t *testing.T) {
	s := newServed(t)
	data, d := testBlob(1000)
	if err := s.cache.PutBlob(t.Context(), d, "", blobcache.Source{}, data); err != nil {
		t.Fatal(err)
	}
	_, missing := testBlob(1001)
	client := api.NewContentClient(s.conn)
	for _, tc := range []struct {
		req  *api.ReadContentRequest
		want func(error) bool
	}{
		{&api.ReadContentRequest{Digest: "sha256:nope"}, errdefs.IsInvalidArgument},
		{&api.ReadContentRequest{Digest: missing.String()}, errdefs.IsNotFound},
		{&api.ReadContentRequest{Digest: d.String(), Offset: 1001}, errdefs.IsOutOfRange},
	} {
		stream, err := client.Read(t.Context(), tc.req)
		if err == nil {
			_, err = stream.Recv()
		}
		if err = errgrpc.ToNative(err); !tc.want(err) {
			t.Errorf("Read %+v: %v", tc.req, err)
		}
	}
	// A size past the end reads to the end; Offset is where the data is in the blob, as
	// the API documents it.
	stream, err := client.Read(t.Context(), &api.ReadContentRequest{Digest: d.String(), Offset: 900, Size: 500})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || !bytes.Equal(resp.Data, data[900:]) || resp.Offset != 900 {
		t.Errorf("Read past the end: %v", err)
	}
}

func blobDigest(b []byte) digest.Digest { return digest.SHA256.FromBytes(b) }

package mirror

import (
	"bytes"
	"context"
	"errors"
	"io"

	"github.com/containerd/log"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
)

// firstChunkSize bounds the bytes read before the response headers are sent.
const firstChunkSize = 256 << 10

// awaitFirstChunk reads from src until it has some bytes or the end, and returns a reader
// that yields those bytes and then the rest of src. An error means nothing was read: the
// response can still be an honest error status.
func awaitFirstChunk(src io.Reader) (io.Reader, error) {
	buf := make([]byte, firstChunkSize)
	n, err := src.Read(buf)
	for n == 0 && err == nil {
		n, err = src.Read(buf)
	}
	switch {
	case n > 0:
		return io.MultiReader(bytes.NewReader(buf[:n]), src), nil
	case errors.Is(err, io.EOF):
		return bytes.NewReader(nil), nil
	default:
		return nil, err
	}
}

// fillFailedBeforeHeaders answers a blob request whose fill failed before its first byte
// could be sent: a storage failure is bypassed (the client's own request goes upstream),
// anything else is a prompt 5xx.
func (h *Handler) fillFailedBeforeHeaders(q *request, err error) {
	if errors.Is(err, blobcache.ErrStorage) {
		log.G(q.r.Context()).WithError(err).WithField("digest", q.target.dgst).Warn("store failed before the first byte; serving uncached")
		h.proxy(q, resultBypass, "")
		return
	}
	h.upstreamFailed(q, err)
}

// knownManifestType reports whether mt is a manifest or index media type containerd pulls.
func knownManifestType(mt string) bool {
	switch mt {
	case "application/vnd.oci.image.manifest.v1+json",
		"application/vnd.oci.image.index.v1+json",
		"application/vnd.docker.distribution.manifest.v2+json",
		"application/vnd.docker.distribution.manifest.list.v2+json",
		"application/vnd.docker.distribution.manifest.v1+json",
		"application/vnd.docker.distribution.manifest.v1+prettyjws":
		return true
	}
	return false
}

// awaitVerified waits until the fill has received and verified the whole blob. A fill
// reader releases the last byte of a blob of known size only after verification, so
// reading that byte is the wait. Of a blob of unknown size nothing can be held back.
func awaitVerified(ctx context.Context, fill *blobcache.Fill) error {
	size := fill.Size()
	if size <= 0 {
		return nil
	}
	rd, err := fill.NewReader(ctx, size-1)
	if err != nil {
		return err
	}
	defer rd.Close()
	_, err = awaitFirstChunk(rd)
	return err
}

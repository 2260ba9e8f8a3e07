package content

import (
	"io"
	"strings"
	"sync"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs/pkg/errgrpc"
	digest "github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// readChunk is the most one Read response carries, as in containerd's content server.
const readChunk = 1 << 20

var readBufs = sync.Pool{New: func() any { b := make([]byte, readChunk); return &b }}

// readServer is containerd's content server with Read answered from the store's shared
// readers (blobcache.Store.OpenReader): containerd's proxy client sends one Read per 32 KiB
// it reads, and containerd's own server would look the blob up (Info, which holds it here)
// and open its file at every one of them. Every other call goes to containerd's server.
type readServer struct {
	api.ContentServer
	store *Store
}

func (s readServer) Read(req *api.ReadContentRequest, session api.Content_ReadServer) error {
	// OpenReader validates the digest (once per open file, not per call); only the
	// algorithm is checked here.
	dgst := digest.Digest(req.Digest)
	if alg, _, _ := strings.Cut(req.Digest, ":"); alg != string(digest.SHA256) {
		return errgrpc.ToGRPC(checkDigest(dgst))
	}
	r, err := s.store.cache.OpenReader(session.Context(), dgst)
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	defer r.Close()

	// The same bounds as containerd's server: a size past the end reads to the end.
	offset, size := max(req.Offset, 0), req.Size
	if offset > r.Size() {
		return status.Errorf(codes.OutOfRange, "read past object length %v bytes", r.Size())
	}
	if size <= 0 || offset+size > r.Size() {
		size = r.Size() - offset
	}
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	for size > 0 {
		buf := (*bp)[:min(size, readChunk)]
		n, err := r.ReadAt(buf, offset)
		if n > 0 {
			if serr := session.Send(&api.ReadContentResponse{Offset: offset, Data: buf[:n]}); serr != nil {
				return serr
			}
			offset += int64(n)
			size -= int64(n)
		}
		if err == io.EOF && size > 0 {
			return status.Errorf(codes.DataLoss, "content %s ended at %d of %d bytes", dgst, offset, r.Size())
		}
		if err != nil && err != io.EOF {
			return errgrpc.ToGRPC(err)
		}
	}
	return nil
}

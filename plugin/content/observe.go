package content

import (
	"context"
	"strings"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// rpcName is the metric label of a method of the service. The set is closed, so that a label
// never takes a value a client chose.
func rpcName(fullMethod string) string {
	switch name := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]; name {
	case "Info", "Update", "List", "Delete", "Read", "Status", "Write", "Abort":
		return strings.ToLower(name)
	case "ListStatuses":
		return "list_statuses"
	}
	return "other"
}

// callResult classifies a finished call. Info and Read are the lookups of a blob: answered,
// they are hits; NotFound, misses. For the other calls NotFound and AlreadyExists are
// ordinary answers (containerd commits an existing blob, aborts a finished ingest), not
// failures.
func callResult(rpc string, err error) traffic.Result {
	lookup := rpc == "info" || rpc == "read"
	if err == nil {
		if lookup {
			return traffic.Hit
		}
		return traffic.None
	}
	notFound := status.Code(err) == codes.NotFound || errdefs.IsNotFound(err)
	exists := status.Code(err) == codes.AlreadyExists || errdefs.IsAlreadyExists(err)
	switch {
	case lookup && notFound:
		return traffic.Miss
	case !lookup && (notFound || exists):
		return traffic.None
	}
	return traffic.Error
}

// countedStream counts the blob bytes a Read sends.
type countedStream struct {
	grpc.ServerStream
	ctx  context.Context
	sent int64
}

func (s *countedStream) Context() context.Context { return s.ctx }

func (s *countedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if r, ok := m.(*api.ReadContentResponse); ok && err == nil {
		s.sent += int64(len(r.Data))
	}
	return err
}

// observe tells observer about a finished call: one observation, which feeds the admin API's
// stats and the metrics alike.
func observe(observer traffic.Observer, fullMethod string, err error, start time.Time, sent int64) {
	// The socket's gRPC server also carries the diff API, which counts itself.
	if observer == nil || !strings.HasPrefix(fullMethod, "/"+api.Content_ServiceDesc.ServiceName+"/") {
		return
	}
	rpc := rpcName(fullMethod)
	observer.ObserveRequest(traffic.Request{
		Surface:  traffic.SurfaceContent,
		Kind:     rpc,
		Method:   "grpc",
		Result:   callResult(rpc, err),
		Duration: time.Since(start),
		Bytes:    sent,
	})
}

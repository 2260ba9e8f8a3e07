package traffic

import "time"

// Surface is how a request reached the daemon.
type Surface string

const (
	// SurfaceMirror is the registry mirror (HTTP /v2/).
	SurfaceMirror Surface = "mirror"
	// SurfaceContent is containerd's content API (gRPC, proxy mode).
	SurfaceContent Surface = "content"
	// SurfacePeer is the cluster tier's listener: blobs served to other nodes.
	SurfacePeer Surface = "peer"
)

// Request is one answered request, observed once when its answer ends.
type Request struct {
	Surface Surface
	// Registry is the upstream registry a mirror request was for; empty when the request
	// was refused before one was known, and for the content API.
	Registry string
	// Kind is a bounded label: for the mirror manifest, blob, ping or other; for the content
	// API the call (info, read, write...).
	Kind string
	// Method is GET, HEAD or other for the mirror, grpc for the content API.
	Method   string
	Result   Result
	Duration time.Duration
	// Bytes is the body bytes sent (for the content API, the blob bytes a Read returned).
	Bytes int64
}

// Observer is told about every request once it is answered.
type Observer interface {
	ObserveRequest(Request)
}

// Observers tells each of its observers (nil ones skipped), so that one observation feeds
// the admin API's counters and the metrics alike.
type Observers []Observer

// ObserveRequest implements Observer.
func (o Observers) ObserveRequest(r Request) {
	for _, x := range o {
		if x != nil {
			x.ObserveRequest(r)
		}
	}
}

// AsSurface tells o about every request as if it had reached the daemon through surface s:
// the peer listener answers with a mirror handler of its own, whose requests count as the
// peer surface's.
func AsSurface(s Surface, o Observer) Observer {
	if o == nil {
		return nil
	}
	return asSurface{s: s, o: o}
}

type asSurface struct {
	s Surface
	o Observer
}

func (a asSurface) ObserveRequest(r Request) {
	r.Surface = a.s
	a.o.ObserveRequest(r)
}

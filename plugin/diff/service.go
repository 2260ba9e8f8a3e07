package diff

import (
	"context"
	"fmt"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/contrib/diffservice"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/diff/walking"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
)

// Operations, as the Observer is told about them.
const (
	OpApply   = "apply"
	OpCompare = "compare"
)

// Observer is told about every Apply and Compare when it ends (*metrics.Metrics; a nil
// *metrics.Metrics records nothing).
type Observer interface {
	// DiffCall gets the operation (OpApply, OpCompare), whether it failed, its duration and,
	// for Apply, the size of the layer blob it read.
	DiffCall(op string, failed bool, d time.Duration, bytes int64)
}

// Options configures New.
type Options struct {
	// Store is the daemon's content store: Apply reads layers from it (local files), and
	// Compare writes the layers it makes into it when the call carries no namespace.
	Store content.Store
	// Containerd is containerd's own content API (a client of its socket). A Compare from
	// containerd carries the caller's namespace (and lease): its layer is written through
	// containerd, so that containerd records it in that namespace — in proxy mode the bytes
	// still land in Store, through containerd's content plugin. nil: always into Store.
	Containerd content.Store
	// Observer, when not nil, is told about every call.
	Observer Observer
	// Capabilities is the effective capability set the operations are checked against; nil
	// reads the process's own (EffectiveCapabilities).
	Capabilities *CapSet
}

// Service is containerd's diff API over the daemon's store.
type Service struct {
	server diffapi.DiffServer
}

// New builds the diff API. It checks the capabilities the applier needs once, and logs (at
// warning level, once) which are missing: the API is served all the same, and Apply and
// Compare then fail with an error naming them.
func New(ctx context.Context, opts Options) *Service {
	var caps CapSet
	if opts.Capabilities != nil {
		caps = *opts.Capabilities
	} else {
		var err error
		caps, err = EffectiveCapabilities()
		if err != nil {
			// Unknown: let the kernel decide at each operation rather than refuse them all.
			log.G(ctx).WithError(err).Warn("diff API: cannot read the daemon's capabilities; not checking them")
			caps = ^CapSet(0)
		}
	}
	a := &applier{next: apply.NewFileSystemApplier(opts.Store), observer: opts.Observer, missing: caps.missing(applyNeeds)}
	c := &comparer{local: walking.NewWalkingDiff(opts.Store), observer: opts.Observer, missing: caps.missing(compareNeeds)}
	if opts.Containerd != nil {
		c.viaContainerd = walking.NewWalkingDiff(opts.Containerd)
	}
	if len(a.missing) > 0 {
		log.G(ctx).WithField("missing", capabilityNames(a.missing)).
			Warn("diff API: the daemon lacks capabilities to apply layers; containerd's unpacks through it will fail (run it as root with proxy mode's unit)")
	}
	return &Service{server: diffservice.FromApplierAndComparer(a, c)}
}

// Register adds the diff API to a gRPC server (the content API's, so that both share one
// socket, as containerd's proxy plugins at one address share one connection). Call it before
// the server serves.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	diffapi.RegisterDiffServer(r, s.server)
}

// applier is containerd's applier with the capability check, a log line and the observer.
type applier struct {
	next     diff.Applier
	observer Observer
	missing  []capability
}

func (a *applier) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (ocispec.Descriptor, error) {
	start := time.Now()
	var (
		applied ocispec.Descriptor
		err     error
	)
	if len(a.missing) > 0 {
		err = privilegeError("applying layer "+desc.Digest.String(), a.missing)
	} else {
		applied, err = a.next.Apply(ctx, desc, mounts, opts...)
	}
	d := time.Since(start)
	if a.observer != nil {
		a.observer.DiffCall(OpApply, err != nil, d, desc.Size)
	}
	entry := log.G(ctx).WithFields(log.Fields{"digest": desc.Digest, "bytes": desc.Size, "duration": d, "mounts": mountTypes(mounts)})
	if err != nil {
		entry.WithError(err).Warn("apply layer failed")
		return ocispec.Descriptor{}, err
	}
	entry.WithField("diff_id", applied.Digest).Debug("layer applied")
	return applied, nil
}

// comparer is containerd's walking comparer with the capability check, a log line and the
// observer.
type comparer struct {
	// local writes into the daemon's store; viaContainerd (may be nil) through containerd.
	local, viaContainerd diff.Comparer
	observer             Observer
	missing              []capability
}

// pick is the comparer for a call: through containerd, in the caller's namespace and lease,
// when the call carries a namespace (containerd's diff proxy forwards it in the gRPC
// metadata); the layer would otherwise be in no namespace and containerd's client would not
// find it.
func (c *comparer) pick(ctx context.Context) (context.Context, diff.Comparer) {
	ns, ok := namespaces.Namespace(ctx)
	if !ok || c.viaContainerd == nil {
		return ctx, c.local
	}
	// Set as context values, they are sent as the outgoing call's headers too.
	ctx = namespaces.WithNamespace(ctx, ns)
	if lease, ok := leases.FromContext(ctx); ok {
		ctx = leases.WithLease(ctx, lease)
	}
	return ctx, c.viaContainerd
}

func (c *comparer) Compare(ctx context.Context, lower, upper []mount.Mount, opts ...diff.Opt) (ocispec.Descriptor, error) {
	start := time.Now()
	var (
		layer ocispec.Descriptor
		err   error
	)
	if len(c.missing) > 0 {
		err = privilegeError("comparing snapshots", c.missing)
	} else {
		cctx, next := c.pick(ctx)
		layer, err = next.Compare(cctx, lower, upper, opts...)
		if err != nil && next == c.viaContainerd {
			err = fmt.Errorf("compare, writing the layer through containerd's content API (diff.containerd_address): %w", err)
		}
	}
	d := time.Since(start)
	if c.observer != nil {
		c.observer.DiffCall(OpCompare, err != nil, d, 0)
	}
	entry := log.G(ctx).WithField("duration", d)
	if err != nil {
		entry.WithError(err).Warn("compare snapshots failed")
		return ocispec.Descriptor{}, err
	}
	entry.WithFields(log.Fields{"digest": layer.Digest, "bytes": layer.Size}).Debug("snapshots compared")
	return layer, nil
}

// mountTypes names the mounts' types ("overlay", "bind"): which of the applier's paths ran.
func mountTypes(mounts []mount.Mount) []string {
	types := make([]string, len(mounts))
	for i, m := range mounts {
		types[i] = m.Type
	}
	return types
}

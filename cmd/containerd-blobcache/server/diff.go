package server

import (
	"context"
	"fmt"
	"path/filepath"

	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/content"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/diff"
)

// tempMountsDir is where the applier mounts a chain's first snapshot while it unpacks into it,
// as containerd keeps its own under <root>/tmpmounts.
const tempMountsDir = "tmpmounts"

// addDiff registers the diff API on the content API's gRPC server (one socket, one
// connection from containerd). Mounts the applier makes go under the store's root, and those
// a daemon killed mid-apply left there are unmounted first, as containerd does at start.
// The connection to containerd's own socket (for Compare) is returned to be closed at the
// end; it is dialled at the first Compare, so containerd need not be up.
func addDiff(ctx context.Context, cfg config.Config, svc *content.Service, observer diff.Observer) (*grpc.ClientConn, error) {
	dir := filepath.Join(cfg.Root, tempMountsDir)
	// The location is a process-wide setting of containerd's mount package; the daemon has
	// one store root, so it is set once, here.
	if err := mount.SetTempMountLocation(dir); err != nil {
		return nil, fmt.Errorf("diff API: temporary mount directory %s: %w", dir, err)
	}
	warnings, err := mount.CleanupTempMounts(0)
	if err != nil {
		log.G(ctx).WithError(err).WithField("dir", dir).Warn("diff API: cannot list mounts left by an earlier run")
	}
	for _, w := range warnings {
		log.G(ctx).WithError(w).WithField("dir", dir).Warn("diff API: cannot remove a mount left by an earlier run")
	}
	conn, err := grpc.NewClient("unix://"+cfg.Diff.ContainerdAddress,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
			grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)))
	if err != nil {
		return nil, fmt.Errorf("diff API: containerd's socket %s (diff.containerd_address): %w", cfg.Diff.ContainerdAddress, err)
	}
	diff.New(ctx, diff.Options{
		Store:      svc.Store(),
		Containerd: contentproxy.NewContentStore(conn),
		Observer:   observer,
	}).Register(svc.Registrar())
	return conn, nil
}

// diffObserver is what counts the diff API's operations, or nil without a metrics listener.
func (o *opsServer) diffObserver() diff.Observer {
	if o == nil {
		return nil
	}
	return o.metrics
}

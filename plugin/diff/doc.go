// Package diff serves containerd's diff API (containerd.services.diff.v1.Diff: Apply and
// Compare, the RPC named Diff) on the content API's gRPC server, so that containerd configured
// with
//
//	[proxy_plugins.blobcache-diff]
//	  type = "diff"
//	  address = "/run/containerd-blobcache/content.sock"
//	[[plugins."io.containerd.transfer.v1.local".unpack_config]]
//	  differ = "blobcache-diff"
//
// unpacks layers through the daemon: Apply reads the layer from the daemon's own store on
// local disk, never through gRPC, and writes it into containerd's snapshot directory.
//
// The pieces are containerd's own, so a layer is unpacked exactly as containerd's built-in
// differ does it: contrib/diffservice is the gRPC server, core/diff/apply the applier (for an
// overlayfs snapshot it writes straight into the upper directory, converting whiteouts; the
// first layer of a chain is a bind mount), plugins/diff/walking the comparer. The layer a
// Compare makes is written through containerd's own content API in the caller's namespace
// and lease (which containerd forwards in the gRPC metadata), so that the caller finds it in
// its namespace; in proxy mode the bytes land in the daemon's store through containerd.
//
// Applying needs root's capabilities (see privileges.go). A daemon without them still serves
// the API, answers Apply and Compare with FailedPrecondition naming what is missing, and says
// so once in its log at start.
package diff

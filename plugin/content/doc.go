// Package content serves containerd's content API (containerd.services.content.v1.Content)
// on a unix socket, over the blob store the mirror uses, so that containerd configured with
//
//	disabled_plugins = ["io.containerd.content.v1.content"]
//	[proxy_plugins.blobcache]
//	  type = "content"
//	  address = "/run/containerd-blobcache/content.sock"
//
// keeps its blobs in the cache: each blob is on disk once per node, and a blob containerd
// garbage-collected stays, so that its next pull downloads nothing.
//
// The pieces are containerd's own: plugins/content/local does the ingests (root/ingest/,
// resumable, never touched by blobcache, which downloads into root/fills/) and the commits
// into root/blobs/sha256; its LabelStore is the blobcache index; the gRPC service is
// plugins/services/content/contentserver. This package adds holds on top.
//
// # Reads
//
// Reads go through the store's own read path, as the mirror's do (blobcache.Store.OpenReader):
// the blob is pinned against eviction while it is read, its access counts for the LRU, and a
// blob whose record was rebuilt after an index loss is hashed before its first byte is served.
// The Read RPC is answered here rather than by containerd's server: containerd's proxy client
// reads 32 KiB per RPC, and the store keeps the open file per digest between them, so that an
// RPC costs no index look-up and no open.
//
// # Holds
//
// containerd's content plugin is the only client of the socket. Its metadata store keeps, per
// namespace, which blobs it has; the backend (this service) only stores bytes. The backend is
// asked about a blob in four ways, and each answers "the store has it": Info (the metadata
// store asks it before fetching, and commits without a download when it succeeds), a Writer
// opened for a blob that exists, a Commit (new bytes, or bytes already stored), and Update.
// Each of those records a hold on the blob in the index, because containerd may rely on the
// blob from then on and eviction must spare it. Only Delete drops a hold.
//
// List (Walk) shows held blobs only. containerd's garbage collector walks the backend and
// deletes every blob that no namespace references: so it never sees blobs only the mirror
// fetched, and a hold that turned out not to be needed (an Info before a pull that failed)
// ends at containerd's next collection.
//
// # Delete and the conformance suite
//
// Delete drops the hold and the labels set through the API, and keeps the blob file: it is
// cache now, served by the mirror and evictable. Info keeps answering for it, as it answers
// for every blob in the store, mirror-filled ones included; that is exactly what lets the next
// pull commit without a download (a backend that answered NotFound after Delete would make
// containerd fetch the blob again, from the mirror at best). Deleting a blob that is in the
// store but not held succeeds too; only a blob the store does not have is NotFound.
//
// This does not conflict with containerd's content conformance suite (core/content/testsuite),
// which runs against this service in the unit tests: the suite never deletes, and what it
// checks — Info right after a Commit, AlreadyExists when committing a blob the store has,
// labels, resumable ingests — behaves as containerd's local store does. A user of the content
// API through containerd still sees a deleted blob as gone: containerd's metadata store
// answers for the namespace and removes the blob there before it calls Delete here.
//
// A later Write of a cached blob re-holds it without rewriting it: a Writer opened with its
// digest, or a Commit of the same bytes, reports AlreadyExists (as the local store does) and
// records the hold; the ingest is dropped.
//
// # Info fills what the mirror listed
//
// containerd's metadata store, with its default shared content policy, asks Info before it
// opens a writer for a blob, inside its write transaction, and commits the blob for the
// namespace without downloading it when Info succeeds. So Info does not stop at the store:
// for a blob it does not find it asks the Prefetcher (set with SetPrefetcher; the server wires
// the mirror, which remembers for ten minutes the config and layers of each manifest it
// served, and under which registry, repository and client Authorization). For such a blob the
// mirror starts or joins its ordinary fill (peers first, then the registry; one download per
// digest), with the other blobs of that manifest filled in the background, and Info answers
// once the fill is committed. So a cold pull moves each blob once, origin to store, and
// containerd neither downloads it through the mirror nor streams it back here. A digest no
// served manifest lists is answered NotFound at once; a fill that fails, or does not commit
// within content.info_fill_wait (kept short because containerd's metadata writes wait
// meanwhile), is answered NotFound too, and containerd downloads the blob the usual way,
// below.
//
// # One write per blob
//
// Without that (the isolated policy, or a fill that failed), containerd fetches each blob
// through the daemon's mirror, whose fill writes it into the store, and writes the bytes it
// received back through this API. A writer for a
// blob the store has or is filling (named by the expected digest or, since containerd's
// metadata store strips that, by the digest in the ingest ref) discards what it is sent; its
// Commit waits for the fill (bounded by the caller's context) and holds the store's verified
// copy. If that fill fails, the Commit fails as unavailable and the caller writes again.
//
// Only sha256 content is stored. Labels are reset by Delete: they describe the API object,
// which is gone. Blobs committed through the API have no media type and no registry source
// in the index (the content API carries neither).
package content

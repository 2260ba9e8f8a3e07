// Package peer is the cluster tier's surface: the peer listener through which other nodes
// fetch blobs from this one (GET/HEAD /peer/v1/blobs/<digest>?ns=<registry>&repo=<name>,
// answered by a mirror handler of its own over the same store, so that a cold blob is
// fetched from the registry once and streamed to every asking node while it downloads), and
// the client the mirror uses on a local miss to fetch a blob from its owner (placement and
// membership are internal/cluster's).
//
// Both directions are authenticated (auth.go): mutual TLS, a shared key, or both. The
// listener answers nothing to a peer that does not prove itself, and the client takes
// nothing from a server that does not.
package peer

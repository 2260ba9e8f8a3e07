// Package cluster is the membership and placement of the cluster tier: who the peers are
// (a static list and a DNS name re-resolved periodically, nothing of its own to gossip),
// which of them owns a digest (rendezvous hashing over the peers that are up), and which are
// down for a while after failing.
package cluster

package cluster

import (
	"crypto/sha256"
	"encoding/binary"
)

// weight is a peer's rendezvous (highest-random-weight) score for a key. Every node computes
// the same score from the same two strings, so nodes that agree on the membership agree on
// the owner without talking; adding or removing a peer changes only the keys it wins or
// held (about 1/N of them). sha256 is not needed for security here, only for an even spread;
// it costs a microsecond per peer per miss.
func weight(peer, key string) uint64 {
	h := sha256.New()
	h.Write([]byte(peer))
	h.Write([]byte{0})
	h.Write([]byte(key))
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// Owner is the peer of peers with the highest weight for key; "" when peers is empty.
// Ties (practically impossible) go to the smaller address, so the answer is deterministic.
func Owner(peers []string, key string) string {
	best, bestW := "", uint64(0)
	for _, p := range peers {
		w := weight(p, key)
		if best == "" || w > bestW || (w == bestW && p < best) {
			best, bestW = p, w
		}
	}
	return best
}

package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func keys(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = digest.FromString(fmt.Sprint("blob ", i)).String()
	}
	return out
}

func peers(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.0.0.%d:5057", i+1)
	}
	return out
}

// Adding a fifth peer to four moves about a fifth of the keys, all of them to the new peer.
func TestRendezvousJoinMovesOneNth(t *testing.T) {
	four, five := peers(4), peers(5)
	moved := 0
	ks := keys(10000)
	for _, k := range ks {
		before, after := Owner(four, k), Owner(five, k)
		if before != after {
			moved++
			if after != five[4] {
				t.Fatalf("key %s moved from %s to %s, not to the new peer", k, before, after)
			}
		}
	}
	frac := float64(moved) / float64(len(ks))
	t.Logf("4→5 peers: %.4f of %d keys moved", frac, len(ks))
	if frac < 0.15 || frac > 0.25 {
		t.Fatalf("moved fraction %.3f, want within [0.15, 0.25]", frac)
	}
}

// Removing a peer moves exactly the keys it owned, and spreads them over the others.
func TestRendezvousLeaveMovesOnlyItsKeys(t *testing.T) {
	five := peers(5)
	gone := five[2]
	four := append(append([]string{}, five[:2]...), five[3:]...)
	receivers := map[string]int{}
	for _, k := range keys(10000) {
		before, after := Owner(five, k), Owner(four, k)
		if before != gone && before != after {
			t.Fatalf("key %s of a staying peer moved from %s to %s", k, before, after)
		}
		if before == gone {
			receivers[after]++
		}
	}
	if len(receivers) != 4 {
		t.Fatalf("the leaving peer's keys went to %d peers, want all 4: %v", len(receivers), receivers)
	}
}

// Every peer owns a fair share.
func TestRendezvousSpread(t *testing.T) {
	count := map[string]int{}
	for _, k := range keys(10000) {
		count[Owner(peers(4), k)]++
	}
	for p, n := range count {
		if n < 2000 || n > 3000 {
			t.Fatalf("peer %s owns %d of 10000 keys, want about 2500: %v", p, n, count)
		}
	}
}

// A peer marked down is left out until down_for has passed; self is never down, and the
// owner the others see is the same as a plain Owner over the live ones.
func TestMembershipDownMarking(t *testing.T) {
	now := time.Unix(1000, 0)
	all := peers(3)
	m, err := New(Options{Self: all[0], Static: all, DownFor: 30 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	var key string
	for _, k := range keys(100) {
		if Owner(all, k) == all[1] {
			key = k
			break
		}
	}
	if got, self := m.Owner(key); got != all[1] || self {
		t.Fatalf("owner %s self=%v, want %s", got, self, all[1])
	}
	m.MarkDown(all[1])
	m.MarkDown(all[0]) // self: ignored
	want := Owner([]string{all[0], all[2]}, key)
	if got, self := m.Owner(key); got != want || self != (want == all[0]) {
		t.Fatalf("owner with %s down: %s, want %s", all[1], got, want)
	}
	states := map[string]State{}
	for _, p := range m.Peers() {
		states[p.Address] = p.State
	}
	if states[all[0]] != StateSelf || states[all[1]] != StateDown || states[all[2]] != StateUp {
		t.Fatalf("states %v", states)
	}
	now = now.Add(31 * time.Second)
	if got, _ := m.Owner(key); got != all[1] {
		t.Fatalf("after down_for the owner is %s, want %s back", got, all[1])
	}
}

// DNS records become peers with dns_port; a failed lookup keeps the last answer; a node not
// yet in DNS still places keys on itself.
func TestMembershipDNS(t *testing.T) {
	answer := []net.IP{net.ParseIP("10.0.0.2"), net.ParseIP("10.0.0.1")}
	var fail error
	m, err := New(Options{
		Self: "10.0.0.9:5057", DNSName: "blobcache.ns.svc", DNSPort: 5057, DNSInterval: time.Second,
		LookupIP: func(ctx context.Context, name string) ([]net.IP, error) {
			if name != "blobcache.ns.svc" {
				return nil, fmt.Errorf("asked for %q", name)
			}
			return answer, fail
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	addrs := func() []string {
		var out []string
		for _, p := range m.Peers() {
			out = append(out, p.Address)
		}
		return out
	}
	if got := fmt.Sprint(addrs()); got != "[10.0.0.9:5057]" {
		t.Fatalf("before DNS: %s", got)
	}
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(addrs()); got != "[10.0.0.1:5057 10.0.0.2:5057 10.0.0.9:5057]" {
		t.Fatalf("after DNS: %s", got)
	}
	answer, fail = nil, errors.New("server failure")
	if err := m.Refresh(context.Background()); err == nil {
		t.Fatal("a failed lookup reported no error")
	}
	if got := fmt.Sprint(addrs()); got != "[10.0.0.1:5057 10.0.0.2:5057 10.0.0.9:5057]" {
		t.Fatalf("after a failed lookup: %s", got)
	}
	answer, fail = []net.IP{net.ParseIP("10.0.0.1")}, nil
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(addrs()); got != "[10.0.0.1:5057 10.0.0.9:5057]" {
		t.Fatalf("after a peer left DNS: %s", got)
	}
}

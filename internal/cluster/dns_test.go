package cluster

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// fakeDNS answers A queries for one name over UDP on loopback with the addresses it holds
// (AAAA and other names: no records), enough to exercise dns_server with Go's resolver.
type fakeDNS struct {
	conn net.PacketConn
	mu   sync.Mutex
	ips  []net.IP
}

func (s *fakeDNS) set(ips ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ips = nil
	for _, ip := range ips {
		s.ips = append(s.ips, net.ParseIP(ip).To4())
	}
}

func (s *fakeDNS) serve() {
	buf := make([]byte, 512)
	for {
		n, addr, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp := s.answer(buf[:n]); resp != nil {
			s.conn.WriteTo(resp, addr)
		}
	}
}

// answer builds the response to one query: the header with QR set, the question copied, and
// one A record per address, each naming the question by a pointer.
func (s *fakeDNS) answer(q []byte) []byte {
	if len(q) < 12 {
		return nil
	}
	end := 12
	for end < len(q) && q[end] != 0 {
		end += int(q[end]) + 1
	}
	end += 5 // the root label, QTYPE, QCLASS
	if end > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[end-4:])
	s.mu.Lock()
	ips := s.ips
	s.mu.Unlock()
	if qtype != 1 { // A only
		ips = nil
	}
	resp := append([]byte{}, q[:end]...)
	resp[2] |= 0x84 // QR, AA
	resp[3] = 0     // NOERROR
	binary.BigEndian.PutUint16(resp[6:], uint16(len(ips)))
	binary.BigEndian.PutUint16(resp[8:], 0)
	binary.BigEndian.PutUint16(resp[10:], 0)
	for _, ip := range ips {
		resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4)
		resp = append(resp, ip...)
	}
	return resp
}

// dns_server: the membership asks that one server, and follows its answers as they change.
func TestMembershipAsksTheConfiguredDNSServer(t *testing.T) {
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dns := &fakeDNS{conn: conn}
	go dns.serve()
	dns.set("127.0.0.2", "127.0.0.3")

	m, err := New(Options{Self: "127.0.0.2:5057", DNSName: "peers.blobcache.test.", DNSPort: 5057, DNSInterval: 5 * time.Second, DNSServer: conn.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	list := func() string {
		var out []string
		for _, p := range m.Peers() {
			out = append(out, p.Address+"="+string(p.State))
		}
		return fmt.Sprint(out)
	}
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := list(), "[127.0.0.2:5057=self 127.0.0.3:5057=up]"; got != want {
		t.Fatalf("peers %s, want %s", got, want)
	}
	dns.set("127.0.0.2", "127.0.0.4")
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := list(), "[127.0.0.2:5057=self 127.0.0.4:5057=up]"; got != want {
		t.Fatalf("after the records changed: peers %s, want %s", got, want)
	}
}

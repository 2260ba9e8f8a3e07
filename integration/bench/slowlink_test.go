package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
)

// TestSlowLinkRelaysBothWays checks what the benchmarks rely on: every byte arrives intact in
// both directions, a half-close is passed on, and downstream bytes are counted. (How fast
// the link is, is not asserted: no timed assertions in unit tests.)
func TestSlowLinkRelaysBothWays(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reply := make([]byte, 3<<20)
	rand.Read(reply)
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, _ := io.ReadAll(c) // until the client's half-close arrives through the link
		got <- req
		c.Write(reply)
	}()
	link, err := StartSlowLink(ln.Addr().String(), LinkProfile{BitsPerSecond: 2e9, Delay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	c, err := net.Dial("tcp", link.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	request := bytes.Repeat([]byte("request "), 100000)
	if _, err := c.Write(request); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	back, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(<-got, request) {
		t.Error("the server did not receive the request intact")
	}
	if !bytes.Equal(back, reply) {
		t.Errorf("the client received %d bytes, not the %d-byte reply", len(back), len(reply))
	}
	if n := link.DownstreamBytes(); n != int64(len(reply)) {
		t.Errorf("DownstreamBytes = %d, want %d", n, len(reply))
	}
}

func TestSlowLinkCarriesHTTPAndCloses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 100000))
	}))
	defer srv.Close()
	link, err := StartSlowLink(strings.TrimPrefix(srv.URL, "http://"), LinkProfile{BitsPerSecond: 1e9, Delay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	client := NewLoadClient(4)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := ConcurrentGET(ctx, client, "http://"+link.Addr+"/", nil, 4, 100000)
	if res.Err != nil || res.Done != 4 || res.Bytes != 400000 {
		t.Fatalf("ConcurrentGET through the link: %+v", res)
	}
	rr, err := FixedRate(ctx, client, "http://"+link.Addr+"/", nil, 20, 200, 8)
	if err != nil || len(rr.Latency) != 20 || len(rr.Lag) != 20 {
		t.Fatalf("FixedRate through the link: %+v, %v", rr, err)
	}
	for i := range rr.Latency {
		if rr.Latency[i] <= 0 || rr.Lag[i] > rr.Latency[i] {
			t.Errorf("request %d: latency %v, lag %v", i, rr.Latency[i], rr.Lag[i])
		}
	}
	// Close must return with idle keep-alive connections still open through the link.
	done := make(chan struct{})
	go func() { link.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with connections open")
	}
	if _, err := net.DialTimeout("tcp", link.Addr, time.Second); err == nil {
		t.Error("the link still accepts connections after Close")
	}
}

func TestConcurrentGETReportsShortBodies(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "short")
	}))
	defer srv.Close()
	res := ConcurrentGET(context.Background(), NewLoadClient(2), srv.URL, nil, 2, 10)
	if res.Err == nil || res.Done != 0 {
		t.Fatalf("a short body was not reported: %+v", res)
	}
}

func TestWriteRandomBlobIsSeeded(t *testing.T) {
	dir := t.TempDir()
	a, err := WriteRandomBlob(filepath.Join(dir, "a"), 1, 100000)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := WriteRandomBlob(filepath.Join(dir, "b"), 1, 100000)
	c, _ := WriteRandomBlob(filepath.Join(dir, "c"), 2, 100000)
	if a != b || a == c {
		t.Errorf("digests %s %s %s: same seed must give the same blob, another seed another", a, b, c)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "a"))
	if len(data) != 100000 || digest.FromBytes(data) != a {
		t.Errorf("file of %d bytes does not match its digest", len(data))
	}
}

func TestWriteIndexRecords(t *testing.T) {
	root := t.TempDir()
	if err := WriteIndexRecords(context.Background(), root, 50); err != nil {
		t.Fatal(err)
	}
	s, err := blobcache.Open(context.Background(), blobcache.Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, i := range []int{0, 49} {
		data := []byte("containerd-blobcache benchmark record " + strconv.Itoa(i) + "\n")
		if _, err := s.Info(context.Background(), digest.FromBytes(data)); err != nil {
			t.Errorf("record %d: %v", i, err)
		}
	}
}

func TestRepeatedGETCountsEveryBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "0123456789")
	}))
	defer srv.Close()
	res := RepeatedGET(context.Background(), NewLoadClient(2), srv.URL, nil, 2, 3, 10)
	if res.Err != nil || res.Done != 2 || res.Bytes != 60 {
		t.Fatalf("RepeatedGET: %+v, want 2 clients done and 60 bytes", res)
	}
}

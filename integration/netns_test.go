package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// TestHarnessNetns checks the several-hosts harness itself: hosts in their own namespaces
// reach each other through the switch, a rate limit holds, a link cut and restored is seen
// by the other host, processes started in a namespace are inside it, and dnsmasq's answers
// change when the test rewrites its records.
func TestHarnessNetns(t *testing.T) {
	// A namespace left by a crashed run (its test process gone) is removed by the next switch.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	leftover := fmt.Sprintf("bct-%d-1-sw", gone.Process.Pid)
	if out, err := exec.Command("ip", "netns", "add", leftover).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", leftover, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", leftover).Run() })
	sw := harness.NewSwitch(t)
	if _, err := os.Stat("/run/netns/" + leftover); err == nil {
		t.Errorf("leftover namespace %s of a process that is gone was not removed", leftover)
	}
	a := sw.AddHost(t, "n1", 11)
	b := sw.AddHost(t, "n2", 12)

	// A process started in a namespace sees that namespace's interfaces.
	out, err := a.Command("ip", "-o", "-4", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), a.Addr+"/24") {
		t.Fatalf("ip addr inside %s: %v: %s", a.Name, err, out)
	}

	payload := make([]byte, 8<<20)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	l, err := b.Listen("tcp", net.JoinHostPort(b.Addr, "8080"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write(payload)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	url := "http://" + net.JoinHostPort(b.Addr, "8080") + "/"
	client := a.HTTPClient(30 * time.Second)
	get := func(timeout time.Duration) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, err
		}
		if !bytes.Equal(body, payload) {
			return 0, errors.New("body differs from what n2 served")
		}
		return time.Since(start), nil
	}
	if _, err := get(20 * time.Second); err != nil {
		t.Fatalf("n1 → n2 over the switch: %v", err)
	}

	// 8 MiB at 32 Mbit/s takes 2.1 s (1.8 s with the 1 MiB burst); unshaped a fraction of that.
	b.RateLimit(t, "32mbit")
	took, err := get(30 * time.Second)
	if err != nil {
		t.Fatalf("shaped transfer: %v", err)
	}
	t.Logf("MEASURE netns_rate_limit_8MiB_at_32mbit_seconds=%.2f", took.Seconds())
	if took < 1500*time.Millisecond {
		t.Errorf("8 MiB over a 32 Mbit/s link took %v: the rate limit does not hold", took)
	}

	b.SetLink(t, false)
	client.CloseIdleConnections()
	if _, err := get(2 * time.Second); err == nil {
		t.Fatal("n2 answered with its link down")
	}
	b.SetLink(t, true)
	harness.WaitFor(t, "n2 reachable again", 30*time.Second, 100*time.Millisecond, func() error {
		_, err := get(20 * time.Second)
		return err
	})

	dns := sw.NS.StartDNS(t, sw.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got, err := a.LookupHost(ctx, dns.Addr, "peers.cluster.test"); err == nil {
		t.Fatalf("an unknown name resolved to %v", got)
	}
	dns.SetRecords(t, "peers.cluster.test", a.Addr, b.Addr)
	dns.WaitRecords(t, a, "peers.cluster.test", a.Addr, b.Addr)
	dns.SetRecords(t, "peers.cluster.test", b.Addr)
	dns.WaitRecords(t, b, "peers.cluster.test", b.Addr)
}

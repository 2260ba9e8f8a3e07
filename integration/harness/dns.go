package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DNSServer is Debian's dnsmasq answering A records from a hosts file the test rewrites
// (SetRecords), inside a namespace the test created. It forwards nothing: --no-resolv, and
// nothing from /etc (--no-hosts, no configuration file). Names must end in ".test": the
// server answers that domain itself (NXDOMAIN for a name it does not hold) and refuses others.
type DNSServer struct {
	// Addr is "ip:53", what a resolver (or the daemon's peer.dns_server) asks.
	Addr    string
	Process *Process

	hostsFile string
}

// StartDNS starts dnsmasq listening on ip:53 inside the namespace and waits until it
// answers. It knows no names until SetRecords.
func (n *Netns) StartDNS(t testing.TB, ip string) *DNSServer {
	t.Helper()
	bin := RequireCommand(t, "dnsmasq", "dnsmasq-base")
	dir := t.TempDir()
	// dnsmasq reads the hosts file again on SIGHUP, after dropping to --user: keep it root so
	// the test's private temporary directory stays readable.
	hosts := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hosts, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := n.Command(bin, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--addn-hosts="+hosts, "--listen-address="+ip, "--bind-interfaces", "--port=53", "--local=/test/",
		"--pid-file=", "--user=root", "--log-queries", "--log-facility=-", "--local-ttl=0")
	cmd.Dir = dir
	d := &DNSServer{Addr: net.JoinHostPort(ip, "53"), hostsFile: hosts}
	d.Process = startProcess(t, "dnsmasq", filepath.Join(dir, "dnsmasq.log"), cmd)
	// Ready once it answers at all: an unknown name gets NXDOMAIN.
	WaitFor(t, "dnsmasq on "+d.Addr, 30*time.Second, 50*time.Millisecond, func() error {
		if exited, err := d.Process.Exited(); exited {
			return fmt.Errorf("%w: dnsmasq exited (%v); log:\n%s", errStop, err, TailFile(d.Process.LogPath, 4<<10))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := n.LookupHost(ctx, d.Addr, "dnsmasq-ready.test")
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return nil
		}
		if err == nil {
			return fmt.Errorf("dnsmasq-ready.test resolved")
		}
		return err
	})
	return d
}

// SetRecords makes name resolve to ips (none: the name is gone) and tells dnsmasq with
// SIGHUP. The file is replaced by a rename, so dnsmasq never reads half of it.
func (d *DNSServer) SetRecords(t testing.TB, name string, ips ...string) {
	t.Helper()
	var b strings.Builder
	for _, ip := range ips {
		fmt.Fprintf(&b, "%s %s\n", ip, name)
	}
	tmp := d.hostsFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, d.hostsFile); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(d.Process.PID(), syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP dnsmasq pid %d: %v", d.Process.PID(), err)
	}
}

// WaitRecords polls the server from inside ns until name resolves to exactly ips (in any
// order): SIGHUP is asynchronous.
func (d *DNSServer) WaitRecords(t testing.TB, ns *Netns, name string, ips ...string) {
	t.Helper()
	want := slices.Clone(ips)
	slices.Sort(want)
	WaitFor(t, fmt.Sprintf("%s to resolve to %v", name, want), 30*time.Second, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		got, err := ns.LookupHost(ctx, d.Addr, name)
		if err != nil && len(want) > 0 {
			return err
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("resolves to %v", got)
		}
		return nil
	})
}

// LookupHost asks the DNS server at server ("ip:53") for name's addresses, from inside the
// namespace, with Go's own resolver (no /etc/resolv.conf).
func (n *Netns) LookupHost(ctx context.Context, server, name string) ([]string, error) {
	r := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return n.DialContext(ctx, network, server)
		},
	}
	return r.LookupHost(ctx, name)
}

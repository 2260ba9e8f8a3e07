package harness

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Tinyproxy is Debian's tinyproxy run by a test as a forward proxy on 127.0.0.1 with its own
// configuration (never the package's service or /etc/tinyproxy).
type Tinyproxy struct {
	// URL is "http://127.0.0.1:<port>", the value of HTTP_PROXY/HTTPS_PROXY.
	URL     string
	LogFile string
	Process *Process
}

// TinyproxyOptions configure StartTinyproxy.
type TinyproxyOptions struct {
	// ConnectPorts are the ports CONNECT may reach (tinyproxy refuses the others).
	ConnectPorts []int
	// EtcHosts, when set, is the /etc/hosts the proxy resolves names with (WriteEtcHosts).
	EtcHosts string
}

// StartTinyproxy starts tinyproxy in the foreground and waits until it accepts connections.
func StartTinyproxy(t testing.TB, opts TinyproxyOptions) *Tinyproxy {
	t.Helper()
	bin, err := exec.LookPath("tinyproxy")
	if err != nil {
		t.Fatalf("tinyproxy not found: apt-get install -y tinyproxy-bin, or run make test")
	}
	dir := t.TempDir()
	addr := FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	tp := &Tinyproxy{URL: "http://" + addr, LogFile: filepath.Join(dir, "tinyproxy.log")}
	var b strings.Builder
	fmt.Fprintf(&b, "Port %s\nListen 127.0.0.1\nTimeout 60\nLogFile %q\nLogLevel Info\nMaxClients 50\nAllow 127.0.0.1\n", port, tp.LogFile)
	for _, p := range opts.ConnectPorts {
		fmt.Fprintf(&b, "ConnectPort %d\n", p)
	}
	conf := filepath.Join(dir, "tinyproxy.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := []string{bin, "-d", "-c", conf}
	cmd := exec.Command(argv[0], argv[1:]...)
	if opts.EtcHosts != "" {
		cmd = withEtcHosts(t, opts.EtcHosts, argv...)
	}
	tp.Process = startProcess(t, "tinyproxy", filepath.Join(dir, "tinyproxy.out"), cmd)
	WaitFor(t, "tinyproxy listening", 10*time.Second, 20*time.Millisecond, func() error {
		if exited, err := tp.Process.Exited(); exited {
			return fmt.Errorf("%w: tinyproxy exited (%v):\n%s", errStop, err, TailFile(tp.Process.LogPath, 4<<10))
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return tp
}

// Requests are the request lines tinyproxy logged, in order: "GET http://host/path
// HTTP/1.1" for a proxied request, "CONNECT host:port HTTP/1.1" for a tunnel.
func (p *Tinyproxy) Requests(t testing.TB) []string {
	t.Helper()
	f, err := os.Open(p.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		// CONNECT   Dec 01 02:06:27.325 [11703]: Request (file descriptor 5): GET http://... HTTP/1.1
		if i := strings.Index(line, "]: Request (file descriptor "); i >= 0 {
			rest := line[i:]
			if j := strings.Index(rest, "): "); j >= 0 {
				out = append(out, rest[j+3:])
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

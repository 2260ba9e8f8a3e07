package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Several hosts on one machine: every "host" is a network namespace the test creates, with
// one veth into a bridge that lives in a "switch" namespace the test also creates. Every
// private address (10.213.0.0/24) exists only inside these namespaces; the root namespace
// gets no address, route or interface.

// netnsPrefix starts the name of every namespace the harness creates:
// "bct-<test process pid>-<switch number>-<label>". The pid lets a later run tell a
// leftover of a crashed run (its process is gone) from a namespace a running test owns.
const netnsPrefix = "bct-"

// SubnetPrefix is the private /24 the switch's namespaces use; the bridge is .1.
const SubnetPrefix = "10.213.0."

var switchSeq atomic.Int64

// Switch is a namespace holding a bridge (address SubnetPrefix+"1") that every Host's veth
// plugs into.
type Switch struct {
	NS   *Netns
	Addr string // the bridge's address

	name string // "bct-<pid>-<n>", the prefix of its hosts' namespaces
	mu   sync.Mutex
	used map[int]bool
}

// Netns is one network namespace the test created ("/run/netns/<Name>").
type Netns struct {
	Name string
	// Addr is the host's address on the switch ("" for the switch itself); Link the name of
	// its veth's switch-side end (inside the switch namespace).
	Addr string
	Link string

	sw *Switch
}

// NewSwitch removes the namespaces of crashed earlier runs, then creates the switch
// namespace and its bridge; everything is deleted when the test ends (after the processes
// started in it, which were registered later and so are stopped first).
func NewSwitch(t testing.TB) *Switch {
	t.Helper()
	RequireRoot(t)
	RequireCommand(t, "ip", "iproute2")
	RequireCommand(t, "tc", "iproute2")
	removeLeftoverNamespaces(t)
	name := fmt.Sprintf("%s%d-%d", netnsPrefix, os.Getpid(), switchSeq.Add(1))
	sw := &Switch{Addr: SubnetPrefix + "1", name: name, used: map[int]bool{1: true}}
	sw.NS = addNetns(t, name+"-sw")
	sw.NS.sw = sw
	for _, args := range [][]string{
		{"link", "add", "br0", "type", "bridge"},
		{"addr", "add", sw.Addr + "/24", "dev", "br0"},
		{"link", "set", "br0", "up"},
	} {
		mustIP(t, append([]string{"-n", sw.NS.Name}, args...)...)
	}
	return sw
}

// AddHost creates namespace <switch>-<label> with a veth (eth0 inside, <label> on the
// switch side) and address SubnetPrefix+strconv.Itoa(hostNum).
func (s *Switch) AddHost(t testing.TB, label string, hostNum int) *Netns {
	t.Helper()
	if hostNum < 2 || hostNum > 254 || len(label) > 15 || strings.ContainsAny(label, "/ ") {
		t.Fatalf("host %q number %d: want a label of ≤15 characters and 2..254", label, hostNum)
	}
	s.mu.Lock()
	if s.used[hostNum] {
		s.mu.Unlock()
		t.Fatalf("host number %d already used on %s", hostNum, s.name)
	}
	s.used[hostNum] = true
	s.mu.Unlock()
	n := addNetns(t, s.name+"-"+label)
	n.Addr = SubnetPrefix + strconv.Itoa(hostNum)
	n.Link = label
	n.sw = s
	// Both ends are created inside test namespaces: the root namespace never sees them.
	mustIP(t, "-n", s.NS.Name, "link", "add", label, "type", "veth", "peer", "name", "eth0", "netns", n.Name)
	mustIP(t, "-n", s.NS.Name, "link", "set", label, "master", "br0")
	mustIP(t, "-n", s.NS.Name, "link", "set", label, "up")
	mustIP(t, "-n", n.Name, "addr", "add", n.Addr+"/24", "dev", "eth0")
	mustIP(t, "-n", n.Name, "link", "set", "eth0", "up")
	return n
}

// SetLink brings the host's switch-side veth down (cut off: packets to and from it are
// dropped, connections hang as they would on a dead link) or up again.
func (n *Netns) SetLink(t testing.TB, up bool) {
	t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	mustIP(t, "-n", n.sw.NS.Name, "link", "set", n.Link, state)
}

// RateLimit shapes the host's link to rate ("400mbit") in both directions: egress of eth0
// inside the host, and egress of its switch-side end (the traffic towards the host).
func (n *Netns) RateLimit(t testing.TB, rate string) {
	t.Helper()
	// A 1 MiB bucket lets a 400 Mbit/s link run at rate with the kernel's timer granularity;
	// packets wait at most 100 ms in the queue before they are dropped.
	tbf := []string{"qdisc", "replace", "dev", "", "root", "tbf", "rate", rate, "burst", "1mb", "latency", "100ms"}
	for _, side := range []struct{ ns, dev string }{{n.Name, "eth0"}, {n.sw.NS.Name, n.Link}} {
		args := append([]string(nil), tbf...)
		args[3] = side.dev
		if out, err := exec.Command("ip", append([]string{"netns", "exec", side.ns, "tc"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("tc %s in %s: %v\n%s", strings.Join(args, " "), side.ns, err, out)
		}
	}
}

// Command is exec.Command running name inside the namespace through `ip netns exec`, which
// enters it and execs name: the recorded PID is name's own.
func (n *Netns) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// wrap turns a command built for the root namespace into one that runs inside n, keeping
// its directory, environment and attributes. A nil n returns cmd unchanged.
func (n *Netns) wrap(cmd *exec.Cmd) *exec.Cmd {
	if n == nil {
		return cmd
	}
	w := n.Command(cmd.Path, cmd.Args[1:]...)
	w.Dir, w.Env, w.SysProcAttr = cmd.Dir, cmd.Env, cmd.SysProcAttr
	return w
}

// Do runs f on an OS thread that has entered the namespace: sockets f creates (a dial, a
// listener) belong to the namespace and keep working from any goroutine afterwards.
func (n *Netns) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer unix.Close(self)
		target, err := unix.Open("/run/netns/"+n.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open namespace %s: %w", n.Name, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", n.Name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			// The thread stays locked: the runtime ends it with this goroutine instead of
			// reusing a thread in the wrong namespace.
			errc <- fmt.Errorf("leave namespace %s: %w", n.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext dials from inside the namespace.
func (n *Netns) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.Do(func() error {
		var err error
		conn, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Listen listens inside the namespace.
func (n *Netns) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// HTTPClient is a client whose connections start inside the namespace (nil: the root
// namespace's), without proxies.
func (n *Netns) HTTPClient(timeout time.Duration) *http.Client {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 32, DisableCompression: true}
	if n != nil {
		tr.DialContext = n.DialContext
	}
	return &http.Client{Timeout: timeout, Transport: tr}
}

func addNetns(t testing.TB, name string) *Netns {
	t.Helper()
	mustIP(t, "netns", "add", name)
	t.Cleanup(func() { deleteNetns(t, name) })
	mustIP(t, "-n", name, "link", "set", "lo", "up")
	return &Netns{Name: name}
}

// deleteNetns stops what still runs inside the namespace (processes the test started there
// are stopped by their own cleanups first; this catches their children) and deletes it,
// which destroys its veths.
func deleteNetns(t testing.TB, name string) {
	t.Helper()
	killNetnsPIDs(t, name)
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		t.Logf("ip netns delete %s: %v: %s", name, err, out)
	}
}

func killNetnsPIDs(t testing.TB, name string) {
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			t.Logf("namespace %s: SIGKILL to pid %d still inside", name, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeLeftoverNamespaces deletes "bct-<pid>-…" namespaces whose test process is gone.
func removeLeftoverNamespaces(t testing.TB) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || !strings.HasPrefix(fields[0], netnsPrefix) {
			continue
		}
		name := fields[0]
		pidText, _, _ := strings.Cut(strings.TrimPrefix(name, netnsPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || processAlive(pid) {
			continue
		}
		t.Logf("removing namespace %s left by a run that is gone (pid %d)", name, pid)
		deleteNetns(t, name)
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func mustIP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

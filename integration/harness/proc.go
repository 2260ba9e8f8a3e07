package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ShowLogsEnv, when set, makes every process's log tail appear in the test log even when the
// test passes.
const ShowLogsEnv = "BLOBCACHE_TEST_LOGS"

// stopGrace is how long a process gets between SIGTERM and SIGKILL.
const stopGrace = 10 * time.Second

// Process is one child process a test started, known by the PID recorded at start. Its
// stdout and stderr go to LogPath, which is printed when the test fails.
type Process struct {
	Name    string
	LogPath string

	cmd     *exec.Cmd
	logFile *os.File
	done    chan struct{}

	mu      sync.Mutex
	waitErr error
}

// startProcess starts cmd with its output in logPath and stops it (SIGTERM, then SIGKILL
// after a bound) when the test ends; on failure the log tail is written to the test log.
func startProcess(t testing.TB, name, logPath string, cmd *exec.Cmd) *Process {
	t.Helper()
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("%s: open log: %v", name, err)
	}
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.Stdin = nil
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Die with the test binary if it is killed before cleanups run.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("%s: start %s: %v", name, cmd.Path, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, logFile: lf, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		lf.Close()
		close(p.done)
	}()
	t.Logf("%s: started pid %d (log %s)", name, cmd.Process.Pid, logPath)
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Logf("%s: stop: %v", name, err)
		}
		if t.Failed() || os.Getenv(ShowLogsEnv) != "" {
			t.Logf("%s: log tail:\n%s", name, TailFile(logPath, 16<<10))
		}
	})
	return p
}

// PID is the process id recorded at start.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the process (SIGHUP to reload).
func (p *Process) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop sends SIGTERM and waits up to stopGrace, then SIGKILLs and waits again. It is safe to
// call more than once. The error is the signal error, not the exit status.
func (p *Process) Stop() error {
	return p.stop(syscall.SIGTERM, stopGrace)
}

// Kill sends SIGKILL and waits for the process to be reaped.
func (p *Process) Kill() error {
	return p.stop(syscall.SIGKILL, 0)
}

func (p *Process) stop(sig syscall.Signal, grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %v to pid %d: %w", sig, p.PID(), err)
	}
	if grace > 0 {
		select {
		case <-p.done:
			return nil
		case <-time.After(grace):
		}
		if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("kill pid %d: %w", p.PID(), err)
		}
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("pid %d not reaped 30s after SIGKILL", p.PID())
	}
}

// TailFile returns at most the last max bytes of a file, or a note saying why it cannot.
func TailFile(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot stat %s: %v)", path, err)
	}
	off := int64(0)
	if fi.Size() > max {
		off = fi.Size() - max
	}
	buf := make([]byte, fi.Size()-off)
	n, _ := f.ReadAt(buf, off)
	s := string(buf[:n])
	if off > 0 {
		s = "...\n" + s
	}
	return s
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreeAddr returns "127.0.0.1:<free port>".
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

// ShortTempDir makes a directory with a short path (unix socket paths are limited to 108
// bytes and t.TempDir can be longer) and removes it when the test ends.
func ShortTempDir(t testing.TB, prefix string) string {
	t.Helper()
	base := os.TempDir()
	if len(base) > 40 {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, prefix)
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("remove %s: %v", dir, err)
		}
	})
	return dir
}

// WaitFor polls cond every interval until it returns nil or the timeout expires, and then
// fails the test with the last error.
func WaitFor(t testing.TB, what string, timeout, interval time.Duration, cond func() error) {
	t.Helper()
	if err := poll(timeout, interval, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// errStop, wrapped into a condition's error, ends a poll at once (the process died).
var errStop = errors.New("giving up")

func poll(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for attempt := 0; ; attempt++ {
		err := cond()
		if err == nil {
			return nil
		}
		if errors.Is(err, errStop) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %v (%d attempts): %w", timeout, attempt+1, err)
		}
		time.Sleep(interval)
	}
}

func logPathFor(dir, name string) string {
	return filepath.Join(dir, strings.ReplaceAll(name, "/", "_")+".log")
}

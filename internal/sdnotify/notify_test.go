package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func listen(t *testing.T) (*net.UnixConn, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, path
}

func TestNotifySendsState(t *testing.T) {
	conn, path := listen(t)
	t.Setenv(SocketEnv, path)
	sent, err := Notify(Ready)
	if err != nil || !sent {
		t.Fatalf("Notify: sent=%v err=%v", sent, err)
	}
	buf := make([]byte, 256)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != "READY=1" {
		t.Fatalf("got %q", got)
	}
}

func TestNotifyWithoutSocketDoesNothing(t *testing.T) {
	t.Setenv(SocketEnv, "")
	if sent, err := Notify(Ready); sent || err != nil {
		t.Fatalf("sent=%v err=%v", sent, err)
	}
}

func TestNotifyBadSocket(t *testing.T) {
	if _, err := NotifySocket("relative/path", Ready); err == nil {
		t.Fatal("relative socket path accepted")
	}
	if _, err := NotifySocket(filepath.Join(t.TempDir(), "absent.sock"), Ready); err == nil {
		t.Fatal("absent socket: no error")
	}
}

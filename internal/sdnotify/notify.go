package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// SocketEnv is the variable systemd sets for a Type=notify service.
const SocketEnv = "NOTIFY_SOCKET"

// States sent to systemd.
const (
	Ready    = "READY=1"
	Stopping = "STOPPING=1"
)

// Notify sends state to the socket named by $NOTIFY_SOCKET. It reports false, and no error,
// when the variable is unset: the daemon is not run by systemd (or not as Type=notify).
func Notify(state string) (bool, error) {
	return NotifySocket(os.Getenv(SocketEnv), state)
}

// NotifySocket sends state to socket ("" does nothing). A leading '@' names an abstract
// socket, as systemd writes it.
func NotifySocket(socket, state string) (bool, error) {
	if socket == "" {
		return false, nil
	}
	if !strings.HasPrefix(socket, "/") && !strings.HasPrefix(socket, "@") {
		return false, fmt.Errorf("%s=%q is neither an absolute path nor an abstract socket", SocketEnv, socket)
	}
	addr := &net.UnixAddr{Name: socket, Net: "unixgram"}
	if strings.HasPrefix(socket, "@") {
		addr.Name = "\x00" + socket[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return false, fmt.Errorf("notify systemd at %s: %w", socket, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("notify systemd at %s: %w", socket, err)
	}
	return true, nil
}

// Package sdnotify tells systemd about the daemon's state (sd_notify(3)) over the unix
// datagram socket named by $NOTIFY_SOCKET, so that a Type=notify unit is "started" only once
// the listeners accept connections, and "stopping" as soon as a shutdown begins.
package sdnotify

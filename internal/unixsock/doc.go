// Package unixsock binds the daemon's unix sockets (the proxy-plugin socket containerd dials,
// the admin socket) with the right owner and mode from the first moment they exist, and
// replaces a socket left by a daemon that died without taking one another daemon serves.
package unixsock

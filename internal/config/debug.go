package config

import (
	"fmt"
	"net"
)

// validDebugAddress accepts "" (off) or a host:port whose host is a loopback IP or
// "localhost": the debug listener must not be reachable from the network.
func validDebugAddress(addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address", addr)
	}
	return nil
}

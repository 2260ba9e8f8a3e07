package resolver

import (
	"context"
	"fmt"
	"net"

	"github.com/containerd/errdefs"
)

// The dial guard: every upstream connection is dialled to an address checked here, never to
// the daemon's own listeners (loop guard) and, unless the registry is allowed, never to the
// node's loopback, private or link-local networks (not an open proxy into them).

// netip is one of the daemon's own listener addresses.
type netip struct {
	ip   net.IP
	port string
}

// SetSelfAddresses records the daemon's own listener addresses (host:port) for the loop guard.
func (r *Resolver) SetSelfAddresses(addrs []string) error {
	var self []netip
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return fmt.Errorf("self address %q: %w", a, errdefs.ErrInvalidArgument)
		}
		ip := net.ParseIP(host)
		if ip == nil && host != "" && host != "localhost" {
			return fmt.Errorf("self address %q is not an IP: %w", a, errdefs.ErrInvalidArgument)
		}
		if ip == nil {
			ip = net.IPv4(127, 0, 0, 1)
		}
		self = append(self, netip{ip: ip, port: port})
	}
	r.mu.Lock()
	r.self = self
	r.mu.Unlock()
	return nil
}

// ErrBlockedAddress is returned when an upstream resolves to an address it may not use.
var ErrBlockedAddress = fmt.Errorf("upstream address not allowed: %w", errdefs.ErrPermissionDenied)

func (r *Resolver) guardedDial(dialer *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		allowPrivate, _ := ctx.Value(allowPrivateKey{}).(bool)
		if mark, _ := ctx.Value(proxyMarkKey{}).(*proxyMark); mark != nil && mark.is(addr) {
			// The forward proxy the operator configured (the registry's own addresses were
			// checked before the request was handed to it): only the loop guard applies.
			allowPrivate = true
		}
		ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, err
		}
		var lastErr error = fmt.Errorf("no address for %s", host)
		for _, ip := range ips {
			// The address is checked and then dialled as the IP itself, so a second DNS answer
			// (rebinding) cannot swap in another address between the check and the dial.
			if err := r.checkAddress(ip.IP, port, allowPrivate); err != nil {
				lastErr = fmt.Errorf("%s (%s): %w", host, ip.IP, err)
				continue
			}
			conn, err := dialer.DialContext(ctx, network, net.JoinHostPort(ip.IP.String(), port))
			if err == nil {
				return conn, nil
			}
			lastErr = err
		}
		return nil, lastErr
	}
}

func (r *Resolver) checkAddress(ip net.IP, port string, allowPrivate bool) error {
	r.mu.RLock()
	self := r.self
	r.mu.RUnlock()
	for _, s := range self {
		if s.port != port {
			continue
		}
		if s.ip.Equal(ip) || (s.ip.IsUnspecified() && (ip.IsLoopback() || isLocalAddress(ip))) {
			return fmt.Errorf("that is this daemon's own listener: %w", ErrBlockedAddress)
		}
	}
	if allowPrivate {
		return nil
	}
	if isRestricted(ip) {
		return fmt.Errorf("loopback, private or link-local address; list the registry in upstream.allow_private_networks to allow it: %w", ErrBlockedAddress)
	}
	return nil
}

// isRestricted covers the addresses an open proxy would let a client reach: the node itself,
// its private networks, link-local (including cloud metadata at 169.254.169.254) and the like.
func isRestricted(ip net.IP) bool {
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsUnspecified() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() {
		return true
	}
	if v4 := ip.To4(); v4 != nil {
		// 100.64.0.0/10 (carrier-grade NAT, used by some clouds for metadata) and 0.0.0.0/8.
		return (v4[0] == 100 && v4[1]&0xc0 == 64) || v4[0] == 0
	}
	return false
}

func isLocalAddress(ip net.IP) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

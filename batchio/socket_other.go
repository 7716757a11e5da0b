//go:build !linux

package batchio

import "net/netip"

// ListenUDP returns [ErrNotSupported]: the listener relies on Linux socket
// options (IP_PKTINFO, SO_RXQ_OVFL, UDP_GRO).
func ListenUDP(addr netip.AddrPort, opts ListenOptions) (int, error) {
	return -1, ErrNotSupported
}

// DialUpstream returns [ErrNotSupported].
func DialUpstream(local, backend netip.AddrPort, opts DialOptions) (int, error) {
	return -1, ErrNotSupported
}

// LocalAddr returns [ErrNotSupported].
func LocalAddr(fd int) (netip.AddrPort, error) { return netip.AddrPort{}, ErrNotSupported }

// RaiseNoFileLimit returns [ErrNotSupported].
func RaiseNoFileLimit() (uint64, error) { return 0, ErrNotSupported }

// ProbeOffload reports no offload.
func ProbeOffload() (gro, gso bool) { return false, false }

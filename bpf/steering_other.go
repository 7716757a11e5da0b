//go:build !linux

package bpf

import (
	"net/netip"
	"time"
)

// Steering is a loaded steering program; see the Linux implementation. On
// other systems [Load] always fails with [ErrNotSupported].
type Steering struct{ opts Options }

// Load returns [ErrNotSupported]: SK_REUSEPORT programs are Linux only.
func Load(o Options) (*Steering, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	return nil, ErrNotSupported
}

// Attach is not supported.
func (s *Steering) Attach(fds []int) error { return ErrNotSupported }

// SetSocket is not supported.
func (s *Steering) SetSocket(shard, fd int) error { return ErrNotSupported }

// ClearSocket is not supported.
func (s *Steering) ClearSocket(shard int) error { return ErrNotSupported }

// SetOverride is not supported.
func (s *Steering) SetOverride(client netip.AddrPort, shard int) error { return ErrNotSupported }

// DeleteOverride is not supported.
func (s *Steering) DeleteOverride(client netip.AddrPort) error { return ErrNotSupported }

// Stats is not supported.
func (s *Steering) Stats() (Stats, error) { return Stats{}, ErrNotSupported }

// RunStats is not supported.
func (s *Steering) RunStats() (uint64, time.Duration, error) { return 0, 0, ErrNotSupported }

// Options returns the options s was loaded with.
func (s *Steering) Options() Options { return s.opts }

// Close does nothing.
func (s *Steering) Close() error { return nil }

// SetIncomingCPU is not supported.
func SetIncomingCPU(fd, cpu int) error { return ErrNotSupported }

// Detach is not supported.
func Detach(fd int) error { return ErrNotSupported }

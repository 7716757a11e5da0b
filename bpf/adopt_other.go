//go:build !linux

package bpf

// FDs is not supported: there is no program.
func (s *Steering) FDs() []int { return nil }

// Adopt returns [ErrNotSupported]: SK_REUSEPORT programs are Linux only.
func Adopt(o Options, fds []int) (*Steering, error) { return nil, ErrNotSupported }

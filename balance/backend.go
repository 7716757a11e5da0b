package balance

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/fastudp/fastudp/core"
)

// Backend is one member of a cluster as the load balancer sees it.
type Backend struct {
	// ID is the shell's name for the backend; it is echoed, never hashed.
	ID core.BackendID
	// Addr identifies the backend for hashing and is where flows go.
	// IPv4-mapped IPv6 addresses hash as IPv4; zones are ignored.
	Addr netip.AddrPort
	// Weight is the backend's relative share of keys; it must be at least 1.
	Weight uint32
	// Backup marks a backend that gets new flows only while no primary
	// (non-backup) backend of its table is usable. A table whose backends
	// are all backups treats them as primaries.
	Backup bool
}

// Limits on tables.
const (
	// MaxBackends is the largest number of backends in one table (Maglev
	// slots hold 16-bit indices).
	MaxBackends = 1<<16 - 1
)

// Errors returned when a table cannot be built. They are wrapped with the
// offending backend or size; test with errors.Is.
var (
	ErrNoBackends       = errors.New("no backends")
	ErrZeroWeight       = errors.New("weight must be at least 1")
	ErrInvalidAddr      = errors.New("invalid backend address")
	ErrDuplicateBackend = errors.New("duplicate backend address")
	ErrTooManyBackends  = fmt.Errorf("more than %d backends", MaxBackends)
	ErrSize             = errors.New("invalid table size")
)

// Salts that make the three per-backend hashes independent. They are the ASCII
// of "offset", "skip__" and "hrw___" (the first two as in sozu).
const (
	saltOffset = 0x6f66_6673_6574
	saltSkip   = 0x736b_6970_5f5f
	saltHRW    = 0x6872_775f_5f5f
)

// backendHash is the 64-bit hash of a backend address under seed and salt:
// core.AffinityHash(seed^salt, addr, core.AffinityIPPort), that is FNV-1a 64
// over the 8 little-endian bytes of seed^salt, the IP (4 bytes for IPv4 and
// IPv4-mapped IPv6, else 16, network order) and the port (2 bytes, big-endian),
// then the splitmix64 finaliser. It is the published affinity-hash contract
// with a salted seed, so another implementation can reproduce tables.
func backendHash(seed, salt uint64, addr netip.AddrPort) uint64 {
	return core.AffinityHash(seed^salt, addr, core.AffinityIPPort)
}

// normAddr is the form addresses are compared in: unmapped, without zone.
func normAddr(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

// sortedBackends validates backends and returns a copy sorted by address.
func sortedBackends(backends []Backend) ([]Backend, error) {
	if len(backends) == 0 {
		return nil, ErrNoBackends
	}
	if len(backends) > MaxBackends {
		return nil, fmt.Errorf("%d backends: %w", len(backends), ErrTooManyBackends)
	}
	bs := slices.Clone(backends)
	for i := range bs {
		if !bs[i].Addr.Addr().IsValid() {
			return nil, fmt.Errorf("backend %d (id %d): %w", i, bs[i].ID, ErrInvalidAddr)
		}
		if bs[i].Weight == 0 {
			return nil, fmt.Errorf("backend %v: %w", bs[i].Addr, ErrZeroWeight)
		}
	}
	slices.SortFunc(bs, func(a, b Backend) int {
		return normAddr(a.Addr).Compare(normAddr(b.Addr))
	})
	for i := 1; i < len(bs); i++ {
		if normAddr(bs[i-1].Addr) == normAddr(bs[i].Addr) {
			return nil, fmt.Errorf("backend %v: %w", bs[i].Addr, ErrDuplicateBackend)
		}
	}
	return bs, nil
}

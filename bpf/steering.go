package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/fastudp/fastudp/core"
)

// Mode is a steering policy: who chooses a datagram's shard.
type Mode uint8

// Steering modes.
const (
	// ModeKernel loads no program: the kernel's SO_REUSEPORT hash of the
	// 4-tuple chooses.
	ModeKernel Mode = iota
	// ModeHash chooses AffinityHash(seed, key) mod shards.
	ModeHash
	// ModeCPU chooses the shard of the receiving CPU.
	ModeCPU
)

var modeNames = [...]string{ModeKernel: "kernel", ModeHash: "hash", ModeCPU: "cpu"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Key is what of the client [ModeHash] hashes.
type Key uint8

// Hash keys.
const (
	// KeyFlow hashes the client IP and port (core.AffinityIPPort): each
	// client port is a flow of its own and flows spread over the shards.
	KeyFlow Key = iota
	// KeyIP hashes the client IP only (core.AffinityIP): every port of a
	// client lands on one shard.
	KeyIP
)

var keyNames = [...]string{KeyFlow: "flow", KeyIP: "ip"}

func (k Key) String() string {
	if int(k) < len(keyNames) {
		return keyNames[k]
	}
	return fmt.Sprintf("key(%d)", uint8(k))
}

// affinity returns the core affinity mode that hashes what k names.
func (k Key) affinity() core.Affinity {
	if k == KeyIP {
		return core.AffinityIP
	}
	return core.AffinityIPPort
}

// MaxShards bounds the sockarray (and Options.Shards).
const MaxShards = 1 << 16

// MaxOverrides bounds the per-flow override map. Its entries are allocated
// on insert (BPF_F_NO_PREALLOC), so an empty map costs next to nothing.
const MaxOverrides = 1 << 16

// Options configures the steering of one listener's SO_REUSEPORT group.
type Options struct {
	// Mode is ModeHash or ModeCPU ([Load] refuses ModeKernel: there is
	// nothing to load).
	Mode Mode
	// Key is what ModeHash hashes.
	Key Key
	// Seed keys the hash: the process seed, so that the shard agrees with
	// [ShardFor] and across restarts.
	Seed uint64
	// Shards is the number of sockarray slots, 1..[MaxShards]; slot i is
	// shard i's socket.
	Shards int
	// CPUs, when not nil, gives the CPU each shard is pinned to (shard i on
	// CPUs[i]); ModeCPU sends CPU CPUs[i] to shard i and any other CPU c to
	// shard c mod Shards. Nil means shard c mod Shards for every CPU c.
	CPUs []int
	// PinPath, when not empty, is a directory on a bpffs mount (such as
	// /sys/fs/bpf/fastudp/LISTENER) where the maps are pinned, or reused
	// from when a previous process pinned compatible ones: the sockarray,
	// the config, the overrides and the statistics. It is created if
	// missing.
	PinPath string
}

func (o *Options) validate() error {
	if o.Mode != ModeHash && o.Mode != ModeCPU {
		return fmt.Errorf("steering mode %v: nothing to load", o.Mode)
	}
	if o.Key > KeyIP {
		return fmt.Errorf("steering key %v: invalid", o.Key)
	}
	if o.Shards < 1 || o.Shards > MaxShards {
		return fmt.Errorf("shards: %d is outside 1..%d", o.Shards, MaxShards)
	}
	if o.CPUs != nil && len(o.CPUs) != o.Shards {
		return fmt.Errorf("cpus: %d given for %d shards", len(o.CPUs), o.Shards)
	}
	return nil
}

// ShardFor returns the shard [ModeHash] steers client to with seed, key and
// shards shards: core.AffinityHash(seed, client, mode) mod shards, where mode
// is core.AffinityIPPort for [KeyFlow] and core.AffinityIP for [KeyIP]. It is
// the Go twin of the program (tests check they agree). IPv4-mapped IPv6
// clients hash as IPv4, as they do in the core: a dual-stack listener
// receives IPv4 datagrams as IPv4 packets, which is what the program reads.
// shards < 1 counts as 1.
func ShardFor(seed uint64, client netip.AddrPort, key Key, shards int) int {
	if shards <= 1 {
		return 0
	}
	return int(core.AffinityHash(seed, client, key.affinity()) % uint64(shards))
}

// ShardForCPU returns the shard [ModeCPU] steers a datagram received on cpu
// to, with o.Shards and o.CPUs as in [Options].
func ShardForCPU(cpu int, o Options) int {
	for i, c := range o.CPUs {
		if c == cpu {
			return i
		}
	}
	if o.Shards <= 1 {
		return 0
	}
	return cpu % o.Shards
}

// OverrideKey is a key of the override map: a client address, as the program
// builds it from the datagram.
type OverrideKey struct {
	// Addr is the client IP, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d).
	Addr [16]byte
	// Port is the client port in network byte order.
	Port [2]byte
	_    [2]byte
}

// OverrideKeyOf returns the override map key of client.
func OverrideKeyOf(client netip.AddrPort) OverrideKey {
	var k OverrideKey
	k.Addr = client.Addr().Unmap().As16() // As16 maps IPv4
	p := client.Port()
	k.Port = [2]byte{byte(p >> 8), byte(p)}
	return k
}

// Stats counts what the program did with the datagrams of one group, summed
// over CPUs.
type Stats struct {
	// Selected datagrams went to the socket the policy chose.
	Selected uint64
	// Overridden datagrams went to the socket an override entry chose.
	Overridden uint64
	// NoSocket datagrams found their slot empty (the shard's socket closed)
	// and were left to the kernel's hash.
	NoSocket uint64
	// Unparsed datagrams could not be read (not IPv4 or IPv6, or cut
	// short) and were left to the kernel's hash.
	Unparsed uint64
}

// ErrNotSupported is returned by [Load] where the kernel or OS lacks what the
// program needs.
var ErrNotSupported = errors.New("bpf steering not supported")

// ErrPermission is what a [*PermissionError] matches with errors.Is.
var ErrPermission = errors.New("no permission to load bpf")

// PermissionError reports that the process may not create BPF maps or load
// programs: it lacks CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8), or
// kernel.unprivileged_bpf_disabled forbids it. cilium/ebpf's own message for
// this EPERM suggests raising RLIMIT_MEMLOCK, which is wrong on kernels that
// account BPF memory to the memory cgroup (5.11 and later).
type PermissionError struct {
	Op  string // what failed: "create sockarray", "load program", ...
	Err error  // the underlying error (an EPERM)
}

func (e *PermissionError) Error() string {
	return "bpf " + e.Op + ": operation not permitted: needs CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8)"
}

func (e *PermissionError) Unwrap() error { return e.Err }

// Is reports whether target is [ErrPermission].
func (e *PermissionError) Is(target error) bool { return target == ErrPermission }

package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Steering is a loaded steering program and its maps, for one listener's
// SO_REUSEPORT group. Create it with [Load], give it the group's sockets with
// [Steering.Attach]. Its methods may be called from any goroutine.
//
// The attached program belongs to the group, not to the Steering: it keeps
// steering while any of the group's sockets is open, even after
// [Steering.Close] (which only releases this process's handles).
type Steering struct {
	opts Options
	prog *ebpf.Program
	// socks, config, overrides, cpus and stats are the maps; see program.go.
	socks, config, overrides, cpus, stats *ebpf.Map

	// mu serialises read-modify-write of the config entry.
	mu sync.Mutex
}

// Load creates the maps (or opens them from o.PinPath), fills the config and
// CPU tables and loads the program. Nothing is attached yet.
//
// Errors: a [*PermissionError] (errors.Is [ErrPermission] and unix.EPERM)
// when the process may not use BPF; one matching [ErrNotSupported] when the
// kernel lacks a map type, helper or program type; others for bad options,
// a pin path off bpffs, or pinned maps of another shape.
func Load(o Options) (*Steering, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	// Only kernels before 5.11 count BPF memory against RLIMIT_MEMLOCK;
	// raising it needs CAP_SYS_RESOURCE, and where that is missing the map
	// creation below reports the real problem.
	_ = rlimit.RemoveMemlock()
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("possible cpus: %w", err)
	}
	var mo ebpf.MapOptions
	pin := ebpf.PinNone
	if o.PinPath != "" {
		if err := os.MkdirAll(o.PinPath, 0o700); err != nil {
			return nil, fmt.Errorf("bpf pin path: %w", err)
		}
		mo.PinPath, pin = o.PinPath, ebpf.PinByName
	}
	s := &Steering{opts: o}
	maps := []struct {
		m    **ebpf.Map
		spec ebpf.MapSpec
	}{
		// The sockarray first: it is the one that needs CAP_BPF even where
		// unprivileged BPF is allowed.
		{&s.socks, ebpf.MapSpec{Name: mapSocks, Type: ebpf.ReusePortSockArray, KeySize: 4, ValueSize: 8, MaxEntries: uint32(o.Shards)}},
		{&s.config, ebpf.MapSpec{Name: mapConfig, Type: ebpf.Array, KeySize: 4, ValueSize: 24, MaxEntries: 1}},
		{&s.overrides, ebpf.MapSpec{Name: mapOverrides, Type: ebpf.Hash, KeySize: 20, ValueSize: 4, MaxEntries: MaxOverrides, Flags: unix.BPF_F_NO_PREALLOC}},
		{&s.cpus, ebpf.MapSpec{Name: mapCPUs, Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: uint32(ncpu)}},
		{&s.stats, ebpf.MapSpec{Name: mapStats, Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: numStats}},
	}
	for _, m := range maps {
		m.spec.Pinning = pin
		if *m.m, err = ebpf.NewMapWithOptions(&m.spec, mo); err != nil {
			s.Close()
			return nil, classify("create map "+m.spec.Name, err)
		}
	}
	cfg := steerConfig{FNVSeeded: fnvSeeded(o.Seed), Shards: uint32(o.Shards), Mode: progModeHash, Key: progKeyFlow}
	if o.Mode == ModeCPU {
		cfg.Mode = progModeCPU
	}
	if o.Key == KeyIP {
		cfg.Key = progKeyIP
	}
	// Overrides left in a pinned map by an earlier process stay in force.
	var k OverrideKey
	if err := s.overrides.NextKey(nil, &k); err == nil {
		cfg.Flags |= flagOverrides
	}
	if err := s.config.Update(uint32(0), cfg, ebpf.UpdateAny); err != nil {
		s.Close()
		return nil, fmt.Errorf("bpf config: %w", err)
	}
	for c := range ncpu {
		if err := s.cpus.Update(uint32(c), uint32(ShardForCPU(c, o)), ebpf.UpdateAny); err != nil {
			s.Close()
			return nil, fmt.Errorf("bpf cpu table: %w", err)
		}
	}
	insns := program()
	for _, m := range maps {
		if err := insns.AssociateMap(m.spec.Name, *m.m); err != nil {
			s.Close()
			return nil, fmt.Errorf("bpf program: %w", err)
		}
	}
	s.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "fastudp_steer",
		Type:         ebpf.SkReuseport,
		AttachType:   ebpf.AttachSkReuseportSelect,
		Instructions: insns,
		License:      "MIT",
	})
	if err != nil {
		s.Close()
		return nil, classify("load program", err)
	}
	return s, nil
}

// classify turns EPERM into a [*PermissionError] (dropping cilium/ebpf's
// MEMLOCK hint) and a missing feature into [ErrNotSupported].
func classify(op string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM):
		return &PermissionError{Op: op, Err: err}
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("bpf %s: %w: %w", op, ErrNotSupported, err)
	}
	return fmt.Errorf("bpf %s: %w", op, err)
}

// Attach puts fds[i] in slot i of the sockarray, for every shard, and
// attaches the program to their SO_REUSEPORT group (through fds[0]). Every fd
// must be a bound SO_REUSEPORT UDP socket of the same group; len(fds) must be
// Options.Shards.
func (s *Steering) Attach(fds []int) error {
	if len(fds) != s.opts.Shards {
		return fmt.Errorf("bpf attach: %d sockets for %d shards", len(fds), s.opts.Shards)
	}
	for i, fd := range fds {
		if err := s.SetSocket(i, fd); err != nil {
			return err
		}
	}
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, s.prog.FD()); err != nil {
		return classify("attach", os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_EBPF", err))
	}
	return nil
}

// SetSocket puts fd in slot shard of the sockarray (replacing what was there).
func (s *Steering) SetSocket(shard, fd int) error {
	if err := s.socks.Update(uint32(shard), uint64(fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bpf sockarray slot %d: %w", shard, err)
	}
	return nil
}

// ClearSocket empties slot shard: its datagrams go to the kernel's hash until
// a socket is put back. Closing the socket has the same effect.
func (s *Steering) ClearSocket(shard int) error {
	if err := s.socks.Delete(uint32(shard)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf sockarray slot %d: %w", shard, err)
	}
	return nil
}

// SetOverride steers client's datagrams to shard, whatever the policy says.
// The first override turns on the per-datagram override lookup, which stays
// on for the life of the maps.
func (s *Steering) SetOverride(client netip.AddrPort, shard int) error {
	if shard < 0 || shard >= s.opts.Shards {
		return fmt.Errorf("override %v: shard %d is outside 0..%d", client, shard, s.opts.Shards-1)
	}
	if err := s.overrides.Update(OverrideKeyOf(client), uint32(shard), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("override %v: %w", client, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var cfg steerConfig
	if err := s.config.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("bpf config: %w", err)
	}
	if cfg.Flags&flagOverrides == 0 {
		cfg.Flags |= flagOverrides
		if err := s.config.Update(uint32(0), cfg, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("bpf config: %w", err)
		}
	}
	return nil
}

// DeleteOverride removes client's override, if any.
func (s *Steering) DeleteOverride(client netip.AddrPort) error {
	if err := s.overrides.Delete(OverrideKeyOf(client)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("override %v: %w", client, err)
	}
	return nil
}

// Stats returns the program's counters, summed over CPUs. With pinned maps
// they include earlier processes' counts.
func (s *Steering) Stats() (Stats, error) {
	var st Stats
	dst := [numStats]*uint64{&st.Selected, &st.Overridden, &st.NoSocket, &st.Unparsed}
	var per []uint64
	for i := range numStats {
		if err := s.stats.Lookup(uint32(i), &per); err != nil {
			return Stats{}, fmt.Errorf("bpf stats: %w", err)
		}
		for _, v := range per {
			*dst[i] += v
		}
	}
	return st, nil
}

// RunStats returns how often the program ran and its total run time, which
// the kernel measures only while BPF statistics are enabled (sysctl
// kernel.bpf_stats_enabled=1, or ebpf.EnableStats).
func (s *Steering) RunStats() (runs uint64, total time.Duration, err error) {
	ps, err := s.prog.Stats()
	if err != nil {
		return 0, 0, err
	}
	return ps.RunCount, ps.Runtime, nil
}

// Options returns the options s was loaded with.
func (s *Steering) Options() Options { return s.opts }

// Close releases the program and maps. It neither detaches the program from
// the group nor removes pins.
func (s *Steering) Close() error {
	var errs []error
	if s.prog != nil {
		errs = append(errs, s.prog.Close())
	}
	for _, m := range []*ebpf.Map{s.socks, s.config, s.overrides, s.cpus, s.stats} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// SetIncomingCPU sets SO_INCOMING_CPU on fd: the fallback for [ModeCPU]
// without BPF. Since Linux 6.1 (b261eda84ec1) the kernel's reuseport hash
// prefers the group member whose SO_INCOMING_CPU is the receiving CPU. It
// needs no capability.
func SetIncomingCPU(fd, cpu int) error {
	return os.NewSyscallError("setsockopt SO_INCOMING_CPU", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_INCOMING_CPU, cpu))
}

// Detach removes the program from fd's SO_REUSEPORT group (the kernel's hash
// chooses again). It returns ENOENT when the group has no program.
func Detach(fd int) error {
	return os.NewSyscallError("setsockopt SO_DETACH_REUSEPORT_BPF", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0))
}

package bpf

import (
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

func closeFD(fd int) { _ = unix.Close(fd) }

// FDs returns the descriptors of the program and its maps (program,
// sockarray, config, overrides, CPU table, statistics), to hand to another
// process with SCM_RIGHTS ([Adopt] takes them there). They stay s's.
func (s *Steering) FDs() []int {
	return []int{s.prog.FD(), s.socks.FD(), s.config.FD(), s.overrides.FD(), s.cpus.FD(), s.stats.FD()}
}

// Adopt takes over a program and maps another process loaded, attached and
// handed over ([Steering.FDs], in that order), for the same SO_REUSEPORT
// sockets: nothing is loaded or attached, and the sockarray keeps its
// sockets (a socket can be in one sockarray only, so a fresh [Load] could
// not take them while the other process holds its maps). The config and CPU
// table are rewritten for o, whose Shards and Seed must be the old ones;
// o.PinPath is not used (pinned maps stay pinned). Adopt owns fds from the
// call on, error or not.
func Adopt(o Options, fds []int) (*Steering, error) {
	if len(fds) != 6 {
		for _, fd := range fds {
			closeFD(fd)
		}
		return nil, fmt.Errorf("bpf adopt: %d descriptors, want 6", len(fds))
	}
	s := &Steering{opts: o}
	fail := func(err error, rest []int) (*Steering, error) {
		for _, fd := range rest {
			closeFD(fd)
		}
		s.Close()
		return nil, fmt.Errorf("bpf adopt: %w", err)
	}
	if err := o.validate(); err != nil {
		return fail(err, fds)
	}
	var err error
	if s.prog, err = ebpf.NewProgramFromFD(fds[0]); err != nil {
		return fail(err, fds[1:])
	}
	maps := []struct {
		m    **ebpf.Map
		typ  ebpf.MapType
		size uint32 // value size
		max  uint32 // entries; 0: any
	}{
		{&s.socks, ebpf.ReusePortSockArray, 8, uint32(o.Shards)},
		{&s.config, ebpf.Array, 24, 1},
		{&s.overrides, ebpf.Hash, 4, 0},
		{&s.cpus, ebpf.Array, 4, 0},
		{&s.stats, ebpf.PerCPUArray, 8, 0},
	}
	for i, m := range maps {
		if *m.m, err = ebpf.NewMapFromFD(fds[1+i]); err != nil {
			return fail(err, fds[2+i:])
		}
		got := *m.m
		if got.Type() != m.typ || got.ValueSize() != m.size || (m.max != 0 && got.MaxEntries() != m.max) {
			return fail(fmt.Errorf("map %d: %v of %d-byte values and %d entries, want %v of %d and %d",
				i, got.Type(), got.ValueSize(), got.MaxEntries(), m.typ, m.size, m.max), fds[2+i:])
		}
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fail(fmt.Errorf("possible cpus: %w", err), nil)
	}
	if s.cpus.MaxEntries() != uint32(ncpu) {
		return fail(fmt.Errorf("CPU table of %d entries, %d CPUs", s.cpus.MaxEntries(), ncpu), nil)
	}
	var old steerConfig
	if err := s.config.Lookup(uint32(0), &old); err != nil {
		return fail(fmt.Errorf("config: %w", err), nil)
	}
	if old.FNVSeeded != fnvSeeded(o.Seed) || old.Shards != uint32(o.Shards) {
		return fail(fmt.Errorf("the program steers %d shards under another seed or count (want %d)", old.Shards, o.Shards), nil)
	}
	cfg := steerConfig{FNVSeeded: fnvSeeded(o.Seed), Shards: uint32(o.Shards), Mode: progModeHash, Key: progKeyFlow, Flags: old.Flags}
	if o.Mode == ModeCPU {
		cfg.Mode = progModeCPU
	}
	if o.Key == KeyIP {
		cfg.Key = progKeyIP
	}
	for c := range ncpu {
		if err := s.cpus.Update(uint32(c), uint32(ShardForCPU(c, o)), ebpf.UpdateAny); err != nil {
			return fail(fmt.Errorf("cpu table: %w", err), nil)
		}
	}
	if err := s.config.Update(uint32(0), cfg, ebpf.UpdateAny); err != nil {
		return fail(fmt.Errorf("config: %w", err), nil)
	}
	return s, nil
}

package shard

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fastudp/fastudp/bpf"
)

// SteeringOptions chooses how each listener's datagrams are spread over the
// shards (see package bpf). The zero value leaves it to the kernel.
type SteeringOptions struct {
	// Mode is the policy asked for: bpf.ModeKernel (no program),
	// bpf.ModeHash or bpf.ModeCPU.
	Mode bpf.Mode
	// Key is what bpf.ModeHash hashes.
	Key bpf.Key
	// Seed keys the hash (the process seed).
	Seed uint64
	// PinPath, when not empty, is a bpffs directory: listener L's maps are
	// pinned in PinPath/L (and reused from there by the next process).
	PinPath string
}

// Active steering, as [SteeringStatus.Active] reports it.
const (
	SteeringActiveKernel      = "kernel"       // the kernel's SO_REUSEPORT hash
	SteeringActiveHash        = "hash"         // the program, hash policy
	SteeringActiveCPU         = "cpu"          // the program, CPU policy
	SteeringActiveIncomingCPU = "incoming_cpu" // SO_INCOMING_CPU on each shard socket (CPU policy without BPF)
)

// SteeringStatus is how a [Group] steers datagrams to shards.
type SteeringStatus struct {
	// Requested and Key are what the options asked for.
	Requested bpf.Mode
	Key       bpf.Key
	// Active is what is in force: one of the SteeringActive* values.
	Active string
	// Fallback is why Active is not what was asked for: a
	// [*bpf.PermissionError] (errors.Is bpf.ErrPermission) or an error
	// matching bpf.ErrNotSupported. Nil when steering is as asked.
	Fallback error
	// FallbackAlso is set when even the fallback could not be set up (the
	// SO_INCOMING_CPU setsockopt failed): Active is then "kernel".
	FallbackAlso error
}

// shardCPUs returns the CPU shard i is pinned to, for every shard, or nil
// when shards are not pinned.
func shardCPUs(shards int, cpus []int) []int {
	if len(cpus) == 0 {
		return nil
	}
	out := make([]int, shards)
	for i := range out {
		out[i] = cpus[i%len(cpus)]
	}
	return out
}

// pinDir returns the directory name of a listener's pins: its name, which
// config allows only letters, digits, '.', '_' and '-', so only "." and ".."
// (and "", for listeners built in code) need another spelling.
func pinDir(name string) string {
	switch name {
	case "", ".", "..":
		return "_" + name
	}
	return name
}

// startSteering loads and attaches one program per listener (lfds[l] holds
// listener l's sockets, shard by shard). Without permission to use BPF, or
// on a kernel without what the program needs, it falls back (kernel hash,
// or SO_INCOMING_CPU for the CPU policy) and records why; other errors
// (a bad pin path, pinned maps of another shape) fail the group.
func (g *Group) startSteering(o GroupOptions, lfds [][]int, cpus []int) error {
	if o.Resume != nil && len(o.Resume.Steering) > 0 {
		return g.adoptSteering(o, lfds, cpus)
	}
	so := o.Steering
	g.steering = SteeringStatus{Requested: so.Mode, Key: so.Key, Active: SteeringActiveKernel}
	if so.Mode == bpf.ModeKernel {
		return nil
	}
	pinned := shardCPUs(o.Shards, cpus)
	for li, fds := range lfds {
		bo := bpf.Options{Mode: so.Mode, Key: so.Key, Seed: so.Seed, Shards: o.Shards, CPUs: pinned}
		if so.PinPath != "" {
			bo.PinPath = filepath.Join(so.PinPath, pinDir(o.Listeners[li].Name))
		}
		s, err := bpf.Load(bo)
		if err == nil {
			if err = s.Attach(fds); err != nil {
				s.Close()
			}
		}
		if err != nil {
			if errors.Is(err, bpf.ErrPermission) || errors.Is(err, bpf.ErrNotSupported) {
				g.fallBack(so.Mode, lfds, pinned, err)
				return nil
			}
			return fmt.Errorf("listener %q: steering: %w", o.Listeners[li].Name, err)
		}
		g.addSteering(s)
	}
	g.steering.Active = so.Mode.String()
	return nil
}

// fallBack undoes any program already attached and sets up steering without
// BPF: SO_INCOMING_CPU for the CPU policy, else the kernel's hash.
func (g *Group) fallBack(mode bpf.Mode, lfds [][]int, pinned []int, why error) {
	for li := range g.progs {
		_ = bpf.Detach(lfds[li][0]) // best effort: the group outlives a failed start anyway
	}
	g.closeSteering()
	g.steering.Fallback = why
	if mode != bpf.ModeCPU {
		return
	}
	for _, fds := range lfds {
		for si, fd := range fds {
			cpu := si
			if pinned != nil {
				cpu = pinned[si]
			}
			if err := bpf.SetIncomingCPU(fd, cpu); err != nil {
				g.steering.FallbackAlso = err
				return
			}
		}
	}
	g.steering.Active = SteeringActiveIncomingCPU
}

// addSteering records an attached program (closed by closeSteering).
func (g *Group) addSteering(s *bpf.Steering) {
	g.steerMu.Lock()
	g.progs = append(g.progs, s)
	g.steerMu.Unlock()
}

func (g *Group) closeSteering() {
	g.steerMu.Lock()
	defer g.steerMu.Unlock()
	for _, s := range g.progs {
		_ = s.Close() // the programs stay attached to their groups
	}
	g.progs = nil
}

// Steering reports how the group steers datagrams to shards.
func (g *Group) Steering() SteeringStatus { return g.steering }

// SteeringPrograms returns the loaded steering of each listener, in
// listener order, or nil when no program is in use. They are closed when
// [Group.Wait] returns (the programs stay attached while the sockets live).
func (g *Group) SteeringPrograms() []*bpf.Steering {
	g.steerMu.Lock()
	defer g.steerMu.Unlock()
	return g.progs
}

// SteeringCollector exports a group's steering to Prometheus: the mode in
// force, fallbacks, and what the programs did with each datagram.
type SteeringCollector struct {
	g         *Group
	listeners []string
	info      *prometheus.Desc
	fallbacks *prometheus.Desc
	datagrams *prometheus.Desc
}

var _ prometheus.Collector = (*SteeringCollector)(nil)

// NewSteeringCollector returns a collector for g's steering; listeners names
// the listeners in order.
func NewSteeringCollector(g *Group, listeners []string) *SteeringCollector {
	return &SteeringCollector{
		g: g, listeners: listeners,
		info: prometheus.NewDesc("fastudp_steering_info",
			"Steering of datagrams to shards: requested mode and key, and the mode in force (kernel, hash, cpu, incoming_cpu). Always 1.",
			[]string{"mode", "key", "active"}, nil),
		fallbacks: prometheus.NewDesc("fastudp_steering_fallbacks_total",
			"Times steering fell back at start because the eBPF program could not be used, by reason (no_permission: no CAP_BPF; not_supported: the kernel lacks it).",
			[]string{"reason"}, nil),
		datagrams: prometheus.NewDesc("fastudp_steering_datagrams_total",
			"Datagrams seen by the steering program, by outcome: selected (the policy's shard), override (an override entry's shard), no_socket (the shard's slot was empty: the kernel chose), unparsed (no readable address: the kernel chose).",
			[]string{"listener", "result"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *SteeringCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.info
	ch <- c.fallbacks
	ch <- c.datagrams
}

// Collect implements prometheus.Collector.
func (c *SteeringCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.g.Steering()
	ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, st.Requested.String(), st.Key.String(), st.Active)
	var perm, unsupported float64
	if st.Fallback != nil {
		if errors.Is(st.Fallback, bpf.ErrPermission) {
			perm = 1
		} else {
			unsupported = 1
		}
	}
	ch <- prometheus.MustNewConstMetric(c.fallbacks, prometheus.CounterValue, perm, "no_permission")
	ch <- prometheus.MustNewConstMetric(c.fallbacks, prometheus.CounterValue, unsupported, "not_supported")
	c.g.steerMu.Lock() // held so that Wait cannot close the maps mid-read
	defer c.g.steerMu.Unlock()
	for li, s := range c.g.progs {
		if li >= len(c.listeners) {
			break
		}
		ps, err := s.Stats()
		if err != nil {
			continue
		}
		for _, r := range []struct {
			name string
			v    uint64
		}{{"selected", ps.Selected}, {"override", ps.Overridden}, {"no_socket", ps.NoSocket}, {"unparsed", ps.Unparsed}} {
			ch <- prometheus.MustNewConstMetric(c.datagrams, prometheus.CounterValue, float64(r.v), c.listeners[li], r.name)
		}
	}
}

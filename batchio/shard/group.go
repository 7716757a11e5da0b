package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/bpf"
	"github.com/fastudp/fastudp/core"
)

// GroupOptions configures a [Group] of shards sharing listeners.
type GroupOptions struct {
	// Shards is the number of shards (at least 1).
	Shards int
	// Listeners are bound once per shard with SO_REUSEPORT. A listener with
	// port 0 gets an ephemeral port no other socket holds; every shard
	// binds that port.
	Listeners []Listener
	// Listen configures listener sockets (buffers, GRO, V6Only).
	Listen batchio.ListenOptions
	// GRO turns UDP_GRO on for listener and upstream sockets (as does
	// Listen.GRO) and sizes the shards' receive buffers for it: runs of
	// equal-size datagrams are read whole and forwarded with one GSO send.
	GRO bool
	// NoGSO is as in [Options].
	NoGSO bool
	// Backends is the number of BackendIDs, for per-backend counters.
	Backends int
	// Core configures each shard's flow engine (MaxFlows is per shard).
	Core core.Config
	// BatchSize, UpstreamSources, SocketRecvBuffer, SocketSendBuffer,
	// Picker, Logger and AccessLog are as in [Options].
	BatchSize                          int
	UpstreamSources                    []netip.Addr
	SocketRecvBuffer, SocketSendBuffer int
	// DNSSocketBuffer is as in [Options].
	DNSSocketBuffer   int
	Picker            Picker
	Logger, AccessLog *slog.Logger
	// FDCeiling is as in [Options].
	FDCeiling int
	// PinCPUs pins shard i to CPU i modulo the CPUs the process may use.
	PinCPUs bool
	// Steering chooses each listener's shard per datagram (an eBPF
	// program); the zero value leaves it to the kernel's hash.
	Steering SteeringOptions
	// Resume, when set, builds the group from another process's exported
	// state (see [Group.Pause]): no socket is bound or opened. Shards and
	// Listeners must match the state. RemapBackend is as in [Options].
	Resume       *GroupState
	RemapBackend func(core.BackendID) core.BackendID
	// upstreamHook is as in [Options] (tests only).
	upstreamHook func(fd int)
}

// Group runs the shards of one proxy process.
type Group struct {
	shards []*Shard
	addrs  []netip.AddrPort
	errc   chan error

	steering SteeringStatus
	// steerMu guards progs, which Wait closes while metrics may read them.
	steerMu sync.Mutex
	progs   []*bpf.Steering // per listener; nil without a program
}

// NewGroup binds every listener once per shard and creates the shards. On
// error nothing stays open.
func NewGroup(o GroupOptions) (*Group, error) {
	if o.Shards < 1 {
		return nil, fmt.Errorf("shards: %d, want at least 1", o.Shards)
	}
	g := &Group{addrs: make([]netip.AddrPort, len(o.Listeners))}
	for i, l := range o.Listeners {
		g.addrs[i] = l.Addr
	}
	var cpus []int
	if o.PinCPUs {
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &set); err == nil {
			for c := 0; c < len(set)*64; c++ {
				if set.IsSet(c) {
					cpus = append(cpus, c)
				}
			}
		}
	}
	fail := func(err error, fds []int) (*Group, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		g.close()
		return nil, err
	}
	for li, l := range o.Listeners {
		if g.addrs[li].Port() == 0 && o.Resume == nil {
			p, err := reservePort(g.addrs[li].Addr())
			if err != nil {
				return nil, fmt.Errorf("listener %q on %v: %w", l.Name, g.addrs[li], err)
			}
			g.addrs[li] = netip.AddrPortFrom(g.addrs[li].Addr(), p)
		}
	}
	o.GRO = o.GRO || o.Listen.GRO
	if o.GRO || !o.NoGSO {
		// Feature detection: a kernel without UDP_GRO would fail every
		// listener; one without UDP_SEGMENT every run's send.
		gro, gso := batchio.ProbeOffload()
		if o.GRO && !gro {
			o.GRO = false
			if o.Logger != nil {
				o.Logger.Warn("the kernel does not support UDP_GRO; gro turned off")
			}
		}
		if !o.NoGSO && !gso {
			o.NoGSO = true
			if o.Logger != nil && o.GRO {
				o.Logger.Warn("the kernel does not support UDP_SEGMENT; gso turned off")
			}
		}
	}
	o.Listen.GRO = o.GRO
	if o.Resume != nil {
		if err := resumeListeners(&o, g.addrs); err != nil {
			return nil, err
		}
	}
	lfds := make([][]int, len(o.Listeners)) // listener → shard → socket, for steering
	for si := 0; si < o.Shards; si++ {
		fds := make([]int, 0, len(o.Listeners))
		var resume *ShardState
		if o.Resume != nil {
			resume = &o.Resume.Shards[si]
			fds = append(fds, resume.ListenerFDs...)
		}
		for li, l := range o.Listeners {
			if resume != nil {
				break
			}
			lo := o.Listen
			if l.DNS != nil {
				// DNS clients send separate queries, which UDP_GRO never
				// coalesces: it would only cost 64 KiB receive buffers.
				lo.GRO = false
			}
			fd, err := batchio.ListenUDP(g.addrs[li], lo)
			if err != nil {
				return fail(fmt.Errorf("listener %q on %v: %w", l.Name, g.addrs[li], err), fds)
			}
			fds = append(fds, fd)
		}
		listeners := make([]Listener, len(o.Listeners))
		for li, l := range o.Listeners {
			l.Addr = g.addrs[li]
			listeners[li] = l
		}
		cpu := -1
		if len(cpus) > 0 {
			cpu = cpus[si%len(cpus)]
		}
		s, err := New(Options{
			Index:            si,
			Listeners:        listeners,
			ListenerFDs:      fds,
			Backends:         o.Backends,
			Core:             o.Core,
			BatchSize:        o.BatchSize,
			UpstreamSources:  o.UpstreamSources,
			SocketRecvBuffer: o.SocketRecvBuffer,
			SocketSendBuffer: o.SocketSendBuffer,
			DNSSocketBuffer:  o.DNSSocketBuffer,
			GRO:              o.GRO,
			NoGSO:            o.NoGSO,
			CPU:              cpu,
			Picker:           o.Picker,
			Logger:           o.Logger,
			AccessLog:        o.AccessLog,
			Resume:           resume,
			RemapBackend:     o.RemapBackend,
			FDCeiling:        o.FDCeiling,
			upstreamHook:     o.upstreamHook,
		})
		if err != nil {
			return fail(err, fds)
		}
		g.shards = append(g.shards, s)
		for li, fd := range fds {
			lfds[li] = append(lfds[li], fd)
		}
	}
	if err := g.startSteering(o, lfds, cpus); err != nil {
		return fail(err, nil)
	}
	return g, nil
}

// reservePort returns a port of addr that no socket holds, for a listener
// configured with port 0. Binding the SO_REUSEADDR + SO_REUSEPORT listener
// itself to port 0 is not enough: when the kernel picks the port it skips
// only ports held by a socket without SO_REUSEADDR (udp_lib_lport_inuse), so
// the listener could land on the port of another group's or process's
// listener, join its SO_REUSEPORT group and take part of its traffic. A
// plain socket's ephemeral port is free of every other socket; it is closed
// at once and the listeners bind that port.
func reservePort(a netip.Addr) (uint16, error) {
	a = a.Unmap()
	fam, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Addr: a.As16()})
	if a.Is4() {
		fam, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: a.As4()}
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return 0, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, sa); err != nil {
		return 0, fmt.Errorf("bind: %w", err)
	}
	la, err := batchio.LocalAddr(fd)
	if err != nil {
		return 0, err
	}
	return la.Port(), nil
}

// Close closes every socket of a group that was never started (after Start,
// stop it with [Group.Stop] or its context instead).
func (g *Group) Close() { g.close() }

func (g *Group) close() {
	g.closeSteering()
	for _, s := range g.shards {
		s.closeAll()
	}
}

// Addrs returns the bound listener addresses, in listener order.
func (g *Group) Addrs() []netip.AddrPort { return g.addrs }

// Shards returns the shards.
func (g *Group) Shards() []*Shard { return g.shards }

// Start runs every shard on its own goroutine. Cancelling ctx stops them at
// once; [Group.Stop] stops them gracefully.
func (g *Group) Start(ctx context.Context) {
	g.errc = make(chan error, len(g.shards))
	for _, s := range g.shards {
		go func() { g.errc <- s.Run(ctx) }()
	}
}

// Broadcast delivers a config event to every shard.
func (g *Group) Broadcast(ev core.ConfigEvent) {
	for _, s := range g.shards {
		s.Send(Control{Config: &ev})
	}
}

// Flows returns up to limit live flows of each shard, one [FlowList] per
// shard in shard order. It waits for every shard to answer between two
// batches, or for ctx.
func (g *Group) Flows(ctx context.Context, limit int) ([]FlowList, error) {
	reply := make(chan FlowList, len(g.shards))
	for _, s := range g.shards {
		s.Send(Control{Flows: &FlowsRequest{Limit: limit, Reply: reply}})
	}
	out := make([]FlowList, len(g.shards))
	for range g.shards {
		select {
		case l := <-reply:
			out[l.Shard] = l
		case <-ctx.Done():
			return nil, fmt.Errorf("flows: %w", ctx.Err())
		}
	}
	return out, nil
}

// Stop asks every shard to stop admitting flows and to close within grace.
func (g *Group) Stop(grace time.Duration) {
	for _, s := range g.shards {
		s.Send(Control{Stop: true, Grace: grace})
	}
}

// Wait waits until every shard has returned and joins their errors.
func (g *Group) Wait() error {
	var errs []error
	for range g.shards {
		if err := <-g.errc; err != nil {
			errs = append(errs, err)
		}
	}
	g.closeSteering()
	return errors.Join(errs...)
}

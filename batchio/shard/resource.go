package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
)

// ResourceKind is a resource condition a shard meets at run time: each is
// counted (fastudp_resource_errors_total{kind}) and logged at most once per
// [ResourceLogInterval] per shard, with the number of events not logged in
// between. Live flows are not affected by any of them: a failed open sheds
// the new flow only, a failed send loses that datagram only.
type ResourceKind uint8

const (
	// ResourceFDLimit: an upstream socket could not be opened because the
	// process (EMFILE, RLIMIT_NOFILE) or the system (ENFILE, fs.file-max)
	// has no descriptor left. The new flow is shed.
	ResourceFDLimit ResourceKind = iota
	// ResourcePortsExhausted: binding or connecting an upstream socket
	// found no free local port (EADDRINUSE, EADDRNOTAVAIL, or EAGAIN from
	// connect's automatic bind). The new flow is shed.
	ResourcePortsExhausted
	// ResourceOpenError: an upstream socket could not be opened for
	// another reason (ENOBUFS, ENOMEM, an epoll_ctl failure...).
	ResourceOpenError
	// ResourceBackendRefused: ECONNREFUSED (an ICMP port unreachable) on an
	// upstream socket, when sending or receiving: the backend is not
	// listening.
	ResourceBackendRefused
	// ResourceSocketBufferFull: a send met a full socket buffer (EAGAIN,
	// or ENOBUFS from a full device queue). On EAGAIN the datagrams wait
	// in a bounded queue; what does not fit is counted in the queue_full
	// counters.
	ResourceSocketBufferFull
	// ResourceBackendNoReply: a flow of a cluster that expects replies
	// closed idle without any: the backend drops what it is sent
	// (blackhole) or is too slow. Also a passive health failure.
	ResourceBackendNoReply
	// NumResourceKinds is the number of kinds.
	NumResourceKinds
)

// ResourceLogInterval is the shortest time between two log lines of the
// same kind from one shard.
const ResourceLogInterval = 10 * time.Second

var resourceNames = [NumResourceKinds]string{"fd_limit", "ports_exhausted", "open_error", "backend_refused", "socket_buffer_full", "backend_no_reply"}

// String returns the kind's metric label.
func (k ResourceKind) String() string {
	if k < NumResourceKinds {
		return resourceNames[k]
	}
	return "unknown"
}

// resourceMessages are the log lines, each saying what to do about it.
var resourceMessages = [NumResourceKinds]string{
	"cannot open upstream socket: out of file descriptors; shedding new flows (raise LimitNOFILE / ulimit -n above max_flows, or fs.file-max)",
	"cannot open upstream socket: no free local port; shedding new flows (widen net.ipv4.ip_local_port_range or add upstream_sources)",
	"cannot open upstream socket; shedding new flows",
	"backend refused datagrams (ICMP port unreachable): nothing listens on it",
	"socket send buffer full: datagrams queued, and dropped once the queue is full (raise socket buffers, or the peer is slow)",
	"flows to the backend closed idle without a reply: the backend drops what it is sent (blackhole) or is too slow",
}

// resourceLog rate-limits the log lines of each kind for one shard.
type resourceLog struct {
	next       [NumResourceKinds]core.Time // earliest time of the next line
	suppressed [NumResourceKinds]uint64    // events since the last line, not logged
	logged     [NumResourceKinds]bool
}

// ClassifyOpenError sorts an error from opening an upstream socket
// (socket, bind, connect, epoll_ctl) into ResourceFDLimit,
// ResourcePortsExhausted or ResourceOpenError.
func ClassifyOpenError(err error) ResourceKind {
	e, ok := errors.AsType[unix.Errno](err)
	if !ok {
		return ResourceOpenError
	}
	switch e {
	case unix.EMFILE, unix.ENFILE:
		return ResourceFDLimit
	case unix.EADDRINUSE, unix.EADDRNOTAVAIL, unix.EAGAIN:
		return ResourcePortsExhausted
	}
	return ResourceOpenError
}

// isNoBufs reports whether a send failed with ENOBUFS (a full device or
// qdisc queue, reported with IP_RECVERR or by some drivers).
func isNoBufs(err error) bool {
	e, ok := errors.AsType[unix.Errno](err)
	return ok && e == unix.ENOBUFS
}

// resourceEvent counts one event of kind and logs it unless a line of the
// same kind was logged less than ResourceLogInterval ago. backend is
// noBackend for events not tied to one; addr is the backend's (or, for a
// listener, the listener's) address, or zero when unknown.
func (s *Shard) resourceEvent(kind ResourceKind, backend core.BackendID, addr netip.AddrPort, err error) {
	s.counters.addResource(kind, 1)
	now := s.now()
	l := &s.res
	if l.logged[kind] && now < l.next[kind] {
		l.suppressed[kind]++
		return
	}
	attrs := []slog.Attr{slog.String("kind", kind.String())}
	if addr.IsValid() {
		attrs = append(attrs, slog.String("address", addr.String()))
	}
	if backend != noBackend {
		attrs = append(attrs, slog.Uint64("backend_id", uint64(backend)))
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	if l.logged[kind] {
		attrs = append(attrs, slog.Uint64("suppressed", l.suppressed[kind]))
	}
	s.log.LogAttrs(context.Background(), slog.LevelWarn, resourceMessages[kind], attrs...)
	l.logged[kind] = true
	l.next[kind] = now.Add(ResourceLogInterval)
	l.suppressed[kind] = 0
}

// noBackend marks a resource event not tied to a backend.
const noBackend = ^core.BackendID(0)

// openFailed counts and logs a failed upstream open for backend b.
func (s *Shard) openFailed(b core.Backend, err error) {
	s.counters.addBackend(b.ID, BackendOpenFailures, 1)
	s.resourceEvent(ClassifyOpenError(err), b.ID, b.Addr, err)
}

// upstreamSendFailed counts segs datagrams to backend b (at addr) lost to
// the send error err, which is not EAGAIN (that queues).
func (s *Shard) upstreamSendFailed(b core.BackendID, addr netip.AddrPort, err error, segs uint64) {
	if batchio.Classify(err) == batchio.KindRefused {
		s.counters.addBackend(b, BackendRefused, segs)
		s.resourceEvent(ResourceBackendRefused, b, addr, err)
		return
	}
	s.counters.addBackend(b, BackendSendErrors, segs)
	if isNoBufs(err) {
		s.resourceEvent(ResourceSocketBufferFull, b, addr, err)
	}
}

func (c *Counters) addResource(k ResourceKind, v uint64) { c.res[k] += v; c.dirty = true }

// Resource returns the published count of resource events of kind k.
func (c *Counters) Resource(k ResourceKind) uint64 {
	if k >= NumResourceKinds {
		return 0
	}
	return c.resPub[k].Load()
}

// errFDReserve is the error of an upstream socket that got a descriptor
// kept for the control plane ([Options.FDCeiling]); it is an EMFILE.
var errFDReserve = fmt.Errorf("descriptor in the reserve kept for the control plane and metrics: %w", unix.EMFILE)

// underCeiling passes on the result of opening an upstream socket, unless
// fd is at or above the ceiling: the kernel hands out the lowest free
// descriptor, so every one below the ceiling is in use, and fd is closed
// to keep the rest for the metrics and control listeners.
func (s *Shard) underCeiling(fd int, err error) (int, error) {
	if err != nil || s.opts.FDCeiling <= 0 || fd < s.opts.FDCeiling {
		return fd, err
	}
	unix.Close(fd)
	return -1, errFDReserve
}

// FDReserve is the descriptors [FDCeiling] keeps for the control plane.
const FDReserve = 128

// FDCeiling returns the [Options.FDCeiling] that keeps FDReserve
// descriptors (at most a quarter of them) of an open-file limit of limit
// for the control plane; 0 (no ceiling) for an unknown limit.
func FDCeiling(limit uint64) int {
	if limit == 0 || limit > 1<<30 {
		return 0
	}
	return int(limit - min(FDReserve, limit/4))
}

package core

import (
	"fmt"
	"math"
	"net/netip"
	"time"
)

// Time is a point on the shell's monotonic clock, in nanoseconds since an
// arbitrary epoch the shell chooses. The core only compares and adds times.
type Time int64

// Never is the deadline of a timer that need not fire: [OutArmTimer] carries it
// when no flow is live.
const Never Time = math.MaxInt64

// Add returns t+d, saturating at [Never].
func (t Time) Add(d time.Duration) Time {
	if d > 0 && t > Never-Time(d) {
		return Never
	}
	return t + Time(d)
}

// ListenerID names one listener of the shard. The shell assigns them densely
// from zero.
type ListenerID uint16

// ClusterID names a cluster of backends. The shell assigns it; the core only
// echoes it in [OutSelectBackend].
type ClusterID uint32

// BackendID names one backend. The shell assigns it; the core only echoes it.
type BackendID uint32

// FlowID identifies a live flow: the low 32 bits are a slot index, the high 32
// bits the slot's generation. The zero FlowID is never valid.
type FlowID uint64

func makeFlowID(index, gen uint32) FlowID { return FlowID(uint64(gen)<<32 | uint64(index)) }

// Index returns the slot index, dense from zero, which the shell may use to
// index its own per-flow arrays (upstream sockets). Check the whole FlowID, not
// only the index, before trusting such an entry.
func (id FlowID) Index() uint32 { return uint32(id) }

// Gen returns the slot generation.
func (id FlowID) Gen() uint32 { return uint32(id >> 32) }

// String formats the id as index#generation, the form traces use.
func (id FlowID) String() string { return fmt.Sprintf("%d#%d", id.Index(), id.Gen()) }

// Backend is a resolved backend: the shell's id and the address to connect to.
type Backend struct {
	ID   BackendID
	Addr netip.AddrPort
}

// InputKind says what an [Input] carries.
type InputKind uint8

// Input kinds.
const (
	// InClientDatagram is a datagram (or a GRO-coalesced run of datagrams)
	// from a client, received on Listener from Src and addressed to Dst.
	InClientDatagram InputKind = iota + 1
	// InBackendDatagram is a datagram (or run) from a backend, received on the
	// upstream socket of Flow.
	InBackendDatagram
	// InBackendResolved answers [OutSelectBackend] for Flow: Backend is the
	// chosen backend, or NoBackend is set when none could be chosen.
	InBackendResolved
	// InAbortFlow closes Flow at the shell's request (for example, its upstream
	// socket could not be opened).
	InAbortFlow
	// InTimer reports that the deadline of the last [OutArmTimer] passed.
	InTimer
	// InConfig carries a control-plane event in Config.
	InConfig
)

var inputKindNames = [...]string{"", "client", "backend", "resolved", "abort", "timer", "config"}

func (k InputKind) String() string {
	if int(k) < len(inputKindNames) && k != 0 {
		return inputKindNames[k]
	}
	return fmt.Sprintf("input(%d)", uint8(k))
}

// Input is one event for [Manager.Handle]. Which fields matter depends on Kind;
// the constructors ([ClientDatagram], [BackendDatagram], ...) fill them.
type Input struct {
	Kind InputKind
	// TOS is the IP TOS / traffic class byte the datagram arrived with (ECN and
	// DSCP); the core copies it to the datagram's output.
	TOS uint8
	// NoBackend marks an InBackendResolved that failed.
	NoBackend bool
	// Listener is the listener a client datagram arrived on.
	Listener ListenerID
	// Flow names the flow of a backend datagram, resolution or abort.
	Flow FlowID
	// Src is the client's address; Dst the local address it sent to
	// (IP_PKTINFO), used for the reply's source and the PROXY v2 destination.
	Src, Dst netip.AddrPort
	// Payload is the datagram, borrowed for the duration of the call.
	Payload []byte
	// SegmentSize, when positive and smaller than len(Payload), says Payload is
	// a GRO run of datagrams of this size (the last may be shorter).
	SegmentSize int
	// Backend is the result of an InBackendResolved.
	Backend Backend
	// Config is the event of an InConfig.
	Config *ConfigEvent
}

// ClientDatagram returns the input for a datagram from src to dst on listener l.
func ClientDatagram(l ListenerID, src, dst netip.AddrPort, payload []byte) Input {
	return Input{Kind: InClientDatagram, Listener: l, Src: src, Dst: dst, Payload: payload}
}

// BackendDatagram returns the input for a datagram from the backend of flow.
func BackendDatagram(flow FlowID, payload []byte) Input {
	return Input{Kind: InBackendDatagram, Flow: flow, Payload: payload}
}

// Resolved returns the input that answers [OutSelectBackend] for flow with b.
func Resolved(flow FlowID, b Backend) Input {
	return Input{Kind: InBackendResolved, Flow: flow, Backend: b}
}

// ResolveFailed returns the input that answers [OutSelectBackend] for flow when
// no backend can serve it; the flow closes with [CloseNoBackend].
func ResolveFailed(flow FlowID) Input {
	return Input{Kind: InBackendResolved, Flow: flow, NoBackend: true}
}

// AbortFlow returns the input that closes flow with [CloseAborted].
func AbortFlow(flow FlowID) Input { return Input{Kind: InAbortFlow, Flow: flow} }

// TimerFired returns the input for a timer firing.
func TimerFired() Input { return Input{Kind: InTimer} }

// ConfigInput returns the input carrying ev.
func ConfigInput(ev ConfigEvent) Input { return Input{Kind: InConfig, Config: &ev} }

// OutputKind says what an [Output] asks of the shell.
type OutputKind uint8

// Output kinds.
const (
	// OutSelectBackend asks the shell to choose a backend of Cluster for Flow
	// using the affinity hash Key, and to answer with an InBackendResolved.
	OutSelectBackend OutputKind = iota + 1
	// OutOpenUpstream asks the shell to open the upstream socket of Flow to
	// Backend.Addr and to tag what arrives on it with Flow.
	OutOpenUpstream
	// OutSendToBackend asks the shell to send Payload on the upstream socket
	// of Flow: one datagram, or a GSO run of SegmentSize-byte segments when
	// SegmentSize > 0. A Header (PROXY v2) goes in front of every datagram
	// of the output: before the single datagram, or, with SegmentSize > 0
	// (only under [ProxyEvery]), before every segment, so the datagrams on
	// the wire are len(Header)+SegmentSize bytes (the last may be shorter).
	// The shell can send such a run as one GSO send of that size whose
	// iovecs alternate the one header and the segments in place.
	OutSendToBackend
	// OutSendToClient asks the shell to send Payload (a GSO run when
	// SegmentSize > 0) from listener Listener, source address Local, to Client.
	OutSendToClient
	// OutArmTimer asks the shell to deliver an InTimer at Deadline (at once if
	// Deadline is not after now; never if it is [Never]).
	OutArmTimer
	// OutMetric reports the event Metric.
	OutMetric
	// OutCloseFlow says Flow has closed for CloseReason: the shell closes its
	// upstream socket and forgets the flow. Stats describes the flow's life.
	OutCloseFlow
	// OutDrop says Datagrams datagrams totalling Bytes bytes were dropped for
	// DropReason. It is the only event emitted for a drop. Listener and Flow
	// name where the datagrams came from when the core knows (Flow is zero
	// for a client datagram that found no flow).
	OutDrop
)

var outputKindNames = [...]string{"", "select", "open", "send-backend", "send-client", "arm", "metric", "close", "drop"}

func (k OutputKind) String() string {
	if int(k) < len(outputKindNames) && k != 0 {
		return outputKindNames[k]
	}
	return fmt.Sprintf("output(%d)", uint8(k))
}

// Output is one action for the shell. Slices are valid until the next call to
// [Manager.Handle].
type Output struct {
	Kind        OutputKind
	DropReason  DropReason
	CloseReason CloseReason
	Metric      MetricKind
	// TOS is the TOS / traffic class byte to send the datagram with.
	TOS      uint8
	Listener ListenerID
	Cluster  ClusterID
	Flow     FlowID
	// Key is the affinity hash for OutSelectBackend.
	Key uint64
	// Backend is the flow's backend (OutOpenUpstream, OutSendToBackend,
	// OutCloseFlow; zero while unresolved).
	Backend Backend
	// Client and Local are the flow's client address and the local address the
	// client sent to (OutOpenUpstream, OutSendToClient, OutCloseFlow).
	Client, Local netip.AddrPort
	// Header is a PROXY v2 header to send in front of Payload (in front of
	// each of its segments when SegmentSize > 0), or nil.
	Header []byte
	// Payload is the datagram or GSO run to send; for OutSelectBackend, the
	// flow's first datagram (the first segment of a GRO run), borrowed like
	// the input it came from until the next [Manager.Handle], so the shell
	// can route by its content (a QUIC connection ID's server ID).
	Payload []byte
	// SegmentSize is the GSO segment size of Payload, or 0 for one datagram.
	SegmentSize int
	// Deadline is the timer deadline of OutArmTimer.
	Deadline Time
	// Datagrams and Bytes size an OutDrop.
	Datagrams, Bytes int
	// Stats describes a closed flow (OutCloseFlow).
	Stats FlowStats
}

// Segments returns how many datagrams the payload of o carries.
func (o *Output) Segments() int { return segmentCount(len(o.Payload), o.SegmentSize) }

// FlowStats summarises a flow's life, for access logs.
type FlowStats struct {
	Created      Time
	Closed       Time
	DatagramsIn  uint64 // client datagrams forwarded to the backend
	DatagramsOut uint64 // backend datagrams returned to the client
	BytesIn      uint64
	BytesOut     uint64
}

// DropReason says why datagrams were dropped.
type DropReason uint8

// Drop reasons. Admission checks run in this order: DropOversize,
// DropNoCluster, DropInvalid, (existing flow), DropDraining,
// DropRateLimited, DropShed, DropMalformed.
const (
	// DropOversize: a datagram (or a GRO segment) longer than the maximum
	// receive size.
	DropOversize DropReason = iota + 1
	// DropNoCluster: the listener routes to no cluster.
	DropNoCluster
	// DropInvalid: an empty datagram, an invalid client address, or an input
	// the core does not understand.
	DropInvalid
	// DropDraining: a new flow while the manager drains.
	DropDraining
	// DropShed: a new flow while max_flows flows are live.
	DropShed
	// DropPendingOverflow: a datagram for a flow still waiting for its
	// backend, beyond the pending limit, or when the buffer pool was empty.
	DropPendingOverflow
	// DropUnknownFlow: a backend datagram for a flow that is closed, not yet
	// connected, or past its deadline.
	DropUnknownFlow
	// DropNoBackend: datagrams held for a flow whose backend could not be
	// resolved.
	DropNoBackend
	// DropFlowClosed: datagrams held for a flow that closed before its backend
	// was resolved, or backend segments after the flow's last response.
	DropFlowClosed
	// DropRateLimited: a new flow from a source that exceeded its new-flow
	// rate ([AdmissionConfig]).
	DropRateLimited
	// DropAmplification: backend datagrams beyond the flow's amplification
	// budget ([ClusterConfig.MaxAmplification]).
	DropAmplification
	// DropMalformed: the first datagram of a new flow under [AffinityQUIC]
	// breaks the QUIC invariants (RFC 8999): empty, a long header cut short,
	// or a short header too short for the configured connection ID.
	DropMalformed
	numDropReasons
)

var dropReasonNames = [...]string{"", "oversize", "no_cluster", "invalid", "draining", "shed",
	"pending_overflow", "unknown_flow", "no_backend", "flow_closed", "rate_limited", "amplification", "malformed"}

// NumDropReasons bounds the drop reasons, for arrays indexed by them.
const NumDropReasons = int(numDropReasons)

func (r DropReason) String() string {
	if int(r) < len(dropReasonNames) && r != 0 {
		return dropReasonNames[r]
	}
	return fmt.Sprintf("drop(%d)", uint8(r))
}

// CloseReason says why a flow closed.
type CloseReason uint8

// Close reasons.
const (
	// CloseIdle: no datagram within the front or back timeout.
	CloseIdle CloseReason = iota + 1
	// CloseLifetime: the flow reached the cluster's maximum lifetime.
	CloseLifetime
	// CloseResponses: the flow returned its last allowed response.
	CloseResponses
	// CloseNoBackend: backend resolution failed.
	CloseNoBackend
	// CloseAborted: the shell aborted the flow.
	CloseAborted
	// CloseShutdown: a close-all config event.
	CloseShutdown
	// CloseBackendDown: a client datagram found its flow pinned to a backend
	// marked down, under [ClusterConfig.CloseOnBackendDown]; the datagram
	// starts a new flow.
	CloseBackendDown
	numCloseReasons
)

var closeReasonNames = [...]string{"", "idle", "lifetime", "responses", "no_backend", "aborted", "shutdown", "backend_down"}

// NumCloseReasons bounds the close reasons, for arrays indexed by them.
const NumCloseReasons = int(numCloseReasons)

func (r CloseReason) String() string {
	if int(r) < len(closeReasonNames) && r != 0 {
		return closeReasonNames[r]
	}
	return fmt.Sprintf("close(%d)", uint8(r))
}

// MetricKind names an event reported by [OutMetric]. Datagrams and bytes in
// and out are not metric events: the shell counts them from the send outputs,
// drops from [OutDrop] and evictions from [OutCloseFlow].
type MetricKind uint8

// Metric kinds.
const (
	// MetricFlowCreated: a flow was admitted.
	MetricFlowCreated MetricKind = iota + 1
	// MetricStaleInput: a resolution or abort named a flow that no longer
	// waits for it (a late or duplicate answer); it was ignored.
	MetricStaleInput
	// MetricRequestsReached: a flow accepted its last client datagram; it
	// stays open for replies only.
	MetricRequestsReached
	// MetricInvalidInput: an input the core does not understand (an unknown
	// kind, a config input without an event, a backend id beyond
	// [MaxDownBackendID]); it was ignored.
	MetricInvalidInput
	numMetricKinds
)

var metricKindNames = [...]string{"", "flow_created", "stale_input", "requests_reached", "invalid_input"}

func (k MetricKind) String() string {
	if int(k) < len(metricKindNames) && k != 0 {
		return metricKindNames[k]
	}
	return fmt.Sprintf("metric(%d)", uint8(k))
}

// segmentCount returns the number of datagrams in a run of n bytes with
// segment size seg (0 meaning one datagram).
func segmentCount(n, seg int) int {
	if seg <= 0 || seg >= n {
		return 1
	}
	return (n + seg - 1) / seg
}

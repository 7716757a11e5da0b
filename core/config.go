package core

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/fastudp/fastudp/quiclb"
)

// Affinity chooses the client key hashed for backend selection.
type Affinity uint8

// Affinity modes. Flows are always keyed by the full client address; the mode
// only decides which part of it the backend choice (and shard steering) sees.
const (
	// AffinityIP hashes the client IP only: every port of a client reaches the
	// same backend (in separate flows).
	AffinityIP Affinity = iota
	// AffinityIPPort hashes the client IP and port.
	AffinityIPPort
	// AffinityDatagram is per-datagram load balancing (Envoy's per-packet
	// mode) for stateless protocols: every client datagram is admitted as
	// a flow of its own (the contract's Requests is taken as 1: the flow is
	// detached after its datagram and waits only for replies), and its
	// SelectBackend key mixes the ip-port key with a per-manager counter,
	// so consecutive datagrams of one client spread over the backends.
	AffinityDatagram
	// AffinityQUIC is for QUIC: a new flow whose first datagram is a long
	// header with a client-chosen destination connection ID (an Initial or
	// 0-RTT packet, or an unknown version) is keyed by a seeded hash of that
	// ID ([QUICCIDHash]), so an Initial retransmitted from another port
	// reaches the same backend; any other flow by the ip-port key, which
	// the shell's picker uses only when the connection ID carries no server
	// ID it knows ([ClusterConfig.QUIC]). A first datagram that breaks the
	// QUIC invariants (RFC 8999) is dropped with [DropMalformed].
	AffinityQUIC
)

func (a Affinity) String() string {
	switch a {
	case AffinityIP:
		return "ip"
	case AffinityIPPort:
		return "ip-port"
	case AffinityDatagram:
		return "datagram"
	case AffinityQUIC:
		return "quic"
	}
	return fmt.Sprintf("affinity(%d)", uint8(a))
}

// ParseAffinity parses "ip", "ip-port", "datagram" or "quic".
func ParseAffinity(s string) (Affinity, error) {
	switch s {
	case "ip":
		return AffinityIP, nil
	case "ip-port":
		return AffinityIPPort, nil
	case "datagram":
		return AffinityDatagram, nil
	case "quic":
		return AffinityQUIC, nil
	}
	return 0, fmt.Errorf("affinity %q: want ip, ip-port, datagram or quic", s)
}

// ProxyMode chooses when a PROXY protocol v2 header precedes upstream datagrams.
type ProxyMode uint8

// PROXY v2 modes.
const (
	ProxyOff   ProxyMode = iota // no header
	ProxyFirst                  // header on the first datagram the flow sends upstream
	ProxyEvery                  // header on every upstream datagram
)

func (p ProxyMode) String() string {
	switch p {
	case ProxyOff:
		return "off"
	case ProxyFirst:
		return "first"
	case ProxyEvery:
		return "every"
	}
	return fmt.Sprintf("proxy(%d)", uint8(p))
}

// ParseProxyMode parses "off", "first" or "every".
func ParseProxyMode(s string) (ProxyMode, error) {
	switch s {
	case "off":
		return ProxyOff, nil
	case "first":
		return ProxyFirst, nil
	case "every":
		return ProxyEvery, nil
	}
	return 0, fmt.Errorf("proxy protocol %q: want off, first or every", s)
}

// Defaults for [ClusterConfig] and [Config].
const (
	DefaultTimeout           = 30 * time.Second
	DefaultMaxFlows          = 65536
	DefaultMaxRxDatagramSize = 4096 // EDNS0's largest common buffer; any QUIC packet on a 1500-byte path
	DefaultPendingLimit      = 4
	DefaultExpiryBudget      = 1024
	// MaxDatagramSize is the largest UDP payload over IPv4 and the largest
	// value SetMaxRxDatagramSize accepts.
	MaxDatagramSize = 65507
)

// ClusterConfig is the contract a listener gives its new flows. A flow
// captures the config in force when it was admitted and keeps it for life.
type ClusterConfig struct {
	// Cluster is echoed in [OutSelectBackend].
	Cluster ClusterID
	// Affinity chooses the key hashed for backend selection.
	Affinity Affinity
	// Responses closes a flow after it returned this many backend datagrams;
	// 0 means unlimited (DNS uses 1).
	Responses uint32
	// Requests detaches a flow from its client after this many client
	// datagrams: the client's next datagram starts a new flow, and the old one
	// stays open for replies until Responses or BackTimeout; 0 means unlimited.
	Requests uint32
	// FrontTimeout is the idle timeout after a client datagram; BackTimeout
	// after a backend datagram (and after Requests is reached). Zero or
	// negative means [DefaultTimeout].
	FrontTimeout, BackTimeout time.Duration
	// Lifetime closes a flow this long after admission; 0 means unlimited.
	Lifetime time.Duration
	// ProxyProtocol chooses when upstream datagrams carry a PROXY v2 header.
	ProxyProtocol ProxyMode
	// PublicAddr, when valid, replaces the local address as the PROXY v2
	// destination (for a proxy behind NAT).
	PublicAddr netip.AddrPort
	// CloseOnBackendDown chooses what happens to a flow whose backend is
	// marked down ([ConfigBackendDown]): false (the "continue" policy, the
	// default) lets it go on until it ends; true (the "close" policy) closes
	// it with [CloseBackendDown] at the client's next datagram, which then
	// starts a new flow and so gets a backend the shell's picker chooses
	// anew. Replies never close a flow.
	CloseOnBackendDown bool
	// MaxAmplification, when positive, caps the reply bytes a flow returns
	// to MaxAmplification × the request bytes it forwarded +
	// AmplificationAllowance (payload bytes, PROXY v2 headers not counted).
	// A backend datagram that would pass the cap is dropped with
	// [DropAmplification] (of a GRO run, the segments past it); the flow
	// stays open and is not refreshed by the drop. 0 turns the guard off.
	MaxAmplification uint32
	// AmplificationAllowance is the byte budget a flow has before its ratio
	// applies, so that a first reply larger than MaxAmplification × a small
	// request (a DNS answer, a QUIC handshake) is not dropped.
	AmplificationAllowance uint32
	// QUIC is the cluster's QUIC-LB configuration under [AffinityQUIC]: it
	// gives a short header's destination connection ID length, so a
	// datagram too short to hold one is dropped as malformed. The zero value
	// (none) checks only the long header.
	QUIC quiclb.Config
}

// Validate reports the first invalid field of c.
func (c *ClusterConfig) Validate() error {
	switch {
	case c.Affinity > AffinityQUIC:
		return fmt.Errorf("affinity %d: unknown mode", c.Affinity)
	case c.QUIC != (quiclb.Config{}) && c.QUIC.Validate() != nil:
		return fmt.Errorf("quic_lb: %w", c.QUIC.Validate())
	case c.ProxyProtocol > ProxyEvery:
		return fmt.Errorf("proxy protocol %d: unknown mode", c.ProxyProtocol)
	case c.FrontTimeout < 0:
		return fmt.Errorf("front timeout %v: must not be negative", c.FrontTimeout)
	case c.BackTimeout < 0:
		return fmt.Errorf("back timeout %v: must not be negative", c.BackTimeout)
	case c.Lifetime < 0:
		return fmt.Errorf("lifetime %v: must not be negative", c.Lifetime)
	}
	return nil
}

// normalized returns c with defaults filled in and invalid modes made safe, so
// a bad config event can never leave a flow without a finite deadline.
func (c ClusterConfig) normalized() ClusterConfig {
	if c.FrontTimeout <= 0 {
		c.FrontTimeout = DefaultTimeout
	}
	if c.BackTimeout <= 0 {
		c.BackTimeout = DefaultTimeout
	}
	if c.Lifetime < 0 {
		c.Lifetime = 0
	}
	if c.Affinity > AffinityQUIC {
		c.Affinity = AffinityIP
	}
	if c.QUIC.Validate() != nil {
		c.QUIC = quiclb.Config{} // no server IDs: long headers checked only
	}
	if c.Affinity == AffinityDatagram {
		c.Requests = 1 // every datagram a flow of its own
	}
	if c.ProxyProtocol > ProxyEvery {
		c.ProxyProtocol = ProxyOff
	}
	return c
}

// ConfigKind says what a [ConfigEvent] changes.
type ConfigKind uint8

// Config event kinds.
const (
	// ConfigSetCluster gives Listener a new cluster config (Cluster); it applies
	// to new flows only.
	ConfigSetCluster ConfigKind = iota + 1
	// ConfigRemoveCluster leaves Listener without a cluster: its client
	// datagrams are dropped with [DropNoCluster]; replies still flow.
	ConfigRemoveCluster
	// ConfigSetMaxFlows sets the flow cap to Value. Shrinking sheds new flows
	// only; live flows stay.
	ConfigSetMaxFlows
	// ConfigSetMaxRxDatagramSize sets the largest accepted datagram (or GRO
	// segment) to Value, clamped to 1..[MaxDatagramSize].
	ConfigSetMaxRxDatagramSize
	// ConfigDrain stops admitting new flows; live flows go on.
	ConfigDrain
	// ConfigUndrain admits new flows again.
	ConfigUndrain
	// ConfigCloseAll closes every flow with [CloseShutdown].
	ConfigCloseAll
	// ConfigBackendDown marks Backend down. Live flows pinned to it keep
	// their contract: those admitted with [ClusterConfig.CloseOnBackendDown]
	// close at their client's next datagram, which starts a new flow; the
	// others go on. Marking a backend twice is the same as once. IDs from
	// [MaxDownBackendID] up cannot be marked: the event is ignored and
	// counted as [MetricInvalidInput].
	ConfigBackendDown
	// ConfigBackendUp clears the mark of ConfigBackendDown. A backend never
	// marked is up.
	ConfigBackendUp
	// ConfigSetAdmission replaces the per-source new-flow limit with
	// Admission. Sources' buckets carry over unless the table size changes.
	ConfigSetAdmission
	numConfigKinds
)

// MaxDownBackendID bounds the backend ids [ConfigBackendDown] can mark: the
// down set is a bitset indexed by id (at most 128 KiB).
const MaxDownBackendID = 1 << 20

var configKindNames = [...]string{"", "set-cluster", "remove-cluster", "max-flows", "max-rx", "drain", "undrain", "close-all",
	"backend-down", "backend-up", "set-admission"}

func (k ConfigKind) String() string {
	if int(k) < len(configKindNames) && k != 0 {
		return configKindNames[k]
	}
	return fmt.Sprintf("config(%d)", uint8(k))
}

// ConfigEvent is a control-plane change delivered by [InConfig].
type ConfigEvent struct {
	Kind     ConfigKind
	Listener ListenerID
	// Backend names the backend of ConfigBackendDown and ConfigBackendUp.
	Backend BackendID
	Cluster ClusterConfig
	Value   int
	// Admission is the limit of ConfigSetAdmission.
	Admission AdmissionConfig
}

// Config configures a [Manager] at construction.
type Config struct {
	// Seed keys the affinity hash (shared by every shard and node that must
	// agree on backend choice) and the flow table's hash.
	Seed uint64
	// MaxFlows caps live flows; 0 means [DefaultMaxFlows].
	MaxFlows int
	// MaxRxDatagramSize is the largest accepted datagram or GRO segment; 0
	// means [DefaultMaxRxDatagramSize].
	MaxRxDatagramSize int
	// PendingLimit bounds the messages held for a flow waiting for its
	// backend (a GRO run is one message, kept whole); 0 means
	// [DefaultPendingLimit].
	PendingLimit int
	// ExpiryBudget bounds the timer-heap entries one InTimer processes; 0
	// means [DefaultExpiryBudget].
	ExpiryBudget int
	// Admission limits new flows per source; the zero value is no limit.
	Admission AdmissionConfig
	// Pool supplies buffers for datagrams held across calls; nil means a
	// private [SlicePool].
	Pool BufferPool
}

// ErrInvalidConfig is wrapped by the errors [NewManager] returns.
var ErrInvalidConfig = errors.New("invalid core config")

func (c Config) normalized() (Config, error) {
	if c.MaxFlows < 0 || c.MaxFlows > maxFlowSlots {
		return c, fmt.Errorf("%w: max flows %d outside 0..%d", ErrInvalidConfig, c.MaxFlows, maxFlowSlots)
	}
	if c.MaxRxDatagramSize < 0 || c.MaxRxDatagramSize > MaxDatagramSize {
		return c, fmt.Errorf("%w: max rx datagram size %d outside 0..%d", ErrInvalidConfig, c.MaxRxDatagramSize, MaxDatagramSize)
	}
	if c.PendingLimit < 0 || c.PendingLimit > 1024 {
		return c, fmt.Errorf("%w: pending limit %d outside 0..1024", ErrInvalidConfig, c.PendingLimit)
	}
	if err := c.Admission.Validate(); err != nil {
		return c, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.ExpiryBudget < 0 {
		return c, fmt.Errorf("%w: expiry budget %d is negative", ErrInvalidConfig, c.ExpiryBudget)
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.MaxRxDatagramSize == 0 {
		c.MaxRxDatagramSize = DefaultMaxRxDatagramSize
	}
	if c.PendingLimit == 0 {
		c.PendingLimit = DefaultPendingLimit
	}
	if c.ExpiryBudget == 0 {
		c.ExpiryBudget = DefaultExpiryBudget
	}
	if c.Pool == nil {
		c.Pool = NewSlicePool(4096)
	}
	return c, nil
}

package config

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/quiclb"
)

// Process-wide defaults and limits. docs/configuration.md lists them with the
// keys they belong to; keep the two in step.
const (
	// DefaultSeed keys the affinity hash and shard steering when the file sets
	// no seed: a fixed value, so that restarts and nodes started with the
	// default agree on every client's backend. It is "fastudp" in ASCII.
	DefaultSeed uint64 = 0x66617374756470

	DefaultBatchSize = 64
	MaxBatchSize     = 1024
	MaxShards        = 1024

	// DefaultMaxFlows caps live flows per process; each shard gets an equal
	// share, rounded up (see [Config.MaxFlowsPerShard]).
	DefaultMaxFlows = core.DefaultMaxFlows
	// MaxMaxFlows is the largest max_flows accepted: the core's flow-slot
	// limit, so that even a single shard can hold the whole cap.
	MaxMaxFlows = 1 << 28

	DefaultMaxRxDatagramSize = core.DefaultMaxRxDatagramSize
	DefaultPendingLimit      = core.DefaultPendingLimit
	MaxPendingLimit          = 1024 // the core's limit
	DefaultExpiryBudget      = core.DefaultExpiryBudget
	MaxExpiryBudget          = 1 << 20

	// DefaultSocketBuffer is the SO_RCVBUF and SO_SNDBUF asked for on every
	// socket. The kernel caps it at net.core.rmem_max / wmem_max unless the
	// process may use SO_RCVBUFFORCE / SO_SNDBUFFORCE.
	DefaultSocketBuffer = 4 << 20
	// MaxSocketBuffer bounds the socket buffer keys (the kernel takes an int
	// and doubles it).
	MaxSocketBuffer = 1 << 30

	DefaultGracePeriod = 10 * time.Second
)

// Cluster defaults and limits.
const (
	DefaultTimeout = core.DefaultTimeout
	DefaultWeight  = 100
	MaxWeight      = 10000
	// MaxBackends bounds the backends of one cluster: a Maglev table holds at
	// most this many (balance.MaxBackends).
	MaxBackends = 1<<16 - 1
	// MaxNameLen bounds listener, cluster and backend names, which appear in
	// metric labels and control commands.
	MaxNameLen = 64
)

// Config is a validated or to-be-validated fastudp configuration: process-wide
// settings, listeners and clusters. [Parse] and [Load] return one that passed
// [Config.Validate]; code that builds or edits one calls Validate itself.
//
// Zero values are not defaults: start from [Default] (or [NewCluster] for a
// cluster) and change what differs.
type Config struct {
	// Shards is the number of shards (event loops); 0 means GOMAXPROCS.
	Shards int
	// BatchSize is the recvmmsg/sendmmsg batch, 1..[MaxBatchSize].
	BatchSize int
	// Seed keys the affinity hash and shard steering.
	Seed uint64
	// MaxFlows caps live flows in the whole process.
	MaxFlows int
	// MaxRxDatagramSize is the largest datagram accepted, 1..[core.MaxDatagramSize].
	MaxRxDatagramSize int
	// PendingLimit bounds the datagrams held per flow waiting for a backend.
	PendingLimit int
	// ExpiryBudget bounds the flows one timer tick expires per shard.
	ExpiryBudget int
	// SocketReceiveBuffer and SocketSendBuffer are the SO_RCVBUF and SO_SNDBUF
	// sizes in bytes; 0 leaves the kernel's default.
	SocketReceiveBuffer int
	SocketSendBuffer    int
	// UpstreamSources are the local addresses upstream sockets bind to, used
	// in turn; empty lets the kernel choose.
	UpstreamSources []netip.Addr
	// Metrics is the listen address of the Prometheus /metrics endpoint; ""
	// turns it off.
	Metrics string
	// Control is the path of the control API's unix socket (mode 0600);
	// "" turns it off.
	Control string
	// ControlTCP is a loopback ip:port where the control API also listens,
	// for tooling that cannot use a unix socket; every request must carry
	// the token read from ControlTokenFile. "" turns it off.
	ControlTCP       string
	ControlTokenFile string
	// LogLevel is one of slog.LevelDebug, LevelInfo, LevelWarn, LevelError.
	LogLevel slog.Level
	// LogFormat chooses text or JSON logs.
	LogFormat LogFormat
	// AccessLog is "" (off), "stderr", "stdout" or a file path.
	AccessLog string
	// GracePeriod is how long live flows may finish after SIGTERM.
	GracePeriod time.Duration
	// CPUPinning pins shard i to CPU i (modulo the CPUs the process may use).
	CPUPinning bool
	// GRO turns UDP_GRO on for listener and upstream sockets: runs of
	// equal-size datagrams are read whole (64 KiB receive buffers) and
	// forwarded with one UDP_SEGMENT (GSO) send.
	GRO bool
	// GSO sends a run of datagrams with one UDP_SEGMENT send; off, runs go
	// out as single datagrams.
	GSO bool
	// Steering chooses how each listener's datagrams are spread over the
	// shards: the kernel's SO_REUSEPORT hash, or an eBPF program (bpf/).
	Steering Steering
	// SteeringKey is what [SteeringHash] hashes.
	SteeringKey SteeringKey
	// SteeringPin is a directory on bpffs where the steering maps are
	// pinned (one subdirectory per listener); "" pins nothing.
	SteeringPin string
	// SourceLimit limits new flows per source (source_* keys).
	SourceLimit SourceLimit

	Listeners []Listener
	Clusters  []Cluster

	// src says where the values came from, for error messages; nil for a
	// config built in code.
	src *origin
}

// Listener is one [[listener]] table: a local address whose clients are
// balanced over one cluster.
type Listener struct {
	Name    string
	Address netip.AddrPort
	// Cluster is the name of a [Cluster] in the same config.
	Cluster string
	// PublicAddress, when valid, replaces the local address as the PROXY v2
	// destination (for a proxy behind NAT).
	PublicAddress netip.AddrPort
}

// Cluster is one [[cluster]] table: a set of backends and the contract its
// flows get.
type Cluster struct {
	Name          string
	LB            LB
	Affinity      core.Affinity
	Responses     uint32 // 0 = unlimited
	Requests      uint32 // 0 = unlimited
	FrontTimeout  time.Duration
	BackTimeout   time.Duration
	Lifetime      time.Duration // 0 = unlimited
	ProxyProtocol core.ProxyMode
	// Mode is udp (generic flows) or dns (queries multiplexed over shared
	// upstream sockets); DNS holds the dns mode's settings.
	Mode Mode
	DNS  DNS
	// FailOpen sends new flows to every backend that is not draining when
	// health checks find none up, instead of dropping them.
	FailOpen bool
	// DownFlows is what happens to live flows whose backend goes down.
	DownFlows DownFlows
	// MaxAmplification caps a flow's reply bytes at MaxAmplification × its
	// request bytes + AmplificationAllowance; 0 turns the guard off.
	MaxAmplification       uint32
	AmplificationAllowance int
	Health                 Health
	// QUICLB is the QUIC-LB configuration of affinity "quic" (the zero
	// value when the cluster has no quic_lb table): backends' server IDs
	// are read from the connection IDs of new flows.
	QUICLB   quiclb.Config
	Backends []Backend
}

// Backend is one [[cluster.backend]] table.
type Backend struct {
	// Name is optional; [Backend.Label] falls back to the address.
	Name    string
	Address netip.AddrPort
	Weight  int
	// Backup marks a backend that gets new flows only while no primary
	// backend of its cluster is usable (up and not draining).
	Backup bool
	// ServerID is the backend's QUIC-LB server ID (raw bytes; hexadecimal in
	// the file), or "" when it has none.
	ServerID string
}

// Label returns the backend's name, or its address when it has none: the
// value of its "backend" metric label.
func (b *Backend) Label() string {
	if b.Name != "" {
		return b.Name
	}
	return b.Address.String()
}

// Default returns the process-wide defaults, with no listeners or clusters.
func Default() Config {
	return Config{
		Shards:              0,
		BatchSize:           DefaultBatchSize,
		Seed:                DefaultSeed,
		MaxFlows:            DefaultMaxFlows,
		MaxRxDatagramSize:   DefaultMaxRxDatagramSize,
		PendingLimit:        DefaultPendingLimit,
		ExpiryBudget:        DefaultExpiryBudget,
		SocketReceiveBuffer: DefaultSocketBuffer,
		SocketSendBuffer:    DefaultSocketBuffer,
		LogLevel:            slog.LevelInfo,
		LogFormat:           LogText,
		GracePeriod:         DefaultGracePeriod,
		GRO:                 true,
		GSO:                 true,
		SourceLimit:         DefaultSourceLimit(),
	}
}

// NewCluster returns a cluster named name with every default and no backends.
func NewCluster(name string) Cluster {
	return Cluster{
		Name:         name,
		LB:           LBMaglev,
		Affinity:     core.AffinityIP,
		FrontTimeout: DefaultTimeout,
		BackTimeout:  DefaultTimeout,
		DNS:          DefaultDNS(),
		FailOpen:     true,
		Health:       DefaultHealth(),

		AmplificationAllowance: DefaultAmplificationAllowance,
	}
}

// Cluster returns the cluster named name, or nil.
func (c *Config) Cluster(name string) *Cluster {
	if i := c.ClusterIndex(name); i >= 0 {
		return &c.Clusters[i]
	}
	return nil
}

// ClusterIndex returns the index of the cluster named name in c.Clusters, or
// -1. The index is the [core.ClusterID] the converters use.
func (c *Config) ClusterIndex(name string) int {
	for i := range c.Clusters {
		if c.Clusters[i].Name == name {
			return i
		}
	}
	return -1
}

// LB is a cluster's load-balancing algorithm.
type LB uint8

// Load-balancing algorithms.
const (
	// LBMaglev is Maglev consistent hashing (the default).
	LBMaglev LB = iota
	// LBHRW is rendezvous (highest random weight) hashing.
	LBHRW
	// LBRR is smooth weighted round robin.
	LBRR
	// LBRandom is weighted random.
	LBRandom
	// LBP2C is power of two choices on live flows per unit of weight.
	LBP2C
)

var lbNames = [...]string{LBMaglev: "maglev", LBHRW: "hrw", LBRR: "rr", LBRandom: "random", LBP2C: "p2c"}

func (l LB) String() string {
	if int(l) < len(lbNames) {
		return lbNames[l]
	}
	return fmt.Sprintf("lb(%d)", uint8(l))
}

// ParseLB parses "maglev", "hrw", "rr", "random" or "p2c".
func ParseLB(s string) (LB, error) {
	for i, n := range lbNames {
		if s == n {
			return LB(i), nil
		}
	}
	return 0, fmt.Errorf("lb %q: want maglev, hrw, rr, random or p2c", s)
}

// Steering chooses who picks a datagram's shard.
type Steering uint8

// Steering modes.
const (
	// SteeringKernel leaves it to the kernel's SO_REUSEPORT hash of the
	// 4-tuple (no eBPF).
	SteeringKernel Steering = iota
	// SteeringHash picks shard = AffinityHash(seed, key) mod shards in an
	// eBPF program, stable across restarts.
	SteeringHash
	// SteeringCPU picks the shard of the CPU that received the datagram.
	SteeringCPU
)

var steeringNames = [...]string{SteeringKernel: "kernel", SteeringHash: "hash", SteeringCPU: "cpu"}

func (s Steering) String() string {
	if int(s) < len(steeringNames) {
		return steeringNames[s]
	}
	return fmt.Sprintf("steering(%d)", uint8(s))
}

// ParseSteering parses "kernel", "hash" or "cpu".
func ParseSteering(s string) (Steering, error) {
	for i, n := range steeringNames {
		if s == n {
			return Steering(i), nil
		}
	}
	return 0, fmt.Errorf("steering %q: want kernel, hash or cpu", s)
}

// SteeringKey is what hash steering hashes.
type SteeringKey uint8

// Steering keys.
const (
	// SteeringKeyFlow hashes the client IP and port: flows spread.
	SteeringKeyFlow SteeringKey = iota
	// SteeringKeyIP hashes the client IP: all of a client's ports share a
	// shard.
	SteeringKeyIP
)

var steeringKeyNames = [...]string{SteeringKeyFlow: "flow", SteeringKeyIP: "ip"}

func (k SteeringKey) String() string {
	if int(k) < len(steeringKeyNames) {
		return steeringKeyNames[k]
	}
	return fmt.Sprintf("steeringkey(%d)", uint8(k))
}

// ParseSteeringKey parses "flow" or "ip".
func ParseSteeringKey(s string) (SteeringKey, error) {
	for i, n := range steeringKeyNames {
		if s == n {
			return SteeringKey(i), nil
		}
	}
	return 0, fmt.Errorf("steering key %q: want flow or ip", s)
}

// LogFormat chooses how log/slog writes records.
type LogFormat uint8

// Log formats.
const (
	LogText LogFormat = iota // slog.TextHandler
	LogJSON                  // slog.JSONHandler
)

var logFormatNames = [...]string{LogText: "text", LogJSON: "json"}

func (f LogFormat) String() string {
	if int(f) < len(logFormatNames) {
		return logFormatNames[f]
	}
	return fmt.Sprintf("logformat(%d)", uint8(f))
}

// ParseLogFormat parses "text" or "json".
func ParseLogFormat(s string) (LogFormat, error) {
	for i, n := range logFormatNames {
		if s == n {
			return LogFormat(i), nil
		}
	}
	return 0, fmt.Errorf("log format %q: want text or json", s)
}

// logLevels are the accepted log_level values, in order.
var logLevels = []struct {
	name  string
	level slog.Level
}{
	{"debug", slog.LevelDebug},
	{"info", slog.LevelInfo},
	{"warn", slog.LevelWarn},
	{"error", slog.LevelError},
}

// ParseLogLevel parses "debug", "info", "warn" or "error".
func ParseLogLevel(s string) (slog.Level, error) {
	for _, l := range logLevels {
		if s == l.name {
			return l.level, nil
		}
	}
	return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
}

// logLevelName returns the config spelling of l, or "" when l is not one of
// the four accepted levels.
func logLevelName(l slog.Level) string {
	for _, x := range logLevels {
		if l == x.level {
			return x.name
		}
	}
	return ""
}

package config

import (
	"fmt"
	"time"
)

// DNS mode defaults and limits (see docs/configuration.md).
const (
	DefaultDNSSockets     = 1
	MaxDNSSockets         = 16
	DefaultDNSMaxInFlight = 16384
	MaxDNSMaxInFlight     = 1<<16 - 1
	DefaultDNSTimeout     = 2 * time.Second
	DefaultDNSTCPIdle     = 10 * time.Second
)

// Health check defaults.
const (
	DefaultHealthInterval        = 2 * time.Second
	DefaultHealthTimeout         = time.Second
	DefaultHealthRise            = 2
	DefaultHealthFall            = 3
	DefaultHealthDNSType         = "A"
	DefaultHealthDNSRCode        = "NOERROR"
	DefaultHealthPassiveFailures = 1
	DefaultHealthPassiveCooldown = 10 * time.Second
)

// Mode is how a cluster's listeners treat datagrams.
type Mode uint8

// Cluster modes.
const (
	// ModeUDP is the generic proxy: one flow (and one upstream socket) per
	// client address, datagrams opaque.
	ModeUDP Mode = iota
	// ModeDNS multiplexes DNS queries over a few shared upstream sockets
	// per backend and shard, rewriting query IDs; a TCP listener on the
	// same address forwards DNS over TCP.
	ModeDNS
)

var modeNames = [...]string{ModeUDP: "udp", ModeDNS: "dns"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// ParseMode parses "udp" or "dns".
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if s == n {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("mode %q: want udp or dns", s)
}

// DownFlows is what happens to live flows whose backend goes down.
type DownFlows uint8

// Policies for flows pinned to a backend that goes down.
const (
	// DownFlowsContinue lets them go on until they end (the default: a
	// backend that fails its probes may still serve the flows it has).
	DownFlowsContinue DownFlows = iota
	// DownFlowsClose closes each at its client's next datagram, which
	// starts a new flow on a healthy backend.
	DownFlowsClose
)

var downFlowsNames = [...]string{DownFlowsContinue: "continue", DownFlowsClose: "close"}

func (d DownFlows) String() string {
	if int(d) < len(downFlowsNames) {
		return downFlowsNames[d]
	}
	return fmt.Sprintf("downflows(%d)", uint8(d))
}

// ParseDownFlows parses "continue" or "close".
func ParseDownFlows(s string) (DownFlows, error) {
	for i, n := range downFlowsNames {
		if s == n {
			return DownFlows(i), nil
		}
	}
	return 0, fmt.Errorf("down_flows %q: want continue or close", s)
}

// DNS is a cluster's DNS-mode settings (used when Mode is [ModeDNS]).
type DNS struct {
	// Sockets is the number of connected upstream sockets per backend and
	// shard that queries share.
	Sockets int
	// MaxInFlight bounds the outstanding queries per upstream socket (each
	// needs a free 16-bit ID); beyond it queries are shed and counted.
	MaxInFlight int
	// Timeout frees the ID of a query unanswered this long and counts a
	// timeout against its backend.
	Timeout time.Duration
	// TCP runs a DNS-over-TCP forwarder on each listener's address and
	// port (clients retry truncated answers over TCP).
	TCP bool
	// TCPIdleTimeout closes a TCP connection with no complete message in
	// either direction for this long.
	TCPIdleTimeout time.Duration
}

// HealthType is the kind of active probe a cluster's backends get.
type HealthType uint8

// Probe kinds.
const (
	HealthNone HealthType = iota // no active probe
	HealthUDP                    // send a datagram, optionally expect a reply
	HealthDNS                    // a DNS query with an expected rcode
	HealthTCP                    // a TCP connect
	HealthQUIC                   // a reserved-version QUIC packet must draw Version Negotiation
)

var healthTypeNames = [...]string{HealthNone: "none", HealthUDP: "udp", HealthDNS: "dns", HealthTCP: "tcp", HealthQUIC: "quic"}

func (h HealthType) String() string {
	if int(h) < len(healthTypeNames) {
		return healthTypeNames[h]
	}
	return fmt.Sprintf("healthtype(%d)", uint8(h))
}

// ParseHealthType parses "none", "udp", "dns", "tcp" or "quic".
func ParseHealthType(s string) (HealthType, error) {
	for i, n := range healthTypeNames {
		if s == n {
			return HealthType(i), nil
		}
	}
	return 0, fmt.Errorf("health type %q: want none, udp, dns, tcp or quic", s)
}

// Health is one [cluster.health] table: how the cluster's backends are
// checked.
type Health struct {
	Type              HealthType
	Interval, Timeout time.Duration
	// Rise consecutive successes bring a down backend up; Fall consecutive
	// failures take an up backend down.
	Rise, Fall int
	// Send is the UDP probe's payload; Expect, if set, the exact reply
	// wanted, or ExpectRegex a regular expression the reply must match.
	Send, Expect, ExpectRegex string
	// DNSName, DNSType and DNSRCode are the DNS probe's question and the
	// response code that counts as healthy.
	DNSName, DNSType, DNSRCode string
	// Passive counts traffic failures (DNS queries that time out, ICMP
	// refusals) against a backend: an interval with at least
	// PassiveFailures failures and no success counts as a failed check. A
	// backend taken down only by passive checks (no active probe) is tried
	// again after PassiveCooldown.
	Passive         bool
	PassiveFailures int
	PassiveCooldown time.Duration
}

// DefaultHealth returns the health defaults: no active probe, passive
// checks off.
func DefaultHealth() Health {
	return Health{
		Interval:        DefaultHealthInterval,
		Timeout:         DefaultHealthTimeout,
		Rise:            DefaultHealthRise,
		Fall:            DefaultHealthFall,
		DNSType:         DefaultHealthDNSType,
		DNSRCode:        DefaultHealthDNSRCode,
		PassiveFailures: DefaultHealthPassiveFailures,
		PassiveCooldown: DefaultHealthPassiveCooldown,
	}
}

// DefaultDNS returns the DNS-mode defaults.
func DefaultDNS() DNS {
	return DNS{
		Sockets:        DefaultDNSSockets,
		MaxInFlight:    DefaultDNSMaxInFlight,
		Timeout:        DefaultDNSTimeout,
		TCP:            true,
		TCPIdleTimeout: DefaultDNSTCPIdle,
	}
}

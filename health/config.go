package health

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Kind is the kind of active probe a cluster runs against each backend.
type Kind uint8

// Probe kinds. The zero Kind is [KindNone].
const (
	// KindNone runs no active probe: backends change state only through
	// passive reports (see [PassiveConfig]) and the control plane.
	KindNone Kind = iota
	// KindUDP sends [ProbeConfig.Payload] and checks the reply.
	KindUDP
	// KindDNS sends a DNS query and checks the reply's rcode.
	KindDNS
	// KindTCP connects over TCP and closes.
	KindTCP
	// KindQUIC sends a QUIC long-header packet with a reserved version and
	// expects a Version Negotiation packet.
	KindQUIC
)

// String returns the name [ParseKind] accepts.
func (k Kind) String() string {
	switch k {
	case KindNone:
		return "none"
	case KindUDP:
		return "udp"
	case KindDNS:
		return "dns"
	case KindTCP:
		return "tcp"
	case KindQUIC:
		return "quic"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ParseKind parses "none", "udp", "dns", "tcp" or "quic"; the empty string is
// "none".
func ParseKind(s string) (Kind, error) {
	switch s {
	case "", "none":
		return KindNone, nil
	case "udp":
		return KindUDP, nil
	case "dns":
		return KindDNS, nil
	case "tcp":
		return KindTCP, nil
	case "quic":
		return KindQUIC, nil
	}
	return 0, fmt.Errorf("health: unknown probe kind %q (want none, udp, dns, tcp or quic)", s)
}

// Defaults applied to zero fields of [ProbeConfig] and [PassiveConfig].
const (
	DefaultInterval        = 2 * time.Second
	DefaultTimeout         = time.Second
	DefaultRise            = 2
	DefaultFall            = 3
	DefaultPassiveCooldown = 30 * time.Second
	DefaultPassiveMinFails = 1
)

// ErrInvalidConfig is wrapped by every error [ProbeConfig.Validate] and
// [PassiveConfig.Validate] return.
var ErrInvalidConfig = errors.New("invalid health configuration")

// ProbeConfig configures the active probe of one cluster. The zero value runs
// no probe. Zero durations and counts take the Default values.
type ProbeConfig struct {
	// Kind is the probe to run.
	Kind Kind
	// Interval is the time between the starts of two probes of a backend.
	// A probe still running when the next is due makes that one skip: probes
	// of one backend never overlap.
	Interval time.Duration
	// Timeout bounds one probe, dial included.
	Timeout time.Duration
	// Rise is the number of consecutive successful probes that bring a down
	// backend up.
	Rise int
	// Fall is the number of consecutive failed probes that take an up
	// backend down. It is also the number of consecutive failed passive
	// intervals that do (see [PassiveConfig]).
	Fall int
	// StartDown makes backends start down: they get no new flows until
	// Rise probes succeed. By default they start up, because a load balancer
	// that restarts (or a reload that adds a backend) must not refuse all
	// traffic while it waits for the first probes: fail-safe at start. A
	// backend that really is down costs at most Fall intervals of failed
	// flows.
	StartDown bool
	// Port, when not zero, is probed instead of the backend's own port (for
	// a health endpoint beside the service).
	Port uint16

	// Payload is the datagram a UDP probe sends; it may be empty (a zero
	// length datagram).
	Payload []byte
	// Expect, when not nil, is the exact reply a UDP probe must receive.
	Expect []byte
	// ExpectRegexp, when not empty, is an RE2 regular expression (Go
	// [regexp] syntax) that the UDP reply must match somewhere; anchor it
	// with ^ and $ to match the whole reply. At most one of Expect and
	// ExpectRegexp may be set.
	ExpectRegexp string
	// AllowSilence, for a UDP probe with no expectation, counts a probe that
	// draws no reply and no ICMP error within Timeout as a success, for
	// backends that never answer (syslog, metrics sinks). Without it a UDP
	// probe needs a reply. ICMP port unreachable (ECONNREFUSED) always fails.
	AllowSilence bool

	// DNSName is the name a DNS probe queries (made fully qualified).
	DNSName string
	// DNSType is the query type (dns.TypeA and so on); zero means A.
	DNSType uint16
	// DNSRcode is the rcode the reply must carry; zero is NOERROR.
	DNSRcode int
}

// withDefaults returns p with zero fields set to their defaults.
func (p ProbeConfig) withDefaults() ProbeConfig {
	if p.Interval <= 0 {
		p.Interval = DefaultInterval
	}
	if p.Timeout <= 0 {
		p.Timeout = DefaultTimeout
	}
	if p.Rise <= 0 {
		p.Rise = DefaultRise
	}
	if p.Fall <= 0 {
		p.Fall = DefaultFall
	}
	if p.Kind == KindDNS && p.DNSType == 0 {
		p.DNSType = dns.TypeA
	}
	return p
}

// Validate reports whether p is usable, as an error wrapping
// [ErrInvalidConfig]. Zero fields are valid (they take defaults).
func (p ProbeConfig) Validate() error {
	if err := p.validate(); err != nil {
		return fmt.Errorf("%w: probe %v: %w", ErrInvalidConfig, p.Kind, err)
	}
	return nil
}

func (p ProbeConfig) validate() error {
	switch {
	case p.Kind > KindQUIC:
		return errors.New("unknown kind")
	case p.Interval < 0, p.Timeout < 0:
		return errors.New("negative interval or timeout")
	case p.Rise < 0, p.Fall < 0:
		return errors.New("negative rise or fall")
	}
	if p.Kind == KindUDP {
		if p.Expect != nil && p.ExpectRegexp != "" {
			return errors.New("expect and expect_regexp are exclusive")
		}
		if p.AllowSilence && (p.Expect != nil || p.ExpectRegexp != "") {
			return errors.New("allow_silence excludes an expected reply")
		}
		if p.ExpectRegexp != "" {
			if _, err := regexp.Compile(p.ExpectRegexp); err != nil {
				return fmt.Errorf("expect_regexp: %w", err)
			}
		}
	}
	if p.Kind == KindDNS {
		if p.DNSName == "" {
			return errors.New("dns probe needs a name")
		}
		if _, ok := dns.IsDomainName(p.DNSName); !ok {
			return fmt.Errorf("invalid dns name %q", p.DNSName)
		}
		if _, ok := dns.RcodeToString[p.DNSRcode]; !ok {
			return fmt.Errorf("unknown rcode %d", p.DNSRcode)
		}
	}
	return nil
}

// PassiveConfig configures passive health: failures and successes that the
// data path observes and reports with [Cluster.ReportPassive] or
// [Cluster.AddPassive].
//
// Time is cut into windows of Interval. A window in which a backend had at
// least MinFailures failures and no success at all is one failed check; Fall
// ([ProbeConfig.Fall]) consecutive failed windows take the backend down. A
// window with a success resets the count; a window with too few failures and
// no success leaves it as it is. Passive results never bring a backend up
// (a down backend gets no new flows to succeed with): active probes do, with
// Rise successes, or, for a cluster without active probes ([KindNone]), the
// cooldown: a backend down for Cooldown goes back up on probation, with its
// failed-window count at Fall-1, so one more failed window takes it down
// again for another Cooldown.
type PassiveConfig struct {
	// Enabled turns passive health on.
	Enabled bool
	// Interval is the window length; zero means the probe interval.
	Interval time.Duration
	// MinFailures is the number of failures that make a window with no
	// success a failed check; zero means DefaultPassiveMinFails (1).
	MinFailures uint64
	// Cooldown is how long a passive-only backend stays down before it is
	// tried again; zero means DefaultPassiveCooldown.
	Cooldown time.Duration
}

func (p PassiveConfig) withDefaults(probe ProbeConfig) PassiveConfig {
	if p.Interval <= 0 {
		p.Interval = probe.Interval
	}
	if p.MinFailures == 0 {
		p.MinFailures = DefaultPassiveMinFails
	}
	if p.Cooldown <= 0 {
		p.Cooldown = DefaultPassiveCooldown
	}
	return p
}

// Validate reports whether p is usable, as an error wrapping
// [ErrInvalidConfig].
func (p PassiveConfig) Validate() error {
	if p.Interval < 0 || p.Cooldown < 0 {
		return fmt.Errorf("%w: passive: negative interval or cooldown", ErrInvalidConfig)
	}
	return nil
}

// ParseDNSType parses a query type name such as "A", "AAAA" or "SOA" (case
// insensitive) into the value [ProbeConfig.DNSType] takes.
func ParseDNSType(s string) (uint16, error) {
	if t, ok := dns.StringToType[strings.ToUpper(s)]; ok {
		return t, nil
	}
	return 0, fmt.Errorf("health: unknown dns type %q", s)
}

// ParseRcode parses an rcode name such as "NOERROR", "NXDOMAIN" or "REFUSED"
// (case insensitive) into the value [ProbeConfig.DNSRcode] takes.
func ParseRcode(s string) (int, error) {
	if r, ok := dns.StringToRcode[strings.ToUpper(s)]; ok {
		return r, nil
	}
	return 0, fmt.Errorf("health: unknown dns rcode %q", s)
}

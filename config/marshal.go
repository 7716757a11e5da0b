package config

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/fastudp/fastudp/quiclb"
)

// MarshalTOML writes c as a config file that [Parse] reads back to an equal
// Config, with every key spelled out (the effective configuration). Optional
// keys without a value (a listener's public_address, a backend's name) are
// left out. It implements toml.Marshaler and never fails for a valid config.
func (c *Config) MarshalTOML() ([]byte, error) {
	var b bytes.Buffer
	indent := ""
	w := func(key string, val any) {
		fmt.Fprintf(&b, "%s%s = %s\n", indent, key, tomlValue(val))
	}
	w("shards", c.Shards)
	w("batch_size", c.BatchSize)
	if c.Seed <= math.MaxInt64 {
		fmt.Fprintf(&b, "seed = 0x%x\n", c.Seed)
	} else {
		w("seed", fmt.Sprintf("0x%x", c.Seed))
	}
	w("max_flows", c.MaxFlows)
	w("max_rx_datagram_size", c.MaxRxDatagramSize)
	w("pending_limit", c.PendingLimit)
	w("expiry_budget", c.ExpiryBudget)
	w("socket_receive_buffer", FormatByteSize(int64(c.SocketReceiveBuffer)))
	w("socket_send_buffer", FormatByteSize(int64(c.SocketSendBuffer)))
	srcs := make([]string, len(c.UpstreamSources))
	for i, a := range c.UpstreamSources {
		srcs[i] = a.String()
	}
	w("upstream_sources", srcs)
	w("metrics", c.Metrics)
	w("control", c.Control)
	w("control_tcp", c.ControlTCP)
	w("control_token_file", c.ControlTokenFile)
	w("log_level", logLevelName(c.LogLevel))
	w("log_format", c.LogFormat.String())
	w("access_log", c.AccessLog)
	w("grace_period", c.GracePeriod)
	w("cpu_pinning", c.CPUPinning)
	w("gro", c.GRO)
	w("gso", c.GSO)
	w("steering", c.Steering.String())
	w("steering_key", c.SteeringKey.String())
	w("steering_pin", c.SteeringPin)
	w("source_flow_rate", c.SourceLimit.Rate)
	w("source_flow_burst", c.SourceLimit.Burst)
	w("source_prefix_v4", c.SourceLimit.PrefixV4)
	w("source_prefix_v6", c.SourceLimit.PrefixV6)
	w("source_table_size", c.SourceLimit.TableSize)

	for i := range c.Listeners {
		l := &c.Listeners[i]
		b.WriteString("\n[[listener]]\n")
		w("name", l.Name)
		w("address", l.Address.String())
		w("cluster", l.Cluster)
		if l.PublicAddress.IsValid() {
			w("public_address", l.PublicAddress.String())
		}
	}
	for i := range c.Clusters {
		cl := &c.Clusters[i]
		b.WriteString("\n[[cluster]]\n")
		w("name", cl.Name)
		w("lb", cl.LB.String())
		w("affinity", cl.Affinity.String())
		w("responses", cl.Responses)
		w("requests", cl.Requests)
		w("front_timeout", cl.FrontTimeout)
		w("back_timeout", cl.BackTimeout)
		w("lifetime", cl.Lifetime)
		w("proxy_protocol", cl.ProxyProtocol.String())
		w("mode", cl.Mode.String())
		w("dns_sockets", cl.DNS.Sockets)
		w("dns_max_inflight", cl.DNS.MaxInFlight)
		w("dns_timeout", cl.DNS.Timeout)
		w("dns_tcp", cl.DNS.TCP)
		w("dns_tcp_idle_timeout", cl.DNS.TCPIdleTimeout)
		w("fail_open", cl.FailOpen)
		w("down_flows", cl.DownFlows.String())
		w("max_amplification", cl.MaxAmplification)
		w("amplification_allowance", cl.AmplificationAllowance)
		indent = "  "
		if q := cl.QUICLB; q != (quiclb.Config{}) {
			b.WriteString("\n  [cluster.quic_lb]\n")
			w("config_id", int(q.ConfigID))
			w("server_id_len", int(q.ServerIDLen))
			w("nonce_len", int(q.NonceLen))
			w("self_encoded_length", q.SelfEncodedLength)
			if q.Encrypted {
				w("key", hex.EncodeToString(q.Key[:])) // the config file holds the secret anyway
			}
		}
		h := &cl.Health
		b.WriteString("\n  [cluster.health]\n")
		w("type", h.Type.String())
		w("interval", h.Interval)
		w("timeout", h.Timeout)
		w("rise", h.Rise)
		w("fall", h.Fall)
		for _, kv := range [][2]string{{"send", h.Send}, {"expect", h.Expect}, {"expect_regex", h.ExpectRegex}, {"dns_name", h.DNSName}} {
			if kv[1] != "" {
				w(kv[0], kv[1])
			}
		}
		w("dns_type", h.DNSType)
		w("dns_rcode", h.DNSRCode)
		w("passive", h.Passive)
		w("passive_failures", h.PassiveFailures)
		w("passive_cooldown", h.PassiveCooldown)
		for j := range cl.Backends {
			be := &cl.Backends[j]
			b.WriteString("\n  [[cluster.backend]]\n")
			if be.Name != "" {
				w("name", be.Name)
			}
			w("address", be.Address.String())
			w("weight", be.Weight)
			if be.Backup {
				w("backup", true)
			}
			if be.ServerID != "" {
				w("server_id", hex.EncodeToString([]byte(be.ServerID)))
			}
		}
		indent = ""
	}
	return b.Bytes(), nil
}

func tomlValue(v any) string {
	switch x := v.(type) {
	case string:
		return tomlString(x)
	case []string:
		var b bytes.Buffer
		b.WriteByte('[')
		for i, s := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(tomlString(s))
		}
		b.WriteByte(']')
		return b.String()
	case time.Duration:
		return tomlString(x.String())
	case int:
		return strconv.Itoa(x)
	case uint32:
		return strconv.FormatUint(uint64(x), 10)
	case bool:
		return strconv.FormatBool(x)
	}
	panic(fmt.Sprintf("config: no TOML form for %T", v))
}

// tomlString quotes s as a TOML basic string. TOML's escapes are a subset of
// Go's, so strconv.Quote would not do (it writes \x and \a).
func tomlString(s string) string {
	var b bytes.Buffer
	b.WriteByte('"')
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		s = s[n:]
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r) // invalid UTF-8 becomes U+FFFD
		}
	}
	b.WriteByte('"')
	return b.String()
}

package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/fastudp/fastudp/core"
)

// Load reads and parses the config file at path; see [Parse].
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
			msg = pe.Err.Error()
		}
		return nil, &Error{File: path, Msg: "cannot read: " + msg, Err: err}
	}
	return Parse(data, path)
}

// Parse parses a TOML config, fills in defaults and validates it. filename
// names the source in errors. Any problem (a syntax error, an unknown key, a
// value of the wrong type or out of range, a dangling reference) is reported
// as a single [*Error] locating the earliest mistake by file, line and key.
func Parse(data []byte, filename string) (*Config, error) {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		return nil, syntaxError(filename, data, err)
	}
	src := &origin{file: filename, lines: keyLines(data)}
	c, err := decode(raw, src)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func syntaxError(filename string, data []byte, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		// Position.Start is exact; Position.Line can be one too far when the
		// error is at a newline.
		line := pe.Position.Line
		if s := pe.Position.Start; s > 0 && s <= len(data) {
			line = 1 + bytes.Count(data[:s], []byte("\n"))
		}
		return &Error{File: filename, Line: line, Msg: "syntax error: " + pe.Message, Err: err}
	}
	return &Error{File: filename, Msg: strings.TrimPrefix(err.Error(), "toml: "), Err: err}
}

// decode converts the parsed document into a Config, starting from the
// defaults. It checks types, formats and unknown keys; [Config.Validate]
// checks ranges and references.
func decode(raw map[string]any, src *origin) (*Config, error) {
	d := &decoder{src: src}
	c := Default()
	c.src = src
	decodeTable(d, raw, "", "", "", topFields, &c, func(v value) bool {
		switch v.key {
		case "listener":
			for i, m := range v.tables("[[listener]]") {
				path := indexPath(v.path, i)
				l := Listener{}
				decodeTable(d, m, "listener", path, itemName("listener", m, i), listenerFields, &l, nil)
				c.Listeners = append(c.Listeners, l)
			}
		case "cluster":
			for i, m := range v.tables("[[cluster]]") {
				path := indexPath(v.path, i)
				item := itemName("cluster", m, i)
				cl := NewCluster("")
				decodeTable(d, m, "cluster", path, item, clusterFields, &cl, func(v value) bool {
					if v.key == "quic_lb" {
						decodeQUICLB(d, v, item, &cl)
						return true
					}
					if v.key == "health" {
						hm, ok := v.raw.(map[string]any)
						if !ok {
							v.wrongType("a table ([cluster.health])")
							return true
						}
						decodeTable(d, hm, "cluster.health", v.path, item, healthFields, &cl.Health, nil)
						return true
					}
					if v.key != "backend" {
						return false
					}
					for j, bm := range v.tables("[[cluster.backend]]") {
						b := Backend{Weight: DefaultWeight}
						decodeTable(d, bm, "cluster.backend", indexPath(v.path, j), item+" "+backendName(bm, j), backendFields, &b, nil)
						cl.Backends = append(cl.Backends, b)
					}
					return true
				})
				if hm, _ := m["health"].(map[string]any); cl.Mode == ModeDNS && hm["passive"] == nil {
					// DNS queries that time out count against their backend
					// unless [cluster.health] says passive = false.
					cl.Health.Passive = true
				}
				c.Clusters = append(c.Clusters, cl)
			}
		default:
			return false
		}
		return true
	})
	if err := d.errs.first(); err != nil {
		return nil, err
	}
	return &c, nil
}

type decoder struct {
	src  *origin
	errs errorList
}

// field decodes one key of a table into *T.
type field[T any] struct {
	key string
	set func(v value, p *T)
}

// Keys of each table, in the order MarshalTOML writes them.
var (
	topFields = []field[Config]{
		{"shards", func(v value, c *Config) { v.int(&c.Shards) }},
		{"batch_size", func(v value, c *Config) { v.int(&c.BatchSize) }},
		{"seed", func(v value, c *Config) { v.seed(&c.Seed) }},
		{"max_flows", func(v value, c *Config) { v.int(&c.MaxFlows) }},
		{"max_rx_datagram_size", func(v value, c *Config) { v.int(&c.MaxRxDatagramSize) }},
		{"pending_limit", func(v value, c *Config) { v.int(&c.PendingLimit) }},
		{"expiry_budget", func(v value, c *Config) { v.int(&c.ExpiryBudget) }},
		{"socket_receive_buffer", func(v value, c *Config) { v.byteSize(&c.SocketReceiveBuffer) }},
		{"socket_send_buffer", func(v value, c *Config) { v.byteSize(&c.SocketSendBuffer) }},
		{"upstream_sources", func(v value, c *Config) { v.addrs(&c.UpstreamSources) }},
		{"metrics", func(v value, c *Config) { v.string(&c.Metrics) }},
		{"control", func(v value, c *Config) { v.string(&c.Control) }},
		{"control_tcp", func(v value, c *Config) { v.string(&c.ControlTCP) }},
		{"control_token_file", func(v value, c *Config) { v.string(&c.ControlTokenFile) }},
		{"log_level", func(v value, c *Config) { enum(v, &c.LogLevel, ParseLogLevel) }},
		{"log_format", func(v value, c *Config) { enum(v, &c.LogFormat, ParseLogFormat) }},
		{"access_log", func(v value, c *Config) { v.string(&c.AccessLog) }},
		{"grace_period", func(v value, c *Config) { v.duration(&c.GracePeriod) }},
		{"cpu_pinning", func(v value, c *Config) { v.bool(&c.CPUPinning) }},
		{"gro", func(v value, c *Config) { v.bool(&c.GRO) }},
		{"gso", func(v value, c *Config) { v.bool(&c.GSO) }},
		{"steering", func(v value, c *Config) { enum(v, &c.Steering, ParseSteering) }},
		{"steering_key", func(v value, c *Config) { enum(v, &c.SteeringKey, ParseSteeringKey) }},
		{"steering_pin", func(v value, c *Config) { v.string(&c.SteeringPin) }},
		{"source_flow_rate", func(v value, c *Config) { v.int(&c.SourceLimit.Rate) }},
		{"source_flow_burst", func(v value, c *Config) { v.int(&c.SourceLimit.Burst) }},
		{"source_prefix_v4", func(v value, c *Config) { v.int(&c.SourceLimit.PrefixV4) }},
		{"source_prefix_v6", func(v value, c *Config) { v.int(&c.SourceLimit.PrefixV6) }},
		{"source_table_size", func(v value, c *Config) { v.int(&c.SourceLimit.TableSize) }},
	}
	listenerFields = []field[Listener]{
		{"name", func(v value, l *Listener) { v.string(&l.Name) }},
		{"address", func(v value, l *Listener) { v.addrPort(&l.Address) }},
		{"cluster", func(v value, l *Listener) { v.string(&l.Cluster) }},
		{"public_address", func(v value, l *Listener) { v.addrPort(&l.PublicAddress) }},
	}
	clusterFields = []field[Cluster]{
		{"name", func(v value, c *Cluster) { v.string(&c.Name) }},
		{"lb", func(v value, c *Cluster) { enum(v, &c.LB, ParseLB) }},
		{"affinity", func(v value, c *Cluster) { enum(v, &c.Affinity, core.ParseAffinity) }},
		{"responses", func(v value, c *Cluster) { v.uint32(&c.Responses) }},
		{"requests", func(v value, c *Cluster) { v.uint32(&c.Requests) }},
		{"front_timeout", func(v value, c *Cluster) { v.duration(&c.FrontTimeout) }},
		{"back_timeout", func(v value, c *Cluster) { v.duration(&c.BackTimeout) }},
		{"lifetime", func(v value, c *Cluster) { v.duration(&c.Lifetime) }},
		{"proxy_protocol", func(v value, c *Cluster) { enum(v, &c.ProxyProtocol, core.ParseProxyMode) }},
		{"mode", func(v value, c *Cluster) { enum(v, &c.Mode, ParseMode) }},
		{"dns_sockets", func(v value, c *Cluster) { v.int(&c.DNS.Sockets) }},
		{"dns_max_inflight", func(v value, c *Cluster) { v.int(&c.DNS.MaxInFlight) }},
		{"dns_timeout", func(v value, c *Cluster) { v.duration(&c.DNS.Timeout) }},
		{"dns_tcp", func(v value, c *Cluster) { v.bool(&c.DNS.TCP) }},
		{"dns_tcp_idle_timeout", func(v value, c *Cluster) { v.duration(&c.DNS.TCPIdleTimeout) }},
		{"fail_open", func(v value, c *Cluster) { v.bool(&c.FailOpen) }},
		{"down_flows", func(v value, c *Cluster) { enum(v, &c.DownFlows, ParseDownFlows) }},
		{"max_amplification", func(v value, c *Cluster) { v.uint32(&c.MaxAmplification) }},
		{"amplification_allowance", func(v value, c *Cluster) { v.byteSize(&c.AmplificationAllowance) }},
	}
	healthFields = []field[Health]{
		{"type", func(v value, h *Health) { enum(v, &h.Type, ParseHealthType) }},
		{"interval", func(v value, h *Health) { v.duration(&h.Interval) }},
		{"timeout", func(v value, h *Health) { v.duration(&h.Timeout) }},
		{"rise", func(v value, h *Health) { v.int(&h.Rise) }},
		{"fall", func(v value, h *Health) { v.int(&h.Fall) }},
		{"send", func(v value, h *Health) { v.string(&h.Send) }},
		{"expect", func(v value, h *Health) { v.string(&h.Expect) }},
		{"expect_regex", func(v value, h *Health) { v.string(&h.ExpectRegex) }},
		{"dns_name", func(v value, h *Health) { v.string(&h.DNSName) }},
		{"dns_type", func(v value, h *Health) { v.string(&h.DNSType) }},
		{"dns_rcode", func(v value, h *Health) { v.string(&h.DNSRCode) }},
		{"passive", func(v value, h *Health) { v.bool(&h.Passive) }},
		{"passive_failures", func(v value, h *Health) { v.int(&h.PassiveFailures) }},
		{"passive_cooldown", func(v value, h *Health) { v.duration(&h.PassiveCooldown) }},
	}
	backendFields = []field[Backend]{
		{"name", func(v value, b *Backend) { v.string(&b.Name) }},
		{"address", func(v value, b *Backend) { v.addrPort(&b.Address) }},
		{"weight", func(v value, b *Backend) { v.int(&b.Weight) }},
		{"backup", func(v value, b *Backend) { v.bool(&b.Backup) }},
		{"server_id", func(v value, b *Backend) { v.serverID(&b.ServerID) }},
	}
)

// decodeTable decodes the keys of m, the table named table in the schema
// ("" is the top level), into dst with fields; sub handles the keys that hold
// nested tables and reports whether it knew the key. Unknown keys are errors.
func decodeTable[T any](d *decoder, m map[string]any, table, path, item string, fields []field[T], dst *T, sub func(value) bool) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
next:
	for _, k := range keys {
		v := value{d: d, raw: m[k], path: joinPath(path, k), item: item, key: k}
		for _, f := range fields {
			if f.key == k {
				f.set(v, dst)
				continue next
			}
		}
		if sub != nil && sub(v) {
			continue
		}
		v.fail("%s", unknownKey(table, k))
	}
}

// schemaTables lists the tables of the schema and their keys, for messages
// about unknown keys.
var schemaTables = []struct {
	table, header string
	keys          []string
}{
	{"", "the top level", append(fieldKeys(topFields), "listener", "cluster")},
	{"listener", "[[listener]]", fieldKeys(listenerFields)},
	{"cluster", "[[cluster]]", append(fieldKeys(clusterFields), "backend", "health", "quic_lb")},
	{"cluster.health", "[cluster.health]", fieldKeys(healthFields)},
	{"cluster.quic_lb", "quic_lb", fieldKeys(quicLBFields)},
	{"cluster.backend", "[[cluster.backend]]", fieldKeys(backendFields)},
}

func fieldKeys[T any](fields []field[T]) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = f.key
	}
	return out
}

// unknownKey explains why k is not a key of table: a likely misspelling, or
// the tables where k belongs.
func unknownKey(table, k string) string {
	var homes []string
	for _, t := range schemaTables {
		if t.table == table {
			if s := suggest(k, t.keys); s != "" {
				return fmt.Sprintf("unknown key (did you mean %q?)", s)
			}
			continue
		}
		if slices.Contains(t.keys, k) {
			homes = append(homes, t.header)
		}
	}
	if len(homes) > 0 {
		return fmt.Sprintf("unknown key here (%s belongs in %s)", k, strings.Join(homes, " or "))
	}
	return "unknown key"
}

// itemName labels a listener or cluster for errors: its name when the table
// has a usable one, else its position.
func itemName(kind string, m map[string]any, i int) string {
	if s, ok := m["name"].(string); ok && s != "" {
		return fmt.Sprintf("%s %q", kind, s)
	}
	return fmt.Sprintf("%s #%d", kind, i+1)
}

func backendName(m map[string]any, i int) string {
	if s, ok := m["name"].(string); ok && s != "" {
		return fmt.Sprintf("backend %q", s)
	}
	if s, ok := m["address"].(string); ok && s != "" {
		return fmt.Sprintf("backend %q", s)
	}
	return fmt.Sprintf("backend #%d", i+1)
}

// suggest returns the name closest to k within an edit distance of 2, or "".
func suggest(k string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(k, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// value is one key's raw TOML value and where it came from. Its methods
// convert it into a Go field, or record an error and leave the field alone.
type value struct {
	d    *decoder
	raw  any
	path string
	item string
	key  string
}

func (v value) fail(format string, args ...any) {
	v.d.errs.add(v.d.src.newError(v.path, v.item, v.key, fmt.Sprintf(format, args...)))
}

// wrongType reports that the value is not of the wanted kind.
func (v value) wrongType(want string) {
	v.fail("%s, want %s", describe(v.raw), want)
}

func (v value) string(dst *string) bool {
	s, ok := v.raw.(string)
	if !ok {
		v.wrongType("a string")
		return false
	}
	*dst = s
	return true
}

func (v value) bool(dst *bool) {
	if b, ok := v.raw.(bool); ok {
		*dst = b
		return
	}
	v.wrongType("true or false")
}

func (v value) integer(lo, hi int64) (int64, bool) {
	n, ok := v.raw.(int64)
	if !ok {
		v.wrongType("an integer")
		return 0, false
	}
	if n < lo || n > hi {
		if lo == 0 && n < 0 {
			v.fail("%d is negative", n)
		} else {
			v.fail("%d is outside %d..%d", n, lo, hi)
		}
		return 0, false
	}
	return n, true
}

func (v value) int(dst *int) {
	if n, ok := v.integer(math.MinInt, math.MaxInt); ok {
		*dst = int(n)
	}
}

func (v value) uint32(dst *uint32) {
	if n, ok := v.integer(0, math.MaxUint32); ok {
		*dst = uint32(n)
	}
}

// seed accepts a non-negative integer, or a string holding a decimal or 0x
// hexadecimal uint64 (TOML integers stop at 2^63-1).
func (v value) seed(dst *uint64) {
	switch x := v.raw.(type) {
	case int64:
		if n, ok := v.integer(0, math.MaxInt64); ok {
			*dst = uint64(n)
		}
	case string:
		n, err := strconv.ParseUint(x, 0, 64)
		if err != nil || strings.HasPrefix(x, "0o") || strings.HasPrefix(x, "0b") || strings.Contains(x, "_") {
			v.fail("%q is not a 64-bit unsigned integer (decimal or 0x hex)", x)
			return
		}
		*dst = n
	default:
		v.wrongType("an integer")
	}
}

func (v value) duration(dst *time.Duration) {
	s, ok := v.raw.(string)
	if !ok {
		v.wrongType(`a duration string such as "30s"`)
		return
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		v.fail("%q is not a duration (write it as \"500ms\", \"30s\", \"1m30s\", \"2h\")", s)
		return
	}
	*dst = d
}

func (v value) byteSize(dst *int) {
	var n int64
	switch x := v.raw.(type) {
	case int64:
		if x < 0 {
			v.fail("%d is negative", x)
			return
		}
		n = x
	case string:
		var err error
		if n, err = ParseByteSize(x); err != nil {
			v.fail("%v", err)
			return
		}
	default:
		v.wrongType(`a byte size such as 8388608 or "8MiB"`)
		return
	}
	if n > math.MaxInt {
		v.fail("%d is too large", n)
		return
	}
	*dst = int(n)
}

func (v value) addrPort(dst *netip.AddrPort) {
	var s string
	if !v.string(&s) {
		return
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		v.fail("%q is not an ip:port (write IPv6 as \"[::1]:53\")", s)
		return
	}
	*dst = ap
}

func (v value) addrs(dst *[]netip.Addr) {
	list, ok := v.raw.([]any)
	if !ok {
		v.wrongType("an array of IP addresses")
		return
	}
	out := make([]netip.Addr, 0, len(list))
	for i, e := range list {
		ev := value{d: v.d, raw: e, path: indexPath(v.path, i), item: v.item, key: v.key}
		var s string
		if !ev.string(&s) {
			return
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			ev.fail("%q is not an IP address", s)
			return
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		out = nil // as in Default: "no sources" has one form
	}
	*dst = out
}

// tables returns the value as an array of tables, written either as
// [[header]] sections or as an array of inline tables.
func (v value) tables(header string) []map[string]any {
	switch x := v.raw.(type) {
	case []map[string]any:
		return x
	case []any:
		out := make([]map[string]any, 0, len(x))
		for i, e := range x {
			m, ok := e.(map[string]any)
			if !ok {
				value{d: v.d, raw: e, path: indexPath(v.path, i), item: v.item, key: v.key}.wrongType("a table")
				return out
			}
			out = append(out, m)
		}
		return out
	}
	v.wrongType("an array of tables (" + header + ")")
	return nil
}

// enum decodes a string with parse, whose error message names the choices.
func enum[T any](v value, dst *T, parse func(string) (T, error)) {
	var s string
	if !v.string(&s) {
		return
	}
	x, err := parse(s)
	if err != nil {
		msg := err.Error()
		if i := strings.Index(msg, ": want "); i >= 0 {
			msg = msg[i+2:]
		}
		v.fail("%q is not valid, %s", s, msg)
		return
	}
	*dst = x
}

// describe says what a raw TOML value is, for a type mismatch.
func describe(raw any) string {
	switch x := raw.(type) {
	case string:
		if len(x) > 40 {
			x = x[:37] + "..."
		}
		return strconv.Quote(x) + " is a string"
	case int64:
		return fmt.Sprintf("%d is an integer", x)
	case float64:
		return fmt.Sprintf("%v is a float", x)
	case bool:
		return fmt.Sprintf("%v is a boolean", x)
	case map[string]any:
		return "a table was given"
	case []map[string]any, []any:
		return "an array was given"
	}
	return "a date or time was given"
}

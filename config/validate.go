package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/dns"
)

// Validate reports the first problem of c as an [*Error]: a value out of
// range, a missing or duplicate name or address, a listener naming no
// cluster, a cluster in use without backends. For a config from [Parse] or
// [Flags.Config] the error names the file line or the flag; for one built in
// code it names the item and key.
func (c *Config) Validate() error {
	v := validator{src: c.src}

	v.intRange(c.Shards, 0, MaxShards, "shards")
	v.intRange(c.BatchSize, 1, MaxBatchSize, "batch_size")
	v.intRange(c.MaxFlows, 1, MaxMaxFlows, "max_flows")
	v.intRange(c.MaxRxDatagramSize, 1, core.MaxDatagramSize, "max_rx_datagram_size")
	v.intRange(c.PendingLimit, 1, MaxPendingLimit, "pending_limit")
	v.intRange(c.ExpiryBudget, 1, MaxExpiryBudget, "expiry_budget")
	v.intRange(c.SocketReceiveBuffer, 0, MaxSocketBuffer, "socket_receive_buffer")
	v.intRange(c.SocketSendBuffer, 0, MaxSocketBuffer, "socket_send_buffer")
	v.upstreamSources(c)
	v.sourceLimit(&c.SourceLimit)
	if c.Metrics != "" {
		if msg := checkListenAddr(c.Metrics); msg != "" {
			v.fail("metrics", "", "metrics", "%q %s", c.Metrics, msg)
		}
	}
	if c.ControlTCP != "" {
		if ap, err := netip.ParseAddrPort(c.ControlTCP); err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
			v.fail("control_tcp", "", "control_tcp", "%q is not a loopback ip:port (the control API must not be reachable from the network)", c.ControlTCP)
		}
		if c.ControlTokenFile == "" {
			v.fail("control_token_file", "", "control_token_file", "is required with control_tcp")
		}
	}
	if logLevelName(c.LogLevel) == "" {
		v.fail("log_level", "", "log_level", "%v is not valid, want debug, info, warn or error", c.LogLevel)
	}
	if c.LogFormat > LogJSON {
		v.fail("log_format", "", "log_format", "%v is not valid, want text or json", c.LogFormat)
	}
	if c.GracePeriod < 0 {
		v.fail("grace_period", "", "grace_period", "%v is negative", c.GracePeriod)
	}
	if c.Steering > SteeringCPU {
		v.fail("steering", "", "steering", "%v is not valid, want kernel, hash or cpu", c.Steering)
	}
	if c.SteeringKey > SteeringKeyIP {
		v.fail("steering_key", "", "steering_key", "%v is not valid, want flow or ip", c.SteeringKey)
	}
	if c.SteeringPin != "" && !filepath.IsAbs(c.SteeringPin) {
		v.fail("steering_pin", "", "steering_pin", "%q is not an absolute path (a directory on bpffs, such as \"/sys/fs/bpf/fastudp\")", c.SteeringPin)
	}

	if len(c.Listeners) == 0 {
		v.fail("listener", "", "listener", "at least one [[listener]] is required")
	}
	for i := range c.Listeners {
		v.listener(c, i)
	}
	for i := range c.Clusters {
		v.cluster(c, i)
	}
	return v.errs.first()
}

type validator struct {
	src  *origin
	errs errorList
}

func (v *validator) fail(path, item, key, format string, args ...any) {
	v.errs.add(v.src.newError(path, item, key, fmt.Sprintf(format, args...)))
}

func (v *validator) intRange(n, lo, hi int, key string) {
	v.intRangeAt(n, lo, hi, key, "", key)
}

func (v *validator) intRangeAt(n, lo, hi int, path, item, key string) {
	if n < lo || n > hi {
		v.fail(path, item, key, "%d is outside %d..%d", n, lo, hi)
	}
}

// at returns " (line N)" when path has a known line, to point at the first
// of two clashing definitions.
func (v *validator) at(path string) string {
	if l := v.src.line(path); l > 0 {
		return fmt.Sprintf(" (line %d)", l)
	}
	return ""
}

func (v *validator) name(name, path, item string) {
	switch {
	case name == "":
		v.fail(joinPath(path, "name"), item, "name", "is required")
	case len(name) > MaxNameLen:
		v.fail(joinPath(path, "name"), item, "name", "%q is longer than %d bytes", name, MaxNameLen)
	default:
		for _, r := range name {
			if !isNameRune(r) {
				v.fail(joinPath(path, "name"), item, "name", "%q: names may hold only letters, digits, '.', '_' and '-'", name)
				return
			}
		}
	}
}

func isNameRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
}

func (v *validator) listener(c *Config, i int) {
	l := &c.Listeners[i]
	path := indexPath("listener", i)
	item := listenerItem(l, i)
	v.name(l.Name, path, item)
	for j := range i {
		if l.Name != "" && c.Listeners[j].Name == l.Name {
			p := indexPath("listener", j)
			v.fail(joinPath(path, "name"), item, "name", "listener %q is already defined%s", l.Name, v.at(p))
		}
	}
	apath := joinPath(path, "address")
	switch {
	case !l.Address.IsValid():
		v.fail(apath, item, "address", "is required")
	case l.Address.Port() == 0:
		v.fail(apath, item, "address", "%s: port 0 is not allowed", l.Address)
	case l.Address.Addr().IsMulticast():
		v.fail(apath, item, "address", "%s is a multicast address", l.Address)
	default:
		for j := range i {
			if c.Listeners[j].Address == l.Address {
				v.fail(apath, item, "address", "%s is also the address of %s%s", l.Address, listenerItem(&c.Listeners[j], j), v.at(indexPath("listener", j)))
				break
			}
		}
	}
	cpath := joinPath(path, "cluster")
	switch {
	case l.Cluster == "":
		v.fail(cpath, item, "cluster", "is required")
	case c.ClusterIndex(l.Cluster) < 0:
		v.fail(cpath, item, "cluster", "no [[cluster]] is named %q", l.Cluster)
	}
	if l.PublicAddress.IsValid() && l.PublicAddress.Port() == 0 {
		v.fail(joinPath(path, "public_address"), item, "public_address", "%s: port 0 is not allowed", l.PublicAddress)
	}
}

func (v *validator) cluster(c *Config, i int) {
	cl := &c.Clusters[i]
	path := indexPath("cluster", i)
	item := clusterItem(cl, i)
	v.name(cl.Name, path, item)
	for j := range i {
		if cl.Name != "" && c.Clusters[j].Name == cl.Name {
			v.fail(joinPath(path, "name"), item, "name", "cluster %q is already defined%s", cl.Name, v.at(indexPath("cluster", j)))
		}
	}
	if cl.LB > LBP2C {
		v.fail(joinPath(path, "lb"), item, "lb", "%v is not valid, want maglev, hrw, rr, random or p2c", cl.LB)
	}
	if cl.Affinity > core.AffinityQUIC {
		v.fail(joinPath(path, "affinity"), item, "affinity", "%v is not valid, want ip, ip-port, datagram or quic", cl.Affinity)
	}
	if cl.ProxyProtocol > core.ProxyEvery {
		v.fail(joinPath(path, "proxy_protocol"), item, "proxy_protocol", "%v is not valid, want off, first or every", cl.ProxyProtocol)
	}
	for _, t := range []struct {
		key string
		d   time.Duration
	}{{"front_timeout", cl.FrontTimeout}, {"back_timeout", cl.BackTimeout}} {
		if t.d <= 0 {
			v.fail(joinPath(path, t.key), item, t.key, "%v: must be greater than 0", t.d)
		}
	}
	if cl.Lifetime < 0 {
		v.fail(joinPath(path, "lifetime"), item, "lifetime", "%v is negative", cl.Lifetime)
	}
	if cl.DownFlows > DownFlowsClose {
		v.fail(joinPath(path, "down_flows"), item, "down_flows", "%v is not valid, want continue or close", cl.DownFlows)
	}
	v.amplification(cl, path, item)
	v.dnsMode(cl, path, item)
	v.quicLB(cl, path, item)
	v.health(cl, joinPath(path, "health"), item)
	if len(cl.Backends) == 0 && cl.Name != "" {
		for j := range c.Listeners {
			if c.Listeners[j].Cluster == cl.Name {
				v.fail(path, item, "", "has no [[cluster.backend]], and %s uses it", listenerItem(&c.Listeners[j], j))
				break
			}
		}
	}
	if len(cl.Backends) > MaxBackends {
		v.fail(path, item, "", "has %d backends, more than %d", len(cl.Backends), MaxBackends)
		return
	}
	for j := range cl.Backends {
		v.backend(cl, path, item, j)
	}
}

func (v *validator) backend(cl *Cluster, cpath, citem string, i int) {
	b := &cl.Backends[i]
	path := indexPath(joinPath(cpath, "backend"), i)
	item := citem + " " + backendItem(b, i)
	apath := joinPath(path, "address")
	switch a := b.Address.Addr(); {
	case !b.Address.IsValid():
		v.fail(apath, item, "address", "is required")
	case b.Address.Port() == 0:
		v.fail(apath, item, "address", "%s: port 0 is not allowed", b.Address)
	case a.IsUnspecified() || a.IsMulticast():
		v.fail(apath, item, "address", "%s is not a unicast address", b.Address)
	}
	if b.Name != "" {
		v.name(b.Name, path, item)
	}
	v.intRangeAt(b.Weight, 1, MaxWeight, joinPath(path, "weight"), item, "weight")
	for j := range i {
		o := &cl.Backends[j]
		opath := indexPath(joinPath(cpath, "backend"), j)
		switch {
		case b.Address.IsValid() && o.Address == b.Address:
			v.fail(apath, item, "address", "%s is already a backend of this cluster%s", b.Address, v.at(opath))
			return
		case o.Label() == b.Label() && b.Name != "":
			v.fail(joinPath(path, "name"), item, "name", "backend %q is already defined in this cluster%s", b.Name, v.at(opath))
			return
		}
	}
}

// upstreamSources checks the source addresses, and that every address family
// a backend in use needs has one.
func (v *validator) upstreamSources(c *Config) {
	var have4, have6 bool
	for i, a := range c.UpstreamSources {
		path := indexPath("upstream_sources", i)
		switch {
		case !a.IsValid():
			v.fail(path, "", "upstream_sources", "entry %d is not an IP address", i+1)
			continue
		case a.IsUnspecified() || a.IsMulticast():
			v.fail(path, "", "upstream_sources", "%s is not a unicast address", a)
			continue
		}
		for j := range i {
			if c.UpstreamSources[j] == a {
				v.fail(path, "", "upstream_sources", "%s is listed twice", a)
			}
		}
		if a.Unmap().Is4() {
			have4 = true
		} else {
			have6 = true
		}
	}
	if len(c.UpstreamSources) == 0 {
		return
	}
	for i := range c.Clusters {
		cl := &c.Clusters[i]
		for j := range cl.Backends {
			b := &cl.Backends[j]
			if !b.Address.IsValid() {
				continue
			}
			is4 := b.Address.Addr().Unmap().Is4()
			if is4 && !have4 || !is4 && !have6 {
				fam := map[bool]string{true: "IPv4", false: "IPv6"}[is4]
				v.fail("upstream_sources", "", "upstream_sources", "has no %s address for %s backend %s of %s", fam, fam, b.Address, clusterItem(cl, i))
				return
			}
		}
	}
}

// checkListenAddr checks a host:port listen address, returning what is wrong
// or "".
func checkListenAddr(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "is not a host:port listen address"
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "needs a port in 1..65535"
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && !isHostName(host) {
			return "has an invalid host"
		}
	}
	return ""
}

func isHostName(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-') {
			return false
		}
	}
	return true
}

func listenerItem(l *Listener, i int) string {
	if l.Name != "" {
		return fmt.Sprintf("listener %q", l.Name)
	}
	return fmt.Sprintf("listener #%d", i+1)
}

func clusterItem(cl *Cluster, i int) string {
	if cl.Name != "" {
		return fmt.Sprintf("cluster %q", cl.Name)
	}
	return fmt.Sprintf("cluster #%d", i+1)
}

func backendItem(b *Backend, i int) string {
	if b.Name != "" || b.Address.IsValid() {
		return fmt.Sprintf("backend %q", b.Label())
	}
	return fmt.Sprintf("backend #%d", i+1)
}

func (v *validator) dnsMode(cl *Cluster, path, item string) {
	if cl.Mode > ModeDNS {
		v.fail(joinPath(path, "mode"), item, "mode", "%v is not valid, want udp or dns", cl.Mode)
	}
	d := &cl.DNS
	v.intRangeAt(d.Sockets, 1, MaxDNSSockets, joinPath(path, "dns_sockets"), item, "dns_sockets")
	v.intRangeAt(d.MaxInFlight, 1, MaxDNSMaxInFlight, joinPath(path, "dns_max_inflight"), item, "dns_max_inflight")
	for _, t := range []struct {
		key string
		d   time.Duration
	}{{"dns_timeout", d.Timeout}, {"dns_tcp_idle_timeout", d.TCPIdleTimeout}} {
		if t.d <= 0 {
			v.fail(joinPath(path, t.key), item, t.key, "%v: must be greater than 0", t.d)
		}
	}
	if cl.Mode == ModeDNS && cl.ProxyProtocol != core.ProxyOff {
		v.fail(joinPath(path, "proxy_protocol"), item, "proxy_protocol", "%v cannot be used with mode = \"dns\": a PROXY header in front of a DNS message is not DNS", cl.ProxyProtocol)
	}
}

func (v *validator) health(cl *Cluster, path, item string) {
	h := &cl.Health
	if h.Type > HealthQUIC {
		v.fail(joinPath(path, "type"), item, "type", "%v is not valid, want none, udp, dns, tcp or quic", h.Type)
	}
	for _, t := range []struct {
		key string
		d   time.Duration
	}{{"interval", h.Interval}, {"timeout", h.Timeout}, {"passive_cooldown", h.PassiveCooldown}} {
		if t.d <= 0 {
			v.fail(joinPath(path, t.key), item, t.key, "%v: must be greater than 0", t.d)
		}
	}
	v.intRangeAt(h.Rise, 1, 1000, joinPath(path, "rise"), item, "rise")
	v.intRangeAt(h.Fall, 1, 1000, joinPath(path, "fall"), item, "fall")
	v.intRangeAt(h.PassiveFailures, 1, 1<<30, joinPath(path, "passive_failures"), item, "passive_failures")
	if _, err := dns.ParseType(h.DNSType); err != nil {
		v.fail(joinPath(path, "dns_type"), item, "dns_type", "%q is not a DNS record type", h.DNSType)
	}
	if _, err := dns.ParseRCode(h.DNSRCode); err != nil {
		v.fail(joinPath(path, "dns_rcode"), item, "dns_rcode", "%q is not a DNS response code", h.DNSRCode)
	}
	if h.DNSName != "" {
		if _, err := dns.AppendName(nil, h.DNSName); err != nil {
			v.fail(joinPath(path, "dns_name"), item, "dns_name", "%q is not a domain name", h.DNSName)
		}
	}
	if h.ExpectRegex != "" {
		if _, err := regexp.Compile(h.ExpectRegex); err != nil {
			v.fail(joinPath(path, "expect_regex"), item, "expect_regex", "%v", err)
		}
	}
	switch {
	case h.Type == HealthDNS && h.DNSName == "":
		v.fail(joinPath(path, "dns_name"), item, "dns_name", "is required with type = \"dns\"")
	case h.Type == HealthUDP && h.Send == "":
		v.fail(joinPath(path, "send"), item, "send", "is required with type = \"udp\"")
	case h.Expect != "" && h.ExpectRegex != "":
		v.fail(joinPath(path, "expect_regex"), item, "expect_regex", "cannot be used with expect: give one")
	}
}

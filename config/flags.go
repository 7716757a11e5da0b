package config

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"
)

// QuickStartCluster and QuickStartListener name the cluster and listener a
// config built from quick-start flags has.
const (
	QuickStartCluster  = "default"
	QuickStartListener = "default"
)

// Flags are the quick-start flags of `fastudp run` (without --config), as
// given on the command line: one listener, named "default", in front of one
// cluster, named "default". An empty field is a flag not given, which leaves
// the default. Values are kept as text so that [Flags.Config] checks them with
// the config file's rules and names the flag in its errors.
type Flags struct {
	Listen        string   // --listen ADDR
	Backends      []string // --backend ADDR, repeated
	Responses     string   // --responses N
	Requests      string   // --requests N
	IdleTimeout   string   // --idle-timeout DURATION: front_timeout and back_timeout
	MaxFlows      string   // --max-flows N
	SourceRate    string   // --source-flow-rate N
	MaxAmplify    string   // --max-amplification N
	LB            string   // --lb maglev|hrw|rr|random|p2c
	Affinity      string   // --affinity ip|ip-port
	ProxyProtocol string   // --proxy-protocol off|first|every
	Shards        string   // --shards N
	Seed          string   // --seed N
	Metrics       string   // --metrics ADDR
	Control       string   // --control PATH
	LogLevel      string   // --log-level LEVEL
	Steering      string   // --steering kernel|hash|cpu
	SteeringKey   string   // --steering-key flow|ip
	GRO           string   // --gro, --gro=false: "true" or "false"
	GSO           string   // --gso, --gso=false
	Mode          string   // --mode udp|dns
	DNSSockets    string   // --dns-sockets N
	DNSTimeout    string   // --dns-timeout DURATION
	DNSTCP        string   // --dns-tcp, --dns-tcp=false
	Health        string   // --health none|udp|dns|tcp|quic
	HealthDNSName string   // --health-dns-name NAME
	HealthSend    string   // --health-send PAYLOAD
	QUICSIDLen    string   // --quic-sid-len N: quic_lb.server_id_len
	QUICNonceLen  string   // --quic-nonce-len N: quic_lb.nonce_len
	QUICKeyFile   string   // --quic-key-file PATH: quic_lb.key, read from a file
}

// Register defines the quick-start flags on fs, storing into f.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Listen, "listen", "", "listen on `ADDR` (ip:port) without a config file")
	fs.Func("backend", "forward to backend `ADDR` (ip:port, or ip:port,sid=HEX with a QUIC-LB server ID); repeat for more backends", func(s string) error {
		f.Backends = append(f.Backends, s)
		return nil
	})
	fs.StringVar(&f.Responses, "responses", "", "close a flow after `N` backend datagrams (default 0: unlimited; DNS uses 1)")
	fs.StringVar(&f.Requests, "requests", "", "detach a flow from its client after `N` client datagrams (default 0: unlimited)")
	fs.StringVar(&f.IdleTimeout, "idle-timeout", "", "close a flow idle for `DURATION` (default 30s)")
	fs.StringVar(&f.MaxFlows, "max-flows", "", "cap live flows in the process at `N` (default 65536)")
	fs.StringVar(&f.SourceRate, "source-flow-rate", "", "let one client address open at most `N` new flows per second (default 0: unlimited)")
	fs.StringVar(&f.MaxAmplify, "max-amplification", "", "drop replies beyond `N` × a flow's request bytes + 1500 (default 0: off)")
	fs.StringVar(&f.LB, "lb", "", "load-balancing `POLICY`: maglev, hrw (consistent hashing: a client keeps its backend), rr, random or p2c (power of two choices on live flows) (default maglev)")
	fs.StringVar(&f.Affinity, "affinity", "", "backend affinity `MODE`: ip, ip-port or datagram (per-datagram balancing) (default ip)")
	fs.StringVar(&f.ProxyProtocol, "proxy-protocol", "", "send PROXY v2 headers: `MODE` off, first or every (default off)")
	fs.StringVar(&f.Shards, "shards", "", "run `N` shards (default 0: GOMAXPROCS)")
	fs.StringVar(&f.Seed, "seed", "", "affinity hash seed `N`, decimal or 0x hex (default 0x66617374756470)")
	fs.StringVar(&f.Metrics, "metrics", "", "serve Prometheus /metrics on `ADDR` (host:port; default off)")
	fs.StringVar(&f.Control, "control", "", "serve the control API (fastudp ctl) on the unix socket `PATH` (default off)")
	fs.StringVar(&f.LogLevel, "log-level", "", "log `LEVEL`: debug, info, warn or error (default info)")
	fs.StringVar(&f.Steering, "steering", "", "choose each datagram's shard by `MODE`: kernel (SO_REUSEPORT hash), hash or cpu (eBPF; needs CAP_BPF) (default kernel)")
	fs.StringVar(&f.SteeringKey, "steering-key", "", "what hash steering hashes: `KEY` flow (client IP and port) or ip (default flow)")
	fs.StringVar(&f.Mode, "mode", "", "cluster `MODE`: udp (a flow per client address) or dns (queries share upstream sockets, IDs rewritten) (default udp)")
	fs.StringVar(&f.DNSSockets, "dns-sockets", "", "dns mode: `N` upstream sockets per backend and shard (default 1)")
	fs.StringVar(&f.DNSTimeout, "dns-timeout", "", "dns mode: free a query unanswered after `DURATION` (default 2s)")
	fs.BoolFunc("dns-tcp", "dns mode: forward DNS over TCP on the listen address; --dns-tcp=false turns it off (default on)", func(s string) error {
		f.DNSTCP = s
		return nil
	})
	fs.StringVar(&f.Health, "health", "", "active health probe `TYPE`: none, udp, dns, tcp or quic (default none)")
	fs.StringVar(&f.HealthDNSName, "health-dns-name", "", "dns health probe: query `NAME` (type A, NOERROR expected)")
	fs.StringVar(&f.HealthSend, "health-send", "", "udp health probe: send `PAYLOAD`; any reply counts as up")
	fs.StringVar(&f.QUICSIDLen, "quic-sid-len", "", "affinity quic: QUIC-LB server IDs of `N` bytes, given as --backend ADDR,sid=HEX (config_id 0)")
	fs.StringVar(&f.QUICKeyFile, "quic-key-file", "", "affinity quic: encrypt QUIC-LB IDs with the 16-byte key in the file at `PATH` (32 hex digits; a file, so the secret is not on the command line)")
	fs.StringVar(&f.QUICNonceLen, "quic-nonce-len", "", "affinity quic: QUIC-LB nonces of `N` bytes (default 8, or 19 - the server ID length when smaller)")
	fs.BoolFunc("gso", "send a run of equal-size datagrams with one UDP_SEGMENT (GSO) send; --gso=false sends them one by one (default on)", func(s string) error {
		f.GSO = s
		return nil
	})
	fs.BoolFunc("gro", "read runs of equal-size datagrams whole (UDP_GRO) and forward them with one GSO send; --gro=false turns it off (default on)", func(s string) error {
		f.GRO = s
		return nil
	})
}

// flagSpec ties a quick-start flag to the config key it sets.
type flagSpec struct {
	name  string   // without dashes
	paths []string // config paths it sets
	get   func(*Flags) string
	int   bool // the key wants an integer
	bool  bool // the key wants true or false
}

// fileFlag is the flag whose value names a file holding the key's value.
const fileFlag = "quic-key-file"

var flagSpecs = []flagSpec{
	{"listen", []string{"listener", "listener[0]"}, func(f *Flags) string { return f.Listen }, false, false},
	{"backend", []string{"cluster[0]"}, nil, false, false},
	{"responses", []string{"cluster[0].responses"}, func(f *Flags) string { return f.Responses }, true, false},
	{"requests", []string{"cluster[0].requests"}, func(f *Flags) string { return f.Requests }, true, false},
	{"idle-timeout", []string{"cluster[0].front_timeout", "cluster[0].back_timeout"}, func(f *Flags) string { return f.IdleTimeout }, false, false},
	{"max-flows", []string{"max_flows"}, func(f *Flags) string { return f.MaxFlows }, true, false},
	{name: "source-flow-rate", paths: []string{"source_flow_rate"}, get: func(f *Flags) string { return f.SourceRate }, int: true},
	{name: "max-amplification", paths: []string{"cluster[0].max_amplification"}, get: func(f *Flags) string { return f.MaxAmplify }, int: true},
	{name: "lb", paths: []string{"cluster[0].lb"}, get: func(f *Flags) string { return f.LB }},
	{"affinity", []string{"cluster[0].affinity"}, func(f *Flags) string { return f.Affinity }, false, false},
	{"proxy-protocol", []string{"cluster[0].proxy_protocol"}, func(f *Flags) string { return f.ProxyProtocol }, false, false},
	{"shards", []string{"shards"}, func(f *Flags) string { return f.Shards }, true, false},
	{"seed", []string{"seed"}, func(f *Flags) string { return f.Seed }, false, false},
	{"metrics", []string{"metrics"}, func(f *Flags) string { return f.Metrics }, false, false},
	{name: "control", paths: []string{"control"}, get: func(f *Flags) string { return f.Control }},
	{"log-level", []string{"log_level"}, func(f *Flags) string { return f.LogLevel }, false, false},
	{"steering", []string{"steering"}, func(f *Flags) string { return f.Steering }, false, false},
	{"steering-key", []string{"steering_key"}, func(f *Flags) string { return f.SteeringKey }, false, false},
	{name: "gro", paths: []string{"gro"}, get: func(f *Flags) string { return f.GRO }, bool: true},
	{name: "gso", paths: []string{"gso"}, get: func(f *Flags) string { return f.GSO }, bool: true},
	{name: "mode", paths: []string{"cluster[0].mode"}, get: func(f *Flags) string { return f.Mode }},
	{name: "dns-sockets", paths: []string{"cluster[0].dns_sockets"}, get: func(f *Flags) string { return f.DNSSockets }, int: true},
	{name: "dns-timeout", paths: []string{"cluster[0].dns_timeout"}, get: func(f *Flags) string { return f.DNSTimeout }},
	{name: "dns-tcp", paths: []string{"cluster[0].dns_tcp"}, get: func(f *Flags) string { return f.DNSTCP }, bool: true},
	{name: "health", paths: []string{"cluster[0].health.type"}, get: func(f *Flags) string { return f.Health }},
	{name: "health-dns-name", paths: []string{"cluster[0].health.dns_name"}, get: func(f *Flags) string { return f.HealthDNSName }},
	{name: "health-send", paths: []string{"cluster[0].health.send"}, get: func(f *Flags) string { return f.HealthSend }},
	{name: "quic-sid-len", paths: []string{"cluster[0].quic_lb.server_id_len"}, get: func(f *Flags) string { return f.QUICSIDLen }, int: true},
	{name: "quic-nonce-len", paths: []string{"cluster[0].quic_lb.nonce_len"}, get: func(f *Flags) string { return f.QUICNonceLen }, int: true},
	{name: "quic-key-file", paths: []string{"cluster[0].quic_lb.key"}, get: func(f *Flags) string { return f.QUICKeyFile }},
}

// Given returns the quick-start flags that were given, as "--name", so the
// command can refuse them next to --config.
func (f *Flags) Given() []string {
	var out []string
	for _, s := range flagSpecs {
		if s.get == nil && len(f.Backends) > 0 || s.get != nil && s.get(f) != "" {
			out = append(out, "--"+s.name)
		}
	}
	return out
}

// Config builds and validates the config the flags describe. Errors are
// [*Error]s naming the flag, such as `--backend: "10.0.0.1" is not an
// ip:port`.
func (f *Flags) Config() (*Config, error) {
	if f.Listen == "" {
		return nil, &Error{Flag: "--listen", Msg: "is required without --config"}
	}
	if len(f.Backends) == 0 {
		return nil, &Error{Flag: "--backend", Msg: "at least one is required"}
	}
	src := &origin{flags: make(map[string]string)}
	top := map[string]any{}
	cl := map[string]any{"name": QuickStartCluster}
	backends := make([]map[string]any, len(f.Backends))
	for i, b := range f.Backends {
		backends[i] = map[string]any{"address": b}
		if addr, sid, ok := strings.Cut(b, ",sid="); ok {
			backends[i] = map[string]any{"address": addr, "server_id": sid}
		}
		src.flags[indexPath("cluster[0].backend", i)] = "--backend"
	}
	cl["backend"] = backends
	top["cluster"] = []map[string]any{cl}
	top["listener"] = []map[string]any{{"name": QuickStartListener, "address": f.Listen, "cluster": QuickStartCluster}}

	for _, s := range flagSpecs {
		for _, p := range s.paths {
			src.flags[p] = "--" + s.name
		}
		if s.get == nil || s.name == "listen" || s.get(f) == "" {
			continue
		}
		var val any = s.get(f)
		if !utf8.ValidString(s.get(f)) {
			// A config file is UTF-8 (TOML); a flag value must be too.
			return nil, &Error{Flag: "--" + s.name, Msg: strconv.Quote(s.get(f)) + " is not valid UTF-8"}
		}
		if s.name == fileFlag {
			data, err := readSmallFile(s.get(f))
			if err != nil {
				return nil, &Error{Flag: "--" + s.name, Msg: err.Error()}
			}
			val = data // never echoed: it is a secret
		}
		if s.int {
			n, err := strconv.ParseInt(s.get(f), 10, 64)
			if err != nil {
				return nil, &Error{Flag: "--" + s.name, Msg: strconv.Quote(s.get(f)) + " is not an integer"}
			}
			val = n
		}
		if s.bool {
			b, err := strconv.ParseBool(s.get(f))
			if err != nil {
				return nil, &Error{Flag: "--" + s.name, Msg: strconv.Quote(s.get(f)) + " is not true or false"}
			}
			val = b
		}
		for _, p := range s.paths {
			if k, ok := strings.CutPrefix(p, "cluster[0].health."); ok {
				h, _ := cl["health"].(map[string]any)
				if h == nil {
					h = map[string]any{}
					cl["health"] = h
				}
				h[k] = val
			} else if k, ok := strings.CutPrefix(p, "cluster[0].quic_lb."); ok {
				q, _ := cl["quic_lb"].(map[string]any)
				if q == nil {
					q = map[string]any{}
					cl["quic_lb"] = q
				}
				q[k] = val
			} else if k, ok := strings.CutPrefix(p, "cluster[0]."); ok {
				cl[k] = val
			} else {
				top[p] = val
			}
		}
	}
	src.flags["cluster[0].quic_lb"] = "--quic-sid-len"
	c, err := decode(top, src)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// readSmallFile reads a regular file of at most 4 KiB (a key file): a
// device or a FIFO is refused rather than read without end.
func readSmallFile(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() || st.Size() > 4096 {
		return "", fmt.Errorf("%s: want a regular file of at most 4096 bytes", path)
	}
	data, err := os.ReadFile(path)
	return string(data), err
}

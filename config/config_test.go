package config

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/quiclb"
)

const examplePath = "../testdata/fastudp.toml"

// exampleConfig is what testdata/fastudp.toml says, key by key.
func exampleConfig() Config {
	return Config{
		Shards:              0,
		BatchSize:           64,
		Seed:                0x66617374756470,
		MaxFlows:            65536,
		MaxRxDatagramSize:   4096,
		PendingLimit:        4,
		ExpiryBudget:        1024,
		SocketReceiveBuffer: 8 << 20,
		SocketSendBuffer:    4194304,
		UpstreamSources: []netip.Addr{
			netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("::1"),
		},
		Metrics:          "127.0.0.1:9153",
		Control:          "/run/fastudp/control.sock",
		ControlTCP:       "127.0.0.1:9154",
		ControlTokenFile: "/etc/fastudp/control.token",
		LogLevel:         slog.LevelInfo,
		LogFormat:        LogJSON,
		AccessLog:        "stdout",
		GracePeriod:      15 * time.Second,
		CPUPinning:       false,
		GRO:              true,
		GSO:              true,
		Steering:         SteeringHash,
		SteeringKey:      SteeringKeyIP,
		SteeringPin:      "",
		SourceLimit:      SourceLimit{Rate: 200, Burst: 400, PrefixV4: 32, PrefixV6: 64, TableSize: 16384},
		Listeners: []Listener{
			{Name: "dns", Address: netip.MustParseAddrPort("0.0.0.0:5353"), Cluster: "dns"},
			{Name: "quic", Address: netip.MustParseAddrPort("[::]:4433"), Cluster: "quic",
				PublicAddress: netip.MustParseAddrPort("[2001:db8::10]:443")},
		},
		Clusters: []Cluster{
			{
				Name: "dns", LB: LBMaglev, Affinity: core.AffinityIP, Responses: 1, Requests: 0,
				FrontTimeout: 5 * time.Second, BackTimeout: 5 * time.Second, Lifetime: 0,
				ProxyProtocol: core.ProxyOff, Mode: ModeDNS, AmplificationAllowance: DefaultAmplificationAllowance,
				DNS:      DNS{Sockets: 2, MaxInFlight: 4096, Timeout: 2 * time.Second, TCP: true, TCPIdleTimeout: 10 * time.Second},
				FailOpen: true,
				Health: Health{Type: HealthDNS, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3,
					Send: "ping", Expect: "pong", DNSName: "example.test.", DNSType: "SOA", DNSRCode: "NOERROR",
					Passive: true, PassiveFailures: 5, PassiveCooldown: 10 * time.Second},
				Backends: []Backend{
					{Name: "ns1", Address: netip.MustParseAddrPort("127.0.0.1:5301"), Weight: 100},
					{Name: "ns2", Address: netip.MustParseAddrPort("127.0.0.1:5302"), Weight: 200},
				},
			},
			{
				Name: "quic", LB: LBHRW, Affinity: core.AffinityQUIC, Responses: 0, Requests: 0,
				FrontTimeout: 30 * time.Second, BackTimeout: 30 * time.Second, Lifetime: 24 * time.Hour,
				ProxyProtocol: core.ProxyFirst, MaxAmplification: 10, AmplificationAllowance: 2048,
				DNS: DefaultDNS(), FailOpen: true, Health: DefaultHealth(),
				QUICLB: quiclb.Config{ServerIDLen: 2, NonceLen: 8, Encrypted: true,
					Key: [16]byte{0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20, 0x7f}},
				Backends: []Backend{
					{Address: netip.MustParseAddrPort("[::1]:4434"), Weight: 100, ServerID: "\x0a\x01"},
					{Name: "quic-b", Address: netip.MustParseAddrPort("127.0.0.1:4435"), Weight: 50, Backup: true, ServerID: "\x0a\x02"},
				},
			},
		},
	}
}

// equalConfigs compares configs without their origins.
func equalConfigs(t *testing.T, got, want *Config) {
	t.Helper()
	g, w := *got, *want
	g.src, w.src = nil, nil
	if !reflect.DeepEqual(g, w) {
		t.Errorf("config mismatch:\n got  %+v\n want %+v", g, w)
	}
}

// roundTrip checks that c marshals to a file that parses to the same config.
func roundTrip(t *testing.T, c *Config) {
	t.Helper()
	text, err := c.MarshalTOML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(text, "marshalled.toml")
	if err != nil {
		t.Fatalf("marshalled config does not parse: %v\n%s", err, text)
	}
	equalConfigs(t, back, c)
}

func TestExample(t *testing.T) {
	c, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	want := exampleConfig()
	equalConfigs(t, c, &want)
}

// TestExampleUsesEveryKey keeps testdata/fastudp.toml complete: every key of
// the schema appears in it.
func TestExampleUsesEveryKey(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	index := regexp.MustCompile(`\[\d+\]`)
	for p := range keyLines(data) {
		seen[index.ReplaceAllString(p, "")] = true
	}
	for _, tb := range schemaTables {
		for _, k := range tb.keys {
			if p := joinPath(tb.table, k); !seen[p] {
				t.Errorf("%s does not set %s", examplePath, p)
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, name := range []string{"example", "demo", "defaults", "big-seed"} {
		t.Run(name, func(t *testing.T) {
			var c *Config
			switch name {
			case "example":
				var err error
				if c, err = Load(examplePath); err != nil {
					t.Fatal(err)
				}
			case "demo":
				c = Demo()
			case "defaults":
				c = minimal(t)
			case "big-seed":
				c = minimal(t)
				c.Seed = 1<<64 - 1
				c.SocketSendBuffer = 1000
				c.AccessLog = "/var/log/a \"quoted\"\tname\x01\\é.log"
				c.Steering, c.SteeringKey, c.SteeringPin = SteeringCPU, SteeringKeyIP, "/sys/fs/bpf/fast udp"
			}
			roundTrip(t, c)
		})
	}
}

const minimalTOML = `
[[listener]]
name = "l"
address = "127.0.0.1:53"
cluster = "c"

[[cluster]]
name = "c"

  [[cluster.backend]]
  address = "127.0.0.1:5301"
`

func minimal(t *testing.T) *Config {
	t.Helper()
	c, err := Parse([]byte(minimalTOML), "minimal.toml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDefaults(t *testing.T) {
	c := minimal(t)
	want := Default()
	cl := NewCluster("c")
	cl.Backends = []Backend{{Address: netip.MustParseAddrPort("127.0.0.1:5301"), Weight: DefaultWeight}}
	want.Clusters = []Cluster{cl}
	want.Listeners = []Listener{{Name: "l", Address: netip.MustParseAddrPort("127.0.0.1:53"), Cluster: "c"}}
	equalConfigs(t, c, &want)

	// The documented values, spelled out once more.
	d := Default()
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"shards", d.Shards, 0},
		{"batch_size", d.BatchSize, 64},
		{"seed", d.Seed, uint64(0x66617374756470)},
		{"max_flows", d.MaxFlows, 65536},
		{"max_rx_datagram_size", d.MaxRxDatagramSize, core.DefaultMaxRxDatagramSize},
		{"pending_limit", d.PendingLimit, core.DefaultPendingLimit},
		{"expiry_budget", d.ExpiryBudget, core.DefaultExpiryBudget},
		{"socket_receive_buffer", d.SocketReceiveBuffer, 4 << 20},
		{"socket_send_buffer", d.SocketSendBuffer, 4 << 20},
		{"log_level", d.LogLevel, slog.LevelInfo},
		{"log_format", d.LogFormat, LogText},
		{"grace_period", d.GracePeriod, 10 * time.Second},
		{"steering", d.Steering, SteeringKernel},
		{"steering_key", d.SteeringKey, SteeringKeyFlow},
		{"steering_pin", d.SteeringPin, ""},
		{"lb", cl.LB, LBMaglev},
		{"affinity", cl.Affinity, core.AffinityIP},
		{"front_timeout", cl.FrontTimeout, 30 * time.Second},
		{"back_timeout", cl.BackTimeout, 30 * time.Second},
		{"lifetime", cl.Lifetime, time.Duration(0)},
		{"proxy_protocol", cl.ProxyProtocol, core.ProxyOff},
	} {
		if tc.got != tc.want {
			t.Errorf("default %s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "at least one [[listener]]") {
		t.Errorf("Default().Validate() = %v, want the no-listener error", err)
	}
}

// TestBadConfigs loads every file in testdata/config; each says on its first
// line, after "# want: ", the error it must yield (file:line: ...).
func TestBadConfigs(t *testing.T) {
	files, err := filepath.Glob("../testdata/config/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 15 {
		t.Fatalf("only %d bad configs", len(files))
	}
	lineOf := regexp.MustCompile(`^[^:]+\.toml:(\d+):`)
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(strings.TrimSuffix(name, ".toml"), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(data), "\n")
			want, ok := strings.CutPrefix(first, "# want: ")
			if !ok {
				t.Fatalf("first line %q lacks \"# want: \"", first)
			}
			_, err = Load(f)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not *config.Error: %v", err, err)
			}
			if !strings.HasPrefix(want, name) {
				t.Fatalf("want %q does not start with the file name", want)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error\n  %s\nwant it to contain\n  %s", err, want)
			}
			wantLine := 0
			if m := lineOf.FindStringSubmatch(want); m != nil {
				wantLine, _ = strconv.Atoi(m[1])
			}
			if ce.Line != wantLine || ce.File != f {
				t.Errorf("File, Line = %q, %d; want %q, %d", ce.File, ce.Line, f, wantLine)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("../testdata/config/does-not-exist.toml")
	var ce *Error
	if !errors.As(err, &ce) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load = %v, want a *config.Error wrapping ErrNotExist", err)
	}
	if want := "../testdata/config/does-not-exist.toml: cannot read: no such file or directory"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// TestParseErrors covers what the bad-config files do not: messages for
// values of every kind of key.
func TestParseErrors(t *testing.T) {
	base := "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:53\"\ncluster = \"c\"\n" +
		"[[cluster]]\nname = \"c\"\n[[cluster.backend]]\naddress = \"127.0.0.1:1\"\n"
	for _, tc := range []struct {
		name, top, want string
	}{
		{"float", "batch_size = 64.0", `t.toml:1: key "batch_size": 64 is a float, want an integer`},
		{"bool", "cpu_pinning = \"yes\"", `t.toml:1: key "cpu_pinning": "yes" is a string, want true or false`},
		{"seed-negative", "seed = -1", `t.toml:1: key "seed": -1 is negative`},
		{"seed-string", `seed = "0xffffffffffffffff"`, ""},
		{"seed-bad-string", `seed = "banana"`, `t.toml:1: key "seed": "banana" is not a 64-bit unsigned integer`},
		{"size-negative", "socket_send_buffer = -1", `t.toml:1: key "socket_send_buffer": -1 is negative`},
		{"size-too-large", `socket_send_buffer = "2GiB"`, `t.toml:1: key "socket_send_buffer": 2147483648 is outside 0..1073741824`},
		{"size-zero", `socket_send_buffer = 0`, ""},
		{"sources-not-array", `upstream_sources = "127.0.0.1"`, `t.toml:1: key "upstream_sources": "127.0.0.1" is a string, want an array of IP addresses`},
		{"sources-bad", "upstream_sources = [\n\"127.0.0.1\",\n\"nope\"]", `t.toml:3: key "upstream_sources": "nope" is not an IP address`},
		{"sources-dup", `upstream_sources = ["127.0.0.1", "127.0.0.1"]`, `t.toml:1: key "upstream_sources": 127.0.0.1 is listed twice`},
		{"sources-unspecified", `upstream_sources = ["0.0.0.0"]`, `t.toml:1: key "upstream_sources": 0.0.0.0 is not a unicast address`},
		{"metrics-port", `metrics = "127.0.0.1:0"`, `t.toml:1: key "metrics": "127.0.0.1:0" needs a port in 1..65535`},
		{"metrics-any", `metrics = ":9100"`, ""},
		{"metrics-host", `metrics = "localhost:9100"`, ""},
		{"log-format", `log_format = "xml"`, `t.toml:1: key "log_format": "xml" is not valid, want text or json`},
		{"grace-negative", `grace_period = "-1s"`, `t.toml:1: key "grace_period": -1s is negative`},
		{"steering", `steering = "ebpf"`, `t.toml:1: key "steering": "ebpf" is not valid, want kernel, hash or cpu`},
		{"steering-key", `steering_key = "port"`, `t.toml:1: key "steering_key": "port" is not valid, want flow or ip`},
		{"steering-pin-relative", `steering_pin = "bpf/fastudp"`, `t.toml:1: key "steering_pin": "bpf/fastudp" is not an absolute path`},
		{"steering-pin", `steering_pin = "/sys/fs/bpf/fastudp"`, ""},
		{"shards", `shards = 5000`, `t.toml:1: key "shards": 5000 is outside 0..1024`},
		{"max-flows-zero", `max_flows = 0`, `t.toml:1: key "max_flows": 0 is outside 1..268435456`},
		{"date", `shards = 1979-05-27`, `t.toml:1: key "shards": a date or time was given, want an integer`},
		{"unknown-table", "[limits]\nx = 1", `t.toml:1: key "limits": unknown key`},
		{"weight-at-top", `weight = 3`, `t.toml:1: key "weight": unknown key here (weight belongs in [[cluster.backend]])`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := tc.top + "\n" + base
			if strings.HasPrefix(tc.top, "[") {
				text = base + tc.top // a table after the others; lines shift
			}
			_, err := Parse([]byte(text), "t.toml")
			if strings.HasPrefix(tc.top, "[") && err != nil {
				want := strings.Replace(tc.want, "t.toml:1:", "t.toml:9:", 1)
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q, want %q", err, want)
				}
				return
			}
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestPublicAddressAndSeedString(t *testing.T) {
	text := `seed = "18446744073709551615"` + "\n" + strings.Replace(minimalTOML, `cluster = "c"`,
		"cluster = \"c\"\npublic_address = \"[2001:db8::1]:443\"", 1)
	c, err := Parse([]byte(text), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Seed != 1<<64-1 {
		t.Errorf("seed %#x", c.Seed)
	}
	cc, ok := c.ListenerCoreConfig(0)
	if !ok || cc.PublicAddr != netip.MustParseAddrPort("[2001:db8::1]:443") {
		t.Errorf("ListenerCoreConfig = %+v, %v", cc, ok)
	}
}

func TestByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"65536", 65536, true},
		{"8MiB", 8 << 20, true},
		{"8 MiB", 8 << 20, true},
		{"512KiB", 512 << 10, true},
		{"1GiB", 1 << 30, true},
		{"4MB", 4_000_000, true},
		{"4kB", 4000, true},
		{"4KB", 4000, true},
		{"3GB", 3_000_000_000, true},
		{"100B", 100, true},
		{"", 0, false},
		{"MiB", 0, false},
		{"-1MiB", 0, false},
		{"+1", 0, false},
		{"1.5MiB", 0, false},
		{"8mib", 0, false},
		{"8 MB/s", 0, false},
		{"9999999999GiB", 0, false},
		{"99999999999999999999", 0, false},
	} {
		got, err := ParseByteSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok {
			if back, err := ParseByteSize(FormatByteSize(got)); err != nil || back != got {
				t.Errorf("FormatByteSize(%d) = %q does not read back", got, FormatByteSize(got))
			}
		}
	}
	for n, want := range map[int64]string{0: "0", 1000: "1000", 4096: "4KiB", 8 << 20: "8MiB", 1 << 30: "1GiB", 1536: "1536"} {
		if got := FormatByteSize(n); got != want {
			t.Errorf("FormatByteSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestDemo(t *testing.T) {
	c := Demo()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.Listeners) != 1 || c.Listeners[0].Address != netip.MustParseAddrPort("127.0.0.1:5300") || c.Listeners[0].Cluster != "demo" {
		t.Errorf("demo listeners %+v", c.Listeners)
	}
	cl := c.Cluster("demo")
	if cl == nil || cl.Responses != 1 || cl.Affinity != core.AffinityIPPort || len(cl.Backends) != 2 ||
		cl.Backends[0].Address != netip.MustParseAddrPort("127.0.0.1:5301") ||
		cl.Backends[1].Address != netip.MustParseAddrPort("127.0.0.1:5302") {
		t.Errorf("demo cluster %+v", cl)
	}
	c.Clusters[0].Backends = nil
	if len(Demo().Clusters[0].Backends) != 2 {
		t.Error("Demo shares state between calls")
	}
	if !strings.Contains(string(DemoTOML()), "127.0.0.1:5300") {
		t.Error("DemoTOML lacks the listener")
	}
}

// TestValidateCode checks a config built in code: errors name item and key,
// with no file.
func TestValidateCode(t *testing.T) {
	c := Default()
	cl := NewCluster("dns")
	cl.Backends = []Backend{{Address: netip.MustParseAddrPort("10.0.0.1:53"), Weight: 100}}
	c.Clusters = []Cluster{cl}
	c.Listeners = []Listener{{Name: "dns", Address: netip.MustParseAddrPort("127.0.0.1:53"), Cluster: "dns"}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"weight", func(c *Config) { c.Clusters[0].Backends[0].Weight = 0 }, `cluster "dns" backend "10.0.0.1:53": key "weight": 0 is outside 1..10000`},
		{"timeout", func(c *Config) { c.Clusters[0].FrontTimeout = 0 }, `cluster "dns": key "front_timeout": 0s: must be greater than 0`},
		{"lifetime", func(c *Config) { c.Clusters[0].Lifetime = -time.Second }, `cluster "dns": key "lifetime": -1s is negative`},
		{"lb", func(c *Config) { c.Clusters[0].LB = 9 }, `cluster "dns": key "lb": lb(9) is not valid`},
		{"affinity", func(c *Config) { c.Clusters[0].Affinity = 9 }, `cluster "dns": key "affinity": affinity(9) is not valid`},
		{"proxy", func(c *Config) { c.Clusters[0].ProxyProtocol = 9 }, `cluster "dns": key "proxy_protocol": proxy(9) is not valid`},
		{"log-level", func(c *Config) { c.LogLevel = 3 }, `key "log_level": INFO+3 is not valid`},
		{"log-format", func(c *Config) { c.LogFormat = 7 }, `key "log_format": logformat(7) is not valid`},
		{"no-address", func(c *Config) { c.Listeners[0].Address = netip.AddrPort{} }, `listener "dns": key "address": is required`},
		{"multicast", func(c *Config) { c.Listeners[0].Address = netip.MustParseAddrPort("224.0.0.1:53") }, `listener "dns": key "address": 224.0.0.1:53 is a multicast address`},
		{"public-port", func(c *Config) { c.Listeners[0].PublicAddress = netip.MustParseAddrPort("1.2.3.4:0") }, `key "public_address": 1.2.3.4:0: port 0 is not allowed`},
		{"no-name", func(c *Config) { c.Listeners[0].Name = "" }, `listener #1: key "name": is required`},
		{"long-name", func(c *Config) {
			c.Clusters[0].Name = strings.Repeat("x", 65)
			c.Listeners[0].Cluster = c.Clusters[0].Name
		}, `key "name": "xxx`},
		{"no-cluster", func(c *Config) { c.Listeners[0].Cluster = "" }, `listener "dns": key "cluster": is required`},
		{"backend-unspecified", func(c *Config) { c.Clusters[0].Backends[0].Address = netip.MustParseAddrPort("0.0.0.0:53") }, `key "address": 0.0.0.0:53 is not a unicast address`},
		{"backend-name-colon", func(c *Config) {
			c.Clusters[0].Backends = append(c.Clusters[0].Backends, Backend{Name: "10.0.0.1:53", Address: netip.MustParseAddrPort("10.0.0.2:53"), Weight: 1})
		}, `key "name": "10.0.0.1:53": names may hold only`},
		{"backend-label-dup", func(c *Config) {
			c.Clusters[0].Backends[0].Name = "a"
			c.Clusters[0].Backends = append(c.Clusters[0].Backends, Backend{Name: "a", Address: netip.MustParseAddrPort("10.0.0.2:53"), Weight: 1})
		}, `cluster "dns" backend "a": key "name": backend "a" is already defined in this cluster`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c2 := c
			c2.Listeners = append([]Listener(nil), c.Listeners...)
			c2.Clusters = []Cluster{c.Clusters[0]}
			c2.Clusters[0].Backends = append([]Backend(nil), c.Clusters[0].Backends...)
			tc.edit(&c2)
			err := c2.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
			var ce *Error
			if errors.As(err, &ce) && (ce.File != "" || ce.Line != 0) {
				t.Errorf("code-built config error has File %q Line %d", ce.File, ce.Line)
			}
		})
	}
}

func TestUnusedClusterWithoutBackends(t *testing.T) {
	text := minimalTOML + "\n[[cluster]]\nname = \"spare\"\n"
	c, err := Parse([]byte(text), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Clusters) != 2 || len(c.Clusters[1].Backends) != 0 {
		t.Errorf("clusters %+v", c.Clusters)
	}
}

func TestCoreConfig(t *testing.T) {
	c, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ maxFlows, shards, want int }{
		{65536, 1, 65536}, {65536, 3, 21846}, {65536, 16, 4096}, {10, 4, 3}, {1, 8, 1}, {5, 0, 5},
	} {
		c.MaxFlows = tc.maxFlows
		if got := c.MaxFlowsPerShard(tc.shards); got != tc.want {
			t.Errorf("MaxFlowsPerShard(%d) with max_flows %d = %d, want %d", tc.shards, tc.maxFlows, got, tc.want)
		}
	}
	c.MaxFlows = 65536
	cc := c.CoreConfig(4)
	want := core.Config{Seed: 0x66617374756470, MaxFlows: 16384, MaxRxDatagramSize: 4096, PendingLimit: 4, ExpiryBudget: 1024,
		// 200 flows/s, burst 400 over 4 shards (a /64 spreads over shards
		// even under ip steering): 50/s and 100 each.
		Admission: core.AdmissionConfig{Interval: 20 * time.Millisecond, Burst: 100, PrefixV4: 32, PrefixV6: 64, TableSize: 16384}}
	if cc != want {
		t.Errorf("CoreConfig(4) = %+v, want %+v", cc, want)
	}
	if _, err := core.NewManager(cc); err != nil {
		t.Errorf("core rejects CoreConfig: %v", err)
	}
	lc, ok := c.ListenerCoreConfig(1)
	wantL := core.ClusterConfig{
		Cluster: 1, Affinity: core.AffinityQUIC, FrontTimeout: 30 * time.Second, BackTimeout: 30 * time.Second,
		Lifetime: 24 * time.Hour, ProxyProtocol: core.ProxyFirst, PublicAddr: netip.MustParseAddrPort("[2001:db8::10]:443"),
		MaxAmplification: 10, AmplificationAllowance: 2048,
		QUIC: quiclb.Config{ServerIDLen: 2, NonceLen: 8},
	}
	if !ok || lc != wantL {
		t.Errorf("ListenerCoreConfig(1) = %+v, %v; want %+v", lc, ok, wantL)
	}
	if err := lc.Validate(); err != nil {
		t.Error(err)
	}
	dc := c.Clusters[0].CoreConfig(7)
	if dc.Cluster != 7 || dc.Responses != 1 || dc.FrontTimeout != 5*time.Second || dc.PublicAddr.IsValid() {
		t.Errorf("Cluster.CoreConfig = %+v", dc)
	}
	c.Listeners[0].Cluster = "gone"
	if _, ok := c.ListenerCoreConfig(0); ok {
		t.Error("ListenerCoreConfig found a missing cluster")
	}
	c.Shards = 3
	if c.ShardCount() != 3 {
		t.Error("ShardCount ignores Shards")
	}
	c.Shards = 0
	if c.ShardCount() < 1 {
		t.Error("ShardCount < 1")
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "f.toml", Line: 14, Item: `cluster "dns"`, Key: "front_timeout", Msg: `"30x" is not a duration`},
			`f.toml:14: cluster "dns": key "front_timeout": "30x" is not a duration`},
		{Error{File: "f.toml", Key: "listener", Msg: "m"}, `f.toml: key "listener": m`},
		{Error{File: "f.toml", Line: 3, Msg: "syntax error: x"}, `f.toml:3: syntax error: x`},
		{Error{Flag: "--backend", Item: "ignored", Key: "ignored", Msg: `"x" is not an ip:port`}, `--backend: "x" is not an ip:port`},
		{Error{Item: `cluster "c"`, Key: "lb", Msg: "m"}, `cluster "c": key "lb": m`},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

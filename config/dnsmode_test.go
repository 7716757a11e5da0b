package config

import (
	"strings"
	"testing"
	"time"
)

const dnsFile = `
[[listener]]
name = "dns"
address = "127.0.0.1:53"
cluster = "dns"

[[cluster]]
name = "dns"
mode = "dns"
%s
  [[cluster.backend]]
  address = "10.0.0.1:53"
`

func parseDNS(t *testing.T, extra string) (*Config, error) {
	t.Helper()
	return Parse([]byte(strings.Replace(dnsFile, "%s", extra, 1)), "f.toml")
}

func TestDNSModeDefaults(t *testing.T) {
	c, err := parseDNS(t, "")
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Clusters[0]
	if cl.Mode != ModeDNS || cl.DNS != DefaultDNS() || !cl.FailOpen {
		t.Fatalf("dns cluster %+v", cl)
	}
	if !cl.Health.Passive || cl.Health.Type != HealthNone {
		t.Fatalf("dns mode should default to passive health: %+v", cl.Health)
	}
	c, err = parseDNS(t, "[cluster.health]\npassive = false\ntype = \"dns\"\ndns_name = \"example.test\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if h := c.Clusters[0].Health; h.Passive || h.Type != HealthDNS || h.DNSName != "example.test" {
		t.Fatalf("explicit passive = false lost: %+v", h)
	}
}

func TestDNSModeErrors(t *testing.T) {
	for _, tc := range []struct{ extra, want string }{
		{`dns_sockets = 0`, `f.toml:10: cluster "dns": key "dns_sockets": 0 is outside 1..16`},
		{`dns_max_inflight = 70000`, `key "dns_max_inflight": 70000 is outside 1..65535`},
		{`dns_timeout = "0s"`, `key "dns_timeout": 0s: must be greater than 0`},
		{`proxy_protocol = "first"`, `key "proxy_protocol": first cannot be used with mode = "dns"`},
		{`mode = "tcp"`, `has already been defined`},
		{"[cluster.health]\ntype = \"dns\"", `key "dns_name": is required with type = "dns"`},
		{"[cluster.health]\ntype = \"udp\"", `key "send": is required with type = "udp"`},
		{"[cluster.health]\ntype = \"ping\"", `key "type": "ping" is not valid, want none, udp, dns, tcp or quic`},
		{"[cluster.health]\ndns_type = \"BOGUS\"", `key "dns_type": "BOGUS" is not a DNS record type`},
		{"[cluster.health]\ndns_rcode = \"MAYBE\"", `key "dns_rcode": "MAYBE" is not a DNS response code`},
		{"[cluster.health]\nexpect_regex = \"(\"", `key "expect_regex": error parsing regexp`},
		{"[cluster.health]\nexpect = \"a\"\nexpect_regex = \"b\"", `key "expect_regex": cannot be used with expect`},
		{"[cluster.health]\nrise = 0", `key "rise": 0 is outside 1..1000`},
		{"[cluster.health]\nintervall = \"1s\"", `unknown key (did you mean "interval"?)`},
		{"health = 3", `a table`},
	} {
		_, err := parseDNS(t, tc.extra)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to contain %q", tc.extra, err, tc.want)
		}
	}
}

func TestDNSModeFlags(t *testing.T) {
	f := Flags{Listen: "127.0.0.1:5300", Backends: []string{"127.0.0.1:5301"}, Mode: "dns", DNSSockets: "3",
		DNSTimeout: "500ms", DNSTCP: "false", Health: "dns", HealthDNSName: "example.test."}
	c, err := f.Config()
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Clusters[0]
	if cl.Mode != ModeDNS || cl.DNS.Sockets != 3 || cl.DNS.Timeout != 500*time.Millisecond || cl.DNS.TCP ||
		cl.Health.Type != HealthDNS || cl.Health.DNSName != "example.test." || !cl.Health.Passive {
		t.Fatalf("cluster %+v", cl)
	}
	f = Flags{Listen: "127.0.0.1:5300", Backends: []string{"127.0.0.1:5301"}, Health: "udp"}
	if _, err := f.Config(); err == nil || !strings.Contains(err.Error(), "--health-send") {
		t.Fatalf("udp probe without payload: %v", err)
	}
	f = Flags{Listen: "127.0.0.1:5300", Backends: []string{"127.0.0.1:5301"}, Mode: "quic"}
	if _, err := f.Config(); err == nil || !strings.Contains(err.Error(), "--mode") {
		t.Fatalf("bad mode: %v", err)
	}
}

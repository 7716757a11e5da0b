package config

import (
	"errors"
	"flag"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/quiclb"
)

func parseFlags(t *testing.T, args ...string) *Flags {
	t.Helper()
	var f Flags
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.Register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &f
}

func TestFlags(t *testing.T) {
	f := parseFlags(t, "--listen", "127.0.0.1:53", "--backend", "10.0.0.1:53", "--backend", "[2001:db8::1]:53",
		"--responses", "1", "--requests", "2", "--idle-timeout", "5s", "--max-flows", "1000",
		"--affinity", "ip-port", "--proxy-protocol", "every", "--shards", "2", "--seed", "0x10",
		"--metrics", ":9100", "--log-level", "debug", "--steering", "cpu", "--steering-key", "ip")
	if got, want := f.Given(), []string{"--listen", "--backend", "--responses", "--requests", "--idle-timeout",
		"--max-flows", "--affinity", "--proxy-protocol", "--shards", "--seed", "--metrics", "--log-level",
		"--steering", "--steering-key"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Given = %v, want %v", got, want)
	}
	c, err := f.Config()
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Shards, want.Seed, want.MaxFlows, want.Metrics, want.LogLevel = 2, 0x10, 1000, ":9100", -4
	want.Steering, want.SteeringKey = SteeringCPU, SteeringKeyIP
	cl := NewCluster("default")
	cl.Affinity, cl.ProxyProtocol, cl.Responses, cl.Requests = core.AffinityIPPort, core.ProxyEvery, 1, 2
	cl.FrontTimeout, cl.BackTimeout = 5*time.Second, 5*time.Second
	cl.Backends = []Backend{
		{Address: netip.MustParseAddrPort("10.0.0.1:53"), Weight: 100},
		{Address: netip.MustParseAddrPort("[2001:db8::1]:53"), Weight: 100},
	}
	want.Clusters = []Cluster{cl}
	want.Listeners = []Listener{{Name: "default", Address: netip.MustParseAddrPort("127.0.0.1:53"), Cluster: "default"}}
	equalConfigs(t, c, &want)

	f = parseFlags(t, "--listen", "127.0.0.1:53", "--backend", "10.0.0.1:53")
	c, err = f.Config()
	if err != nil {
		t.Fatal(err)
	}
	if c.Clusters[0].FrontTimeout != DefaultTimeout || c.Seed != DefaultSeed || c.MaxFlows != DefaultMaxFlows {
		t.Errorf("defaults not applied: %+v", c)
	}
	if len(parseFlags(t).Given()) != 0 {
		t.Error("Given reports flags that were not given")
	}
}

func TestFlagErrors(t *testing.T) {
	ok := []string{"--listen", "127.0.0.1:53", "--backend", "10.0.0.1:53"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no-listen", []string{"--backend", "10.0.0.1:53"}, `--listen: is required without --config`},
		{"no-backend", []string{"--listen", "127.0.0.1:53"}, `--backend: at least one is required`},
		{"bad-listen", []string{"--listen", "localhost:53", "--backend", "10.0.0.1:53"}, `--listen: "localhost:53" is not an ip:port`},
		{"listen-port-0", []string{"--listen", "127.0.0.1:0", "--backend", "10.0.0.1:53"}, `--listen: 127.0.0.1:0: port 0 is not allowed`},
		{"bad-backend", append(ok, "--backend", "x"), `--backend: "x" is not an ip:port`},
		{"dup-backend", append(ok, "--backend", "10.0.0.1:53"), `--backend: 10.0.0.1:53 is already a backend of this cluster`},
		{"responses-negative", append(ok, "--responses", "-1"), `--responses: -1 is negative`},
		{"responses-text", append(ok, "--responses", "one"), `--responses: "one" is not an integer`},
		{"requests-huge", append(ok, "--requests", "5000000000"), `--requests: 5000000000 is outside 0..4294967295`},
		{"idle-timeout", append(ok, "--idle-timeout", "30x"), `--idle-timeout: "30x" is not a duration`},
		{"idle-timeout-zero", append(ok, "--idle-timeout", "0s"), `--idle-timeout: 0s: must be greater than 0`},
		{"max-flows", append(ok, "--max-flows", "0"), `--max-flows: 0 is outside 1..268435456`},
		{"affinity", append(ok, "--affinity", "port"), `--affinity: "port" is not valid, want ip, ip-port, datagram or quic`},
		{"proxy", append(ok, "--proxy-protocol", "v2"), `--proxy-protocol: "v2" is not valid, want off, first or every`},
		{"shards", append(ok, "--shards", "-2"), `--shards: -2 is outside 0..1024`},
		{"seed", append(ok, "--seed", "-2"), `--seed: "-2" is not a 64-bit unsigned integer`},
		{"metrics", append(ok, "--metrics", "9100"), `--metrics: "9100" is not a host:port listen address`},
		{"log-level", append(ok, "--log-level", "loud"), `--log-level: "loud" is not valid, want debug, info, warn or error`},
		{"steering", append(ok, "--steering", "bpf"), `--steering: "bpf" is not valid, want kernel, hash or cpu`},
		{"steering-key", append(ok, "--steering-key", "ip-port"), `--steering-key: "ip-port" is not valid, want flow or ip`},
		{"quic-no-affinity", append(ok, "--quic-sid-len", "2"), `--quic-sid-len: needs affinity = "quic"`},
		{"quic-sid-len", append(ok, "--affinity", "quic", "--quic-sid-len", "16"), `--quic-sid-len: 16 is outside 0..15`},
		{"quic-nonce-len", append(ok, "--affinity", "quic", "--quic-sid-len", "2", "--quic-nonce-len", "3"), `--quic-sid-len: nonce_len 3: want at least 4`},
		{"sid-length", []string{"--listen", "127.0.0.1:53", "--affinity", "quic", "--quic-sid-len", "2", "--backend", "10.0.0.1:53,sid=01"}, `--backend: 01 is 1 bytes, quic_lb's server_id_len is 2`},
		{"sid-hex", []string{"--listen", "127.0.0.1:53", "--affinity", "quic", "--quic-sid-len", "1", "--backend", "10.0.0.1:53,sid=zz"}, `--backend: "zz": want the server ID in hexadecimal`},
		{"sid-dup", []string{"--listen", "127.0.0.1:53", "--affinity", "quic", "--quic-sid-len", "1", "--backend", "10.0.0.1:53,sid=01", "--backend", "10.0.0.2:53,sid=01"}, `--backend: 01 is also the server ID of backend "10.0.0.1:53"`},
		{"sid-no-quic-lb", []string{"--listen", "127.0.0.1:53", "--backend", "10.0.0.1:53,sid=01"}, `--backend: needs the cluster's quic_lb table`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags(t, tc.args...).Config()
			var ce *Error
			if !errors.As(err, &ce) || ce.Flag == "" || ce.File != "" {
				t.Fatalf("error %#v is not a flag *config.Error", err)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error %q, want prefix %q", err, tc.want)
			}
		})
	}
}

func TestFlagGRO(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--gro"}, true},
		{[]string{"--gro=true"}, true},
		{[]string{"--gro=false"}, false},
	} {
		f := parseFlags(t, append([]string{"--listen", "127.0.0.1:53", "--backend", "10.0.0.1:53"}, tc.args...)...)
		c, err := f.Config()
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if c.GRO != tc.want {
			t.Errorf("%v: GRO %v, want %v", tc.args, c.GRO, tc.want)
		}
	}
}

func TestFlagGSO(t *testing.T) {
	for args, want := range map[string]bool{"": true, "--gso": true, "--gso=false": false} {
		a := []string{"--listen", "127.0.0.1:53", "--backend", "10.0.0.1:53"}
		if args != "" {
			a = append(a, args)
		}
		c, err := parseFlags(t, a...).Config()
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if c.GSO != want {
			t.Errorf("%q: GSO %v, want %v", args, c.GSO, want)
		}
	}
}

// TestFlagsQUIC: --affinity quic --quic-sid-len N --backend ADDR,sid=HEX
// build the quic_lb table and the backends' server IDs.
func TestFlagsQUIC(t *testing.T) {
	c, err := parseFlags(t, "--listen", "127.0.0.1:443", "--affinity", "quic", "--quic-sid-len", "2",
		"--backend", "10.0.0.1:443,sid=0a01", "--backend", "10.0.0.2:443,sid=0x0A02", "--backend", "10.0.0.3:443").Config()
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Clusters[0]
	if cl.Affinity != core.AffinityQUIC || cl.QUICLB != (quiclb.Config{ServerIDLen: 2, NonceLen: 8}) {
		t.Fatalf("cluster %+v", cl)
	}
	if cl.Backends[0].ServerID != "\x0a\x01" || cl.Backends[1].ServerID != "\x0a\x02" || cl.Backends[2].ServerID != "" {
		t.Fatalf("backends %+v", cl.Backends)
	}
	c, err = parseFlags(t, "--listen", "127.0.0.1:443", "--affinity", "quic", "--quic-sid-len", "15", "--backend", "10.0.0.1:443").Config()
	if err != nil || c.Clusters[0].QUICLB.NonceLen != 4 {
		t.Fatalf("default nonce for a 15-byte server ID: %+v, %v", c, err)
	}
	c, err = parseFlags(t, "--listen", "127.0.0.1:443", "--affinity", "quic", "--quic-sid-len", "3", "--quic-nonce-len", "5", "--backend", "10.0.0.1:443").Config()
	if err != nil || c.Clusters[0].QUICLB.NonceLen != 5 {
		t.Fatalf("--quic-nonce-len: %+v, %v", c, err)
	}
}

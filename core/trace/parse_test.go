package trace

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/core"
)

func TestParse(t *testing.T) {
	src := `# a comment
manager seed=7 max_flows=3 max_rx=1500 pending=2 budget=5 pool=9

cluster listener=1 id=4 affinity=ip-port responses=1 requests=2 front=1.5s back=200ms lifetime=1m proxy=every public=[2001:db8::1]:443
at 1s client listener=1 src=10.0.0.1:5000 dst=192.0.2.1:53 data="a b#c\x00" seg=2 tos=0x2e  # trailing comment
+500ms
batch {
  resolve flow=0#1 backend=3 addr=10.1.0.1:53
  resolve flow=0#1 fail
  backend flow=4#2 len=5
  backend flow=4#2 hex=00ff
}
show
at 2s timer
max-flows 0x10
max-rx 100
drain
undrain
close-all
remove-cluster listener=1
abort flow=1#1
invalid
`
	tr, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	wantCfg := core.Config{Seed: 7, MaxFlows: 3, MaxRxDatagramSize: 1500, PendingLimit: 2, ExpiryBudget: 5}
	if tr.Config != wantCfg || tr.PoolLimit != 9 {
		t.Fatalf("config %+v pool %d", tr.Config, tr.PoolLimit)
	}
	if len(tr.Steps) != 13 {
		t.Fatalf("%d steps", len(tr.Steps))
	}
	cl := tr.Steps[0].Inputs[0].In.Config.Cluster
	wantCl := core.ClusterConfig{Cluster: 4, Affinity: core.AffinityIPPort, Responses: 1, Requests: 2,
		FrontTimeout: 1500 * time.Millisecond, BackTimeout: 200 * time.Millisecond, Lifetime: time.Minute,
		ProxyProtocol: core.ProxyEvery, PublicAddr: netip.MustParseAddrPort("[2001:db8::1]:443")}
	if cl != wantCl || tr.Steps[0].Inputs[0].In.Config.Listener != 1 || tr.Steps[0].Time != 0 {
		t.Fatalf("cluster %+v", cl)
	}
	c := tr.Steps[1]
	in := c.Inputs[0].In
	if c.Time != core.Time(time.Second) || c.Line != 5 || in.Kind != core.InClientDatagram || in.Listener != 1 ||
		string(in.Payload) != "a b#c\x00" || in.SegmentSize != 2 || in.TOS != 0x2e ||
		in.Src != netip.MustParseAddrPort("10.0.0.1:5000") || in.Dst != netip.MustParseAddrPort("192.0.2.1:53") {
		t.Fatalf("client step %+v", c)
	}
	if c.Inputs[0].Text != `client listener=1 src=10.0.0.1:5000 dst=192.0.2.1:53 data="a b#c\x00" seg=2 tos=0x2e` {
		t.Fatalf("text %q", c.Inputs[0].Text)
	}
	b := tr.Steps[2]
	if !b.Batch || len(b.Inputs) != 4 || b.Time != core.Time(1500*time.Millisecond) || b.Line != 7 {
		t.Fatalf("batch %+v", b)
	}
	if r := b.Inputs[0].In; r.Kind != core.InBackendResolved || r.Flow != core.FlowID(1<<32) || r.Backend.ID != 3 || r.NoBackend {
		t.Fatalf("resolve %+v", r)
	}
	if r := b.Inputs[1].In; !r.NoBackend {
		t.Fatalf("resolve fail %+v", r)
	}
	if r := b.Inputs[2].In; r.Flow.Index() != 4 || r.Flow.Gen() != 2 || string(r.Payload) != "abcde" {
		t.Fatalf("backend %+v", r)
	}
	if r := b.Inputs[3].In; string(r.Payload) != "\x00\xff" {
		t.Fatalf("backend hex %+v", r)
	}
	if tr.Steps[3].Kind != StepShow || tr.Steps[4].Inputs[0].In.Kind != core.InTimer || tr.Steps[4].Time != core.Time(2*time.Second) {
		t.Fatalf("show/timer %+v %+v", tr.Steps[3], tr.Steps[4])
	}
	if ev := tr.Steps[5].Inputs[0].In.Config; ev.Kind != core.ConfigSetMaxFlows || ev.Value != 16 {
		t.Fatalf("max-flows %+v", ev)
	}
	if tr.Steps[12].Inputs[0].In.Kind != 0 {
		t.Fatal("invalid is not kind 0")
	}
}

func TestParseBackendDown(t *testing.T) {
	tr, err := Parse([]byte("cluster down_flows=close\ncluster listener=1 down_flows=continue\nbackend-down 3\nbackend-up 0x10\nbackend-down 4294967295\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c := tr.Steps[0].Inputs[0].In.Config.Cluster; !c.CloseOnBackendDown {
		t.Fatalf("down_flows=close: %+v", c)
	}
	if c := tr.Steps[1].Inputs[0].In.Config.Cluster; c.CloseOnBackendDown {
		t.Fatalf("down_flows=continue: %+v", c)
	}
	for i, want := range []core.ConfigEvent{{Kind: core.ConfigBackendDown, Backend: 3}, {Kind: core.ConfigBackendUp, Backend: 16},
		{Kind: core.ConfigBackendDown, Backend: 1<<32 - 1}} {
		if ev := tr.Steps[2+i].Inputs[0].In.Config; ev.Kind != want.Kind || ev.Backend != want.Backend {
			t.Fatalf("step %d: %+v, want %+v", 2+i, ev, want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		src  string
		line int
		want string
	}{
		{"bogus", 1, "unknown directive"},
		{"\n\nclient src=1.2.3.4:5 data=\"x\"", 3, "missing dst"},
		{"client src=1.2.3.4:5 dst=1.2.3.4:6", 1, "exactly one of"},
		{"client src=1.2.3.4:5 dst=1.2.3.4:6 data=\"x\" len=3", 1, "exactly one of"},
		{"client src=1.2.3.4 dst=1.2.3.4:6 data=\"x\"", 1, "src="},
		{"client src=1.2.3.4:5 dst=1.2.3.4:6 data=\"x", 1, "unterminated"},
		{"client src=1.2.3.4:5 dst=1.2.3.4:6 data=\"x\"y", 1, "bad quoted"},
		{"client src=1.2.3.4:5 dst=1.2.3.4:6 len=70000", 1, "len="},
		{"client src=1.2.3.4:5 dst=1.2.3.4:6 len=1 tos=256", 1, "tos="},
		{"client src=1.2.3.4:5 dst=1.2.3.4:6 len=1 color=red", 1, "unknown key color="},
		{"client src=1.2.3.4:5 src=1.2.3.4:6", 1, "given twice"},
		{"backend data=\"x\"", 1, "missing flow"},
		{"backend flow=1 data=\"x\"", 1, "INDEX#GEN"},
		{"backend flow=1#x data=\"x\"", 1, "INDEX#GEN"},
		{"resolve flow=0#1", 1, "missing addr"},
		{"resolve flow=0#1 fail extra", 1, "unexpected \"extra\""},
		{"timer now", 1, "unexpected"},
		{"cluster affinity=port", 1, "affinity"},
		{"cluster proxy=sometimes", 1, "proxy"},
		{"cluster front=5", 1, "front="},
		{"max-flows", 1, "one number"},
		{"max-flows x", 1, "not a number"},
		{"backend-down", 1, "one backend id"},
		{"backend-up 1 2", 1, "one backend id"},
		{"backend-down -1", 1, "32-bit backend id"},
		{"backend-down 4294967296", 1, "32-bit backend id"},
		{"backend-up backend=1", 1, "one backend id"},
		{"cluster down_flows=drop", 1, "down_flows="},
		{"at", 1, "wants a time"},
		{"at 2s\nat 1s", 2, "before"},
		{"+-1s", 1, "negative"},
		{"at 1x", 1, "duration"},
		{"timer\nmanager seed=1", 2, "before every step"},
		{"manager\nmanager", 2, "second manager"},
		{"manager max_flows=999999999", 1, "max flows"},
		{"manager seed=-1", 1, "seed="},
		{"batch {\ntimer", 1, "never closed"},
		{"batch {\nat 1s timer\n}", 2, "no time inside"},
		{"batch {\nbatch {\n}", 2, "not allowed"},
		{"batch\n", 1, "batch {"},
		{"}", 1, "without batch"},
		{"batch {\n} x", 2, "nothing may follow"},
		{"show me", 1, "no arguments"},
		{"timer\ntimer =x", 2, "empty key"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.src))
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("%q: error %v, want a *ParseError", tt.src, err)
			continue
		}
		if pe.Line != tt.line || !strings.Contains(pe.Msg, tt.want) {
			t.Errorf("%q: %v, want line %d and %q", tt.src, err, tt.line, tt.want)
		}
		if !strings.HasPrefix(err.Error(), "line ") {
			t.Errorf("%q: %q does not start with the line", tt.src, err)
		}
	}
}

func TestFormatProxyHeader(t *testing.T) {
	h4 := core.AppendProxyHeader(nil, netip.MustParseAddrPort("10.0.0.1:5000"), netip.MustParseAddrPort("192.0.2.1:53"))
	if got, want := FormatProxyHeader(h4), "sig.21.12.000c.0a000001.c0000201.1388.0035"; got != want {
		t.Errorf("IPv4 header %s, want %s", got, want)
	}
	hu := core.AppendProxyHeader(nil, netip.MustParseAddrPort("10.0.0.1:5000"), netip.MustParseAddrPort("[2001:db8::1]:53"))
	if got, want := FormatProxyHeader(hu), "sig.21.00.0000"; got != want {
		t.Errorf("UNSPEC header %s, want %s", got, want)
	}
	if got := FormatProxyHeader([]byte{1, 2}); got != "0102" {
		t.Errorf("garbage header %s", got)
	}
	if got := FormatProxyHeader(h4[:20]); got != "sig.21.12.000c.0a000001" {
		t.Errorf("short header %s", got)
	}
}

func TestPreview(t *testing.T) {
	if got := Preview([]byte("hi\x00")); got != `"hi\x00"` {
		t.Errorf("got %s", got)
	}
	if got := Preview(Pattern(30)); got != `"abcdefghijklmnopqrstuvwx"...` {
		t.Errorf("got %s", got)
	}
}

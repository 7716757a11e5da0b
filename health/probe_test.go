package health

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/quic-go/quic-go"
)

// runProbe runs one probe of cfg (defaults applied) against addr.
func runProbe(t *testing.T, cfg ProbeConfig, addr netip.AddrPort) error {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg = cfg.withDefaults()
	p, err := newProber(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	return p.probe(ctx, addr, make([]byte, maxReply))
}

func TestUDPProbe(t *testing.T) {
	echo := startEcho(t, func(b []byte) []byte { return append([]byte{}, b...) })
	status := startEcho(t, func([]byte) []byte { return []byte("status: ok 42\n") })
	silent := startEcho(t, func([]byte) []byte { return nil })
	closed := closedUDPPort(t)
	const short, long = 300 * time.Millisecond, 10 * time.Second
	tests := []struct {
		name    string
		cfg     ProbeConfig
		addr    netip.AddrPort
		wantErr error // nil: success
	}{
		{"exact reply", ProbeConfig{Payload: []byte("ping"), Expect: []byte("ping")}, echo, nil},
		{"wrong exact reply", ProbeConfig{Payload: []byte("ping"), Expect: []byte("pong")}, echo, ErrUnexpectedReply},
		{"regexp matches", ProbeConfig{Payload: []byte("?"), ExpectRegexp: `^status: ok \d+\n$`}, status, nil},
		{"regexp does not match", ProbeConfig{Payload: []byte("?"), ExpectRegexp: `^status: fail`}, status, ErrUnexpectedReply},
		{"any reply", ProbeConfig{Payload: []byte("x")}, status, nil},
		{"empty payload, any reply", ProbeConfig{}, echo, nil},
		{"silence is a timeout", ProbeConfig{Payload: []byte("x"), Timeout: short}, silent, errTimeout},
		{"silence allowed", ProbeConfig{Payload: []byte("x"), AllowSilence: true, Timeout: short}, silent, nil},
		// The long timeout shows the failure comes from ICMP, not the clock.
		{"closed port is refused", ProbeConfig{Payload: []byte("x"), Timeout: long}, closed, syscall.ECONNREFUSED},
		{"closed port is refused with silence allowed", ProbeConfig{Payload: []byte("x"), AllowSilence: true, Timeout: long}, closed, syscall.ECONNREFUSED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Kind = KindUDP
			err := runProbe(t, tt.cfg, tt.addr)
			checkProbeErr(t, err, tt.wantErr)
		})
	}
}

// errTimeout stands for any timeout in tables of expected probe errors.
var errTimeout = errors.New("timeout")

func checkProbeErr(t *testing.T, err, want error) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("probe failed: %v", err)
	case want == nil:
	case err == nil:
		t.Fatalf("probe succeeded, want %v", want)
	case want == errTimeout && !isTimeout(err):
		t.Fatalf("probe error %v, want a timeout", err)
	case want != errTimeout && !errors.Is(err, want):
		t.Fatalf("probe error %v, want %v", err, want)
	}
}

func TestTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	open := ln.Addr().(*net.TCPAddr).AddrPort()
	if err := runProbe(t, ProbeConfig{Kind: KindTCP}, open); err != nil {
		t.Fatalf("tcp probe of a listener: %v", err)
	}
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln2.Addr().(*net.TCPAddr).AddrPort()
	_ = ln2.Close()
	err = runProbe(t, ProbeConfig{Kind: KindTCP, Timeout: 10 * time.Second}, closed)
	checkProbeErr(t, err, syscall.ECONNREFUSED)
}

// startQUIC starts a quic-go server on loopback with a self-signed
// certificate; the probe never gets as far as the handshake.
func startQUIC(t *testing.T) netip.AddrPort {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{"fastudp-test"},
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", tlsConf, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln.Addr().(*net.UDPAddr).AddrPort()
}

func TestQUICProbe(t *testing.T) {
	server := startQUIC(t)
	if err := runProbe(t, ProbeConfig{Kind: KindQUIC}, server); err != nil {
		t.Fatalf("quic probe of quic-go: %v", err)
	}
	sink := startEcho(t, func([]byte) []byte { return nil })
	err := runProbe(t, ProbeConfig{Kind: KindQUIC, Timeout: 300 * time.Millisecond}, sink)
	checkProbeErr(t, err, errTimeout)
	// An echo returns our own packet: a long header, but not version 0.
	echo := startEcho(t, func(b []byte) []byte { return append([]byte(nil), b...) })
	err = runProbe(t, ProbeConfig{Kind: KindQUIC, Timeout: 300 * time.Millisecond}, echo)
	checkProbeErr(t, err, errTimeout)
	err = runProbe(t, ProbeConfig{Kind: KindQUIC, Timeout: 10 * time.Second}, closedUDPPort(t))
	checkProbeErr(t, err, syscall.ECONNREFUSED)
}

func Test_quicProbePacket(t *testing.T) {
	pkt, dcid, scid := quicProbePacket()
	if len(pkt) != quicProbeSize {
		t.Fatalf("probe packet is %d bytes, want %d", len(pkt), quicProbeSize)
	}
	if pkt[0]&0xf0 != 0xc0 {
		t.Fatalf("first byte %#x is not a long header with the fixed bit and type Initial", pkt[0])
	}
	for i := 1; i <= 4; i++ {
		if pkt[i]&0x0f != 0x0a {
			t.Fatalf("version %x is not of the reserved form 0x?a?a?a?a", pkt[1:5])
		}
	}
	if len(dcid) != quicCIDLen || len(scid) != quicCIDLen || string(dcid) == string(scid) {
		t.Fatalf("connection IDs %x %x", dcid, scid)
	}
}

func Test_isVersionNegotiation(t *testing.T) {
	dcid, scid := []byte{1, 2, 3, 4, 5, 6, 7, 8}, []byte{9, 10, 11, 12, 13, 14, 15, 16}
	vn := func(first byte, version uint32, d, s, versions []byte) []byte {
		b := []byte{first, byte(version >> 24), byte(version >> 16), byte(version >> 8), byte(version)}
		b = append(b, byte(len(d)))
		b = append(b, d...)
		b = append(b, byte(len(s)))
		b = append(b, s...)
		return append(b, versions...)
	}
	v1 := []byte{0, 0, 0, 1}
	tests := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"valid", vn(0x80, 0, scid, dcid, v1), true},
		{"valid, two versions", vn(0xff, 0, scid, dcid, append(v1, 0x6b, 0x33, 0x43, 0xcf)), true},
		{"short header", vn(0x40, 0, scid, dcid, v1), false},
		{"version 1", vn(0x80, 1, scid, dcid, v1), false},
		{"DCID is not our SCID", vn(0x80, 0, dcid, dcid, v1), false},
		{"SCID is not our DCID", vn(0x80, 0, scid, scid, v1), false},
		{"no versions", vn(0x80, 0, scid, dcid, nil), false},
		{"partial version", vn(0x80, 0, scid, dcid, []byte{0, 0, 1}), false},
		{"truncated CID", vn(0x80, 0, scid, dcid, v1)[:10], false},
		{"empty", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isVersionNegotiation(tt.pkt, dcid, scid); got != tt.want {
				t.Fatalf("isVersionNegotiation = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestDNSProbeKnot(t *testing.T) {
	k := runKnot(t)
	tests := []struct {
		name    string
		cfg     ProbeConfig
		wantErr error
	}{
		{"existing name, NOERROR", ProbeConfig{DNSName: "www.example.test"}, nil},
		{"existing name, TXT", ProbeConfig{DNSName: "txt.example.test.", DNSType: dns.TypeTXT}, nil},
		{"outside the zone, want NOERROR", ProbeConfig{DNSName: "www.example.org"}, ErrUnexpectedReply},
		{"outside the zone, want REFUSED", ProbeConfig{DNSName: "www.example.org", DNSRcode: dns.RcodeRefused}, nil},
		{"missing name, want NOERROR", ProbeConfig{DNSName: "nope.example.test"}, ErrUnexpectedReply},
		{"missing name, want NXDOMAIN", ProbeConfig{DNSName: "nope.example.test", DNSRcode: dns.RcodeNameError}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Kind = KindDNS
			tt.cfg.Timeout = 5 * time.Second
			checkProbeErr(t, runProbe(t, tt.cfg, k.addr()), tt.wantErr)
		})
	}
}

// TestDNSProbeMatching checks that only a datagram with QR set, the query's
// ID and its question is taken as the reply.
func TestDNSProbeMatching(t *testing.T) {
	answer := func(mutate func(r *dns.Msg)) func([]byte) []byte {
		return func(b []byte) []byte {
			q := new(dns.Msg)
			if q.Unpack(b) != nil {
				return nil
			}
			r := new(dns.Msg)
			r.SetReply(q)
			mutate(r)
			out, err := r.Pack()
			if err != nil {
				return nil
			}
			return out
		}
	}
	tests := []struct {
		name    string
		mutate  func(r *dns.Msg)
		wantErr error
	}{
		{"good reply", func(*dns.Msg) {}, nil},
		{"name case differs", func(r *dns.Msg) { r.Question[0].Name = "WWW.Example.TEST." }, nil},
		{"truncated reply counts", func(r *dns.Msg) { r.Truncated = true }, nil},
		{"wrong rcode", func(r *dns.Msg) { r.Rcode = dns.RcodeServerFailure }, ErrUnexpectedReply},
		{"wrong ID", func(r *dns.Msg) { r.Id++ }, errTimeout},
		{"QR clear", func(r *dns.Msg) { r.Response = false }, errTimeout},
		{"other name", func(r *dns.Msg) { r.Question[0].Name = "api.example.test." }, errTimeout},
		{"other type", func(r *dns.Msg) { r.Question[0].Qtype = dns.TypeAAAA }, errTimeout},
		{"no question", func(r *dns.Msg) { r.Question = nil }, errTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startEcho(t, answer(tt.mutate))
			cfg := ProbeConfig{Kind: KindDNS, DNSName: "www.example.test", Timeout: 300 * time.Millisecond}
			checkProbeErr(t, runProbe(t, cfg, srv), tt.wantErr)
		})
	}
	// A stray datagram before the reply is skipped.
	srv := startEcho(t, func(b []byte) []byte { return b }) // echo: QR clear
	cfg := ProbeConfig{Kind: KindDNS, DNSName: "www.example.test", Timeout: 300 * time.Millisecond}
	err := runProbe(t, cfg, srv)
	checkProbeErr(t, err, errTimeout)
	if ok, _ := regexp.MatchString(`1 stray`, err.Error()); !ok {
		t.Fatalf("error %q does not count the stray datagram", err)
	}
}

func TestProbeConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  ProbeConfig
		ok   bool
	}{
		{"zero", ProbeConfig{}, true},
		{"udp expect", ProbeConfig{Kind: KindUDP, Expect: []byte("x")}, true},
		{"udp both expectations", ProbeConfig{Kind: KindUDP, Expect: []byte("x"), ExpectRegexp: "x"}, false},
		{"udp bad regexp", ProbeConfig{Kind: KindUDP, ExpectRegexp: "("}, false},
		{"udp silence with expectation", ProbeConfig{Kind: KindUDP, Expect: []byte("x"), AllowSilence: true}, false},
		{"dns without name", ProbeConfig{Kind: KindDNS}, false},
		{"dns bad name", ProbeConfig{Kind: KindDNS, DNSName: "a..b"}, false},
		{"dns bad rcode", ProbeConfig{Kind: KindDNS, DNSName: "a.b", DNSRcode: 4000}, false},
		{"dns", ProbeConfig{Kind: KindDNS, DNSName: "a.b", DNSRcode: dns.RcodeNameError}, true},
		{"negative fall", ProbeConfig{Kind: KindTCP, Fall: -1}, false},
		{"negative interval", ProbeConfig{Kind: KindTCP, Interval: -1}, false},
		{"unknown kind", ProbeConfig{Kind: 99}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for _, s := range []string{"none", "udp", "dns", "tcp", "quic"} {
		k, err := ParseKind(s)
		if err != nil || k.String() != s {
			t.Fatalf("ParseKind(%q) = %v, %v", s, k, err)
		}
	}
	if _, err := ParseKind("http"); err == nil {
		t.Fatal("ParseKind(http) succeeded")
	}
	if ty, err := ParseDNSType("aaaa"); err != nil || ty != dns.TypeAAAA {
		t.Fatalf("ParseDNSType(aaaa) = %v, %v", ty, err)
	}
	if r, err := ParseRcode("nxdomain"); err != nil || r != dns.RcodeNameError {
		t.Fatalf("ParseRcode(nxdomain) = %v, %v", r, err)
	}
	if _, err := ParseRcode("nope"); err == nil {
		t.Fatal("ParseRcode(nope) succeeded")
	}
}

// FuzzIsVersionNegotiation checks that any datagram is parsed without panic
// and that a packet built like a server's answer to our probe is accepted.
func FuzzIsVersionNegotiation(f *testing.F) {
	f.Add([]byte{0x80, 0, 0, 0, 0, 1, 9, 1, 1, 0, 0, 0, 1}, []byte{1}, []byte{9})
	f.Add([]byte{}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, pkt, dcid, scid []byte) {
		_ = isVersionNegotiation(pkt, dcid, scid)
		if len(dcid) > 255 || len(scid) > 255 {
			return
		}
		vn := append([]byte{0x80 | byte(len(pkt)), 0, 0, 0, 0, byte(len(scid))}, scid...)
		vn = append(append(vn, byte(len(dcid))), dcid...)
		vn = append(vn, 0, 0, 0, 1)
		if !isVersionNegotiation(vn, dcid, scid) {
			t.Fatalf("rejected %x for dcid %x scid %x", vn, dcid, scid)
		}
	})
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/fastudp/fastudp/batchio/shard"
	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/quiclb"
	"github.com/fastudp/fastudp/quiclb/quicgo"
)

// The QUIC-LB tests run real quic-go servers issuing QUIC-LB connection IDs
// (quiclb/quicgo) behind fastudp, and real quic-go clients that download a
// few MB each and, halfway, migrate to a new local socket (AddPath, Probe,
// Switch) or see fastudp restarted under them.

const (
	quicTestALPN     = "fastudp-quiclb-test"
	quicTestTransfer = 3 << 20 // bytes per download
)

// quicTestLB is the clusters' QUIC-LB configuration.
var quicTestLB = quiclb.Config{ConfigID: 1, ServerIDLen: 2, NonceLen: 6}

// quicTestServer is a quic-go server that answers a connection's stream
// with its name and the address it sees the client at (fastudp's upstream
// socket of the flow in use) on a line, the requested number of bytes, and,
// last, the address it then sees the client at.
type quicTestServer struct {
	name string
	sid  []byte
	addr netip.AddrPort
	lb   quiclb.Config // the zero value means quicTestLB
}

func startQUICTestServer(t *testing.T, name string, sid []byte) *quicTestServer {
	t.Helper()
	return startQUICTestServerLB(t, name, sid, quicTestLB)
}

// startQUICTestServerLB starts a server issuing connection IDs under lb.
func startQUICTestServerLB(t *testing.T, name string, sid []byte, lb quiclb.Config) *quicTestServer {
	t.Helper()
	gen, err := quicgo.New(lb, sid)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp, ConnectionIDGenerator: gen}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{testCert(t)}, NextProtos: []string{quicTestALPN}},
		&quic.Config{MaxIdleTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		ln.Close()
		tr.Close()
		udp.Close()
		wg.Wait()
	})
	s := &quicTestServer{name: name, sid: sid, addr: udp.LocalAddr().(*net.UDPAddr).AddrPort(), lb: lb}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.serve(ctx, c)
			}()
		}
	}()
	return s
}

func (s *quicTestServer) serve(ctx context.Context, c *quic.Conn) {
	st, err := c.AcceptStream(ctx)
	if err != nil {
		return
	}
	var req [8]byte
	if _, err := io.ReadFull(st, req[:]); err != nil {
		return
	}
	n := int(binary.BigEndian.Uint64(req[:]))
	if _, err := fmt.Fprintf(st, "%s %s\n", s.name, c.RemoteAddr()); err != nil {
		return
	}
	chunk := bytes.Repeat([]byte{'q'}, 32<<10)
	for n > 0 {
		w, err := st.Write(chunk[:min(n, len(chunk))])
		if err != nil {
			return
		}
		n -= w
	}
	fmt.Fprintf(st, "%s\n", c.RemoteAddr())
	st.Close()
	<-c.Context().Done() // the client closes when it has read everything
}

// testCert is a self-signed certificate for 127.0.0.1.
func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "quiclb test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// quicTestConfig is fastudp in front of servers with affinity.
func quicTestConfig(t *testing.T, front, affinity string, servers []*quicTestServer) *config.Config {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "shards = 2\ngrace_period = \"100ms\"\nseed = 7\n")
	fmt.Fprintf(&b, "[[listener]]\nname = \"q\"\naddress = %q\ncluster = \"q\"\n", front)
	fmt.Fprintf(&b, "[[cluster]]\nname = \"q\"\nlb = \"maglev\"\naffinity = %q\n", affinity)
	if affinity == "quic" {
		lb := quicTestLB
		if servers[0].lb != (quiclb.Config{}) {
			lb = servers[0].lb
		}
		key := ""
		if lb.Encrypted {
			key = fmt.Sprintf(", key = \"%x\"", lb.Key)
		}
		fmt.Fprintf(&b, "quic_lb = { config_id = %d, server_id_len = %d, nonce_len = %d, self_encoded_length = %v%s }\n",
			lb.ConfigID, lb.ServerIDLen, lb.NonceLen, lb.SelfEncodedLength, key)
	}
	for _, s := range servers {
		fmt.Fprintf(&b, "  [[cluster.backend]]\n  name = %q\n  address = %q\n", s.name, s.addr)
		if affinity == "quic" {
			fmt.Fprintf(&b, "  server_id = \"%x\"\n", s.sid)
		}
	}
	cfg, err := config.Parse([]byte(b.String()), "quiclb.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startTestProxy runs fastudp in this process on cfg.
func startTestProxy(t *testing.T, cfg *config.Config) *proxy {
	t.Helper()
	p, err := startProxy(context.Background(), cfg, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// quicTestClient is one download over a connection through fastudp.
type quicTestClient struct {
	trs    []*quic.Transport
	conn   *quic.Conn
	st     *quic.Stream
	rd     *bufio.Reader
	server string // the name the server sent first
	seenAt string // the address the server saw the client at first
	read   int
}

// dialQUICTest connects from a new local socket to front and starts a
// download of quicTestTransfer bytes.
func dialQUICTest(ctx context.Context, front netip.AddrPort) (*quicTestClient, error) {
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	c := &quicTestClient{trs: []*quic.Transport{{Conn: udp}}}
	c.conn, err = c.trs[0].Dial(ctx, net.UDPAddrFromAddrPort(front),
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{quicTestALPN}}, &quic.Config{
			MaxIdleTimeout: 20 * time.Second,
			// Small windows: most of the download is still to come when
			// the client migrates or fastudp restarts.
			InitialStreamReceiveWindow: 256 << 10, MaxStreamReceiveWindow: 256 << 10,
			InitialConnectionReceiveWindow: 512 << 10, MaxConnectionReceiveWindow: 512 << 10,
			// A downloading client only answers what it receives; after
			// a restart the server's packets go to the old instance's
			// sockets, so the client's keep-alive is what reaches the
			// new one first (as after a NAT rebinding).
			KeepAlivePeriod: 300 * time.Millisecond,
		})
	if err != nil {
		c.close()
		return nil, fmt.Errorf("dial: %w", err)
	}
	if c.st, err = c.conn.OpenStreamSync(ctx); err != nil {
		c.close()
		return nil, err
	}
	var req [8]byte
	binary.BigEndian.PutUint64(req[:], quicTestTransfer)
	if _, err := c.st.Write(req[:]); err != nil {
		c.close()
		return nil, err
	}
	c.rd = bufio.NewReader(c.st)
	line, err := c.rd.ReadString('\n')
	if err != nil {
		c.close()
		return nil, fmt.Errorf("server name: %w", err)
	}
	c.server, c.seenAt, _ = strings.Cut(strings.TrimSpace(line), " ")
	return c, nil
}

func (c *quicTestClient) localAddr() netip.AddrPort {
	return c.trs[0].Conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// readUpTo reads the download until n bytes of it have arrived.
func (c *quicTestClient) readUpTo(n int) error {
	buf := make([]byte, 32<<10)
	for c.read < n {
		m, err := c.rd.Read(buf[:min(len(buf), n-c.read)])
		c.read += m
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", c.read, err)
		}
	}
	return nil
}

// finish reads the rest of the download and the server's trailer: the
// address the server saw last.
func (c *quicTestClient) finish() (string, error) {
	if err := c.readUpTo(quicTestTransfer); err != nil {
		return "", err
	}
	rest, err := io.ReadAll(c.rd)
	if err != nil {
		return "", fmt.Errorf("trailer: %w", err)
	}
	return strings.TrimSpace(string(rest)), nil
}

// migrate moves the connection to udp: a new path, probed, then switched to.
func (c *quicTestClient) migrate(ctx context.Context, udp *net.UDPConn) error {
	tr := &quic.Transport{Conn: udp}
	c.trs = append(c.trs, tr)
	path, err := c.conn.AddPath(tr)
	if err != nil {
		return fmt.Errorf("add path: %w", err)
	}
	if err := path.Probe(ctx); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	if err := path.Switch(); err != nil {
		return fmt.Errorf("switch: %w", err)
	}
	return nil
}

func (c *quicTestClient) close() {
	if c.conn != nil {
		c.conn.CloseWithError(0, "")
	}
	for _, tr := range c.trs {
		tr.Close()
		tr.Conn.Close()
	}
}

// socketRoutedAway opens a local socket whose address the cluster's lb, on
// the ip-port key, sends to a backend other than avoid: a client that
// migrates to it would land on the wrong server if fastudp routed by its
// address.
func socketRoutedAway(t *testing.T, p *proxy, seed uint64, avoid netip.AddrPort) *net.UDPConn {
	t.Helper()
	for range 100 {
		udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		a := udp.LocalAddr().(*net.UDPAddr).AddrPort()
		if b, ok := p.picker.Pick(0, core.AffinityHash(seed, a, core.AffinityIPPort)); ok && b.Addr != avoid {
			return udp
		}
		udp.Close()
	}
	t.Fatal("no local port maps to another backend")
	return nil
}

// migrationRun has n clients download through front and migrate halfway to
// a socket that ip-port routing would send to the other server. It returns
// per client: the server it started on, and the error of the migration or
// the rest of the download.
func migrationRun(t *testing.T, p *proxy, front netip.AddrPort, servers []*quicTestServer, n int) []error {
	t.Helper()
	byName := map[string]*quicTestServer{}
	for _, s := range servers {
		byName[s.name] = s
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		c, err := dialQUICTest(ctx, front)
		if err != nil {
			cancel()
			t.Fatalf("client %d: %v", i, err)
		}
		srv := byName[c.server]
		if srv == nil {
			t.Fatalf("client %d: unknown server %q", i, c.server)
		}
		// Chosen now, while the test goroutine may still fail.
		udp := socketRoutedAway(t, p, 7, srv.addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cancel()
			defer c.close()
			errs[i] = func() error {
				if err := c.readUpTo(quicTestTransfer / 2); err != nil {
					return err
				}
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				err := c.migrate(pctx, udp)
				pcancel()
				if err != nil {
					udp.Close()
					return err
				}
				trailer, err := c.finish()
				if err != nil {
					return err
				}
				// The server now sees the client through the new flow.
				t.Logf("client %d: %v -> %v on %s, seen by the server at %s, then %s", i, c.localAddr(), udp.LocalAddr(), c.server, c.seenAt, trailer)
				if trailer == c.seenAt {
					return fmt.Errorf("the server still sees the client at %s: the download did not move to the new flow", trailer)
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	return errs
}

// TestQUICLBMigration: two quic-go servers issuing QUIC-LB connection IDs
// behind fastudp (affinity = "quic"); every client downloads 3 MB and,
// halfway, migrates to a new local socket whose address ip-port routing
// would send to the other server. Every migration validates and every
// download completes on the server it started on: the new flow was routed
// by the server ID in the connection ID. The counters show it. It runs with
// plaintext IDs, with self-encoded lengths, another config rotation ID and a
// 3-byte server ID, and with encrypted IDs (a key in quic_lb and in the
// servers' generators): four-pass (2 + 6 bytes) and single-pass (3 + 13).
func TestQUICLBMigration(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lb     quiclb.Config
		sa, sb []byte
	}{
		{"plain", quicTestLB, []byte{0x0a, 0x01}, []byte{0x0b, 0x02}},
		{"self-encoded", quiclb.Config{ConfigID: 5, ServerIDLen: 3, NonceLen: 8, SelfEncodedLength: true}, []byte{1, 2, 3}, []byte{4, 5, 6}},
		{"encrypted-four-pass", quicTestEncrypted(quicTestLB), []byte{0x0a, 0x01}, []byte{0x0b, 0x02}},
		{"encrypted-single-pass", quicTestEncrypted(quiclb.Config{ConfigID: 2, ServerIDLen: 3, NonceLen: 13, SelfEncodedLength: true}), []byte{1, 2, 3}, []byte{4, 5, 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			servers := []*quicTestServer{startQUICTestServerLB(t, "a", tc.sa, tc.lb), startQUICTestServerLB(t, "b", tc.sb, tc.lb)}
			cfg := quicTestConfig(t, freeUDPPort(t), "quic", servers)
			p := startTestProxy(t, cfg)
			defer p.stop(0)
			const clients = 4
			for i, err := range migrationRun(t, p, p.addrs()[0], servers, clients) {
				if err != nil {
					t.Errorf("client %d: %v", i, err)
				}
			}
			c := &p.picker.quic.counters[0]
			t.Logf("routed: server_id %d, cid_hash %d, fallback %d", c.serverID.Load(), c.cidHash.Load(), c.fallback.Load())
			if c.serverID.Load() < clients || c.cidHash.Load() < clients {
				t.Errorf("routed by server ID %d, by CID hash %d; want at least %d each", c.serverID.Load(), c.cidHash.Load(), clients)
			}
		})
	}
}

// quicTestEncrypted returns lb with a key.
func quicTestEncrypted(lb quiclb.Config) quiclb.Config {
	lb.Encrypted = true
	lb.Key = [quiclb.KeyLen]byte{0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20, 0x7f}
	return lb
}

// TestQUICLBPickPayloadEncrypted: with a key, the selector decrypts server
// IDs: an ID encrypted with the cluster's key goes to its backend, the same
// server ID in plaintext or under another key falls back to lb, and
// decoding allocates nothing.
func TestQUICLBPickPayloadEncrypted(t *testing.T) {
	lb := quicTestEncrypted(quicTestLB)
	servers := []*quicTestServer{{name: "a", sid: []byte{0x0a, 0x01}, addr: netip.MustParseAddrPort("127.0.0.1:1001"), lb: lb},
		{name: "b", sid: []byte{0x0b, 0x02}, addr: netip.MustParseAddrPort("127.0.0.1:1002"), lb: lb}}
	p := startTestProxy(t, quicTestConfig(t, freeUDPPort(t), "quic", servers))
	defer p.stop(0)
	wrong := lb
	wrong.Key[0] ^= 0xff
	short := func(cfg quiclb.Config, sid []byte, nonce byte) []byte {
		k, err := quiclb.NewCodec(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var cid [quiclb.MaxCIDLen]byte
		n, err := k.Encode(cid[:], sid, []byte{nonce, 2, 3, 4, 5, 6}, 0)
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte{0x40}, cid[:n]...)
	}
	for key := range uint64(16) {
		fb, _ := p.picker.Pick(0, key)
		for _, s := range servers {
			if b, ok := p.picker.PickPayload(0, key, short(lb, s.sid, byte(key))); !ok || b.Addr != s.addr {
				t.Fatalf("server ID %x: %v %v, want %v", s.sid, b, ok, s.addr)
			}
			for _, pl := range [][]byte{short(wrong, s.sid, byte(key)), short(quicTestLB, s.sid, byte(key))} {
				if b, ok := p.picker.PickPayload(0, key, pl); !ok || b != fb {
					t.Fatalf("%x: %v, want the fallback %v", pl, b, fb)
				}
			}
		}
	}
	c := &p.picker.quic.counters[0]
	if c.serverID.Load() != 32 || c.fallback.Load() != 64 {
		t.Fatalf("counters: server_id %d, fallback %d", c.serverID.Load(), c.fallback.Load())
	}
	pl := short(lb, servers[1].sid, 9)
	if n := testing.AllocsPerRun(100, func() { p.picker.PickPayload(0, 9, pl) }); n != 0 {
		t.Fatalf("PickPayload: %v allocations", n)
	}
}

// TestQUICLBMigrationControl is the control case: the same migrations
// through fastudp with affinity = "ip-port" (a plain 4-tuple proxy) reach the
// other server, which does not know the connection: every probe fails.
func TestQUICLBMigrationControl(t *testing.T) {
	servers := []*quicTestServer{startQUICTestServer(t, "a", []byte{0x0a, 0x01}), startQUICTestServer(t, "b", []byte{0x0b, 0x02})}
	cfg := quicTestConfig(t, freeUDPPort(t), "ip-port", servers)
	p := startTestProxy(t, cfg)
	defer p.stop(0)
	const clients = 2
	failed := 0
	for i, err := range migrationRun(t, p, p.addrs()[0], servers, clients) {
		t.Logf("client %d: %v", i, err)
		if err != nil {
			failed++
		}
	}
	if failed != clients {
		t.Fatalf("%d of %d migrations to the wrong server failed, want all", failed, clients)
	}
}

// TestQUICLBRestart: clients download through fastudp, which is stopped
// halfway and started anew on the same address with an empty flow table.
// Every download completes from the server it started on, now seen through
// the new instance's upstream sockets: each client's next short-header
// packet was routed by the server ID in its connection ID. Clients are
// opened until at least two of them would have been sent to the other
// server by ip-port routing.
func TestQUICLBRestart(t *testing.T) {
	servers := []*quicTestServer{startQUICTestServer(t, "a", []byte{0x0a, 0x01}), startQUICTestServer(t, "b", []byte{0x0b, 0x02})}
	front := freeUDPPort(t)
	cfg := quicTestConfig(t, front, "quic", servers)
	p := startTestProxy(t, cfg)
	addr := p.addrs()[0]
	byName := map[string]*quicTestServer{}
	for _, s := range servers {
		byName[s.name] = s
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var clients []*quicTestClient
	away := 0
	for len(clients) < 12 && (away < 2 || len(clients) < 4) {
		c, err := dialQUICTest(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.close()
		if b, ok := p.picker.Pick(0, core.AffinityHash(7, c.localAddr(), core.AffinityIPPort)); ok && b.Addr != byName[c.server].addr {
			away++
		}
		clients = append(clients, c)
	}
	if away < 2 {
		t.Fatalf("only %d of %d clients would move under ip-port routing", away, len(clients))
	}
	seen := map[string]bool{}
	for i, c := range clients {
		if err := c.readUpTo(quicTestTransfer / 2); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		seen[c.server] = true
	}
	if err := p.stop(0); err != nil {
		t.Fatal(err)
	}
	p2 := startTestProxy(t, quicTestConfig(t, front, "quic", servers))
	defer p2.stop(0)
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			trailer, err := c.finish()
			if err == nil {
				t.Logf("client %d on %s: seen by the server at %s, then %s", i, c.server, c.seenAt, trailer)
				if trailer == c.seenAt {
					err = fmt.Errorf("the server still sees the client at %s: the download did not move to the new instance", trailer)
				}
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d (server %s): %v", i, clients[i].server, err)
		}
	}
	c := &p2.picker.quic.counters[0]
	t.Logf("%d clients (%d would move under ip-port) on servers %v; after the restart routed by server ID %d, fallback %d",
		len(clients), away, seen, c.serverID.Load(), c.fallback.Load())
	if c.serverID.Load() < uint64(len(clients)) {
		t.Errorf("after the restart %d flows routed by server ID, want %d", c.serverID.Load(), len(clients))
	}
}

// TestQUICLBVersionNegotiation: a long header of a version nobody knows is
// routed (by its DCID hash) to a quic-go backend, and the client gets its
// Version Negotiation packet back through fastudp. A long header cut short
// is a counted malformed drop.
func TestQUICLBVersionNegotiation(t *testing.T) {
	servers := []*quicTestServer{startQUICTestServer(t, "a", []byte{0x0a, 0x01}), startQUICTestServer(t, "b", []byte{0x0b, 0x02})}
	p := startTestProxy(t, quicTestConfig(t, freeUDPPort(t), "quic", servers))
	defer p.stop(0)
	conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(p.addrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dcid, scid := []byte{1, 2, 3, 4, 5, 6, 7, 8}, []byte{9, 10, 11, 12}
	pkt := []byte{0xc0}
	pkt = binary.BigEndian.AppendUint32(pkt, 0x1a2a3a4a) // a reserved version (RFC 9000 §15)
	pkt = append(pkt, byte(len(dcid)))
	pkt = append(pkt, dcid...)
	pkt = append(pkt, byte(len(scid)))
	pkt = append(pkt, scid...)
	pkt = append(pkt, make([]byte, 1200-len(pkt))...)
	buf := make([]byte, 2048)
	var vn []byte
	for try := 0; try < 10 && vn == nil; try++ {
		if _, err := conn.Write(pkt); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			continue
		}
		vn = buf[:n]
	}
	if vn == nil {
		t.Fatal("no Version Negotiation packet")
	}
	h, err := quiclb.ParseHeader(vn)
	if err != nil || !h.Long || h.Version != quiclb.VersionNegotiation || !bytes.Equal(h.DCID, scid) || !bytes.Equal(h.SCID, dcid) {
		t.Fatalf("reply %x: %+v, %v", vn, h, err)
	}
	versions := vn[7+len(h.DCID)+len(h.SCID):]
	found := false
	for i := 0; i+4 <= len(versions); i += 4 {
		found = found || binary.BigEndian.Uint32(versions[i:]) == quiclb.Version1
	}
	if !found {
		t.Fatalf("versions %x do not offer QUIC v1", versions)
	}
	// A cut long header from another client address: dropped, counted.
	bad, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(p.addrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := bad.Write(pkt[:9]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for malformedDrops(p) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the cut long header was not counted as a malformed drop")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// malformedDrops sums the shards' malformed drops of listener 0.
func malformedDrops(p *proxy) uint64 {
	var n uint64
	for _, s := range p.group.Shards() {
		n += s.Counters().Listener(0, shard.ListenerDropBase+int(core.DropMalformed))
	}
	return n
}

// TestQUICLBPickPayload: the selector's choices, without sockets: a short
// header with a known server ID goes to its backend (draining or not), an
// unknown server ID and a foreign config rotation fall back to lb, an
// Initial follows the core's key; the counters add up; nothing allocates;
// a server ID change applies at once.
func TestQUICLBPickPayload(t *testing.T) {
	servers := []*quicTestServer{{name: "a", sid: []byte{0x0a, 0x01}, addr: netip.MustParseAddrPort("127.0.0.1:1001")},
		{name: "b", sid: []byte{0x0b, 0x02}, addr: netip.MustParseAddrPort("127.0.0.1:1002")}}
	cfg := quicTestConfig(t, freeUDPPort(t), "quic", servers)
	p := startTestProxy(t, cfg)
	defer p.stop(0)
	short := func(sid []byte, configID uint8) []byte {
		c := quicTestLB
		c.ConfigID = configID
		var cid [quiclb.MaxCIDLen]byte
		n, err := c.Encode(cid[:], sid, []byte{1, 2, 3, 4, 5, 6}, 0)
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte{0x40}, cid[:n]...)
	}
	for _, key := range []uint64{1, 2, 3, 4, 5, 6, 7, 8} {
		fb, _ := p.picker.Pick(0, key)
		for _, s := range servers {
			if b, ok := p.picker.PickPayload(0, key, short(s.sid, quicTestLB.ConfigID)); !ok || b.Addr != s.addr {
				t.Fatalf("server ID %x: %v %v, want %v", s.sid, b, ok, s.addr)
			}
		}
		for _, pl := range [][]byte{short([]byte{0xff, 0xff}, quicTestLB.ConfigID), short(servers[0].sid, 2), quicInitialPacket()} {
			if b, ok := p.picker.PickPayload(0, key, pl); !ok || b != fb {
				t.Fatalf("%x: %v, want the fallback %v", pl, b, fb)
			}
		}
	}
	c := &p.picker.quic.counters[0]
	if c.serverID.Load() != 16 || c.fallback.Load() != 16 || c.cidHash.Load() != 8 {
		t.Fatalf("counters: server_id %d, fallback %d, cid_hash %d", c.serverID.Load(), c.fallback.Load(), c.cidHash.Load())
	}
	pl := short(servers[1].sid, quicTestLB.ConfigID)
	if n := testing.AllocsPerRun(100, func() { p.picker.PickPayload(0, 9, pl) }); n != 0 {
		t.Fatalf("PickPayload: %v allocations", n)
	}
	// A draining backend gets no new connection, but its own connections'
	// datagrams (a migrated client's) still reach it.
	if err := p.picker.setDraining(0, servers[0].addr, true); err != nil {
		t.Fatal(err)
	}
	for key := range uint64(50) {
		if b, _ := p.picker.Pick(0, key); b.Addr == servers[0].addr {
			t.Fatal("a draining backend got a new flow")
		}
	}
	if b, ok := p.picker.PickPayload(0, 1, short(servers[0].sid, quicTestLB.ConfigID)); !ok || b.Addr != servers[0].addr {
		t.Fatalf("draining backend's server ID: %v %v", b, ok)
	}
	// A server ID change applies to new flows at once.
	if err := p.picker.setServerID(0, servers[1].addr, "\x0c\x03"); err != nil {
		t.Fatal(err)
	}
	if b, ok := p.picker.PickPayload(0, 1, short([]byte{0x0c, 0x03}, quicTestLB.ConfigID)); !ok || b.Addr != servers[1].addr {
		t.Fatalf("new server ID: %v %v", b, ok)
	}
	if !errors.Is(p.picker.setServerID(0, netip.MustParseAddrPort("127.0.0.1:9"), "\x01\x02"), errNotFound) {
		t.Fatal("unknown backend accepted")
	}
}

// quicInitialPacket is a QUIC v1 Initial header with a client-chosen DCID.
func quicInitialPacket() []byte {
	p := []byte{0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0}
	return append(p, make([]byte, 100)...)
}

// TestQUICLBReload: a reload applies changed server IDs and quic_lb at
// once: the new ID routes to its backend, the old one falls back.
func TestQUICLBReload(t *testing.T) {
	servers := []*quicTestServer{{name: "a", sid: []byte{0x0a, 0x01}, addr: netip.MustParseAddrPort("127.0.0.1:1001")},
		{name: "b", sid: []byte{0x0b, 0x02}, addr: netip.MustParseAddrPort("127.0.0.1:1002")}}
	front := freeUDPPort(t)
	file := t.TempDir() + "/fastudp.toml"
	write := func(cfg *config.Config) {
		t.Helper()
		data, err := cfg.MarshalTOML()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := quicTestConfig(t, front, "quic", servers)
	write(cfg)
	p, err := startProxy(context.Background(), cfg, file, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop(0)
	short := func(lb quiclb.Config, sid []byte) []byte {
		var cid [quiclb.MaxCIDLen]byte
		n, err := lb.Encode(cid[:], sid, make([]byte, lb.NonceLen), 0)
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte{0x40}, cid[:n]...)
	}
	fallback, _ := p.picker.Pick(0, 1)
	other := servers[0]
	if fallback.Addr == other.addr {
		other = servers[1]
	}
	if b, _ := p.picker.PickPayload(0, 1, short(quicTestLB, other.sid)); b.Addr != other.addr {
		t.Fatalf("before the reload: %v", b)
	}
	next := quicTestConfig(t, front, "quic", servers)
	next.Clusters[0].QUICLB.NonceLen = 9
	for i := range next.Clusters[0].Backends {
		if next.Clusters[0].Backends[i].Address == other.addr {
			next.Clusters[0].Backends[i].ServerID = "\x0c\x03"
		}
	}
	write(next)
	res, err := p.reload()
	if err != nil || !slices.Contains(res.Clusters, "q") {
		t.Fatalf("reload: %+v, %v", res, err)
	}
	lb := next.Clusters[0].QUICLB
	if b, _ := p.picker.PickPayload(0, 1, short(lb, []byte{0x0c, 0x03})); b.Addr != other.addr {
		t.Fatalf("the new server ID routes to %v, want %v", b, other.addr)
	}
	if b, _ := p.picker.PickPayload(0, 1, short(lb, other.sid)); b != fallback {
		t.Fatalf("the old server ID routes to %v, want the fallback %v", b, fallback)
	}
	if p.cfg.Clusters[0].QUICLB != lb {
		t.Fatalf("running quic_lb %+v, want %+v", p.cfg.Clusters[0].QUICLB, lb)
	}
	// A reload that only adds a key: encrypted IDs route, plaintext ones
	// fall back, and the running config has the key.
	next.Clusters[0].QUICLB = quicTestEncrypted(lb)
	write(next)
	if res, err := p.reload(); err != nil || !slices.Contains(res.Clusters, "q") {
		t.Fatalf("reload with a key: %+v, %v", res, err)
	}
	enc := next.Clusters[0].QUICLB
	codec, err := quiclb.NewCodec(enc)
	if err != nil {
		t.Fatal(err)
	}
	var cid [quiclb.MaxCIDLen]byte
	n, err := codec.Encode(cid[:], []byte{0x0c, 0x03}, make([]byte, enc.NonceLen), 0)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := p.picker.PickPayload(0, 1, append([]byte{0x40}, cid[:n]...)); b.Addr != other.addr {
		t.Fatalf("the encrypted server ID routes to %v, want %v", b, other.addr)
	}
	if b, _ := p.picker.PickPayload(0, 1, short(lb, []byte{0x0c, 0x03})); b != fallback {
		t.Fatalf("a plaintext ID under a key routes to %v, want the fallback %v", b, fallback)
	}
	if p.cfg.Clusters[0].QUICLB != enc {
		t.Fatalf("running quic_lb %v, want %v", p.cfg.Clusters[0].QUICLB, enc)
	}
}

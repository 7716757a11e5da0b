package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fastudp/fastudp/bench/target"
	"github.com/quic-go/quic-go"
)

// The quic-bulk scenario: a quic-go server in this process sends
// quicTransfer bytes on every stream its client opens; the client (also in
// this process) keeps quicStreams streams going on one connection through
// the target. quic-go sends with UDP GSO and reads with UDP_GRO where the
// kernel allows, so the backend → proxy leg carries GSO runs.
const (
	quicTransfer = 16 << 20 // bytes per stream (transfer)
	quicStreams  = 2        // transfers in flight on the connection
	quicALPN     = "fastudp-bench"
)

// quicProbe is the targets' readiness probe in front of the QUIC server:
// its first byte lacks QUIC's fixed bit, so the server's transport hands
// it to ReadNonQUICPacket, and the server echoes it. It is long enough for
// a short header with a QUIC-LB connection ID (fastudp-quic drops shorter
// ones as malformed).
var quicProbe = append([]byte{0, 'p', 'r', 'o', 'b', 'e'}, make([]byte, 26)...)

// quicConfig is both ends' config: flow-control windows large enough
// that a loopback transfer is bound by CPU, not by window updates.
func quicConfig() *quic.Config {
	return &quic.Config{
		InitialStreamReceiveWindow:     8 << 20,
		MaxStreamReceiveWindow:         32 << 20,
		InitialConnectionReceiveWindow: 16 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
		MaxIdleTimeout:                 10 * time.Second,
		MaxIncomingStreams:             1000,
	}
}

// selfSigned returns a fresh self-signed ECDSA P-256 certificate for
// 127.0.0.1.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "fastudp bench"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// quicServer is the bulk QUIC backend.
type quicServer struct {
	udp    *net.UDPConn
	tr     *quic.Transport
	ln     *quic.Listener
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []*quic.Conn
}

var quicPayload = make([]byte, 64<<10)

func startQUICServer() (*quicServer, error) {
	cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	// QUIC-LB connection IDs, so fastudp-quic routes by server ID;
	// other targets relay them as any other.
	gen, err := benchCIDGenerator()
	if err != nil {
		udp.Close()
		return nil, err
	}
	s := &quicServer{udp: udp, tr: &quic.Transport{Conn: udp, ConnectionIDGenerator: gen}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.ln, err = s.tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{quicALPN}}, quicConfig())
	if err != nil {
		s.tr.Close()
		udp.Close()
		return nil, err
	}
	ready := make(chan struct{})
	s.wg.Add(2)
	go func() { // echo probes
		defer s.wg.Done()
		buf := make([]byte, 2048)
		close(ready)
		for {
			n, addr, err := s.tr.ReadNonQUICPacket(s.ctx, buf)
			if err != nil {
				return
			}
			_, _ = s.tr.WriteTo(buf[:n], addr)
		}
	}()
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.Accept(s.ctx)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go s.serve(c)
		}
	}()
	<-ready
	return s, nil
}

// serve answers each stream c opens with quicTransfer bytes.
func (s *quicServer) serve(c *quic.Conn) {
	defer s.wg.Done()
	for {
		st, err := c.AcceptStream(s.ctx)
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if _, err := io.Copy(io.Discard, st); err != nil { // the request: until the client's FIN
				st.CancelWrite(1)
				return
			}
			for left := quicTransfer; left > 0; {
				n, err := st.Write(quicPayload[:min(left, len(quicPayload))])
				if err != nil {
					return
				}
				left -= n
			}
			st.Close()
		}()
	}
}

// stats sums the server connections' statistics.
func (s *quicServer) stats() (sent, lost uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		st := c.ConnectionStats()
		sent += st.PacketsSent
		lost += st.PacketsLost
	}
	return sent, lost
}

func (s *quicServer) Addr() netip.AddrPort { return s.udp.LocalAddr().(*net.UDPAddr).AddrPort() }

func (s *quicServer) Close() {
	s.cancel()
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.CloseWithError(0, "")
	}
	s.mu.Unlock()
	s.tr.Close()
	s.udp.Close()
	s.wg.Wait()
}

// quicClient keeps quicStreams transfers going on one connection.
type quicClient struct {
	udp    *net.UDPConn
	tr     *quic.Transport
	conn   *quic.Conn
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	bytes     atomic.Uint64 // stream payload received
	transfers atomic.Uint64 // transfers completed
	started   atomic.Uint64 // transfers started
	err       atomic.Pointer[error]
}

func dialQUIC(ctx context.Context, addr netip.AddrPort) (*quicClient, error) {
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	c := &quicClient{udp: udp, tr: &quic.Transport{Conn: udp}}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c.conn, err = c.tr.Dial(dctx, net.UDPAddrFromAddrPort(addr),
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{quicALPN}}, quicConfig())
	if err != nil {
		c.tr.Close()
		udp.Close()
		return nil, fmt.Errorf("quic dial %v: %w", addr, err)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// start runs the transfers until close.
func (c *quicClient) start() {
	for range quicStreams {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			buf := make([]byte, 64<<10)
			for c.ctx.Err() == nil {
				if err := c.transfer(buf); err != nil {
					if c.ctx.Err() == nil {
						c.err.CompareAndSwap(nil, &err)
					}
					return
				}
			}
		}()
	}
}

func (c *quicClient) transfer(buf []byte) error {
	st, err := c.conn.OpenStreamSync(c.ctx)
	if err != nil {
		return err
	}
	c.started.Add(1)
	if _, err := st.Write([]byte{1}); err != nil {
		return err
	}
	st.Close()
	got := 0
	for {
		n, err := st.Read(buf)
		got += n
		c.bytes.Add(uint64(n))
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	if got != quicTransfer {
		return fmt.Errorf("transfer of %d bytes, want %d", got, quicTransfer)
	}
	c.transfers.Add(1)
	return nil
}

func (c *quicClient) close() {
	c.cancel()
	c.conn.CloseWithError(0, "")
	c.wg.Wait()
	c.tr.Close()
	c.udp.Close()
}

// measureQUICBulk runs quic-go bulk transfers through tg for a window.
func measureQUICBulk(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
	var m Measurement
	srv, err := startQUICServer()
	if err != nil {
		return m, fmt.Errorf("quic server: %w", err)
	}
	defer srv.Close()
	inst, err := tg.Start(srv.Addr(), target.Mode{Probe: quicProbe})
	if err != nil {
		return m, err
	}
	defer inst.Stop()
	cl, err := dialQUIC(ctx, inst.Addr)
	if err != nil {
		return m, err
	}
	defer cl.close()
	cl.start()
	if err := sleep(ctx, h.o.Warmup); err != nil {
		return m, err
	}
	s0, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	b0, t0, st0 := cl.bytes.Load(), cl.transfers.Load(), cl.conn.ConnectionStats()
	srvSent0, srvLost0 := srv.stats()
	if err := sleep(ctx, h.o.Duration); err != nil {
		return m, err
	}
	s1, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	b1, t1, st1 := cl.bytes.Load(), cl.transfers.Load(), cl.conn.ConnectionStats()
	srvSent1, srvLost1 := srv.stats()
	m.Window = s1.at.Sub(s0.at).Seconds()
	m.Completed = t1 - t0
	m.Rate = float64(m.Completed) / m.Window
	m.BytesSec = float64(b1-b0) / m.Window
	// QUIC packets through the proxy in both directions, as the client
	// counts them (its sent packets, mostly ACKs, and those it received).
	m.Requests = st1.PacketsSent - st0.PacketsSent
	m.Replies = st1.PacketsReceived - st0.PacketsReceived
	m.Datagrams = m.Requests + m.Replies
	if sent := srvSent1 - srvSent0; sent > 0 && srvLost1 >= srvLost0 {
		m.Loss = float64(srvLost1-srvLost0) / float64(sent)
	}
	m.P50 = float64(st1.SmoothedRTT) / 1e3
	fill(&m, inst, s0, s1, m.Datagrams)
	fillBulk(&m, s0, s1)
	m.set("server_packets_sent", float64(srvSent1-srvSent0))
	if p := cl.err.Load(); p != nil {
		return m, fmt.Errorf("transfer: %w", *p)
	}
	if b1 == b0 {
		return m, errors.New("no bytes in the window")
	}
	return m, nil
}

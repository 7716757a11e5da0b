package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/core"
)

// Timeouts of the end-to-end tests. The machine has 2 shared cores and the
// race detector slows everything down, so waits are generous; they only
// bound how long a failing test takes.
const (
	waitTimeout  = 10 * time.Second       // for something that must happen
	replyTimeout = 5 * time.Second        // for one reply
	quietPeriod  = 150 * time.Millisecond // to check nothing more arrives after a counter says it was dropped
)

// raceEnabled reports whether the test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// waitUntil polls cond until it holds, failing the test after timeout.
func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitValue polls get until it returns want, failing the test (with the last
// value seen) after waitTimeout.
func waitValue(t testing.TB, what string, get func() uint64, want uint64) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := get()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want %d (waited %v)", what, got, want, waitTimeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testGroup is a running [Group] that a test's cleanup stops.
type testGroup struct {
	*Group
	cancel context.CancelFunc
	once   sync.Once
	err    error
}

// startGroup creates and starts a group. Cleanup cancels it and checks that
// every shard returned without error.
func startGroup(t testing.TB, o GroupOptions) *testGroup {
	t.Helper()
	if o.Shards == 0 {
		o.Shards = 1
	}
	g, err := NewGroup(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.Start(ctx)
	tg := &testGroup{Group: g, cancel: cancel}
	t.Cleanup(func() {
		cancel()
		if err := tg.wait(waitTimeout); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			tg.logCounters(t)
		}
	})
	return tg
}

// logCounters logs every non-zero counter, to explain a failure.
func (g *testGroup) logCounters(t testing.TB) {
	t.Helper()
	for si, s := range g.Shards() {
		k := s.Counters()
		var b strings.Builder
		for i := range numShardCounters {
			if v := k.Shard(i); v != 0 {
				fmt.Fprintf(&b, " shard[%d]=%d", i, v)
			}
		}
		for l := range k.NumListeners() {
			for i := range numListenerCounters {
				if v := k.Listener(core.ListenerID(l), i); v != 0 {
					fmt.Fprintf(&b, " listener%d[%d]=%d", l, i, v)
				}
			}
		}
		for be := range k.NumBackends() {
			for i := range numBackendCounters {
				if v := k.Backend(core.BackendID(be), i); v != 0 {
					fmt.Fprintf(&b, " backend%d[%d]=%d", be, i, v)
				}
			}
		}
		t.Logf("shard %d counters:%s", si, b.String())
	}
}

// oneListener returns group options with one listener "l" on addr.
func oneListener(addr string, cc core.ClusterConfig, p fixedPicker) GroupOptions {
	return GroupOptions{
		Shards:    1,
		Listeners: []Listener{{Name: "l", Addr: netip.MustParseAddrPort(addr), Cluster: cc}},
		Backends:  len(p),
		Picker:    p,
	}
}

// wait waits for every shard to return (once; later calls return the same
// result) and reports an error if that takes longer than timeout.
func (g *testGroup) wait(timeout time.Duration) error {
	g.once.Do(func() {
		done := make(chan error, 1)
		go func() { done <- g.Wait() }()
		select {
		case g.err = <-done:
		case <-time.After(timeout):
			g.err = fmt.Errorf("shards did not return within %v", timeout)
		}
	})
	return g.err
}

// addr returns the bound address of the only listener.
func (g *testGroup) addr() netip.AddrPort { return g.Addrs()[0] }

// listener sums a counter of listener 0 over every shard.
func (g *testGroup) listener(i int) uint64 {
	var v uint64
	for _, s := range g.Shards() {
		v += s.Counters().Listener(0, i)
	}
	return v
}

// drop sums a core drop counter of listener 0 over every shard.
func (g *testGroup) drop(r core.DropReason) uint64 { return g.listener(ListenerDropBase + int(r)) }

// backend sums a counter of backend b over every shard.
func (g *testGroup) backend(b core.BackendID, i int) uint64 {
	var v uint64
	for _, s := range g.Shards() {
		v += s.Counters().Backend(b, i)
	}
	return v
}

// shard sums a shard-wide counter over every shard.
func (g *testGroup) shard(i int) uint64 {
	var v uint64
	for _, s := range g.Shards() {
		v += s.Counters().Shard(i)
	}
	return v
}

// openSockets returns the upstream sockets of backend b still open. Closed is
// read first, so a publish between the reads cannot make it negative.
func (g *testGroup) openSockets(b core.BackendID) uint64 {
	closed := g.backend(b, BackendSocketsClosed)
	return g.backend(b, BackendSocketsOpened) - closed
}

// waitListener waits until listener counter i sums to want.
func (g *testGroup) waitListener(t testing.TB, name string, i int, want uint64) {
	t.Helper()
	waitValue(t, name, func() uint64 { return g.listener(i) }, want)
}

// waitDrop waits until the core drop counter for r sums to want.
func (g *testGroup) waitDrop(t testing.TB, r core.DropReason, want uint64) {
	t.Helper()
	waitValue(t, "drops "+r.String(), func() uint64 { return g.drop(r) }, want)
}

// proxyHeader is a parsed PROXY v2 header.
type proxyHeader struct {
	Len      int // bytes, signature included
	Family   byte
	Src, Dst netip.AddrPort
}

var proxySig = []byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

// parseProxyHeader parses the PROXY v2 header at the start of b. ok is false
// when b does not start with the signature; err reports a malformed header.
func parseProxyHeader(b []byte) (h proxyHeader, ok bool, err error) {
	if !bytes.HasPrefix(b, proxySig) {
		return h, false, nil
	}
	if len(b) < 16 {
		return h, true, fmt.Errorf("PROXY header cut at %d bytes", len(b))
	}
	if b[12] != 0x21 {
		return h, true, fmt.Errorf("PROXY version/command %#x, want 0x21", b[12])
	}
	h.Family = b[13]
	n := int(binary.BigEndian.Uint16(b[14:16]))
	h.Len = 16 + n
	if len(b) < h.Len {
		return h, true, fmt.Errorf("PROXY header says %d address bytes, datagram has %d", n, len(b)-16)
	}
	a := b[16:h.Len]
	switch h.Family {
	case 0x12: // AF_INET, DGRAM
		if n != 12 {
			return h, true, fmt.Errorf("IPv4 PROXY address block %d bytes, want 12", n)
		}
		h.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:10]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:12]))
	case 0x22: // AF_INET6, DGRAM
		if n != 36 {
			return h, true, fmt.Errorf("IPv6 PROXY address block %d bytes, want 36", n)
		}
		h.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])), binary.BigEndian.Uint16(a[32:34]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])), binary.BigEndian.Uint16(a[34:36]))
	case 0x00:
	default:
		return h, true, fmt.Errorf("PROXY family/transport %#x", h.Family)
	}
	return h, true, nil
}

// backendOpts configures a test backend.
type backendOpts struct {
	// Addr to bind; "127.0.0.1:0" when empty.
	Addr string
	// Prefix is put before the payload in each reply.
	Prefix string
	// Answers is how many replies each datagram gets (0 means 1); Silent
	// makes the backend answer nothing.
	Answers int
	Silent  bool
	// Delay postpones each datagram's replies; Gate, when set, holds them
	// until it is closed.
	Delay time.Duration
	Gate  chan struct{}
	// Proxy strips a PROXY v2 header from datagrams that carry one (and
	// records it); the reply echoes the payload after it.
	Proxy bool
	// RecvTOS records the TOS / traffic class each datagram arrived with.
	RecvTOS bool
	// ReplyTOS, when non-zero, is the TOS / traffic class of the replies.
	ReplyTOS uint8
	// NoRecord keeps the backend from recording datagrams, which makes its
	// loop allocation-free (with no Delay, Gate, Proxy or RecvTOS).
	NoRecord bool
}

// datagram is what a test backend or client received.
type datagram struct {
	From    netip.AddrPort
	Payload string
	TOS     int // -1 when not asked for
	Header  *proxyHeader
}

// testBackend is a UDP echo server on loopback.
type testBackend struct {
	Addr netip.AddrPort
	conn *net.UDPConn
	opts backendOpts

	mu   sync.Mutex
	got  []datagram
	errs []string
}

// newBackend starts a backend; cleanup closes it and reports any malformed
// datagram it saw.
func newBackend(t testing.TB, o backendOpts) *testBackend {
	t.Helper()
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.Answers == 0 {
		o.Answers = 1
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(o.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	b := &testBackend{Addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), conn: c, opts: o}
	is6 := b.Addr.Addr().Is6()
	if o.RecvTOS {
		setSockopt(t, c, is6, unix.IP_RECVTOS, unix.IPV6_RECVTCLASS, 1)
	}
	if o.ReplyTOS != 0 {
		setSockopt(t, c, is6, unix.IP_TOS, unix.IPV6_TCLASS, int(o.ReplyTOS))
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		c.Close()
		<-done
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range b.errs {
			t.Errorf("backend %v: %s", b.Addr, e)
		}
	})
	go func() {
		defer close(done)
		b.serve()
	}()
	return b
}

func (b *testBackend) serve() {
	o := &b.opts
	buf := make([]byte, 70000)
	copy(buf, o.Prefix)
	in := buf[len(o.Prefix):]
	oob := make([]byte, 128)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		var (
			n, oobn int
			from    netip.AddrPort
			err     error
		)
		if o.RecvTOS {
			n, oobn, _, from, err = b.conn.ReadMsgUDPAddrPort(in, oob)
		} else {
			n, from, err = b.conn.ReadFromUDPAddrPort(in)
		}
		if err != nil {
			return
		}
		payload := in[:n]
		var hdr *proxyHeader
		if o.Proxy {
			h, ok, err := parseProxyHeader(payload)
			if err != nil {
				b.fail(err.Error())
				continue
			}
			if ok {
				hdr = &h
				payload = payload[h.Len:]
			}
		}
		if !o.NoRecord {
			d := datagram{From: from, Payload: string(payload), TOS: -1, Header: hdr}
			if o.RecvTOS {
				d.TOS = parseTOS(oob[:oobn])
			}
			b.mu.Lock()
			b.got = append(b.got, d)
			b.mu.Unlock()
		}
		if o.Silent {
			continue
		}
		reply := buf[:len(o.Prefix)+n] // the prefix is already in place
		if hdr != nil {
			reply = append([]byte(o.Prefix), payload...)
		}
		if o.Delay == 0 && o.Gate == nil {
			for range o.Answers {
				_, _ = b.conn.WriteToUDPAddrPort(reply, from)
			}
			continue
		}
		reply = bytes.Clone(reply)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if o.Delay > 0 {
				time.Sleep(o.Delay)
			}
			if o.Gate != nil {
				<-o.Gate
			}
			for range o.Answers {
				_, _ = b.conn.WriteToUDPAddrPort(reply, from)
			}
		}()
	}
}

func (b *testBackend) fail(msg string) {
	b.mu.Lock()
	b.errs = append(b.errs, msg)
	b.mu.Unlock()
}

// received returns a copy of what the backend received so far.
func (b *testBackend) received() []datagram {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]datagram(nil), b.got...)
}

// count returns how many datagrams the backend received.
func (b *testBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.got)
}

// waitReceived waits until the backend has received n datagrams and returns
// them.
func (b *testBackend) waitReceived(t testing.TB, n int) []datagram {
	t.Helper()
	waitUntil(t, waitTimeout, fmt.Sprintf("backend %v to receive %d datagrams (has %d)", b.Addr, n, b.count()),
		func() bool { return b.count() >= n })
	return b.received()
}

// testClient is an unconnected UDP socket that talks to a proxy address, so
// it sees the source address of every reply.
type testClient struct {
	t    testing.TB
	conn *net.UDPConn
	to   netip.AddrPort
	buf  []byte
	oob  []byte
}

// newClient opens a client on the loopback address of to's family (or on
// bind, when valid) that sends to to.
func newClient(t testing.TB, to netip.AddrPort) *testClient {
	t.Helper()
	bind := netip.MustParseAddrPort("127.0.0.1:0")
	if to.Addr().Is6() {
		bind = netip.MustParseAddrPort("[::1]:0")
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(bind))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &testClient{t: t, conn: c, to: to, buf: make([]byte, 70000), oob: make([]byte, 128)}
}

// Addr returns the client's own address.
func (c *testClient) Addr() netip.AddrPort { return c.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// send sends p to the proxy.
func (c *testClient) send(p string) { c.t.Helper(); c.sendTo(c.to, []byte(p)) }

func (c *testClient) sendTo(to netip.AddrPort, p []byte) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDPAddrPort(p, to); err != nil {
		c.t.Fatalf("client %v: send to %v: %v", c.Addr(), to, err)
	}
}

// recv reads one datagram, waiting at most timeout. The TOS is recorded
// when the socket asked for it (recvTOS).
func (c *testClient) recv(timeout time.Duration) (datagram, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	n, oobn, _, from, err := c.conn.ReadMsgUDPAddrPort(c.buf, c.oob)
	if err != nil {
		return datagram{}, err
	}
	return datagram{From: from, Payload: string(c.buf[:n]), TOS: parseTOS(c.oob[:oobn])}, nil
}

// expect reads one reply and checks it came from the proxy address with
// payload want.
func (c *testClient) expect(want string) datagram {
	c.t.Helper()
	d, err := c.recv(replyTimeout)
	if err != nil {
		c.t.Fatalf("client %v: waiting for %q: %v", c.Addr(), want, err)
	}
	if d.Payload != want || d.From != c.to {
		c.t.Fatalf("client %v: got %q from %v, want %q from %v", c.Addr(), d.Payload, d.From, want, c.to)
	}
	return d
}

// roundTrip sends p and expects prefix+p back.
func (c *testClient) roundTrip(prefix, p string) {
	c.t.Helper()
	c.send(p)
	c.expect(prefix + p)
}

// expectSilence checks that nothing arrives within quietPeriod. Call it only
// once a counter says the datagram that could cause a reply was dropped.
func (c *testClient) expectSilence() {
	c.t.Helper()
	d, err := c.recv(quietPeriod)
	if err == nil {
		c.t.Fatalf("client %v: unexpected %q from %v", c.Addr(), d.Payload, d.From)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		c.t.Fatalf("client %v: %v", c.Addr(), err)
	}
}

// setSockopt sets an integer option on c: v4 at SOL_IP, v6 at SOL_IPV6.
func setSockopt(t testing.TB, c *net.UDPConn, is6 bool, v4, v6, value int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if is6 {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, v6, value)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, v4, value)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		t.Fatalf("setsockopt: %v", err)
	}
}

// parseTOS returns the IP_TOS or IPV6_TCLASS value in oob, or -1.
func parseTOS(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_TOS && len(m.Data) >= 1:
			return int(m.Data[0])
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_TCLASS && len(m.Data) >= 4:
			return int(binary.NativeEndian.Uint32(m.Data))
		}
	}
	return -1
}

// closedPort returns a loopback UDP address nothing listens on.
func closedPort(t testing.TB) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	a := c.LocalAddr().(*net.UDPAddr).AddrPort()
	c.Close()
	return a
}

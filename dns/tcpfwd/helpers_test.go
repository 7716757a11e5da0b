package tcpfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// wait is the generous limit for anything the tests wait on: the CI machine
// has two shared cores and runs with -race.
const wait = 10 * time.Second

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

// bigTXT is the TXT answer for big.test.: 80 strings of 250 bytes, ~20 KB.
func bigTXT() []string {
	txt := make([]string, 80)
	for i := range txt {
		txt[i] = strings.Repeat(string(rune('a'+i%26)), 250)
	}
	return txt
}

// answerer is the in-test DNS server's handler: A 192.0.2.1 for any name,
// a ~20 KB TXT for big.test., and an A record per q<N>.test. encoding N.
func answerer(w dns.ResponseWriter, q *dns.Msg) {
	r := new(dns.Msg)
	r.SetReply(q)
	name := q.Question[0].Name
	hdr := dns.RR_Header{Name: name, Class: dns.ClassINET, Ttl: 60}
	switch {
	case name == "big.test.":
		hdr.Rrtype = dns.TypeTXT
		r.Answer = append(r.Answer, &dns.TXT{Hdr: hdr, Txt: bigTXT()})
	default:
		var n int
		_, _ = fmt.Sscanf(name, "q%d.test.", &n) // other names answer 192.0.2.1
		hdr.Rrtype = dns.TypeA
		r.Answer = append(r.Answer, &dns.A{Hdr: hdr, A: net.IPv4(192, 0, byte(n>>8), byte(n)).To4()})
	}
	_ = w.WriteMsg(r) // the client may be gone
}

// startBackend runs a miekg/dns TCP server on loopback, stopped in Cleanup.
func startBackend(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{
		Listener:          ln,
		Handler:           dns.HandlerFunc(answerer),
		MaxTCPQueries:     -1,
		NotifyStartedFunc: func() { close(started) },
	}
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("backend: %v", err)
	}
	t.Cleanup(func() {
		_ = srv.Shutdown() // returns an error if it already stopped
		<-done
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// to is a Picker that sends everything to backend.
func to(backend netip.AddrPort) Picker {
	return func(netip.AddrPort) (netip.AddrPort, bool) { return backend, true }
}

// startServer listens on loopback and serves in a goroutine; Cleanup closes
// it and checks that Serve returned nil.
func startServer(t *testing.T, pick Picker, o Options) *Server {
	t.Helper()
	s, err := Listen(loopback, pick, o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(wait):
			t.Errorf("Serve did not return after Close")
		}
	})
	return s
}

// dial connects a TCP client to addr, closed in Cleanup.
func dial(t *testing.T, addr netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func query(id uint16, name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	return m
}

// writeQuery writes m as one framed message.
func writeQuery(t *testing.T, c net.Conn, m *dns.Msg) {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(append(frame(b), b...)); err != nil {
		t.Fatalf("write query: %v", err)
	}
}

// readAnswer reads one framed message from c within wait.
func readAnswer(t *testing.T, c net.Conn) *dns.Msg {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, frameBufSize)
	f, err := readMessage(c, buf)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	m := new(dns.Msg)
	if err := m.Unpack(f[2:]); err != nil {
		t.Fatalf("unpack answer: %v", err)
	}
	return m
}

// exchange sends one query on c and returns its answer.
func exchange(t *testing.T, c net.Conn, m *dns.Msg) *dns.Msg {
	t.Helper()
	writeQuery(t, c, m)
	r := readAnswer(t, c)
	if r.Id != m.Id {
		t.Fatalf("answer id %d, want %d", r.Id, m.Id)
	}
	return r
}

// expectClosed waits up to limit for the peer to close c: a read that ends
// in EOF or a reset, not a timeout.
func expectClosed(t *testing.T, c net.Conn, limit time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(limit))
	var b [1]byte
	for {
		_, err := c.Read(b[:])
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection still open after %v", limit)
		}
		return
	}
}

// eventually polls cond until it holds or wait passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freePort returns a loopback port that nothing listens on (TCP or UDP) at
// the time of the call.
func freePort(t *testing.T) uint16 {
	t.Helper()
	for range 20 {
		l, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(loopback))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).AddrPort().Port()
		_ = l.Close()
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
		if err != nil {
			continue
		}
		_ = u.Close()
		return port
	}
	t.Fatal("no free port")
	return 0
}

// fdCount is the number of open descriptors of this process.
func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// settle waits for the goroutine and descriptor counts to fall back to
// at most the given ones and fails with a goroutine dump if they do not.
func settle(t *testing.T, goroutines, fds int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		g, f := runtime.NumGoroutine(), fdCount(t)
		if g <= goroutines && f <= fds {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("leak: %d goroutines (was %d), %d fds (was %d)\n%s", g, goroutines, f, fds, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rawBackend accepts connections on loopback and runs serve on each in its
// own goroutine; Cleanup closes the listener and every connection and waits.
func rawBackend(t *testing.T, serve func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []*net.TCPConn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// reply builds the answer to a packed query: the query with QR set.
func reply(t *testing.T, q []byte) []byte {
	m := new(dns.Msg)
	if err := m.Unpack(q); err != nil {
		t.Errorf("backend unpack: %v", err)
		return nil
	}
	r := new(dns.Msg)
	r.SetReply(m)
	b, err := r.Pack()
	if err != nil {
		t.Errorf("backend pack: %v", err)
	}
	return b
}

// syncWriter serialises writes to w and reads of it.
type syncWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

var _ io.Writer = (*syncWriter)(nil)

// ctxTimeout is context.WithTimeout with the cancel in Cleanup.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

package tcpfwd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestPipelinedQueries sends many queries on one connection before reading
// any answer; every answer must arrive, each matching its query's ID.
func TestPipelinedQueries(t *testing.T) {
	s := startServer(t, to(startBackend(t)), Options{})
	c := dial(t, s.Addr())
	const n = 200
	for i := range n {
		writeQuery(t, c, query(uint16(1000+i), fmt.Sprintf("q%d.test.", i), dns.TypeA))
	}
	seen := make(map[uint16]bool)
	for range n {
		r := readAnswer(t, c)
		i := int(r.Id) - 1000
		if i < 0 || i >= n || seen[r.Id] {
			t.Fatalf("unexpected or repeated answer id %d", r.Id)
		}
		seen[r.Id] = true
		if want := fmt.Sprintf("q%d.test.", i); r.Question[0].Name != want {
			t.Fatalf("id %d answers %s, want %s", r.Id, r.Question[0].Name, want)
		}
		a, ok := r.Answer[0].(*dns.A)
		if !ok || a.A[2] != byte(i>>8) || a.A[3] != byte(i) {
			t.Fatalf("id %d: wrong answer %v", r.Id, r.Answer)
		}
	}
	if st := s.Stats(); st.Queries != n || st.Answers != n {
		t.Errorf("stats %+v, want %d queries and answers", st, n)
	}
}

// TestOutOfOrderAnswers uses a backend that reads every query before
// answering them in reverse order: the relay must not assume one answer per
// query in turn.
func TestOutOfOrderAnswers(t *testing.T) {
	const n = 20
	backend := rawBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, frameBufSize)
		var qs [][]byte
		for range n {
			f, err := readMessage(c, buf)
			if err != nil {
				t.Errorf("backend read: %v", err)
				return
			}
			qs = append(qs, append([]byte(nil), f[2:]...))
		}
		for i := len(qs) - 1; i >= 0; i-- {
			r := reply(t, qs[i])
			if _, err := c.Write(append(frame(r), r...)); err != nil {
				t.Errorf("backend write: %v", err)
				return
			}
		}
	})
	s := startServer(t, to(backend), Options{})
	c := dial(t, s.Addr())
	for i := range n {
		writeQuery(t, c, query(uint16(i), fmt.Sprintf("q%d.test.", i), dns.TypeA))
	}
	for i := n - 1; i >= 0; i-- {
		if r := readAnswer(t, c); r.Id != uint16(i) {
			t.Fatalf("answer id %d, want %d", r.Id, i)
		}
	}
}

// TestLargeAnswer relays a ~20 KB TXT answer whole.
func TestLargeAnswer(t *testing.T) {
	s := startServer(t, to(startBackend(t)), Options{})
	c := dial(t, s.Addr())
	for i := range 3 {
		r := exchange(t, c, query(uint16(7+i), "big.test.", dns.TypeTXT))
		txt, ok := r.Answer[0].(*dns.TXT)
		if !ok {
			t.Fatalf("answer %v", r.Answer)
		}
		if got, want := strings.Join(txt.Txt, ""), strings.Join(bigTXT(), ""); got != want {
			t.Fatalf("TXT of %d bytes, want %d", len(got), len(want))
		}
	}
}

// TestClientHalfClose: a client that sends its queries and shuts its write
// half still gets every answer, then a clean end of stream.
func TestClientHalfClose(t *testing.T) {
	s := startServer(t, to(startBackend(t)), Options{})
	c := dial(t, s.Addr())
	const n = 10
	for i := range n {
		writeQuery(t, c, query(uint16(i), fmt.Sprintf("q%d.test.", i), dns.TypeA))
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if r := readAnswer(t, c); r.Id != uint16(i) {
			t.Fatalf("answer id %d, want %d", r.Id, i)
		}
	}
	expectClosed(t, c, wait)
	eventually(t, "no active connections", func() bool { return s.Stats().Active == 0 })
}

// TestBackendClosesFirst: when the backend ends the stream after answering,
// the client gets the answer and then the end of the stream.
func TestBackendClosesFirst(t *testing.T) {
	backend := rawBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, frameBufSize)
		f, err := readMessage(c, buf)
		if err != nil {
			t.Errorf("backend read: %v", err)
			return
		}
		r := reply(t, f[2:])
		_, _ = c.Write(append(frame(r), r...))
		_ = c.Close()
	})
	s := startServer(t, to(backend), Options{})
	c := dial(t, s.Addr())
	exchange(t, c, query(3, "x.test.", dns.TypeA))
	expectClosed(t, c, wait)
}

// TestIdleTimeout closes a connection on which nothing is sent.
func TestIdleTimeout(t *testing.T) {
	s := startServer(t, to(startBackend(t)), Options{IdleTimeout: 200 * time.Millisecond})
	c := dial(t, s.Addr())
	start := time.Now()
	expectClosed(t, c, wait)
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("closed after %v, before the idle timeout", el)
	}
	eventually(t, "IdleTimeouts = 1", func() bool { return s.Stats().IdleTimeouts == 1 })
}

// TestIdleTimeoutResetByMessages keeps connections alive past several idle
// periods with messages in one direction only, client's or backend's.
func TestIdleTimeoutResetByMessages(t *testing.T) {
	const idle = 300 * time.Millisecond
	const every = 60 * time.Millisecond
	const span = 3 * idle
	t.Run("client queries", func(t *testing.T) {
		s := startServer(t, to(startBackend(t)), Options{IdleTimeout: idle})
		c := dial(t, s.Addr())
		for i := 0; time.Duration(i)*every < span; i++ {
			exchange(t, c, query(uint16(i), "x.test.", dns.TypeA))
			time.Sleep(every)
		}
		if st := s.Stats(); st.IdleTimeouts != 0 {
			t.Fatalf("idle timeout despite traffic: %+v", st)
		}
		expectClosed(t, c, wait)
		eventually(t, "IdleTimeouts = 1", func() bool { return s.Stats().IdleTimeouts == 1 })
	})
	t.Run("backend messages", func(t *testing.T) {
		stop := make(chan struct{})
		backend := rawBackend(t, func(c *net.TCPConn) {
			r := reply(t, mustPack(t, query(9, "push.test.", dns.TypeA)))
			for i := 0; time.Duration(i)*every < span; i++ {
				select {
				case <-stop:
					return
				case <-time.After(every):
				}
				if _, err := c.Write(append(frame(r), r...)); err != nil {
					return
				}
			}
			<-stop // then silent until the test ends
		})
		t.Cleanup(func() { close(stop) })
		s := startServer(t, to(backend), Options{IdleTimeout: idle})
		c := dial(t, s.Addr())
		deadline := time.Now().Add(span - every)
		for time.Now().Before(deadline) {
			readAnswer(t, c)
		}
		if st := s.Stats(); st.IdleTimeouts != 0 {
			t.Fatalf("idle timeout despite traffic: %+v", st)
		}
		expectClosed(t, c, wait)
		eventually(t, "IdleTimeouts = 1", func() bool { return s.Stats().IdleTimeouts == 1 })
	})
}

func mustPack(t *testing.T, m *dns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMaxConns refuses a connection beyond the limit and admits one again
// once a slot is free.
func TestMaxConns(t *testing.T) {
	s := startServer(t, to(startBackend(t)), Options{MaxConns: 2})
	c1, c2 := dial(t, s.Addr()), dial(t, s.Addr())
	exchange(t, c1, query(1, "a.test.", dns.TypeA))
	exchange(t, c2, query(2, "b.test.", dns.TypeA))
	c3 := dial(t, s.Addr())
	expectClosed(t, c3, wait)
	if st := s.Stats(); st.Refused != 1 || st.Active != 2 || st.Accepted != 3 {
		t.Fatalf("stats %+v, want 1 refused, 2 active, 3 accepted", st)
	}
	_ = c1.Close()
	eventually(t, "one active connection", func() bool { return s.Stats().Active == 1 })
	c4 := dial(t, s.Addr())
	exchange(t, c4, query(4, "d.test.", dns.TypeA))
}

// TestPickerRefuses closes the connection at once and gives the picker the
// client's address.
func TestPickerRefuses(t *testing.T) {
	got := make(chan netip.AddrPort, 1)
	s := startServer(t, func(client netip.AddrPort) (netip.AddrPort, bool) {
		got <- client
		return netip.AddrPort{}, false
	}, Options{})
	c := dial(t, s.Addr())
	expectClosed(t, c, wait)
	if want := c.LocalAddr().(*net.TCPAddr).AddrPort(); <-got != want {
		t.Errorf("picker got a different client address, want %v", want)
	}
	eventually(t, "Refused = 1", func() bool { return s.Stats().Refused == 1 })
	if st := s.Stats(); st.DialFailures != 0 || st.Active != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestBackendDown counts failed dials, closes the client and logs once per
// backend however many clients fail.
func TestBackendDown(t *testing.T) {
	dead := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
	logs := new(syncWriter)
	s := startServer(t, to(dead), Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	for i := range 3 {
		c := dial(t, s.Addr())
		writeQuery(t, c, query(uint16(i), "x.test.", dns.TypeA))
		expectClosed(t, c, wait)
		eventually(t, fmt.Sprintf("DialFailures = %d", i+1), func() bool { return s.Stats().DialFailures == uint64(i+1) })
	}
	// The counter is bumped before the line is written: wait for it.
	eventually(t, "a dial failure log line", func() bool { return strings.Contains(logs.String(), "dial failed") })
	if n := strings.Count(logs.String(), "dial failed"); n != 1 {
		t.Errorf("%d dial failure log lines, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), dead.String()) {
		t.Errorf("log does not name the backend %v:\n%s", dead, logs.String())
	}
}

// TestMalformed closes the connection on a zero-length message or a stream
// that ends inside a message, and counts it once.
func TestMalformed(t *testing.T) {
	tests := []struct {
		name      string
		send      []byte
		closeSend bool
	}{
		{name: "zero length", send: []byte{0, 0}},
		{name: "zero length after a query", send: append(append(frame(mustPack(t, query(1, "a.test.", dns.TypeA))), mustPack(t, query(1, "a.test.", dns.TypeA))...), 0, 0)},
		{name: "stream ends inside a message", send: []byte{0, 40, 1, 2, 3}, closeSend: true},
		{name: "stream ends inside the length", send: []byte{0}, closeSend: true},
	}
	backend := startBackend(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, to(backend), Options{})
			c := dial(t, s.Addr())
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			if tt.closeSend {
				_ = c.CloseWrite()
			}
			expectClosed(t, c, wait)
			eventually(t, "Malformed = 1", func() bool { return s.Stats().Malformed == 1 })
			eventually(t, "no active connections", func() bool { return s.Stats().Active == 0 })
		})
	}
}

// TestShutdownLetsLiveConnFinish: after Shutdown begins, new connections are
// refused by the kernel, a live one keeps working, and Shutdown returns nil
// once it closes.
func TestShutdownLetsLiveConnFinish(t *testing.T) {
	s := startServer(t, to(startBackend(t)), Options{})
	c := dial(t, s.Addr())
	exchange(t, c, query(1, "a.test.", dns.TypeA))
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctxTimeout(t, wait)) }()
	eventually(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", s.Addr().String(), time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err != nil
	})
	exchange(t, c, query(2, "b.test.", dns.TypeA))
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a live connection", err)
	default:
	}
	_ = c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Shutdown did not return after the last connection closed")
	}
	if err := s.Serve(); err != nil {
		t.Errorf("Serve after Shutdown: %v", err)
	}
}

// TestShutdownDeadline closes connections still live when ctx ends.
func TestShutdownDeadline(t *testing.T) {
	s := startServer(t, to(startBackend(t)), Options{})
	c := dial(t, s.Addr())
	exchange(t, c, query(1, "a.test.", dns.TypeA))
	err := s.Shutdown(ctxTimeout(t, 200*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want deadline exceeded", err)
	}
	expectClosed(t, c, wait)
	if st := s.Stats(); st.Active != 0 {
		t.Errorf("%d active after Shutdown", st.Active)
	}
}

// TestCloseLeavesNothing closes a server with busy, idle and part-read
// connections and checks that every goroutine and descriptor it made is
// gone.
func TestCloseLeavesNothing(t *testing.T) {
	backend := startBackend(t)
	goroutines, fds := runtimeCounts(t)

	s, err := Listen(loopback, to(backend), Options{})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	var conns []*net.TCPConn
	for i := range 8 {
		c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(s.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		switch i % 4 {
		case 0: // idle
		case 1:
			exchange(t, c, query(uint16(i), "a.test.", dns.TypeA))
		case 2: // answers in flight
			for j := range 20 {
				writeQuery(t, c, query(uint16(j), "big.test.", dns.TypeTXT))
			}
		case 3: // inside a message
			exchange(t, c, query(uint16(i), "a.test.", dns.TypeA))
			if _, err := c.Write([]byte{0, 30, 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, "8 active", func() bool { return s.Stats().Active == 8 })

	var wg sync.WaitGroup
	for range 2 { // Close is safe to call concurrently and twice
		wg.Go(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	wg.Wait()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if st := s.Stats(); st.Active != 0 {
		t.Errorf("%d active after Close", st.Active)
	}
	for _, c := range conns {
		expectClosed(t, c, wait)
		_ = c.Close()
	}
	settle(t, goroutines, fds)
}

// runtimeCounts gives the baseline for settle.
func runtimeCounts(t *testing.T) (goroutines, fds int) {
	return runtime.NumGoroutine(), fdCount(t)
}

// TestServeTwice returns ErrServing from a second concurrent Serve.
func TestServeTwice(t *testing.T) {
	s := startServer(t, to(startBackend(t)), Options{})
	eventually(t, "Serve running", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.mu.serving
	})
	if err := s.Serve(); !errors.Is(err, ErrServing) {
		t.Fatalf("second Serve: %v, want ErrServing", err)
	}
}

// TestListenErrors rejects a nil picker, an invalid address and a port in
// use, with the address in the message.
func TestListenErrors(t *testing.T) {
	s := startServer(t, to(startBackend(t)), Options{})
	tests := []struct {
		name string
		addr netip.AddrPort
		pick Picker
	}{
		{name: "nil picker", addr: loopback},
		{name: "invalid address", pick: to(loopback)},
		{name: "port in use", addr: s.Addr(), pick: to(loopback)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Listen(tt.addr, tt.pick, Options{})
			if err == nil {
				_ = s.Close()
				t.Fatal("Listen succeeded")
			}
			if !strings.HasPrefix(err.Error(), "tcpfwd: listen") {
				t.Errorf("error %q lacks context", err)
			}
		})
	}
}

// TestIPv6Listener serves on ::1 and relays to an IPv4 backend.
func TestIPv6Listener(t *testing.T) {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	_ = l.Close()
	backend := startBackend(t)
	got := make(chan netip.AddrPort, 1)
	s, err := Listen(netip.MustParseAddrPort("[::1]:0"), func(client netip.AddrPort) (netip.AddrPort, bool) {
		got <- client
		return backend, true
	}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve() }()
	t.Cleanup(func() { _ = s.Close() })
	if !s.Addr().Addr().Is6() || s.Addr().Port() == 0 {
		t.Fatalf("Addr() = %v", s.Addr())
	}
	c := dial(t, s.Addr())
	exchange(t, c, query(1, "a.test.", dns.TypeA))
	if client := <-got; client != c.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Errorf("picker got %v, want %v", client, c.LocalAddr())
	}
}

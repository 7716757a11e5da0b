package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fastudp/fastudp/config"
)

// demoCommand implements `fastudp demo`: two echo backends and the proxy on
// loopback with the embedded demo config, a short closed-loop load through
// it, and a live table of rate, latency and each backend's share.
func demoCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fastudp demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	duration := fs.Duration("duration", 5*time.Second, "how long to send load")
	clients := fs.Int("clients", 8, "concurrent clients (each a separate socket, so a separate flow key)")
	logLevel := fs.String("log-level", "warn", "proxy log `LEVEL`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{code: 2}
	}
	if *duration <= 0 || *clients <= 0 {
		return &exitError{code: 2, err: errors.New("demo: --duration and --clients must be positive")}
	}
	level, err := config.ParseLogLevel(*logLevel)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	cfg := config.Demo()
	cfg.LogLevel = level

	// Echo backends on the config's addresses, or on free ports if taken.
	var echoes []*echoServer
	defer func() {
		for _, e := range echoes {
			e.close()
		}
	}()
	cl := cfg.Cluster(cfg.Listeners[0].Cluster)
	for i := range cl.Backends {
		b := &cl.Backends[i]
		e, err := startEcho(b.Label(), b.Address)
		if err != nil {
			return err
		}
		echoes = append(echoes, e)
		b.Address = e.addr
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	// A busy demo port (another demo, a test) is no reason to fail: take any
	// free one. Port 0 is for the demo only, so it is set after validation,
	// which refuses it in configuration files.
	if !portFree(cfg.Listeners[0].Address) {
		cfg.Listeners[0].Address = netip.AddrPortFrom(cfg.Listeners[0].Address.Addr(), 0)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := startProxy(ctx, cfg, "", log)
	if err != nil {
		return err
	}
	front := p.addrs()[0]
	names := make([]string, len(echoes))
	for i, e := range echoes {
		names[i] = e.name
	}
	fmt.Fprintf(stdout, "fastudp demo: %d clients -> %v -> ", *clients, front)
	for i, e := range echoes {
		if i > 0 {
			fmt.Fprint(stdout, ", ")
		}
		fmt.Fprintf(stdout, "%s %v", e.name, e.addr)
	}
	fmt.Fprintf(stdout, " (embedded demo.toml, %d shards, lb %s, responses=%d)\n\n", cfg.ShardCount(), cl.LB, cl.Responses)

	load := newDemoLoad(names)
	loadCtx, stopLoad := context.WithTimeout(ctx, *duration)
	defer stopLoad()
	var wg sync.WaitGroup
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			load.client(loadCtx, front)
		}()
	}
	fmt.Fprintf(stdout, "%7s %10s %10s %9s %9s %6s", "time", "sent/s", "replies/s", "p50", "p99", "loss")
	for _, n := range names {
		fmt.Fprintf(stdout, " %8s", n)
	}
	fmt.Fprintln(stdout)
	start := time.Now()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	last := time.Now()
	for done := false; !done; {
		select {
		case <-tick.C:
		case <-loadCtx.Done():
			wg.Wait()
			done = true
		}
		now := time.Now()
		if now.Sub(last) >= 100*time.Millisecond {
			load.printRow(stdout, now.Sub(start), now.Sub(last))
			last = now
		}
	}
	if err := p.stop(time.Second); err != nil {
		return err
	}
	total := load.totals()
	fmt.Fprintf(stdout, "\ntotal: %d sent, %d replies (%.2f%% lost)", total.sent, total.replies, lossPct(total.sent, total.replies))
	missing := []string{}
	for i, n := range names {
		fmt.Fprintf(stdout, ", %s %.1f%%", n, share(total.perBackend[i], total.replies))
		if total.perBackend[i] == 0 {
			missing = append(missing, n)
		}
	}
	fmt.Fprintln(stdout)
	if total.replies == 0 {
		return errors.New("demo: no replies came back through the proxy")
	}
	if len(missing) > 0 {
		return fmt.Errorf("demo: backends got no traffic: %s", strings.Join(missing, ", "))
	}
	return nil
}

// portFree reports whether a UDP socket can bind ap alone (the proxy binds
// with SO_REUSEPORT, which would share a port another fastudp holds).
func portFree(ap netip.AddrPort) bool {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// echoServer answers each datagram with its name, a colon and the datagram.
type echoServer struct {
	name string
	addr netip.AddrPort
	conn *net.UDPConn
	done chan struct{}
}

func startEcho(name string, want netip.AddrPort) (*echoServer, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(want))
	if err != nil {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(want.Addr(), 0)))
		if err != nil {
			return nil, fmt.Errorf("demo backend %s: %w", name, err)
		}
	}
	e := &echoServer{name: name, addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), conn: c, done: make(chan struct{})}
	go e.serve()
	return e, nil
}

func (e *echoServer) serve() {
	defer close(e.done)
	prefix := []byte(e.name + ":")
	buf := make([]byte, 65536)
	copy(buf, prefix)
	for {
		n, from, err := e.conn.ReadFromUDPAddrPort(buf[len(prefix):])
		if err != nil {
			return
		}
		_, _ = e.conn.WriteToUDPAddrPort(buf[:len(prefix)+n], from)
	}
}

func (e *echoServer) close() {
	e.conn.Close()
	<-e.done
}

// demoLoad is the demo's closed-loop load: each client sends a datagram,
// waits for the echo (or one second), and sends the next.
type demoLoad struct {
	names []string
	sent  atomic.Uint64
	mu    sync.Mutex // guards the fields below
	acc   demoTotals
	lat   []time.Duration // latencies since the last row
	shown demoTotals      // totals at the last row
}

type demoTotals struct {
	sent, replies uint64
	perBackend    []uint64
}

func newDemoLoad(names []string) *demoLoad {
	return &demoLoad{names: names, acc: demoTotals{perBackend: make([]uint64, len(names))},
		shown: demoTotals{perBackend: make([]uint64, len(names))}}
}

func (l *demoLoad) client(ctx context.Context, front netip.AddrPort) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(front))
	if err != nil {
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()
	req := make([]byte, 16)
	buf := make([]byte, 256)
	for seq := uint64(0); ctx.Err() == nil; seq++ {
		binary.BigEndian.PutUint64(req, seq)
		sentAt := time.Now()
		if _, err := c.Write(req); err != nil {
			return
		}
		l.sent.Add(1)
		_ = c.SetReadDeadline(sentAt.Add(time.Second))
		for {
			n, err := c.Read(buf)
			if err != nil {
				if ctx.Err() != nil {
					l.sent.Add(^uint64(0)) // cut short by the end of the run: not a loss
				}
				break // lost, or stopping
			}
			name, body, ok := bytes.Cut(buf[:n], []byte(":"))
			if !ok || len(body) < 8 || binary.BigEndian.Uint64(body) != seq {
				continue // a late echo of an earlier request
			}
			l.record(string(name), time.Since(sentAt))
			break
		}
	}
}

func (l *demoLoad) record(name string, d time.Duration) {
	i := slices.Index(l.names, name)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acc.replies++
	if i >= 0 {
		l.acc.perBackend[i]++
	}
	l.lat = append(l.lat, d)
}

func (l *demoLoad) totals() demoTotals {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.acc
	t.sent = l.sent.Load()
	t.perBackend = slices.Clone(l.acc.perBackend)
	return t
}

func (l *demoLoad) printRow(w io.Writer, elapsed, interval time.Duration) {
	l.mu.Lock()
	lat := l.lat
	l.lat = nil
	now := l.acc
	now.sent = l.sent.Load()
	now.perBackend = slices.Clone(l.acc.perBackend) // acc's slice keeps changing after Unlock
	prev := l.shown
	l.shown = now
	l.mu.Unlock()
	slices.Sort(lat)
	secs := interval.Seconds()
	sent, replies := now.sent-prev.sent, now.replies-prev.replies
	fmt.Fprintf(w, "%6.1fs %10.0f %10.0f %9s %9s %5.1f%%", elapsed.Seconds(), float64(sent)/secs, float64(replies)/secs,
		percentile(lat, 0.50), percentile(lat, 0.99), lossPct(sent, replies))
	for i := range l.names {
		fmt.Fprintf(w, " %7.1f%%", share(now.perBackend[i]-prev.perBackend[i], replies))
	}
	fmt.Fprintln(w)
}

func percentile(sorted []time.Duration, q float64) string {
	if len(sorted) == 0 {
		return "-"
	}
	return sorted[int(q*float64(len(sorted)-1))].Round(time.Microsecond).String()
}

func lossPct(sent, replies uint64) float64 {
	if sent == 0 || replies >= sent {
		return 0
	}
	return 100 * float64(sent-replies) / float64(sent)
}

func share(n, total uint64) float64 {
	if total == 0 {
		return 0
	}
	return 100 * float64(n) / float64(total)
}

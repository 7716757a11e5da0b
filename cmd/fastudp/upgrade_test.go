package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fastudp/fastudp/control"
)

// sourceEcho is a UDP echo backend that records, per flow (the payload's
// first word), every source address its datagrams came from.
type sourceEcho struct {
	addr netip.AddrPort
	mu   sync.Mutex
	srcs map[string]map[netip.AddrPort]int
}

func newSourceEcho(t *testing.T) *sourceEcho {
	t.Helper()
	e := &sourceEcho{srcs: map[string]map[netip.AddrPort]int{}}
	e.addr = udpResponder(t, 4<<20, func(b []byte, from netip.AddrPort) []byte {
		flow, _, _ := strings.Cut(string(b), " ")
		e.mu.Lock()
		if e.srcs[flow] == nil {
			e.srcs[flow] = map[netip.AddrPort]int{}
		}
		e.srcs[flow][from]++
		e.mu.Unlock()
		return b
	})
	return e
}

// loadFlow is one client socket sending "NAME SEQ" every period and
// recording which sequence numbers came back.
type loadFlow struct {
	name string
	mu   sync.Mutex
	sent int
	got  map[int]bool
}

// startLoad runs n flows against front until the returned stop is called;
// stop waits for the last replies.
func startLoad(t *testing.T, front netip.AddrPort, prefix string, n int, period time.Duration) ([]*loadFlow, func()) {
	t.Helper()
	flows := make([]*loadFlow, n)
	for i := range flows {
		flows[i] = &loadFlow{name: fmt.Sprintf("%s%d", prefix, i), got: map[int]bool{}}
	}
	stop := clientFlows(t, front, n, period, 1<<20, time.Second,
		func(i, seq int, c *net.UDPConn) {
			f := flows[i]
			if _, err := fmt.Fprintf(c, "%s %d", f.name, seq); err == nil {
				f.mu.Lock()
				f.sent = seq + 1
				f.mu.Unlock()
			}
		},
		func(i int, reply []byte) {
			f := flows[i]
			name, seq, _ := strings.Cut(string(reply), " ")
			if v, err := strconv.Atoi(seq); err == nil && name == f.name {
				f.mu.Lock()
				f.got[v] = true
				f.mu.Unlock()
			}
		})
	return flows, stop
}

// upgradeProc is a `fastudp run` whose pid changes with each upgrade.
type upgradeProc struct {
	bin, conf, sock string
	log             string // stdout and stderr of every generation
	ctl             *control.Client
	// notes are the sd_notify messages received, as systemd would.
	notesMu sync.Mutex
	notes   []string
}

func (p *upgradeProc) notified(msg string) bool {
	p.notesMu.Lock()
	defer p.notesMu.Unlock()
	for _, n := range p.notes {
		if n == msg {
			return true
		}
	}
	return false
}

// startUpgradable copies the binary into dir (so a test can replace it),
// runs it on conf and waits for its control API. Cleanup stops whichever
// process serves at the end.
func startUpgradable(t *testing.T, conf string) *upgradeProc {
	t.Helper()
	dir := t.TempDir()
	p := &upgradeProc{bin: filepath.Join(dir, "fastudp"), conf: filepath.Join(dir, "fastudp.toml"),
		sock: filepath.Join(dir, "ctl.sock"), log: filepath.Join(dir, "log")}
	installBinary(t, fastudpBin, p.bin)
	if err := os.WriteFile(p.conf, []byte(strings.ReplaceAll(conf, "@SOCK@", p.sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// A file, not a pipe: every generation writes to it, and Wait must not
	// wait for the later ones.
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { notify.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				return
			}
			p.notesMu.Lock()
			p.notes = append(p.notes, string(buf[:n]))
			p.notesMu.Unlock()
		}
	}()
	cmd := exec.Command(p.bin, "run", "--config", p.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+filepath.Join(dir, "notify"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	p.ctl = control.NewClient(p.sock)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		pid := cmd.Process.Pid
		if st, err := p.ctl.Status(ctx); err == nil {
			pid = st.PID
		}
		p.ctl.Close()
		_ = syscall.Kill(pid, syscall.SIGTERM)
		if !waitGone(pid, 10*time.Second) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("fastudp log:\n%s", b)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := p.ctl.Status(ctx)
		cancel()
		if err == nil {
			return p
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(p.log)
			t.Fatalf("fastudp did not start: %v\n%s", err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// installBinary copies src to dst through a rename, as a package manager
// replaces a running binary.
func installBinary(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// waitGone waits until pid has exited (or is a zombie nobody reaped yet).
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		if _, rest, ok := strings.Cut(string(stat), ") "); ok && strings.HasPrefix(rest, "Z") {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func (p *upgradeProc) pid(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return mustStatusPID(t, ctx, p.ctl)
}

// waitNewPID waits until the control API answers with a pid other than old.
func (p *upgradeProc) waitNewPID(t *testing.T, old int) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := p.ctl.Status(ctx)
		cancel()
		if err == nil && st.PID != old {
			return st.PID
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("pid still %d", old)
	return 0
}

func upgradeConfig(t *testing.T, front netip.AddrPort, backends ...netip.AddrPort) string {
	var b strings.Builder
	fmt.Fprintf(&b, "shards = 2\ngrace_period = \"1s\"\ncontrol = \"@SOCK@\"\nmetrics = \"127.0.0.1:%d\"\n", freeTCPAndUDPPort(t))
	fmt.Fprintf(&b, "[[listener]]\nname = \"l\"\naddress = %q\ncluster = \"c\"\n", front.String())
	b.WriteString("[[cluster]]\nname = \"c\"\naffinity = \"ip-port\"\nfront_timeout = \"60s\"\nback_timeout = \"60s\"\n")
	for i, be := range backends {
		fmt.Fprintf(&b, "  [[cluster.backend]]\n  name = \"b%d\"\n  address = %q\n", i, be.String())
	}
	return b.String()
}

// TestUpgradeUnderLoad: 20 long flows send 50 datagrams/s each through two
// shards to two echo backends while the proxy upgrades three times in a
// row, by SIGUSR2 and by `ctl upgrade`. Every datagram of every flow gets its
// echo (0 lost), each backend sees one source address and port per flow
// across all the upgrades, ctl status shows each new pid, each old process
// exits, and new flows work afterwards.
func TestUpgradeUnderLoad(t *testing.T) { upgradeUnderLoad(t, "", 3) }

// TestUpgradeSteeringHash is TestUpgradeUnderLoad with the eBPF steering
// program (hash policy): each new process attaches its own program to the
// handed-over sockets, and steering stays active.
func TestUpgradeSteeringHash(t *testing.T) {
	requireRoot(t)
	p := upgradeUnderLoad(t, "steering = \"hash\"\n", 2)
	b, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "active=hash"); n != 3 {
		t.Errorf("%d processes logged active=hash steering, want 3:\n%s", n, grepLines(string(b), "steering"))
	}
}

// upgradeUnderLoad runs the load and upgrades of TestUpgradeUnderLoad with
// extra top-level configuration.
func upgradeUnderLoad(t *testing.T, extra string, upgrades int) *upgradeProc {
	b1, b2 := newSourceEcho(t), newSourceEcho(t)
	front := netip.MustParseAddrPort(freeUDPPort(t))
	p := startUpgradable(t, extra+upgradeConfig(t, front, b1.addr, b2.addr))
	flows, stop := startLoad(t, front, "f", 20, 20*time.Millisecond)
	time.Sleep(time.Second)
	pids := []int{p.pid(t)}
	if !p.notified("READY=1") {
		t.Error("no READY=1 for the service manager")
	}
	// sentAt[k][f]: datagrams flow f had sent when upgrade k started; the
	// load must run between upgrades (each flow sends across each one).
	var sentAt [][]int
	mark := func() {
		row := make([]int, len(flows))
		for i, f := range flows {
			f.mu.Lock()
			row[i] = f.sent
			f.mu.Unlock()
		}
		sentAt = append(sentAt, row)
	}
	for i := range upgrades {
		mark()
		old := pids[len(pids)-1]
		var pid int
		if i%2 == 0 {
			if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
				t.Fatal(err)
			}
			pid = p.waitNewPID(t, old)
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			res, err := p.ctl.Upgrade(ctx)
			cancel()
			if err != nil {
				t.Fatalf("ctl upgrade: %v", err)
			}
			t.Logf("ctl upgrade: %+v", res)
			if res.OldPID != old || res.Flows < len(flows) {
				t.Errorf("upgrade result %+v: want old pid %d and at least %d flows", res, old, len(flows))
			}
			pid = p.waitNewPID(t, old)
			if pid != res.NewPID {
				t.Errorf("status pid %d, upgrade said %d", pid, res.NewPID)
			}
		}
		if !waitGone(old, 10*time.Second) {
			t.Errorf("old process %d still running", old)
		}
		pids = append(pids, pid)
		if !p.notified(fmt.Sprintf("MAINPID=%d", pid)) {
			t.Errorf("the service manager was not told MAINPID=%d", pid)
		}
		time.Sleep(time.Second)
	}
	mark()
	stop()
	t.Logf("pids %v", pids)
	for k := 1; k < len(sentAt); k++ {
		for i := range flows {
			if sentAt[k][i] <= sentAt[k-1][i] {
				t.Errorf("flow %d sent nothing across upgrade %d", i, k)
			}
		}
	}
	total := 0
	for _, f := range flows {
		f.mu.Lock()
		lost := 0
		for seq := range f.sent {
			if !f.got[seq] {
				lost++
			}
		}
		total += f.sent
		if lost > 0 {
			t.Errorf("flow %s: %d of %d datagrams lost", f.name, lost, f.sent)
		}
		f.mu.Unlock()
	}
	t.Logf("%d datagrams over %d flows, none lost", total, len(flows))
	seen := 0
	for _, b := range []*sourceEcho{b1, b2} {
		b.mu.Lock()
		for flow, srcs := range b.srcs {
			if len(srcs) != 1 {
				t.Errorf("backend %v saw flow %s from %d sources: %v", b.addr, flow, len(srcs), srcs)
			}
			seen++
		}
		b.mu.Unlock()
	}
	if seen != len(flows) {
		t.Errorf("backends saw %d flows, want %d (a flow that moved backends counts twice)", seen, len(flows))
	}
	// A new flow after the upgrades.
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if _, err := c.Write([]byte("new 0")); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "new 0" {
		t.Fatalf("new flow: %q, %v", buf[:n], err)
	}
	return p
}

// TestUpgradeFailureKeepsServing: a new binary that exits at once, one that
// never answers (the 10 s handover timeout), one that speaks another
// handover protocol, one that dies right after the commit (before its shards
// run), and a configuration whose seed changed
// each make the upgrade fail with the reason reported, while the old process
// serves on (same pid, a live flow loses nothing). Then a good binary
// upgrades.
func TestUpgradeFailureKeepsServing(t *testing.T) {
	be := newSourceEcho(t)
	front := netip.MustParseAddrPort(freeUDPPort(t))
	p := startUpgradable(t, upgradeConfig(t, front, be.addr))
	pid := p.pid(t)
	flows, stop := startLoad(t, front, "f", 4, 20*time.Millisecond)

	other := filepath.Join(t.TempDir(), "fastudp-proto")
	dies := filepath.Join(t.TempDir(), "fastudp-dies")
	for bin, flag := range map[string]string{other: "-X main.handoverProtocol=999", dies: "-X main.handoverFault=exit-after-commit"} {
		build := exec.Command("go", "build", "-ldflags", flag, "-o", bin, ".")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	script := filepath.Join(t.TempDir(), "exits")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	hangs := filepath.Join(t.TempDir(), "hangs")
	if err := os.WriteFile(hangs, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(p.conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, bin, conf, want string
	}{
		{"exits at once", script, "", "exit status 3"},
		{"never answers", hangs, "", "timeout"},
		{"other protocol", other, "", "version mismatch"},
		{"dies after the commit", dies, "", "exited after the commit"},
		{"seed changed", fastudpBin, "seed = 5\n", "seed"},
	} {
		installBinary(t, tc.bin, p.bin)
		if err := os.WriteFile(p.conf, append([]byte(tc.conf), conf...), 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := p.ctl.Upgrade(ctx)
		cancel()
		t.Logf("%s: %v", tc.name, err)
		var ae *control.APIError
		if !errors.As(err, &ae) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "still serving") {
			t.Errorf("%s: err %v, want an API error saying %q and still serving", tc.name, err, tc.want)
		}
		if got := p.pid(t); got != pid {
			t.Fatalf("%s: pid %d, want %d", tc.name, got, pid)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := os.WriteFile(p.conf, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	installBinary(t, fastudpBin, p.bin)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	res, err := p.ctl.Upgrade(ctx)
	cancel()
	if err != nil {
		t.Fatalf("good upgrade: %v", err)
	}
	if got := p.waitNewPID(t, pid); got != res.NewPID {
		t.Errorf("pid %d, upgrade said %d", got, res.NewPID)
	}
	time.Sleep(500 * time.Millisecond)
	stop()
	for _, f := range flows {
		f.mu.Lock()
		for seq := range f.sent {
			if !f.got[seq] {
				t.Errorf("flow %s: datagram %d of %d lost", f.name, seq, f.sent)
				break
			}
		}
		f.mu.Unlock()
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	for flow, srcs := range be.srcs {
		if len(srcs) != 1 {
			t.Errorf("flow %s from %d sources", flow, len(srcs))
		}
	}
}

// dnsEcho answers every DNS query, over UDP and TCP on one port, with the
// query itself with QR set.
func dnsEcho(t *testing.T) netip.AddrPort {
	t.Helper()
	port := freeTCPAndUDPPort(t)
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close(); l.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := u.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n > 2 {
				buf[2] |= 0x80
				_, _ = u.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var msg [4098]byte
				for {
					if _, err := io.ReadFull(c, msg[:2]); err != nil {
						return
					}
					n := int(msg[0])<<8 | int(msg[1])
					if _, err := io.ReadFull(c, msg[2:2+n]); err != nil || n < 3 {
						return
					}
					msg[4] |= 0x80
					if _, err := c.Write(msg[:2+n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
}

// TestUpgradeDNSMode upgrades a DNS-mode proxy with DNS over TCP: queries
// over UDP and TCP are answered by the new process (whose TCP listener is
// the one handed over).
func TestUpgradeDNSMode(t *testing.T) {
	be := dnsEcho(t)
	front := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeTCPAndUDPPort(t)))
	conf := fmt.Sprintf("shards = 1\ngrace_period = \"1s\"\ncontrol = \"@SOCK@\"\n[[listener]]\nname = \"dns\"\naddress = %q\ncluster = \"c\"\n"+
		"[[cluster]]\nname = \"c\"\nmode = \"dns\"\n  [[cluster.backend]]\n  address = %q\n", front.String(), be.String())
	p := startUpgradable(t, conf)
	for i := range 3 {
		old := p.pid(t)
		q := mustQuery(t, uint16(10+i), "upgrade.example.test.", 1, 0)
		if _, err := udpQuery(front, q, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := p.ctl.Upgrade(ctx)
		cancel()
		if err != nil {
			t.Fatalf("upgrade %d: %v", i, err)
		}
		if got := p.waitNewPID(t, old); got != res.NewPID {
			t.Fatalf("pid %d, upgrade said %d", got, res.NewPID)
		}
		if a, err := udpQuery(front, q, 5*time.Second); err != nil || len(a) != len(q) {
			t.Fatalf("udp after upgrade %d: %v", i, err)
		}
		if a, err := tcpQuery(front, q); err != nil || len(a) != len(q) {
			t.Fatalf("tcp after upgrade %d: %q, %v", i, a, err)
		}
	}
}

// TestUpgradeManyFlows hands over FASTUDP_UPGRADE_FLOWS flows (default
// 2000), each with its own upstream socket: every flow answers after the
// upgrade from the same source address and port, and the log shows how long
// the shards were paused (the figure in bench/RESULTS.md comes from
// FASTUDP_UPGRADE_FLOWS=10000).
func TestUpgradeManyFlows(t *testing.T) {
	n := 2000
	if v := os.Getenv("FASTUDP_UPGRADE_FLOWS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("FASTUDP_UPGRADE_FLOWS=%q", v)
		}
	}
	be := newSourceEcho(t)
	front := netip.MustParseAddrPort(freeUDPPort(t))
	p := startUpgradable(t, fmt.Sprintf("max_flows = %d\n", 2*n)+upgradeConfig(t, front, be.addr))
	conns := make([]*net.UDPConn, n)
	for i := range conns {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	round := func(tag string) {
		t.Helper()
		var wg sync.WaitGroup
		var mu sync.Mutex
		missing := 0
		// At most 256 in flight: the test's own sockets must not overflow.
		sem := make(chan struct{}, 256)
		for i, c := range conns {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				defer wg.Done()
				want := fmt.Sprintf("m%d %s", i, tag)
				buf := make([]byte, 64)
				for try := 0; try < 3; try++ { // a datagram lost before the proxy (a full client buffer) is the test's, not the proxy's
					if _, err := c.Write([]byte(want)); err != nil {
						continue
					}
					_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
					if n, err := c.Read(buf); err == nil && string(buf[:n]) == want {
						return
					}
				}
				mu.Lock()
				missing++
				mu.Unlock()
			}()
		}
		wg.Wait()
		if missing > 0 {
			t.Fatalf("%s: %d of %d flows did not answer", tag, missing, len(conns))
		}
	}
	round("before")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	res, err := p.ctl.Upgrade(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d flows handed over, shards paused %v", res.Flows, res.Paused)
	if res.Flows != n {
		t.Errorf("%d flows handed over, want %d", res.Flows, n)
	}
	p.waitNewPID(t, res.OldPID)
	round("after")
	be.mu.Lock()
	defer be.mu.Unlock()
	moved := 0
	for _, srcs := range be.srcs {
		if len(srcs) != 1 {
			moved++
		}
	}
	if moved > 0 || len(be.srcs) != n {
		t.Errorf("%d of %d flows seen from more than one source (%d flows seen)", moved, n, len(be.srcs))
	}
}

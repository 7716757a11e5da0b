package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/balance"
	"github.com/fastudp/fastudp/control"
	"github.com/fastudp/fastudp/core"
)

// The scale-out lab (TestScaleOutECMP): every address below lives in a
// network namespace the test creates, so nothing clashes with the host or
// with a parallel run.
//
//	clients ns: eth0 10.98.0.2/24; 10.98.128.0/17 is local (an AnyIP route
//	            on lo), so a client can send from any of 32k addresses
//	router ns:  c0 10.98.0.1/24, nK 10.96.K.1/24 (node K), bJ 10.97.J.1/24
//	            (backend J); VIP/32 via a resilient nexthop group over the
//	            nodes; net.ipv4.fib_multipath_hash_policy = 1 (L4 hash)
//	node K ns:  eth0 10.96.K.2/24, the VIP on lo, default via the router,
//	            fastudp listening on VIP:5300
//	backend J:  eth0 10.97.J.2/24, default via the router, an echo on :5301
//	            answering "bJ <source IP> <payload>", so the client learns the
//	            backend and the node (the source of the node's upstream
//	            socket) of every reply
const (
	ecmpVIP         = "10.99.0.100"
	ecmpPort        = 5300
	ecmpBackendPort = 5301
	ecmpGroup       = "100" // the router's nexthop group; nexthop K is node K
	ecmpSeed        = 0x5ca1e0
	ecmpOddSeed     = 0x5ca1e1 // the control node's seed: one bit off
	ecmpLiveFlows   = 300
	ecmpProbes      = 10000
	ecmpPeriod      = 100 * time.Millisecond // live flows send once per round
)

var ecmpSeq atomic.Int32

// ecmpRequireNetns skips without root or the ip command, and fails under
// CI=true (CI runs as root with iproute2).
func ecmpRequireNetns(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root to create network namespaces"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs the ip command (iproute2)"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: " + why)
	}
	t.Skip(why)
}

// ecmpLab is the namespaces of one test run.
type ecmpLab struct {
	t        *testing.T
	dir      string
	router   string
	clients  string
	nodes    []string // nodes[k-1] is node k
	backends []string // backends[j-1] is backend j
}

func ecmpRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (l *ecmpLab) ip(ns string, args ...string) {
	l.t.Helper()
	ecmpRun(l.t, append([]string{"ip", "-n", ns}, args...)...)
}

// newECMPLab builds the topology above with nodes and backends namespaces;
// every namespace is removed when the test ends.
func newECMPLab(t *testing.T, nodes, backends int) *ecmpLab {
	t.Helper()
	prefix := fmt.Sprintf("fudp-so%d-%d", os.Getpid(), ecmpSeq.Add(1))
	l := &ecmpLab{t: t, dir: t.TempDir(), router: prefix + "-r", clients: prefix + "-c"}
	for k := 1; k <= nodes; k++ {
		l.nodes = append(l.nodes, fmt.Sprintf("%s-n%d", prefix, k))
	}
	for j := 1; j <= backends; j++ {
		l.backends = append(l.backends, fmt.Sprintf("%s-b%d", prefix, j))
	}
	all := append(append([]string{l.router, l.clients}, l.nodes...), l.backends...)
	for _, ns := range all {
		ecmpRun(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		l.ip(ns, "link", "set", "lo", "up")
	}
	// link joins the router (dev rdev, 10.N.1/24) and ns (eth0, 10.N.2/24),
	// ns routing everything through the router.
	link := func(rdev, ns, net string) {
		l.ip(l.router, "link", "add", rdev, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip(l.router, "addr", "add", net+".1/24", "dev", rdev)
		l.ip(l.router, "link", "set", rdev, "up")
		l.ip(ns, "addr", "add", net+".2/24", "dev", "eth0")
		l.ip(ns, "link", "set", "eth0", "up")
		l.ip(ns, "route", "add", "default", "via", net+".1")
	}
	link("c0", l.clients, "10.98.0")
	l.ip(l.clients, "route", "add", "local", "10.98.128.0/17", "dev", "lo")
	l.ip(l.router, "route", "add", "10.98.128.0/17", "via", "10.98.0.2")
	for k, ns := range l.nodes {
		link(fmt.Sprintf("n%d", k+1), ns, fmt.Sprintf("10.96.%d", k+1))
		l.ip(ns, "addr", "add", ecmpVIP+"/32", "dev", "lo")
		l.ip(l.router, "nexthop", "add", "id", strconv.Itoa(k+1), "via", fmt.Sprintf("10.96.%d.2", k+1), "dev", fmt.Sprintf("n%d", k+1))
	}
	for j, ns := range l.backends {
		link(fmt.Sprintf("b%d", j+1), ns, fmt.Sprintf("10.97.%d", j+1))
	}
	// /proc/sys/net shows the namespace of the thread that opens it.
	var err error
	l.inNS(l.router, func() {
		for _, f := range []string{"ip_forward", "fib_multipath_hash_policy"} {
			path := "/proc/sys/net/ipv4/" + f
			if err = os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
				return
			}
			var got []byte
			if got, err = os.ReadFile(path); err == nil && strings.TrimSpace(string(got)) != "1" {
				err = fmt.Errorf("%s is %q after writing 1", path, got)
			}
			if err != nil {
				return
			}
		}
	})
	if err != nil {
		t.Fatalf("router sysctls: %v", err)
	}
	return l
}

// group points the VIP's resilient nexthop group at nodes (1-based),
// creating it and the route on the first call. A resilient group moves only
// the hash buckets of nexthops that leave (to those under their share), so
// flows on the remaining nodes stay where they are.
func (l *ecmpLab) group(first bool, nodes ...int) {
	l.t.Helper()
	ids := make([]string, len(nodes))
	for i, k := range nodes {
		ids[i] = strconv.Itoa(k)
	}
	if first {
		l.ip(l.router, "nexthop", "add", "id", ecmpGroup, "group", strings.Join(ids, "/"), "type", "resilient", "buckets", "128")
		l.ip(l.router, "route", "add", ecmpVIP+"/32", "nhid", ecmpGroup)
		return
	}
	l.ip(l.router, "nexthop", "replace", "id", ecmpGroup, "group", strings.Join(ids, "/"), "type", "resilient")
}

// inNS runs f on an OS thread moved into namespace ns: sockets f creates
// belong to ns whatever thread uses them later. The thread is not returned
// to the scheduler.
func (l *ecmpLab) inNS(ns string, f func()) {
	l.t.Helper()
	done := make(chan error, 1)
	go func() {
		var err error
		defer func() { done <- err }()
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		var fd int
		if fd, err = unix.Open("/var/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err == nil {
			f()
		}
	}()
	if err := <-done; err != nil {
		l.t.Fatalf("entering namespace %s: %v", ns, err)
	}
}

func ecmpBackendAddr(j int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 97, byte(j), 2}), ecmpBackendPort)
}

// echo starts backend j's echo in its namespace.
func (l *ecmpLab) echo(j int) {
	l.t.Helper()
	var c *net.UDPConn
	var err error
	l.inNS(l.backends[j-1], func() { c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ecmpBackendAddr(j))) })
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { c.Close() })
	ecmpBigBuffers(l.t, c)
	prefix := fmt.Sprintf("b%d ", j)
	go func() {
		buf := make([]byte, 2048)
		out := make([]byte, 0, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			out = append(append(append(append(out[:0], prefix...), from.Addr().String()...), ' '), buf[:n]...)
			_, _ = c.WriteToUDPAddrPort(out, from)
		}
	}()
}

// ecmpBigBuffers gives c 4 MiB socket buffers (past net.core.rmem_max: the
// test runs as root), so a reader goroutine the busy test machine leaves
// waiting for a while loses no datagram.
func ecmpBigBuffers(t *testing.T, c *net.UDPConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	err = rc.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_RCVBUFFORCE, unix.SO_SNDBUFFORCE} {
			if err == nil {
				err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 4<<20)
			}
		}
	})
	if err != nil {
		t.Fatalf("socket buffers: %v", err)
	}
}

// ecmpNode is one fastudp process in a node namespace.
type ecmpNode struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	sock   string
}

// startNode runs fastudp in node k's namespace with seed and backends 1..nb,
// and waits for its control socket.
func (l *ecmpLab) startNode(k int, seed uint64, nb int) *ecmpNode {
	l.t.Helper()
	n := &ecmpNode{sock: filepath.Join(l.dir, fmt.Sprintf("n%d.sock", k)), stderr: &lockedBuffer{}}
	var b strings.Builder
	fmt.Fprintf(&b, "shards = 2\nseed = %#x\nlog_level = \"warn\"\ngrace_period = \"0s\"\ncontrol = %q\n", seed, n.sock)
	fmt.Fprintf(&b, "[[listener]]\nname = \"vip\"\naddress = \"%s:%d\"\ncluster = \"c\"\n", ecmpVIP, ecmpPort)
	b.WriteString("[[cluster]]\nname = \"c\"\nlb = \"maglev\"\naffinity = \"ip\"\nfront_timeout = \"5s\"\nback_timeout = \"5s\"\n")
	for j := 1; j <= nb; j++ {
		fmt.Fprintf(&b, "  [[cluster.backend]]\n  address = %q\n", ecmpBackendAddr(j).String())
	}
	file := filepath.Join(l.dir, fmt.Sprintf("n%d.toml", k))
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		l.t.Fatal(err)
	}
	// ip netns exec execs fastudp: the process is fastudp itself.
	n.cmd = exec.Command("ip", "netns", "exec", l.nodes[k-1], fastudpBin, "run", "--config", file)
	n.cmd.Stderr = n.stderr
	if err := n.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- n.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = n.cmd.Process.Kill()
		}
		if l.t.Failed() {
			l.t.Logf("node %d stderr:\n%s", k, n.stderr)
		}
	})
	ctl := control.NewClient(n.sock)
	defer ctl.Close()
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := ctl.Status(ctx)
		cancel()
		if err == nil {
			return n
		}
		if time.Now().After(end) {
			l.t.Fatalf("node %d does not answer on %s: %v\n%s", k, n.sock, err, n.stderr)
		}
	}
}

// placement returns the placement fingerprint `ctl status` reports for the
// node's cluster.
func (n *ecmpNode) placement(t *testing.T) string {
	t.Helper()
	ctl := control.NewClient(n.sock)
	defer ctl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := ctl.Status(ctx)
	if err != nil {
		t.Fatalf("status of %s: %v", n.sock, err)
	}
	if len(st.Clusters) != 1 {
		t.Fatalf("status of %s: clusters %+v", n.sock, st.Clusters)
	}
	return st.Clusters[0].Placement
}

// ecmpReply is what one answered datagram tells: the backend that echoed
// it and the node (1-based) that forwarded it.
type ecmpReply struct {
	backend string
	node    int
}

// ecmpSender sends datagrams to the VIP from many client addresses over one
// socket in the clients namespace (IP_PKTINFO picks each one's source), and
// hands each reply to a handler.
type ecmpSender struct {
	conn *net.UDPConn
	vip  netip.AddrPort
	oobs [][]byte // oobs[i]: the control message giving client address i
}

func (l *ecmpLab) sender(first netip.Addr, n int, handle func(fields []string, r ecmpReply)) *ecmpSender {
	l.t.Helper()
	var c *net.UDPConn
	var err error
	l.inNS(l.clients, func() { c, err = net.ListenUDP("udp4", &net.UDPAddr{}) })
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { c.Close() })
	ecmpBigBuffers(l.t, c)
	s := &ecmpSender{conn: c, vip: netip.AddrPortFrom(netip.MustParseAddr(ecmpVIP), ecmpPort)}
	for a := first; len(s.oobs) < n; a = a.Next() {
		s.oobs = append(s.oobs, unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: a.As4()}))
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			k, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			// "bJ 10.96.K.2 payload..."
			f := strings.Fields(string(buf[:k]))
			if len(f) < 3 {
				continue
			}
			from, err := netip.ParseAddr(f[1])
			if err != nil || !from.Is4() {
				continue
			}
			handle(f[2:], ecmpReply{backend: f[0], node: int(from.As4()[2])})
		}
	}()
	return s
}

func (s *ecmpSender) send(i int, payload []byte) {
	_, _, _ = s.conn.WriteMsgUDPAddrPort(payload, s.oobs[i], s.vip)
}

// ecmpLive is the long-running flows: client address i sends "live i r"
// in round r, one round per ecmpPeriod, and every reply is recorded.
type ecmpLive struct {
	s     *ecmpSender
	round atomic.Uint32
	mu    sync.Mutex
	obs   [][]ecmpObs // per flow
	stop  chan struct{}
	done  chan struct{}
}

type ecmpObs struct {
	round uint32
	ecmpReply
}

func (l *ecmpLab) startLive(n int) *ecmpLive {
	lv := &ecmpLive{obs: make([][]ecmpObs, n), stop: make(chan struct{}), done: make(chan struct{})}
	lv.s = l.sender(netip.MustParseAddr("10.98.128.1"), n, func(f []string, r ecmpReply) {
		if len(f) != 3 || f[0] != "live" {
			return
		}
		i, err1 := strconv.Atoi(f[1])
		rd, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || i < 0 || i >= n {
			return
		}
		lv.mu.Lock()
		lv.obs[i] = append(lv.obs[i], ecmpObs{round: uint32(rd), ecmpReply: r})
		lv.mu.Unlock()
	})
	go func() {
		defer close(lv.done)
		tick := time.NewTicker(ecmpPeriod)
		defer tick.Stop()
		var buf []byte
		for {
			select {
			case <-lv.stop:
				return
			case <-tick.C:
			}
			r := lv.round.Add(1)
			for i := range n {
				buf = fmt.Appendf(buf[:0], "live %d %d", i, r)
				lv.s.send(i, buf)
			}
		}
	}()
	l.t.Cleanup(lv.halt)
	return lv
}

func (lv *ecmpLive) halt() {
	select {
	case <-lv.stop:
	default:
		close(lv.stop)
	}
	<-lv.done
}

// wait lets n more rounds start and returns the round then current.
func (lv *ecmpLive) wait(n uint32) uint32 {
	end := lv.round.Load() + n
	for lv.round.Load() < end {
		time.Sleep(ecmpPeriod / 4)
	}
	return end
}

// ecmpSeen is what one flow's replies showed in a window of rounds.
type ecmpSeen struct {
	backends map[string]bool
	nodes    map[int]bool
}

// one returns the single backend and node of s, or ok false when s has no
// reply or more than one backend or node.
func (s ecmpSeen) one() (backend string, node int, ok bool) {
	if len(s.backends) != 1 || len(s.nodes) != 1 {
		return "", 0, false
	}
	for b := range s.backends {
		backend = b
	}
	for k := range s.nodes {
		node = k
	}
	return backend, node, true
}

// window returns what each flow's datagrams of rounds [from, to) showed.
func (lv *ecmpLive) window(from, to uint32) []ecmpSeen {
	lv.mu.Lock()
	defer lv.mu.Unlock()
	out := make([]ecmpSeen, len(lv.obs))
	for i, flow := range lv.obs {
		out[i] = ecmpSeen{backends: map[string]bool{}, nodes: map[int]bool{}}
		for _, o := range flow {
			if o.round >= from && o.round < to {
				out[i].backends[o.backend] = true
				out[i].nodes[o.node] = true
			}
		}
	}
	return out
}

// probe opens one new flow per client address 10.98.192.0 + i (i < n),
// from a fresh source port, and returns the reply each got (zero when none
// came after a few tries). Replies to a retry come from the flow its first
// datagram opened, so each address is one flow.
func (l *ecmpLab) probe(n int) []ecmpReply {
	l.t.Helper()
	got := make([]ecmpReply, n)
	var mu sync.Mutex
	s := l.sender(netip.MustParseAddr("10.98.192.0"), n, func(f []string, r ecmpReply) {
		if len(f) != 2 || f[0] != "probe" {
			return
		}
		if i, err := strconv.Atoi(f[1]); err == nil && i >= 0 && i < n {
			mu.Lock()
			got[i] = r
			mu.Unlock()
		}
	})
	defer s.conn.Close()
	var buf []byte
	for try := 0; try < 5; try++ {
		sent := 0
		for i := range n {
			mu.Lock()
			done := got[i].backend != ""
			mu.Unlock()
			if done {
				continue
			}
			buf = fmt.Appendf(buf[:0], "probe %d", i)
			s.send(i, buf)
			if sent++; sent%100 == 0 { // about 5000 new flows a second
				time.Sleep(20 * time.Millisecond)
			}
		}
		if sent == 0 {
			break
		}
		time.Sleep(time.Second)
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]ecmpReply(nil), got...)
}

// ecmpModel returns, for client address 10.98.192.0 + i (i < n), the
// backend name Maglev picks with seed over backends 1..nb under affinity ip:
// the pure function every node is meant to compute on its own.
func ecmpModel(t *testing.T, seed uint64, nb, n int) []string {
	t.Helper()
	var bs []balance.Backend
	names := map[netip.AddrPort]string{}
	for j := 1; j <= nb; j++ {
		bs = append(bs, balance.Backend{ID: core.BackendID(j - 1), Addr: ecmpBackendAddr(j), Weight: 100})
		names[ecmpBackendAddr(j)] = fmt.Sprintf("b%d", j)
	}
	tab, err := balance.New(balance.Maglev, seed, bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, n)
	a := netip.MustParseAddr("10.98.192.0")
	for i := range out {
		b, _ := tab.Lookup(core.AffinityHash(seed, netip.AddrPortFrom(a, 1), core.AffinityIP))
		out[i] = names[b.Addr]
		a = a.Next()
	}
	return out
}

func ecmpPct(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// TestScaleOutECMP runs fastudp as three nodes behind a router that spreads
// the VIP's flows over them with a resilient ECMP nexthop group (L4 hash),
// every node with the same seed and backend list (Maglev, affinity ip) and
// no state shared, in front of three backends. ecmpLiveFlows client
// addresses send every ecmpPeriod and record which backend and node answer.
//
//  1. Node 2 crashes (SIGKILL) and the router withdraws it (as BGP would
//     after its hold time): the flows it carried reach nodes 1 and 3 as new
//     flows, and >= 99% of them keep their backend, because those nodes
//     compute the same Maglev choice for the client; flows on nodes 1 and 3
//     stay on their node and backend.
//  2. Control: node 3's buckets are handed to node 4, identical but for its
//     seed. Its flows must mostly change backend (>= 50%; ~2/3 expected),
//     which shows the measurement of step 1 detects nodes that disagree.
//     Node 3 is then put back.
//  3. A fourth backend is added to nodes 1 and 3 with `fastudp ctl backend
//     add`, as an operator would on each node. Live flows keep their backend
//     (the flow table pins them). What moves is where new flows go: the
//     test opens a fresh flow for each of ecmpProbes client addresses before
//     and after the change (fresh source ports, so new flows: with affinity
//     ip the backend depends only on the address) and counts the addresses
//     whose backend changed: <= 1/B + 1% with B = 4, and at least 20% now
//     reach the new backend (both nodes took the change). ECMP sends the
//     two probes of one address to either node independently, so any
//     disagreement between the nodes would show up as movement too, and
//     every choice must equal what balance.Maglev computes in the test.
func TestScaleOutECMP(t *testing.T) {
	ecmpRequireNetns(t)
	l := newECMPLab(t, 4, 4)
	for j := 1; j <= 4; j++ {
		l.echo(j)
	}
	nodes := map[int]*ecmpNode{}
	for k := 1; k <= 3; k++ {
		nodes[k] = l.startNode(k, ecmpSeed, 3)
	}
	nodes[4] = l.startNode(4, ecmpOddSeed, 3)
	// What an operator checks: `fastudp ctl status` shows one placement on
	// every node with the same seed and backends, another on node 4.
	if p := []string{nodes[1].placement(t), nodes[2].placement(t), nodes[3].placement(t), nodes[4].placement(t)}; p[0] != p[1] || p[0] != p[2] || p[0] == p[3] {
		t.Fatalf("placements of nodes 1-4: %v, want the first three equal and the fourth different", p)
	}
	l.group(true, 1, 2, 3)

	lv := l.startLive(ecmpLiveFlows)
	lv.wait(20)

	// 1. Node 2 fails.
	rKill := lv.round.Load()
	if err := nodes[2].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // failure detection
	l.group(false, 1, 3)
	rWithdrawn := lv.wait(3)
	rW1 := lv.wait(15)

	// 2. Control: node 3's flows go to node 4 (another seed), then back.
	l.group(false, 1, 4)
	rOdd := lv.wait(3)
	rW2 := lv.wait(15)
	l.group(false, 1, 3)
	rBack := lv.wait(5)

	// 3. A backend is added on every node; fresh flows before and after.
	before := l.probe(ecmpProbes)
	rAdd := lv.wait(5)
	for _, k := range []int{1, 3} {
		var out strings.Builder
		cmd := exec.Command(fastudpBin, "ctl", "--control", nodes[k].sock, "backend", "add", "c", ecmpBackendAddr(4).String())
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("node %d: fastudp ctl backend add: %v\n%s", k, err, &out)
		}
	}
	rAdded := lv.round.Load() + 1
	if p1, p3 := nodes[1].placement(t), nodes[3].placement(t); p1 != p3 {
		t.Errorf("after the backend add, placements of nodes 1 and 3 differ: %s, %s", p1, p3)
	}
	after := l.probe(ecmpProbes)
	rW4 := lv.wait(10)
	time.Sleep(500 * time.Millisecond) // the last replies
	lv.halt()

	// Step 1: the flows before the failure.
	w0 := lv.window(rKill-10, rKill)
	perNode := map[int]int{}
	answered := 0
	for i, s := range w0 {
		if len(s.backends) == 0 {
			continue
		}
		answered++
		_, k, ok := s.one()
		if !ok {
			t.Errorf("flow %d: replies from backends %v via nodes %v within one second", i, s.backends, s.nodes)
			continue
		}
		perNode[k]++
	}
	t.Logf("before the failure: %d of %d flows answered, per node %v", answered, ecmpLiveFlows, perNode)
	if answered < ecmpLiveFlows*99/100 {
		t.Fatalf("only %d of %d flows answered before the failure", answered, ecmpLiveFlows)
	}
	for k := 1; k <= 3; k++ {
		if perNode[k] < ecmpLiveFlows*15/100 {
			t.Fatalf("node %d carried %d flows: ECMP did not spread them (per node %v)", k, perNode[k], perNode)
		}
	}

	// After it: node 2's flows moved and kept their backend; the others
	// stayed.
	w1 := lv.window(rWithdrawn, rW1)
	moved, movedKept, stayed, stayedKept, fromDead := 0, 0, 0, 0, 0
	for i := range w0 {
		b0, k0, ok := w0[i].one()
		if !ok {
			continue
		}
		if w1[i].nodes[2] {
			fromDead++
		}
		b1, k1, ok1 := w1[i].one()
		if k0 == 2 {
			moved++
			if ok1 && b1 == b0 && k1 != 2 {
				movedKept++
			}
			continue
		}
		stayed++
		if ok1 && b1 == b0 && k1 == k0 {
			stayedKept++
		}
	}
	t.Logf("node 2 down: %d of its %d flows kept their backend on another node (%.1f%%); %d of %d other flows kept node and backend (%.1f%%)",
		movedKept, moved, ecmpPct(movedKept, moved), stayedKept, stayed, ecmpPct(stayedKept, stayed))
	if fromDead > 0 {
		t.Errorf("%d flows answered via node 2 after its withdrawal", fromDead)
	}
	if movedKept*100 < moved*99 {
		t.Errorf("only %d of node 2's %d flows kept their backend (want >= 99%%)", movedKept, moved)
	}
	if stayedKept*100 < stayed*99 {
		t.Errorf("only %d of %d flows on nodes 1 and 3 kept their node and backend (want >= 99%%)", stayedKept, stayed)
	}

	// Step 2: the control with another seed.
	w2 := lv.window(rOdd, rW2)
	odd, oddChanged, oddArrived := 0, 0, 0
	for i := range w1 {
		b1, k1, ok := w1[i].one()
		if !ok || k1 != 3 {
			continue
		}
		odd++
		b2, k2, ok2 := w2[i].one()
		if !ok2 || k2 != 4 {
			continue
		}
		oddArrived++
		if b2 != b1 {
			oddChanged++
		}
	}
	t.Logf("control: %d of node 3's %d flows reached node 4 (seed %#x, not %#x), %d changed backend (%.1f%%)",
		oddArrived, odd, ecmpOddSeed, ecmpSeed, oddChanged, ecmpPct(oddChanged, oddArrived))
	if oddArrived*100 < odd*99 || odd < ecmpLiveFlows*15/100 {
		t.Errorf("control: only %d of node 3's %d flows reached node 4", oddArrived, odd)
	}
	if oddChanged*2 < oddArrived {
		t.Errorf("control: only %d of %d flows changed backend on a node with another seed: the measurement cannot see disagreement", oddChanged, oddArrived)
	}

	// Step 3: live flows stay pinned across the backend change.
	w3 := lv.window(rBack, rAdd)
	w4 := lv.window(rAdded, rW4)
	pinned, pinnedKept := 0, 0
	for i := range w3 {
		b3, _, ok := w3[i].one()
		if !ok {
			continue
		}
		pinned++
		if b4, _, ok := w4[i].one(); ok && b4 == b3 {
			pinnedKept++
		}
	}
	t.Logf("backend added: %d of %d live flows kept their backend (%.1f%%)", pinnedKept, pinned, ecmpPct(pinnedKept, pinned))
	if pinned < ecmpLiveFlows*99/100 || pinnedKept*100 < pinned*99 {
		t.Errorf("only %d of %d live flows kept their backend across the backend add (%d answered before)", pinnedKept, ecmpLiveFlows, pinned)
	}

	// New flows: how many client addresses changed backend.
	both, changed, toNew, offModel := 0, 0, 0, 0
	probeNodes := map[int]int{}
	model3, model4 := ecmpModel(t, ecmpSeed, 3, ecmpProbes), ecmpModel(t, ecmpSeed, 4, ecmpProbes)
	for i := range before {
		if before[i].backend != "" && before[i].backend != model3[i] || after[i].backend != "" && after[i].backend != model4[i] {
			offModel++
		}
		if before[i].backend == "" || after[i].backend == "" {
			continue
		}
		both++
		probeNodes[before[i].node]++
		probeNodes[after[i].node]++
		if before[i].backend != after[i].backend {
			changed++
			if after[i].backend == "b4" {
				toNew++
			}
		}
	}
	const b = 4
	t.Logf("new flows: %d of %d addresses answered before and after (probes per node %v); %d changed backend (%.2f%%, bound %.2f%%), %d to the new backend (%.2f%%)",
		both, ecmpProbes, probeNodes, changed, ecmpPct(changed, both), 100.0/b+1, toNew, ecmpPct(toNew, both))
	if both < ecmpProbes*99/100 {
		t.Fatalf("only %d of %d probed addresses answered before and after", both, ecmpProbes)
	}
	// Every node computes one shared function of (seed, backend addresses
	// and weights, client address): what the nodes chose is exactly what
	// balance.Maglev computes here.
	if offModel > 0 {
		t.Errorf("%d of %d addresses got another backend than Maglev(seed, backends) gives", offModel, ecmpProbes)
	}
	if probeNodes[1] < both/4 || probeNodes[3] < both/4 {
		t.Errorf("probes per node %v: ECMP did not spread them over nodes 1 and 3", probeNodes)
	}
	if float64(changed) > float64(both)*(1.0/b+0.01) {
		t.Errorf("%d of %d addresses (%.2f%%) changed backend, want <= 1/%d + 1%%", changed, both, ecmpPct(changed, both), b)
	}
	if toNew*5 < both {
		t.Errorf("only %d of %d addresses (%.2f%%) reach the new backend: not every node took it", toNew, both, ecmpPct(toNew, both))
	}
}

package tcpfwd

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const (
	knotd       = "/usr/sbin/knotd"
	peersDir    = "/work/shared/peers"
	startKnot   = peersDir + "/start-knot.sh"
	queriesFile = peersDir + "/queries.txt"
)

// needPeer skips when a peer's file is missing, except in CI, where a
// missing peer fails the test rather than hiding it.
func needPeer(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("peer missing in CI: %v", err)
			}
			t.Skipf("peer missing (%v); run %s/install.sh", err, peersDir)
		}
	}
}

// startKnotd runs knot on a free loopback port, killed in Cleanup, and
// waits until it accepts TCP (the start script waits only for UDP).
func startKnotd(t *testing.T) netip.AddrPort {
	t.Helper()
	needPeer(t, knotd, startKnot)
	port := freePort(t)
	out, err := exec.Command(startKnot, strconv.Itoa(int(port))).Output()
	if err != nil {
		t.Fatalf("%s: %v", startKnot, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("%s printed %q, not a PID", startKnot, out)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGTERM) // knotd is not our child: no Wait
		for range 100 {
			if isGone(pid) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	})
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	eventually(t, "knotd on TCP", func() bool {
		c, err := net.DialTimeout("tcp", addr.String(), time.Second)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	})
	return addr
}

// isGone reports whether pid has exited (a zombie counts: knotd is not our
// child, so something else reaps it).
func isGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

// knotQueries reads the first n names and types from queries.txt.
func knotQueries(t *testing.T, n int) []*dns.Msg {
	t.Helper()
	f, err := os.Open(queriesFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var qs []*dns.Msg
	sc := bufio.NewScanner(f)
	for sc.Scan() && len(qs) < n {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		qtype, ok := dns.StringToType[fields[1]]
		if !ok {
			t.Fatalf("queries.txt: unknown type %q", fields[1])
		}
		qs = append(qs, query(uint16(len(qs)), dns.Fqdn(fields[0]), qtype))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return qs
}

// pipeline sends every query on one new connection to addr before reading
// the answers, and returns them by ID.
func pipeline(t *testing.T, addr netip.AddrPort, qs []*dns.Msg) map[uint16]string {
	t.Helper()
	c := dial(t, addr)
	for _, q := range qs {
		writeQuery(t, c, q)
	}
	got := make(map[uint16]string, len(qs))
	for range qs {
		r := readAnswer(t, c)
		got[r.Id] = r.String()
	}
	_ = c.Close()
	return got
}

// TestKnotSameAnswer checks that queries to the real knot DNS server through
// the forwarder get the answers a direct TCP query gets, one at a time and
// pipelined.
func TestKnotSameAnswer(t *testing.T) {
	knot := startKnotd(t)
	s := startServer(t, to(knot), Options{})

	t.Run("one at a time", func(t *testing.T) {
		qs := []*dns.Msg{
			query(1, "www.example.test.", dns.TypeA),
			query(2, "txt.example.test.", dns.TypeTXT),
			query(3, "example.test.", dns.TypeSOA),
			query(4, "example.test.", dns.TypeNS),
			query(5, "h42.example.test.", dns.TypeA),
			query(6, "missing.example.test.", dns.TypeA),
			query(7, "www.other.test.", dns.TypeA),
		}
		via, direct := dial(t, s.Addr()), dial(t, knot)
		for _, q := range qs {
			want := exchange(t, direct, q)
			got := exchange(t, via, q)
			if got.String() != want.String() {
				t.Errorf("%s: through tcpfwd:\n%s\ndirect:\n%s", q.Question[0].Name, got, want)
			}
		}
		if got := exchange(t, via, qs[0]); len(got.Answer) != 1 || got.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
			t.Errorf("www.example.test. answered %v, want 192.0.2.1 from the zone", got.Answer)
		}
	})
	t.Run("pipelined", func(t *testing.T) {
		qs := knotQueries(t, 300)
		want := pipeline(t, knot, qs)
		got := pipeline(t, s.Addr(), qs)
		for _, q := range qs {
			if got[q.Id] != want[q.Id] {
				t.Fatalf("%s: through tcpfwd:\n%s\ndirect:\n%s", q.Question[0].Name, got[q.Id], want[q.Id])
			}
		}
	})
}

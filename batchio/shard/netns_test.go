package shard

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/core"
)

// netnsChildEnv, in a re-executed test binary, names the network namespace
// the client must live in; the binary itself runs in the proxy's namespace.
const netnsChildEnv = "FASTUDP_TEST_NETNS_CLIENT"

var netnsSeq atomic.Int32

// newNetnsName returns a namespace name unique to this process.
func newNetnsName() string { return fmt.Sprintf("fudp-%d-%d", os.Getpid(), netnsSeq.Add(1)) }

func mustRun(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// requireNetnsRoot skips without root (fails under CI=true, where the tests
// run as root) or without the ip command.
func requireNetnsRoot(t testing.TB) {
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
		t.Fatal(why)
	}
	t.Skip(why)
}

// inNetns runs f on an OS thread moved into namespace name; sockets f
// creates stay in that namespace whatever thread later uses them. The
// thread is never returned to the scheduler.
func inNetns(t testing.TB, name string, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		var err error
		defer func() { done <- err }() // also when f fails the test (Goexit)
		runtime.LockOSThread()         // not unlocked: the thread exits with the goroutine
		var fd int
		if fd, err = unix.Open("/var/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err == nil {
			f()
		}
	}()
	if err := <-done; err != nil {
		t.Fatalf("entering namespace %s: %v", name, err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// TestE2EGSONetns runs the test binary again inside a fresh namespace
// holding the proxy and the backend (on lo), with the client in a second
// namespace behind a veth pair of MTU 1280:
//   - a client GSO run crosses the veth and reaches the backend as
//     coalesced runs, every byte in order, ECN unchanged;
//   - a backend run whose segment size (1400) is above the veth MTU is
//     refused by the kernel on the listener socket: fastudp falls back to
//     single datagrams (fragmented on the way), the client gets every byte,
//     and the fallback is counted.
func TestE2EGSONetns(t *testing.T) {
	if client := os.Getenv(netnsChildEnv); client != "" {
		netnsChild(t, client)
		return
	}
	requireNetnsRoot(t)
	a, b := newNetnsName(), newNetnsName()
	for _, ns := range []string{a, b} {
		mustRun(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	mustRun(t, "ip", "-n", a, "link", "add", "fudp-a", "type", "veth", "peer", "name", "fudp-b", "netns", b)
	mustRun(t, "ip", "-n", a, "addr", "add", "10.199.0.1/24", "dev", "fudp-a")
	mustRun(t, "ip", "-n", b, "addr", "add", "10.199.0.2/24", "dev", "fudp-b")
	for _, ns := range []string{a, b} {
		dev := "fudp-a"
		if ns == b {
			dev = "fudp-b"
		}
		mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
		mustRun(t, "ip", "-n", ns, "link", "set", dev, "mtu", "1280", "up")
	}
	cmd := exec.Command("ip", "netns", "exec", a, os.Args[0], "-test.run=^TestE2EGSONetns$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsChildEnv+"="+b)
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestE2EGSONetns")) {
		t.Fatalf("in namespace %s: %v\n%s", a, err, out)
	}
	t.Logf("child:\n%s", out)
}

func netnsChild(t *testing.T, clientNS string) {
	const (
		reqSeg, reqN = 1000, 10 // fits the veth: 1000 + 28 < 1280
		repSeg, repN = 1400, 10 // does not: the GSO send to the client fails
		ect1, ect0   = 0x01, 0x02
	)
	be := newGROPeer(t, "127.0.0.1:0")
	o := oneListener("10.199.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.addr}})
	o.GRO = true
	g := startGroup(t, o)
	var cl *groPeer
	inNetns(t, clientNS, func() { cl = newGROPeer(t, "10.199.0.2:0") })

	cl.sendRun(g.addr(), []byte("hello"), 0, ect1)
	if h := be.recvBytes(5, waitTimeout); string(h[0].data) != "hello" {
		t.Fatalf("first datagram %q", h[0].data)
	}
	req := pattern(reqSeg*reqN-1, 4)
	cl.sendRun(g.addr(), req, reqSeg, ect1)
	got := be.recvBytes(len(req), waitTimeout)
	if !bytes.Equal(joined(got), req) {
		t.Fatal("request bytes differ")
	}
	runShape(t, "client→backend over veth", got, reqSeg, true)
	for _, a := range got {
		if a.tos != ect1 {
			t.Fatalf("backend got TOS %#x, want %#x", a.tos, ect1)
		}
	}

	rep := pattern(repSeg*repN, 5)
	be.sendRun(got[0].from, rep, repSeg, ect0)
	back := cl.recvBytes(len(rep), waitTimeout)
	if !bytes.Equal(joined(back), rep) {
		t.Fatal("reply bytes differ")
	}
	runShape(t, "backend→client after fallback", back, repSeg, false)
	for _, a := range back {
		if a.tos != ect0 {
			t.Fatalf("client got TOS %#x, want %#x", a.tos, ect0)
		}
	}
	// Counters are published once per loop iteration: wait for them.
	g.waitListener(t, "tx datagrams", ListenerTxDatagrams, repN)
	waitValue(t, "GSO fallbacks", func() uint64 { return g.shard(ShardGSOFallbacks) }, 1)
	if v := g.listener(ListenerSendErrors); v != 0 {
		t.Errorf("send errors %d, want 0", v)
	}
	t.Logf("client→backend: %d receives; backend→client: %d receives; GRO runs %d, GSO sends %d, fallbacks %d",
		len(got), len(back), g.shard(ShardGRORuns), g.shard(ShardGSOSends), g.shard(ShardGSOFallbacks))
}

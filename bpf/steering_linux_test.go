package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// requireBPF skips a test that loads the program unless the process may use
// BPF (root here); under CI=true, where the tests run as root, it fails.
func requireBPF(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: these tests load a BPF program and must run as root")
	}
	t.Skip("needs root (CAP_BPF) to load the steering program")
}

// group is an SO_REUSEPORT group of UDP sockets bound to one address,
// socket i standing for shard i.
type group struct {
	t    *testing.T
	addr netip.AddrPort
	fds  []int
}

// newGroup binds n SO_REUSEPORT sockets to a port of ip no other socket
// holds. A dual-stack IPv6 group (ip "::") also receives IPv4.
func newGroup(t *testing.T, ip string, n int) *group {
	t.Helper()
	a := netip.MustParseAddr(ip)
	g := &group{t: t}
	// A plain socket's ephemeral port is free of every other socket (see
	// batchio/shard reservePort).
	fd0 := socket(t, a)
	bind(t, fd0, netip.AddrPortFrom(a, 0))
	g.addr = localAddr(t, fd0)
	unix.Close(fd0)
	for range n {
		fd := socket(t, a)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
		if a.Is6() {
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		}
		bind(t, fd, g.addr)
		g.fds = append(g.fds, fd)
	}
	t.Cleanup(g.close)
	return g
}

func (g *group) close() {
	for i, fd := range g.fds {
		if fd >= 0 {
			unix.Close(fd)
			g.fds[i] = -1
		}
	}
}

func socket(t *testing.T, a netip.Addr) int {
	t.Helper()
	fam := unix.AF_INET
	if a.Is6() {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_UDP)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func bind(t *testing.T, fd int, ap netip.AddrPort) {
	t.Helper()
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
	if ap.Addr().Is4() {
		sa = &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatalf("bind %v: %v", ap, err)
	}
}

func localAddr(t *testing.T, fd int) netip.AddrPort {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sockaddrAddrPort(sa)
}

func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// recv waits for the next datagram on any socket of the group and returns
// the socket's index and the sender.
func (g *group) recv() (int, netip.AddrPort) {
	g.t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(5 * time.Second)
	for {
		for i, fd := range g.fds {
			if fd < 0 {
				continue
			}
			_, from, err := unix.Recvfrom(fd, buf, 0)
			if err == nil {
				return i, sockaddrAddrPort(from)
			}
			if !errors.Is(err, unix.EAGAIN) {
				g.t.Fatalf("recvfrom: %v", err)
			}
		}
		if time.Now().After(deadline) {
			g.t.Fatal("no datagram arrived within 5s")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// expectQuiet checks that no socket of the group holds a datagram.
func (g *group) expectQuiet() {
	g.t.Helper()
	buf := make([]byte, 2048)
	for i, fd := range g.fds {
		if fd < 0 {
			continue
		}
		if _, from, err := unix.Recvfrom(fd, buf, 0); err == nil {
			g.t.Fatalf("socket %d holds an unexpected datagram from %v", i, sockaddrAddrPort(from))
		}
	}
}

func load(t *testing.T, o Options) *Steering {
	t.Helper()
	s, err := Load(o)
	if err != nil {
		t.Fatalf("Load(%+v): %v", o, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// udpClient is a client socket bound to a chosen local address.
func udpClient(t *testing.T, local netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(local))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c *net.UDPConn, to netip.AddrPort) netip.AddrPort {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte("x"), to); err != nil {
		t.Fatal(err)
	}
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// rawSend sends one UDP datagram from src (any address: a raw socket writes
// the IP header) to dst over loopback. It is how the program meets the
// vectors' client addresses.
func rawSend(t *testing.T, src, dst netip.AddrPort) {
	t.Helper()
	udp := make([]byte, 9)
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	udp[8] = 'v'
	if src.Addr().Is4() {
		// IPPROTO_RAW implies IP_HDRINCL; the kernel fills in the total
		// length, ID and header checksum. A zero UDP checksum means none.
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		ip := make([]byte, 20, 20+len(udp))
		ip[0] = 0x45
		ip[8] = 64
		ip[9] = unix.IPPROTO_UDP
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		if err := unix.Sendto(fd, append(ip, udp...), 0, &unix.SockaddrInet4{Addr: d}); err != nil {
			t.Fatalf("raw send from %v: %v", src, err)
		}
		return
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ip := make([]byte, 40, 40+len(udp))
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	ip[6] = unix.IPPROTO_UDP
	ip[7] = 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	// IPv6 requires the UDP checksum: pseudo-header (addresses, length,
	// next header) plus the datagram.
	var sum uint32
	add := func(b []byte) {
		for i := 0; i < len(b); i += 2 {
			w := uint32(b[i]) << 8
			if i+1 < len(b) {
				w |= uint32(b[i+1])
			}
			sum += w
		}
	}
	add(ip[8:40])
	add([]byte{0, 0, byte(len(udp) >> 8), byte(len(udp)), 0, 0, 0, unix.IPPROTO_UDP})
	add(udp)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	if err := unix.Sendto(fd, append(ip, udp...), 0, &unix.SockaddrInet6{Addr: d}); err != nil {
		t.Fatalf("raw send from %v: %v", src, err)
	}
}

// TestProgramVectors runs the loaded program against every vector of
// testdata/affinity-hash.txt whose client address can be the source of a
// datagram: a raw socket sends from the vector's address and port, and the
// datagram must land on socket hash mod 7 of a 7-socket group.
func TestProgramVectors(t *testing.T) {
	requireBPF(t)
	const shards = 7
	type setup struct {
		seed uint64
		key  Key
		v4   bool
	}
	groups := map[setup]*group{}
	tested := 0
	for _, v := range loadVectors(t) {
		ip := v.client.Addr().Unmap()
		switch {
		case ip.Is4() && ip.IsUnspecified():
			continue // the kernel writes its own address into a zero source
		case ip.Is6() && ip.IsMulticast():
			continue // IPv6 drops multicast sources
		}
		su := setup{v.seed, v.key, ip.Is4()}
		g := groups[su]
		if g == nil {
			if ip.Is4() {
				g = newGroup(t, "127.0.0.1", shards)
			} else {
				g = newGroup(t, "::1", shards)
			}
			s := load(t, Options{Mode: ModeHash, Key: v.key, Seed: v.seed, Shards: shards})
			if err := s.Attach(g.fds); err != nil {
				t.Fatal(err)
			}
			groups[su] = g
		}
		src := netip.AddrPortFrom(ip, v.client.Port())
		rawSend(t, src, g.addr)
		got, from := g.recv()
		if from != src {
			t.Fatalf("line %d: datagram from %v, want %v", v.line, from, src)
		}
		if want := int(v.hash % shards); got != want {
			t.Errorf("line %d (%v %v seed %#x): shard %d, want %d", v.line, v.client, v.key, v.seed, got, want)
		}
		tested++
	}
	t.Logf("%d vectors through the program", tested)
	if tested < 130 {
		t.Errorf("only %d vectors tested", tested)
	}
}

// TestHashLoopbackClients sends from many real client sockets (addresses
// across 127.0.0.0/8, ephemeral ports) to IPv4 and dual-stack groups and
// checks every datagram lands where ShardFor says.
func TestHashLoopbackClients(t *testing.T) {
	requireBPF(t)
	for _, tc := range []struct {
		name   string
		listen string
		key    Key
		shards int
	}{
		{"ipv4-flow", "127.0.0.1", KeyFlow, 4},
		{"ipv4-ip", "127.0.0.1", KeyIP, 5},
		{"dualstack-flow", "::", KeyFlow, 3},
		{"ipv6-flow", "::1", KeyFlow, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const seed = 0x5eed
			g := newGroup(t, tc.listen, tc.shards)
			s := load(t, Options{Mode: ModeHash, Key: tc.key, Seed: seed, Shards: tc.shards})
			if err := s.Attach(g.fds); err != nil {
				t.Fatal(err)
			}
			to := g.addr
			if tc.listen == "::" {
				to = netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", g.addr.Port()))
			}
			used := map[int]bool{}
			for i := range 40 {
				local := netip.MustParseAddrPort("[::1]:0")
				if to.Addr().Is4() {
					local = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(i % 3), byte(i), 1}), 0)
				}
				src := send(t, udpClient(t, local), to)
				got, from := g.recv()
				if tc.listen == "::" {
					from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
				}
				if from != src {
					t.Fatalf("datagram from %v, want %v", from, src)
				}
				if want := ShardFor(seed, src, tc.key, tc.shards); got != want {
					t.Errorf("client %v: shard %d, want ShardFor = %d", src, got, want)
				}
				used[got] = true
			}
			if len(used) < 2 {
				t.Errorf("40 clients all on shard(s) %v", used)
			}
			st, err := s.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.Selected != 40 || st.NoSocket != 0 || st.Unparsed != 0 || st.Overridden != 0 {
				t.Errorf("stats %+v, want 40 selected", st)
			}
		})
	}
}

// TestEmptySlotFallsBack empties the slot of the shard a client hashes to:
// its datagrams are delivered by the kernel's hash to the other sockets,
// none dropped, and counted as NoSocket.
func TestEmptySlotFallsBack(t *testing.T) {
	requireBPF(t)
	const shards, n = 4, 50
	g := newGroup(t, "127.0.0.1", shards)
	s := load(t, Options{Mode: ModeHash, Key: KeyIP, Seed: 9, Shards: shards})
	if err := s.Attach(g.fds); err != nil {
		t.Fatal(err)
	}
	home := ShardFor(9, netip.MustParseAddrPort("127.0.0.1:1"), KeyIP, shards)
	if err := s.ClearSocket(home); err != nil {
		t.Fatal(err)
	}
	seen := map[int]int{}
	for range n {
		send(t, udpClient(t, netip.MustParseAddrPort("127.0.0.1:0")), g.addr)
		got, _ := g.recv()
		seen[got]++
	}
	t.Logf("home shard %d emptied; datagrams by socket %v", home, seen)
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.NoSocket != n || st.Selected != 0 {
		t.Errorf("stats %+v, want %d NoSocket", st, n)
	}
	// The kernel's hash still sees the emptied slot's socket as a group
	// member; only the program's choice of it failed.
	if seen[home] == n {
		t.Errorf("every datagram reached the emptied shard %d", home)
	}
	// Putting the socket back restores steering.
	if err := s.SetSocket(home, g.fds[home]); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		send(t, udpClient(t, netip.MustParseAddrPort("127.0.0.1:0")), g.addr)
		if got, _ := g.recv(); got != home {
			t.Fatalf("after refilling the slot: shard %d, want %d", got, home)
		}
	}
}

// TestClosedSocketFallsBack closes the socket of the home shard: the
// kernel empties its slot, and datagrams reach the remaining sockets.
func TestClosedSocketFallsBack(t *testing.T) {
	requireBPF(t)
	const shards, n = 3, 30
	g := newGroup(t, "127.0.0.1", shards)
	s := load(t, Options{Mode: ModeHash, Key: KeyIP, Seed: 3, Shards: shards})
	if err := s.Attach(g.fds); err != nil {
		t.Fatal(err)
	}
	home := ShardFor(3, netip.MustParseAddrPort("127.0.0.1:1"), KeyIP, shards)
	unix.Close(g.fds[home])
	g.fds[home] = -1
	for range n {
		send(t, udpClient(t, netip.MustParseAddrPort("127.0.0.1:0")), g.addr)
		g.recv()
	}
	g.expectQuiet()
	if st, _ := s.Stats(); st.NoSocket != n {
		t.Errorf("stats %+v, want %d NoSocket", st, n)
	}
}

// TestOverride steers one client port elsewhere through the override map
// while the rest of the client's ports stay on the hash's shard.
func TestOverride(t *testing.T) {
	requireBPF(t)
	const shards = 4
	for _, listen := range []string{"127.0.0.1", "::1"} {
		t.Run(listen, func(t *testing.T) {
			g := newGroup(t, listen, shards)
			s := load(t, Options{Mode: ModeHash, Key: KeyIP, Seed: 11, Shards: shards})
			if err := s.Attach(g.fds); err != nil {
				t.Fatal(err)
			}
			local := netip.AddrPortFrom(g.addr.Addr(), 0)
			moved, other := udpClient(t, local), udpClient(t, local)
			movedAddr := moved.LocalAddr().(*net.UDPAddr).AddrPort()
			home := ShardFor(11, movedAddr, KeyIP, shards)
			target := (home + 1) % shards
			if err := s.SetOverride(movedAddr, target); err != nil {
				t.Fatal(err)
			}
			for range 5 {
				send(t, moved, g.addr)
				if got, _ := g.recv(); got != target {
					t.Fatalf("overridden client: shard %d, want %d", got, target)
				}
				send(t, other, g.addr)
				if got, _ := g.recv(); got != home {
					t.Fatalf("other port: shard %d, want %d", got, home)
				}
			}
			if err := s.DeleteOverride(movedAddr); err != nil {
				t.Fatal(err)
			}
			send(t, moved, g.addr)
			if got, _ := g.recv(); got != home {
				t.Fatalf("after DeleteOverride: shard %d, want %d", got, home)
			}
			st, err := s.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.Overridden != 5 || st.Selected != 6 {
				t.Errorf("stats %+v, want 5 overridden, 6 selected", st)
			}
			if err := s.SetOverride(movedAddr, shards); err == nil {
				t.Error("SetOverride accepted a shard out of range")
			}
		})
	}
}

// onCPU runs f on a goroutine locked to an OS thread pinned to cpu.
func onCPU(t *testing.T, cpu int, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var old, set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			done <- err
			return
		}
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			done <- fmt.Errorf("pin to cpu %d: %w", cpu, err)
			return
		}
		defer unix.SchedSetaffinity(0, &old)
		f()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// allowedCPUs returns the CPUs the process may run on.
func allowedCPUs(t *testing.T) []int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for c := range 1024 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

// TestCPUMode sends from threads pinned to each CPU: over loopback the
// datagram is received on the sending CPU, and lands on that CPU's shard,
// by the modulo rule and by an explicit CPU list.
func TestCPUMode(t *testing.T) {
	requireBPF(t)
	cpus := allowedCPUs(t)
	if len(cpus) < 2 {
		t.Skipf("needs 2 CPUs, the process may use %v", cpus)
	}
	cpus = cpus[:2]
	for _, tc := range []struct {
		name string
		list []int // Options.CPUs
	}{
		{"modulo", nil},
		{"reversed-list", []int{cpus[1], cpus[0]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{Mode: ModeCPU, Shards: 2, CPUs: tc.list}
			g := newGroup(t, "127.0.0.1", 2)
			s := load(t, o)
			if err := s.Attach(g.fds); err != nil {
				t.Fatal(err)
			}
			c := udpClient(t, netip.MustParseAddrPort("127.0.0.1:0"))
			for _, cpu := range cpus {
				want := ShardForCPU(cpu, o)
				for range 20 {
					onCPU(t, cpu, func() { send(t, c, g.addr) })
					if got, _ := g.recv(); got != want {
						t.Fatalf("sent on cpu %d: shard %d, want %d", cpu, got, want)
					}
				}
			}
		})
	}
}

// TestPermissionError loads on a thread without CAP_BPF and CAP_SYS_ADMIN:
// the error is a *PermissionError naming the capability, not cilium/ebpf's
// MEMLOCK advice.
func TestPermissionError(t *testing.T) {
	requireBPF(t)
	// A successful load first, so that no feature probe of cilium/ebpf
	// runs (and caches a result) on the thread without capabilities.
	load(t, Options{Mode: ModeHash, Shards: 1})
	errc := make(chan error, 1)
	go func() {
		// Capabilities are per thread: drop them on a locked thread that
		// is never unlocked, so the runtime ends it with the goroutine.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		for _, c := range []uint{unix.CAP_BPF, unix.CAP_SYS_ADMIN} {
			data[c/32].Effective &^= 1 << (c % 32)
			data[c/32].Permitted &^= 1 << (c % 32)
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		s, err := Load(Options{Mode: ModeHash, Shards: 2})
		if err == nil {
			s.Close()
			err = errors.New("Load succeeded without CAP_BPF")
		}
		errc <- err
	}()
	err := <-errc
	var pe *PermissionError
	if !errors.As(err, &pe) || !errors.Is(err, ErrPermission) || !errors.Is(err, unix.EPERM) {
		t.Fatalf("Load without CAP_BPF: %v (%T), want a *PermissionError wrapping EPERM", err, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "CAP_BPF") || strings.Contains(msg, "MEMLOCK") {
		t.Errorf("message %q should name CAP_BPF and not MEMLOCK", msg)
	}
}

// mountBPFFS mounts a private bpffs on a temporary directory.
func mountBPFFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("cannot mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestPinnedMapsSurvive pins the maps, adds an override, and loads again
// from the pins (a restart): the override is still in force for the new
// group, and the pinned config holds the new seed.
func TestPinnedMapsSurvive(t *testing.T) {
	requireBPF(t)
	pin := filepath.Join(mountBPFFS(t), "fastudp", "dns")
	const shards = 3
	g1 := newGroup(t, "127.0.0.1", shards)
	s1, err := Load(Options{Mode: ModeHash, Key: KeyIP, Seed: 1, Shards: shards, PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Attach(g1.fds); err != nil {
		t.Fatal(err)
	}
	c := udpClient(t, netip.MustParseAddrPort("127.0.0.1:0"))
	client := c.LocalAddr().(*net.UDPAddr).AddrPort()
	target := (ShardFor(2, client, KeyIP, shards) + 1) % shards
	if err := s1.SetOverride(client, target); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{mapSocks, mapConfig, mapOverrides, mapCPUs, mapStats} {
		if _, err := os.Stat(filepath.Join(pin, name)); err != nil {
			t.Errorf("pin %s: %v", name, err)
		}
	}
	s1.Close()
	g1.close()

	g2 := newGroup(t, "127.0.0.1", shards)
	s2 := load(t, Options{Mode: ModeHash, Key: KeyIP, Seed: 2, Shards: shards, PinPath: pin})
	if err := s2.Attach(g2.fds); err != nil {
		t.Fatal(err)
	}
	send(t, c, g2.addr)
	if got, _ := g2.recv(); got != target {
		t.Errorf("overridden client after reload: shard %d, want %d", got, target)
	}
	other := send(t, udpClient(t, netip.MustParseAddrPort("127.0.0.2:0")), g2.addr)
	if got, _ := g2.recv(); got != ShardFor(2, other, KeyIP, shards) {
		t.Errorf("other client after reload: shard %d, want ShardFor with the new seed = %d", got, ShardFor(2, other, KeyIP, shards))
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(pin, mapConfig), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var cfg steerConfig
	if err := m.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.FNVSeeded != fnvSeeded(2) || cfg.Shards != shards || cfg.Flags&flagOverrides == 0 {
		t.Errorf("pinned config %+v", cfg)
	}
	// A different shard count does not fit the pinned sockarray.
	if s, err := Load(Options{Mode: ModeHash, Shards: shards + 1, PinPath: pin}); err == nil {
		s.Close()
		t.Error("Load reused a pinned sockarray of another size")
	}
}

// TestRunStats measures the program's cost per datagram with the kernel's
// BPF statistics, next to a program that only returns SK_PASS (the cost of
// running any program, and of measuring it). The figures are logged (see
// bench/RESULTS.md); the test asserts only that every datagram ran the
// program once.
func TestRunStats(t *testing.T) {
	requireBPF(t)
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Skipf("BPF statistics: %v", err)
	}
	defer stats.Close()
	const rounds, burst = 20, 100
	traffic := func(c *net.UDPConn, g *group) {
		for range rounds {
			for range burst {
				send(t, c, g.addr)
			}
			for range burst {
				g.recv()
			}
		}
	}
	// attach attaches a program to the group's sockets and returns it.
	measure := func(name string, attach func(g *group) *ebpf.Program) {
		g := newGroup(t, "127.0.0.1", 4)
		c := udpClient(t, netip.MustParseAddrPort("127.0.0.1:0"))
		traffic(c, g) // warm-up
		p := attach(g)
		traffic(c, g)
		ps, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if ps.RunCount != rounds*burst {
			t.Errorf("%s: ran %d times for %d datagrams", name, ps.RunCount, rounds*burst)
		}
		if ps.RunCount > 0 {
			t.Logf("%-26s %6.1f ns per datagram (%d runs)", name, float64(ps.Runtime.Nanoseconds())/float64(ps.RunCount), ps.RunCount)
		}
	}
	measure("empty program (SK_PASS)", func(g *group) *ebpf.Program {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type: ebpf.SkReuseport, AttachType: ebpf.AttachSkReuseportSelect, License: "MIT",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		if err := unix.SetsockoptInt(g.fds[0], unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, p.FD()); err != nil {
			t.Fatal(err)
		}
		return p
	})
	for _, tc := range []struct {
		name     string
		o        Options
		override bool
	}{
		{"hash, flow key", Options{Mode: ModeHash, Key: KeyFlow, Shards: 4}, false},
		{"hash, ip key", Options{Mode: ModeHash, Key: KeyIP, Shards: 4}, false},
		{"hash, flow, overrides on", Options{Mode: ModeHash, Key: KeyFlow, Shards: 4}, true},
		{"cpu", Options{Mode: ModeCPU, Shards: 4}, false},
	} {
		measure(tc.name, func(g *group) *ebpf.Program {
			s := load(t, tc.o)
			if err := s.Attach(g.fds); err != nil {
				t.Fatal(err)
			}
			if tc.override {
				if err := s.SetOverride(netip.MustParseAddrPort("192.0.2.1:1"), 0); err != nil {
					t.Fatal(err)
				}
			}
			return s.prog
		})
	}
}

package bpf

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func dupAll(t *testing.T, fds []int) []int {
	t.Helper()
	var out []int
	for _, fd := range fds {
		d, err := unix.Dup(fd)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// TestAdoptKeepsSteering hands a loaded, attached program over (duplicated
// descriptors, as SCM_RIGHTS gives another process) while the first
// Steering is closed: the adopted one steers with the key it asks for,
// where a fresh Load could not take the sockets (EBUSY), and refuses a
// program for another shard count or seed.
func TestAdoptKeepsSteering(t *testing.T) {
	requireBPF(t)
	const seed, shards = 0x5eed, 4
	g := newGroup(t, "127.0.0.1", shards)
	old := load(t, Options{Mode: ModeHash, Key: KeyFlow, Seed: seed, Shards: shards})
	if err := old.Attach(g.fds); err != nil {
		t.Fatal(err)
	}
	fresh := load(t, Options{Mode: ModeHash, Key: KeyIP, Seed: seed, Shards: shards})
	if err := fresh.SetSocket(0, g.fds[0]); err == nil {
		t.Fatal("a second sockarray took a socket already in one; the test's premise is gone")
	}
	for _, bad := range []Options{
		{Mode: ModeHash, Seed: seed, Shards: shards + 1},
		{Mode: ModeHash, Seed: seed + 1, Shards: shards},
	} {
		if _, err := Adopt(bad, dupAll(t, old.FDs())); err == nil {
			t.Errorf("adopted with %+v", bad)
		}
	}
	if _, err := Adopt(Options{Mode: ModeHash, Seed: seed, Shards: shards}, dupAll(t, old.FDs()[:5])); err == nil {
		t.Error("adopted from 5 descriptors")
	}
	s, err := Adopt(Options{Mode: ModeHash, Key: KeyIP, Seed: seed, Shards: shards}, dupAll(t, old.FDs()))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	old.Close()
	for i := range 20 {
		src := send(t, udpClient(t, netip4(127, 0, byte(i), 2)), g.addr)
		got, _ := g.recv()
		if want := ShardFor(seed, src, KeyIP, shards); got != want {
			t.Errorf("client %v: shard %d, want %d (key ip, as adopted)", src, got, want)
		}
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Selected < 20 {
		t.Errorf("stats %+v: the adopted maps did not count", st)
	}
}

func netip4(a, b, c, d byte) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{a, b, c, d}), 0)
}

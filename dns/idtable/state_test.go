package idtable

import (
	"net/netip"
	"testing"

	"github.com/fastudp/fastudp/core"
)

// TestStateRoundTrip hands a table with outstanding queries over at a
// different clock: every query is matched by its ID and question in the
// restored table, keeps its client, and expires at the same age.
func TestStateRoundTrip(t *testing.T) {
	const timeout = core.Time(1000)
	a := New(100, timeout, 1)
	ids := map[uint16]Query{}
	for i := range 50 {
		q := Query{Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), uint16(1000+i)), Local: netip.MustParseAddr("::1"), Listener: core.ListenerID(i % 3), ID: uint16(7 * i), QHash: uint64(i) * 31}
		if i%2 == 0 {
			q.Local = netip.Addr{}
		}
		id, ok := a.Add(core.Time(i*10), q)
		if !ok {
			t.Fatal("add")
		}
		ids[id] = q
	}
	// Answer a few, so the list has holes.
	for id, q := range ids {
		if q.ID%3 == 0 {
			if _, _, r := a.Take(id, q.QHash); r != Matched {
				t.Fatal("take")
			}
			delete(ids, id)
		}
	}
	st := a.AppendState(nil, 600)
	b, dropped, err := Restore(st, 100, timeout, 2, 50_000)
	if err != nil || dropped != 0 || b.Len() != len(ids) {
		t.Fatalf("restore: %v, dropped %d, %d of %d", err, dropped, b.Len(), len(ids))
	}
	if got, want := b.NextDeadline(), a.NextDeadline()-600+50_000; got != want {
		t.Fatalf("next deadline %d, want %d", got, want)
	}
	// New queries take other IDs.
	for range 20 {
		id, ok := b.Add(50_000, Query{QHash: 1})
		if _, taken := ids[id]; !ok || taken {
			t.Fatalf("new query got ID %d (taken %v)", id, taken)
		}
		b.Release(id)
	}
	for id, q := range ids {
		if _, _, r := b.Take(id, q.QHash+1); r != Mismatch {
			t.Fatalf("ID %d with the wrong question: %v", id, r)
		}
		got, sent, r := b.Take(id, q.QHash)
		if r != Matched || got != q {
			t.Fatalf("ID %d: %v %+v, want %+v", id, r, got, q)
		}
		if sent+timeout <= 50_000-600 {
			t.Fatalf("ID %d: sent %d", id, sent)
		}
	}
	if b.Len() != 0 {
		t.Fatal("left over")
	}
	// A smaller table keeps the oldest.
	c, dropped, err := Restore(st, 5, timeout, 2, 0)
	if err != nil || c.Len() != 5 || dropped != len(ids)-5 {
		t.Fatalf("shrunk: %v, %d kept, %d dropped", err, c.Len(), dropped)
	}
	if _, _, err := Restore(st[:len(st)-1], 100, timeout, 2, 0); err == nil {
		t.Fatal("truncated state accepted")
	}
	bad := append([]byte(nil), st...)
	copy(bad[stateHeader+stateEntry:], bad[stateHeader:stateHeader+2]) // repeat the first ID
	if _, _, err := Restore(bad, 100, timeout, 2, 0); err == nil {
		t.Fatal("repeated ID accepted")
	}
}

// FuzzRestore feeds arbitrary state to Restore: it never panics, and what it
// accepts round-trips and serves Add, Take and Expire.
func FuzzRestore(f *testing.F) {
	a := New(10, 100, 1)
	for i := range 3 {
		a.Add(core.Time(i), Query{Client: netip.MustParseAddrPort("127.0.0.1:53"), ID: uint16(i), QHash: uint64(i)})
	}
	f.Add(a.AppendState(nil, 10))
	f.Add([]byte{stateVersion, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		tb, _, err := Restore(b, 8, 100, 3, 1000)
		if err != nil {
			return
		}
		again := tb.AppendState(nil, 1000)
		if tb2, _, err := Restore(again, 8, 100, 3, 1000); err != nil || tb2.Len() != tb.Len() {
			t.Fatalf("re-restore: %v", err)
		}
		tb.Add(1000, Query{QHash: 9})
		for i := 0; i+stateHeader+2 <= len(b) && i < 8; i++ {
			tb.Take(uint16(b[i])<<8|uint16(b[i+1]), 0)
		}
		for {
			if _, _, ok := tb.Expire(core.Never - 1); !ok {
				break
			}
		}
		if tb.Len() != 0 {
			t.Fatalf("%d left", tb.Len())
		}
	})
}

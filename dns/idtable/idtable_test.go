package idtable

import (
	"net/netip"
	"testing"

	"pgregory.net/rapid"

	"github.com/fastudp/fastudp/core"
)

var (
	client4 = netip.MustParseAddrPort("192.0.2.7:5353")
	client6 = netip.MustParseAddrPort("[2001:db8::1]:4000")
	local4  = netip.MustParseAddr("127.0.0.1")
	local6  = netip.MustParseAddr("::1")
)

func TestAddTake(t *testing.T) {
	tb := New(4, 100, 1)
	q1 := Query{Client: client4, Local: local4, Listener: 2, ID: 0x1234, QHash: 11}
	q2 := Query{Client: client6, Local: local6, Listener: 0, ID: 0x1234, QHash: 22}
	id1, ok1 := tb.Add(10, q1)
	id2, ok2 := tb.Add(20, q2)
	if !ok1 || !ok2 || id1 == id2 || tb.Len() != 2 {
		t.Fatalf("add: %d %v %d %v len %d", id1, ok1, id2, ok2, tb.Len())
	}
	if _, _, r := tb.Take(id1, 99); r != Mismatch {
		t.Fatalf("wrong question: %v", r)
	}
	if tb.Len() != 2 {
		t.Fatal("a mismatched reply removed the query")
	}
	got, sent, r := tb.Take(id1, 11)
	if r != Matched || got != q1 || sent != 10 {
		t.Fatalf("take: %+v %d %v", got, sent, r)
	}
	if _, _, r := tb.Take(id1, 11); r != Unknown {
		t.Fatalf("second take: %v", r)
	}
	got, _, r = tb.Take(id2, 22)
	if r != Matched || got != q2 {
		t.Fatalf("v6 take: %+v %v", got, r)
	}
	if tb.Len() != 0 || tb.NextDeadline() != core.Never {
		t.Fatal("not empty")
	}
}

func TestCapacityAndRelease(t *testing.T) {
	tb := New(3, 100, 2)
	var ids []uint16
	for i := range 3 {
		id, ok := tb.Add(core.Time(i), Query{Client: client4, QHash: uint64(i)})
		if !ok {
			t.Fatal("add failed below capacity")
		}
		ids = append(ids, id)
	}
	if _, ok := tb.Add(5, Query{Client: client4}); ok {
		t.Fatal("add beyond capacity")
	}
	if !tb.Release(ids[1]) || tb.Release(ids[1]) {
		t.Fatal("release")
	}
	if _, ok := tb.Add(6, Query{Client: client4}); !ok {
		t.Fatal("add after release")
	}
}

func TestExpireOldestFirst(t *testing.T) {
	tb := New(10, 50, 3)
	for i := range 5 {
		tb.Add(core.Time(i*10), Query{Client: client4, ID: uint16(i)})
	}
	if d := tb.NextDeadline(); d != 50 {
		t.Fatalf("deadline %d", d)
	}
	if _, _, ok := tb.Expire(49); ok {
		t.Fatal("expired early")
	}
	var got []uint16
	for {
		q, _, ok := tb.Expire(75)
		if !ok {
			break
		}
		got = append(got, q.ID)
	}
	if len(got) != 3 || got[0] != 0 || got[1] != 1 || got[2] != 2 {
		t.Fatalf("expired %v, want [0 1 2]", got)
	}
	if d := tb.NextDeadline(); d != 80 {
		t.Fatalf("deadline %d, want 80", d)
	}
}

func TestIDsSpreadOverTheSpace(t *testing.T) {
	tb := New(MaxCapacity, 1, 4)
	seen := make(map[uint16]bool)
	high := 0
	for i := range 1000 {
		id, ok := tb.Add(core.Time(i), Query{Client: client4})
		if !ok || seen[id] {
			t.Fatalf("add %d: id %d ok %v (duplicate %v)", i, id, ok, seen[id])
		}
		seen[id] = true
		if id >= 1<<15 {
			high++
		}
	}
	if high < 400 || high > 600 {
		t.Fatalf("%d of 1000 IDs in the upper half: not random", high)
	}
}

func TestFullTable(t *testing.T) {
	tb := New(MaxCapacity, 1, 5)
	for i := range MaxCapacity {
		if _, ok := tb.Add(0, Query{Client: client4, QHash: uint64(i)}); !ok {
			t.Fatalf("add %d failed", i)
		}
	}
	if _, ok := tb.Add(0, Query{Client: client4}); ok {
		t.Fatal("add beyond the ID space")
	}
	n := 0
	for {
		if _, _, ok := tb.Expire(1); !ok {
			break
		}
		n++
	}
	if n != MaxCapacity || tb.Len() != 0 {
		t.Fatalf("expired %d", n)
	}
}

func TestSteadyStateAllocatesNothing(t *testing.T) {
	tb := New(64, 1000, 6)
	q := Query{Client: client6, Local: local6, QHash: 7}
	for range 64 { // first use of every slot may allocate
		id, _ := tb.Add(0, q)
		tb.Take(id, 7)
	}
	now := core.Time(0)
	allocs := testing.AllocsPerRun(1000, func() {
		now++
		id, _ := tb.Add(now, q)
		if _, _, r := tb.Take(id, 7); r != Matched {
			t.Fatal(r)
		}
		tb.Add(now, q)
		tb.Expire(now + 2000)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations", allocs)
	}
}

// TestAgainstModel runs random operations against a map model.
func TestAgainstModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		capacity := rapid.IntRange(1, 40).Draw(rt, "capacity")
		timeout := core.Time(rapid.IntRange(1, 50).Draw(rt, "timeout"))
		tb := New(capacity, timeout, rapid.Uint64().Draw(rt, "seed"))
		type entry struct {
			q    Query
			sent core.Time
		}
		model := map[uint16]entry{}
		var now core.Time
		for i := range rapid.IntRange(1, 200).Draw(rt, "ops") {
			now += core.Time(rapid.IntRange(0, 5).Draw(rt, "dt"))
			switch rapid.IntRange(0, 3).Draw(rt, "op") {
			case 0:
				q := Query{Client: client4, ID: uint16(i), QHash: uint64(i % 7)}
				id, ok := tb.Add(now, q)
				if ok != (len(model) < capacity) {
					rt.Fatalf("add ok=%v with %d of %d", ok, len(model), capacity)
				}
				if ok {
					if _, dup := model[id]; dup {
						rt.Fatalf("id %d handed out twice", id)
					}
					model[id] = entry{q, now}
				}
			case 1:
				id := uint16(rapid.IntRange(0, 1<<16-1).Draw(rt, "id"))
				for k := range model { // mostly pick a live one
					if rapid.Bool().Draw(rt, "live") {
						id = k
					}
					break
				}
				h := uint64(rapid.IntRange(0, 7).Draw(rt, "hash"))
				q, sent, r := tb.Take(id, h)
				e, live := model[id]
				switch {
				case !live:
					if r != Unknown {
						rt.Fatalf("take of free id: %v", r)
					}
				case e.q.QHash != h:
					if r != Mismatch {
						rt.Fatalf("take with wrong hash: %v", r)
					}
				default:
					if r != Matched || q != e.q || sent != e.sent {
						rt.Fatalf("take: %+v %d %v, want %+v %d", q, sent, r, e.q, e.sent)
					}
					delete(model, id)
				}
			case 2:
				for {
					q, sent, ok := tb.Expire(now)
					if !ok {
						break
					}
					if now < sent+timeout {
						rt.Fatalf("expired early: sent %d now %d", sent, now)
					}
					found := false
					for id, e := range model {
						if e.q == q && e.sent == sent {
							delete(model, id)
							found = true
							break
						}
					}
					if !found {
						rt.Fatalf("expired unknown %+v", q)
					}
				}
				for _, e := range model {
					if now >= e.sent+timeout {
						rt.Fatalf("query sent %d not expired at %d", e.sent, now)
					}
				}
			case 3:
				for id := range model {
					tb.Release(id)
					delete(model, id)
					break
				}
			}
			if tb.Len() != len(model) {
				rt.Fatalf("len %d, model %d", tb.Len(), len(model))
			}
		}
	})
}

func BenchmarkAddTake(b *testing.B) {
	tb := New(4096, 1000, 7)
	q := Query{Client: client4, Local: local4, QHash: 9}
	ids := make([]uint16, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		for range 64 {
			id, _ := tb.Add(1, q)
			ids = append(ids, id)
		}
		for _, id := range ids {
			tb.Take(id, 9)
		}
		ids = ids[:0]
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/query")
}

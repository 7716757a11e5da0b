// Package idtable tracks the DNS queries outstanding on one shared upstream
// socket. Each query forwarded on the socket gets a free 16-bit ID, chosen
// at random, in place of the client's; the table remembers the client, its
// ID and a hash of the question, so the reply can be matched and restored.
//
// The package is pure, like core: no I/O, no clock (time comes in as a
// parameter), no goroutines, and no allocation after the first use of each
// slot. A Table is owned by one shard and is not safe for concurrent use.
package idtable

import (
	"net/netip"

	"github.com/fastudp/fastudp/core"
)

// MaxCapacity is the most queries one socket can have outstanding: the ID
// space, less one value kept free so a search for a free ID always ends.
const MaxCapacity = 1<<16 - 1

// Query is what a forwarded query leaves behind to route its reply.
type Query struct {
	// Client sent the query to Local on listener Listener.
	Client   netip.AddrPort
	Local    netip.Addr
	Listener core.ListenerID
	// ID is the client's query ID, restored on the reply.
	ID uint16
	// QHash is the question's hash ([dns.Question.Hash] with the table
	// owner's secret seed); a reply must carry the same question.
	QHash uint64
}

// Result says what [Table.Take] made of a reply.
type Result uint8

// Results of [Table.Take].
const (
	// Matched: the reply's ID is outstanding and its question matches. The
	// entry is removed.
	Matched Result = iota
	// Unknown: no query with that ID is outstanding (it timed out, was
	// answered already, or the reply is forged). Nothing changes.
	Unknown
	// Mismatch: the ID is outstanding but the question differs (a forged
	// or confused reply). The entry stays, so the real answer can still
	// arrive.
	Mismatch
)

// slot is a Query packed without pointers, so a table of thousands costs
// the garbage collector nothing to scan.
type slot struct {
	client   [16]byte
	local    [16]byte
	qhash    uint64
	sent     core.Time
	port     uint16
	origID   uint16
	id       uint16
	listener uint16
	flags    uint8 // bit 0: client is IPv4; bit 1: local is IPv4
	// prev and next link live slots in the order they were added (the
	// order of their deadlines), as slot index + 1; 0 ends the list.
	prev, next uint16
}

const (
	flagClient4 = 1 << iota
	flagLocal4
)

// Table is the set of outstanding queries of one upstream socket.
type Table struct {
	capacity int
	timeout  core.Time // as a duration
	rng      uint64
	// index maps an ID to its slot index + 1 (0: the ID is free). It is
	// allocated on first use: 128 KiB.
	index []uint16
	slots []slot   // grows to capacity
	free  []uint16 // indices of unused slots
	head  uint16   // oldest live slot + 1
	tail  uint16   // newest live slot + 1
	live  int
}

// New returns a table holding at most capacity outstanding queries (1 ..
// [MaxCapacity]; out of range is clamped), each expiring timeout after it
// was added. seed starts the ID generator; give each table a secret,
// different seed so IDs cannot be predicted.
func New(capacity int, timeout core.Time, seed uint64) *Table {
	capacity = min(max(capacity, 1), MaxCapacity)
	return &Table{capacity: capacity, timeout: max(timeout, 1), rng: seed}
}

// Len returns the number of outstanding queries.
func (t *Table) Len() int { return t.live }

// Cap returns the table's capacity.
func (t *Table) Cap() int { return t.capacity }

// SetTimeout changes the timeout of queries added from now on.
func (t *Table) SetTimeout(d core.Time) { t.timeout = max(d, 1) }

// Add records q, sent at now, and returns the ID to send it with. It fails
// when the table is full.
func (t *Table) Add(now core.Time, q Query) (uint16, bool) {
	if t.live >= t.capacity {
		return 0, false
	}
	if t.index == nil {
		t.index = make([]uint16, 1<<16)
	}
	var si int
	if n := len(t.free); n > 0 {
		si = int(t.free[n-1])
		t.free = t.free[:n-1]
	} else {
		si = len(t.slots)
		t.slots = append(t.slots, slot{})
	}
	// A random start, then the next free ID: with at most capacity of the
	// 65,536 IDs taken the walk is short, and at least one ID is free.
	id := uint16(t.next() >> 48)
	for t.index[id] != 0 {
		id++
	}
	t.index[id] = uint16(si + 1)
	s := &t.slots[si]
	*s = slot{
		client:   q.Client.Addr().As16(),
		port:     q.Client.Port(),
		local:    q.Local.As16(),
		qhash:    q.QHash,
		sent:     now,
		origID:   q.ID,
		id:       id,
		listener: uint16(q.Listener),
		prev:     t.tail,
	}
	if q.Client.Addr().Is4() {
		s.flags |= flagClient4
	}
	if q.Local.Is4() {
		s.flags |= flagLocal4
	}
	if t.tail != 0 {
		t.slots[t.tail-1].next = uint16(si + 1)
	} else {
		t.head = uint16(si + 1)
	}
	t.tail = uint16(si + 1)
	t.live++
	return id, true
}

// next is SplitMix64: fast, full-period, and its output is a bijection of
// the hidden state, so IDs do not repeat in short cycles.
func (t *Table) next() uint64 {
	t.rng += 0x9e3779b97f4a7c15
	z := t.rng
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// Take matches a reply carrying id and a question hashing to qhash. On
// [Matched] it removes the entry and returns the query and when it was sent.
func (t *Table) Take(id uint16, qhash uint64) (Query, core.Time, Result) {
	if t.index == nil || t.index[id] == 0 {
		return Query{}, 0, Unknown
	}
	si := int(t.index[id] - 1)
	s := &t.slots[si]
	if s.qhash != qhash {
		return Query{}, 0, Mismatch
	}
	q, sent := s.query(), s.sent
	t.remove(si)
	return q, sent, Matched
}

// Release frees the ID of a query that was never sent (its send failed).
// It reports whether id was outstanding.
func (t *Table) Release(id uint16) bool {
	if t.index == nil || t.index[id] == 0 {
		return false
	}
	t.remove(int(t.index[id] - 1))
	return true
}

// Expire removes and returns one query whose timeout has passed at now, the
// oldest first; ok is false when none has.
func (t *Table) Expire(now core.Time) (q Query, sent core.Time, ok bool) {
	if t.head == 0 {
		return Query{}, 0, false
	}
	si := int(t.head - 1)
	s := &t.slots[si]
	if now < s.sent+t.timeout {
		return Query{}, 0, false
	}
	q, sent = s.query(), s.sent
	t.remove(si)
	return q, sent, true
}

// NextDeadline returns when the oldest outstanding query expires, or
// [core.Never] when none is outstanding. After a timeout change the order
// may be off by the difference, never by more.
func (t *Table) NextDeadline() core.Time {
	if t.head == 0 {
		return core.Never
	}
	return t.slots[t.head-1].sent + t.timeout
}

func (t *Table) remove(si int) {
	s := &t.slots[si]
	t.index[s.id] = 0
	if s.prev != 0 {
		t.slots[s.prev-1].next = s.next
	} else {
		t.head = s.next
	}
	if s.next != 0 {
		t.slots[s.next-1].prev = s.prev
	} else {
		t.tail = s.prev
	}
	*s = slot{}
	t.free = append(t.free, uint16(si))
	t.live--
}

func (s *slot) query() Query {
	client := netip.AddrFrom16(s.client)
	if s.flags&flagClient4 != 0 {
		client = client.Unmap()
	}
	local := netip.AddrFrom16(s.local)
	if s.flags&flagLocal4 != 0 {
		local = local.Unmap()
	}
	if s.local == ([16]byte{}) && s.flags&flagLocal4 == 0 {
		local = netip.Addr{}
	}
	return Query{
		Client:   netip.AddrPortFrom(client, s.port),
		Local:    local,
		Listener: core.ListenerID(s.listener),
		ID:       s.origID,
		QHash:    s.qhash,
	}
}

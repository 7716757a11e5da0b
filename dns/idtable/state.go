package idtable

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/fastudp/fastudp/core"
)

// Handing a table over to another process (a zero-downtime upgrade):
// [Table.AppendState] writes the outstanding queries, oldest first, each
// with its age at the writer's clock; [Restore] rebuilds a table from them
// at the reader's clock. The free-ID state and the slot layout are rebuilt,
// not carried.
//
// Layout (big-endian): version byte (stateVersion), entry count (uint32),
// then per entry: ID, client ID, listener, client port (uint16 each), flags
// (byte), client and local address (16 bytes each), question hash (uint64),
// age in nanoseconds (int64, >= 0).

const (
	stateVersion = 1
	stateHeader  = 5
	stateEntry   = 2*4 + 1 + 16*2 + 8 + 8
)

// AppendState appends the table's outstanding queries to b, with their ages
// at now.
func (t *Table) AppendState(b []byte, now core.Time) []byte {
	b = append(b, stateVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(t.live))
	for si := t.head; si != 0; si = t.slots[si-1].next {
		s := &t.slots[si-1]
		b = binary.BigEndian.AppendUint16(b, s.id)
		b = binary.BigEndian.AppendUint16(b, s.origID)
		b = binary.BigEndian.AppendUint16(b, s.listener)
		b = binary.BigEndian.AppendUint16(b, s.port)
		b = append(b, s.flags)
		b = append(b, s.client[:]...)
		b = append(b, s.local[:]...)
		b = binary.BigEndian.AppendUint64(b, s.qhash)
		b = binary.BigEndian.AppendUint64(b, uint64(max(now-s.sent, 0)))
	}
	return b
}

// Restore returns a table as [New] does holding the queries b lists
// ([Table.AppendState]), each sent its age before now. Queries past the
// table's capacity (it shrank) are left out, the newest first; dropped says
// how many. Corrupt state (a bad version or length, a repeated ID, a
// negative age, unknown flags) is an error, never a panic.
func Restore(b []byte, capacity int, timeout core.Time, seed uint64, now core.Time) (t *Table, dropped int, err error) {
	t = New(capacity, timeout, seed)
	if len(b) < stateHeader {
		return nil, 0, errors.New("idtable: state too short")
	}
	if b[0] != stateVersion {
		return nil, 0, fmt.Errorf("idtable: state version %d, want %d", b[0], stateVersion)
	}
	n := binary.BigEndian.Uint32(b[1:])
	if n > MaxCapacity || len(b) != stateHeader+int(n)*stateEntry {
		return nil, 0, fmt.Errorf("idtable: state of %d bytes for %d entries", len(b), n)
	}
	if n > 0 {
		t.index = make([]uint16, 1<<16)
	}
	p := b[stateHeader:]
	for i := range int(n) {
		e := p[i*stateEntry : (i+1)*stateEntry]
		s := slot{
			id:       binary.BigEndian.Uint16(e[0:]),
			origID:   binary.BigEndian.Uint16(e[2:]),
			listener: binary.BigEndian.Uint16(e[4:]),
			port:     binary.BigEndian.Uint16(e[6:]),
			flags:    e[8],
		}
		copy(s.client[:], e[9:25])
		copy(s.local[:], e[25:41])
		s.qhash = binary.BigEndian.Uint64(e[41:])
		age := int64(binary.BigEndian.Uint64(e[49:]))
		if age < 0 || s.flags&^(flagClient4|flagLocal4) != 0 {
			return nil, 0, fmt.Errorf("idtable: state entry %d: bad age or flags", i)
		}
		if t.index[s.id] != 0 {
			return nil, 0, fmt.Errorf("idtable: state entry %d: ID %d repeated", i, s.id)
		}
		if t.live >= t.capacity {
			dropped++
			continue
		}
		s.sent = now - core.Time(age)
		t.link(s)
	}
	return t, dropped, nil
}

// link adds s, whose id is free, as the newest live slot.
func (t *Table) link(s slot) {
	si := len(t.slots)
	t.slots = append(t.slots, s)
	t.index[s.id] = uint16(si + 1)
	p := &t.slots[si]
	p.prev, p.next = t.tail, 0
	if t.tail != 0 {
		t.slots[t.tail-1].next = uint16(si + 1)
	} else {
		t.head = uint16(si + 1)
	}
	t.tail = uint16(si + 1)
	t.live++
}

package core

// flowTable maps a flowKey to a flow slot index with open addressing and
// linear probing. Each slot packs the high 32 bits of the key hash (the tag)
// and index+1 (0 = empty). The home bucket is taken from the tag, so probing,
// deletion and growth never touch the flows themselves; only a tag match is
// confirmed against the flow's key. Deletion shifts the rest of the probe
// cluster back, so there are no tombstones and probe lengths do not decay.
// The table is never more than 3/4 full.
type flowTable struct {
	slots []uint64
	mask  uint64
	count int
}

const minTableSize = 64

func (t *flowTable) init(n int) {
	size := minTableSize
	for size*3/4 < n {
		size *= 2
	}
	t.slots = make([]uint64, size)
	t.mask = uint64(size - 1)
	t.count = 0
}

func packSlot(h uint64, idx uint32) uint64 { return h&^0xffffffff | uint64(idx+1) }

func slotIndex(s uint64) uint32 { return uint32(s) - 1 }

func (t *flowTable) home(h uint64) uint64 { return (h >> 32) & t.mask }

// find returns the index of the flow in flows whose key equals k.
func (t *flowTable) find(h uint64, k *flowKey, flows *flowSlab) (uint32, bool) {
	tag := h &^ 0xffffffff
	for i := t.home(h); ; i = (i + 1) & t.mask {
		s := t.slots[i]
		if s == 0 {
			return 0, false
		}
		if s&^0xffffffff == tag {
			idx := slotIndex(s)
			if flows.at(idx).key.equal(k) {
				return idx, true
			}
		}
	}
}

// insert adds idx under hash h; the caller has checked the key is absent.
// Growing the table is its only allocation.
func (t *flowTable) insert(h uint64, idx uint32) {
	if (t.count+1)*4 > len(t.slots)*3 {
		t.grow()
	}
	t.place(packSlot(h, idx))
	t.count++
}

func (t *flowTable) place(s uint64) {
	for i := t.home(s); ; i = (i + 1) & t.mask {
		if t.slots[i] == 0 {
			t.slots[i] = s
			return
		}
	}
}

// remove deletes the entry for idx stored under hash h and reports whether it
// was present.
func (t *flowTable) remove(h uint64, idx uint32) bool {
	want := packSlot(h, idx)
	i := t.home(h)
	for {
		s := t.slots[i]
		if s == 0 {
			return false
		}
		if s == want {
			break
		}
		i = (i + 1) & t.mask
	}
	t.count--
	// Backward-shift deletion (Knuth, TAOCP 6.4, algorithm R): walk the rest of
	// the cluster and move back every entry whose home is not cyclically in
	// (hole, j].
	hole := i
	for j := (i + 1) & t.mask; ; j = (j + 1) & t.mask {
		s := t.slots[j]
		if s == 0 {
			break
		}
		home := t.home(s)
		if (j-home)&t.mask >= (j-hole)&t.mask {
			t.slots[hole] = s
			hole = j
		}
	}
	t.slots[hole] = 0
	return true
}

func (t *flowTable) grow() {
	old := t.slots
	t.slots = make([]uint64, len(old)*2)
	t.mask = uint64(len(t.slots) - 1)
	for _, s := range old {
		if s != 0 {
			t.place(s)
		}
	}
}

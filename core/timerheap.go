package core

// timerHeap is a 4-ary min-heap of flow deadlines. Each live flow has exactly
// one entry, whose time is never later than the flow's real deadline: a
// datagram that pushes the deadline later only writes the flow (O(1)), and the
// entry is re-queued lazily when it reaches the top. Only a deadline that moves
// earlier (a back timeout shorter than the front timeout) sifts the entry up.
type timerHeap struct {
	entries []timerEntry
}

type timerEntry struct {
	at  Time
	idx uint32
}

const heapArity = 4

func (h *timerHeap) len() int { return len(h.entries) }

// min returns the earliest queued time, or Never when empty.
func (h *timerHeap) min() Time {
	if len(h.entries) == 0 {
		return Never
	}
	return h.entries[0].at
}

func (h *timerHeap) push(at Time, idx uint32, flows *flowSlab) {
	h.entries = append(h.entries, timerEntry{at: at, idx: idx})
	h.up(len(h.entries)-1, flows)
}

// remove deletes the entry at position i.
func (h *timerHeap) remove(i int, flows *flowSlab) {
	last := len(h.entries) - 1
	flows.at(h.entries[i].idx).heapPos = -1
	if i != last {
		h.entries[i] = h.entries[last]
		flows.at(h.entries[i].idx).heapPos = int32(i)
	}
	h.entries = h.entries[:last]
	if i != last {
		if !h.up(i, flows) {
			h.down(i, flows)
		}
	}
}

// update sets the time of the entry at position i and restores heap order.
func (h *timerHeap) update(i int, at Time, flows *flowSlab) {
	old := h.entries[i].at
	h.entries[i].at = at
	if at < old {
		h.up(i, flows)
	} else {
		h.down(i, flows)
	}
}

func (h *timerHeap) up(i int, flows *flowSlab) bool {
	e := h.entries[i]
	start := i
	for i > 0 {
		p := (i - 1) / heapArity
		if h.entries[p].at <= e.at {
			break
		}
		h.entries[i] = h.entries[p]
		flows.at(h.entries[i].idx).heapPos = int32(i)
		i = p
	}
	h.entries[i] = e
	flows.at(e.idx).heapPos = int32(i)
	return i != start
}

func (h *timerHeap) down(i int, flows *flowSlab) {
	n := len(h.entries)
	e := h.entries[i]
	for {
		c := i*heapArity + 1
		if c >= n {
			break
		}
		best := c
		end := min(c+heapArity, n)
		for j := c + 1; j < end; j++ {
			if h.entries[j].at < h.entries[best].at {
				best = j
			}
		}
		if h.entries[best].at >= e.at {
			break
		}
		h.entries[i] = h.entries[best]
		flows.at(h.entries[i].idx).heapPos = int32(i)
		i = best
	}
	h.entries[i] = e
	flows.at(e.idx).heapPos = int32(i)
}

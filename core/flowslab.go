package core

// flowSlab stores flow slots in fixed-size chunks. Growing it adds a chunk
// and never moves a flow: a flat slice grown by append would copy every flow
// (tens of milliseconds inside one Handle call at a million flows) and keep
// up to a quarter of its capacity unused.
type flowSlab struct {
	chunks [][]flow
	n      int // slots in use (all chunks full except the last)
}

const (
	flowChunkShift = 12 // 4096 flows, 576 KiB, per chunk
	flowChunkSize  = 1 << flowChunkShift
	flowChunkMask  = flowChunkSize - 1
)

// at returns slot idx, which must be below len.
func (s *flowSlab) at(idx uint32) *flow {
	return &s.chunks[idx>>flowChunkShift][idx&flowChunkMask]
}

func (s *flowSlab) len() int { return s.n }

// add appends a slot initialised to f and returns its index.
func (s *flowSlab) add(f flow) uint32 {
	if s.n == len(s.chunks)*flowChunkSize {
		s.chunks = append(s.chunks, make([]flow, flowChunkSize))
	}
	idx := uint32(s.n)
	*s.at(idx) = f
	s.n++
	return idx
}

// slabOf views flows as a slab without copying, for tests of the structures
// that index flows.
func slabOf(flows []flow) *flowSlab {
	s := &flowSlab{n: len(flows)}
	for len(flows) > 0 {
		n := min(len(flows), flowChunkSize)
		s.chunks = append(s.chunks, flows[:n:n])
		flows = flows[n:]
	}
	return s
}

package loadgen

import (
	"encoding/binary"
	"errors"
)

// HeaderLen is the size of the [Header] at the start of every opaque
// payload; it is also the smallest opaque payload the generator sends.
const HeaderLen = 32

// MaxPhases is the number of phases counted separately (0 to MaxPhases-1).
const MaxPhases = 8

// magic marks a payload as the generator's ("fudp").
const magic = 0x66756470

// Header is the generator's per-datagram metadata, in little-endian order:
//
//	[0:4]   magic "fudp"
//	[4]     phase
//	[5]     zero
//	[6:8]   segment index within a reply run (the bulk blaster; 0 otherwise)
//	[8:12]  socket (connection) index
//	[12:16] length of the whole datagram in bytes
//	[16:24] sequence number (per generator)
//	[24:32] send time, ns since the generator's epoch: in the open loop the
//	        time the schedule said the datagram was due, not when it left
type Header struct {
	Phase  uint8
	Seg    uint16
	Conn   uint32
	Len    uint32
	Seq    uint64
	SentNs int64
}

// Put writes h into b[:HeaderLen].
func (h *Header) Put(b []byte) {
	_ = b[HeaderLen-1]
	binary.LittleEndian.PutUint32(b[0:], magic)
	b[4], b[5] = h.Phase, 0
	binary.LittleEndian.PutUint16(b[6:], h.Seg)
	binary.LittleEndian.PutUint32(b[8:], h.Conn)
	binary.LittleEndian.PutUint32(b[12:], h.Len)
	binary.LittleEndian.PutUint64(b[16:], h.Seq)
	binary.LittleEndian.PutUint64(b[24:], uint64(h.SentNs))
}

var errNotOurs = errors.New("loadgen: not a generator datagram")

// ParseHeader reads the header at the start of b.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen || binary.LittleEndian.Uint32(b) != magic || b[4] >= MaxPhases {
		return Header{}, errNotOurs
	}
	return Header{
		Phase:  b[4],
		Seg:    binary.LittleEndian.Uint16(b[6:]),
		Conn:   binary.LittleEndian.Uint32(b[8:]),
		Len:    binary.LittleEndian.Uint32(b[12:]),
		Seq:    binary.LittleEndian.Uint64(b[16:]),
		SentNs: int64(binary.LittleEndian.Uint64(b[24:])),
	}, nil
}

// phaseOf returns the phase of a generator datagram, or -1.
func phaseOf(b []byte) int {
	if len(b) < HeaderLen || binary.LittleEndian.Uint32(b) != magic || b[4] >= MaxPhases {
		return -1
	}
	return int(b[4])
}

package core

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// byteReader decodes fuzz input; past the end it reads zeros.
type byteReader struct {
	b []byte
	i int
}

func (r *byteReader) more() bool { return r.i < len(r.b) }

func (r *byteReader) byte() byte {
	if r.i >= len(r.b) {
		return 0
	}
	c := r.b[r.i]
	r.i++
	return c
}

func (r *byteReader) u16() uint16 { return uint16(r.byte())<<8 | uint16(r.byte()) }

func (r *byteReader) u64() uint64 {
	var b [8]byte
	for i := range b {
		b[i] = r.byte()
	}
	return binary.LittleEndian.Uint64(b[:])
}

// addrPort reads a kind byte (0: the zero AddrPort; bit 4 set: IPv6, 16
// bytes; else IPv4, 4 bytes) then the address and a big-endian port.
func (r *byteReader) addrPort() netip.AddrPort {
	k := r.byte()
	var a netip.Addr
	switch {
	case k == 0:
		return netip.AddrPort{}
	case k&16 != 0:
		var b [16]byte
		for i := range b {
			b[i] = r.byte()
		}
		a = netip.AddrFrom16(b)
	default:
		var b [4]byte
		for i := range b {
			b[i] = r.byte()
		}
		a = netip.AddrFrom4(b)
	}
	return netip.AddrPortFrom(a, r.u16())
}

// decodeSimConfig and decodeSimOp map bytes onto the simulator's ops, so the
// fuzzer explores the same space as TestProperties.
func decodeSimConfig(r *byteReader) simConfig {
	return simConfig{
		Seed:         r.u64(),
		MaxFlows:     []int{0, 1, 2, 4, 8}[r.byte()%5],
		PendingLimit: int(r.byte() % 5),
		ExpiryBudget: int(r.byte() % 4),
		PoolLimit:    []int{0, 0, 3}[r.byte()%3],
	}
}

func decodeSimOp(r *byteReader) simOp {
	k := int(r.byte())
	op := simOp{Kind: simOpTable[(k&0x7f)%len(simOpTable)], End: k&0x80 == 0}
	switch op.Kind {
	case simClient, simBackend:
		op.A, op.B, op.C = int(r.byte()), int(r.byte()), int(r.byte())
		op.Size = int(r.u16()) % 1000
		if v := r.byte(); v&3 == 0 {
			op.Seg = 1 + int(v>>2)%100
		}
		op.TOS = r.byte()
		op.Variant = int(r.byte())
	case simResolve, simResolveFail, simAbort, simStaleBackend, simStaleResolve, simStaleAbort, simAdvance, simRemoveCluster, simJunk:
		op.A, op.B, op.C = int(r.byte()), int(r.u16()), int(r.byte())
		op.Variant = int(r.byte())
	case simSetCluster:
		op.A = int(r.byte())
		op.Cluster = clusterFrom(func() int { return int(r.byte()) })
	case simMaxFlows, simMaxRx, simBackendDown, simBackendUp:
		op.Value = int(r.byte())
	case simAdmission:
		op.Value = int(r.u16()) % 320
	}
	return op
}

// fuzzSeedBackendDown: see FuzzManager. Op bytes index simOpTable: 0
// client, 26 resolve, 76 backend-down, 79 backend-up, 51 advance, 46 timer.
var fuzzSeedBackendDown = []byte{1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 1, 0,
	0, 2, 0, 0, 0, 20, 1, 0, 0, // client on listener 2
	26, 0, 0, 0, 0, 0, // resolve to backend 1
	76, 0, // backend 1 down
	0, 2, 0, 0, 0, 30, 1, 0, 0, // client again: closes the flow, opens another
	26, 0, 0, 1, 0, 0, // resolve to backend 2
	79, 0, // backend 1 up
	51, 3, 0, 0, 0, 0, // advance
	46, // timer
}

// FuzzManager decodes arbitrary bytes into a manager config and a sequence of
// inputs (client and backend datagrams and runs, resolutions good, failed and
// stale, aborts, timers, clock steps, config events, junk), checks the
// manager's invariants and the simulator's model after every batch, and at the
// end that every flow closes once the clock passes its deadlines.
func FuzzManager(f *testing.F) {
	// A DNS-like exchange: client, resolve, reply, timer, close all.
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 1, 0,
		0, 0, 1, 0, 0, 20, 1, 0, 0, // client
		17, 0, 0, 0, 0, // flush
		16, 0, 0, 0, 0, // resolve
		17, 0, 0, 0, 0,
		24, 0, 0, 0, 0, 30, 1, 0, 0, // backend
		40, 3, 0, 0, 0, // advance
		37, 0, 0, 0, 0, // timer
	})
	// A flow on listener 2 (close policy) resolved to backend 1, backend 1
	// marked down, the client's next datagram (a new flow, resolved to
	// backend 2), backend 1 up.
	f.Add(fuzzSeedBackendDown)
	// Pseudo-random sequences of several lengths.
	x := uint64(7)
	for _, n := range []int{16, 64, 256, 1024, 4096} {
		b := make([]byte, n)
		for i := range b {
			x = splitmix64(x + 0x9e3779b97f4a7c15)
			b[i] = byte(x)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &byteReader{b: data}
		s := newSim(t, decodeSimConfig(r), false)
		for n := 0; r.more() && n < 1000; n++ {
			s.apply(decodeSimOp(r))
		}
		s.finish()
	})
}

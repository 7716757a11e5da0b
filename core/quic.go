package core

import "github.com/fastudp/fastudp/quiclb"

// firstDatagram carries what admissible learnt about a new flow's first datagram
// to admit, which emits its OutSelectBackend.
type firstDatagram struct {
	first  []byte // the first datagram (first segment of a GRO run)
	key    uint64 // the QUIC connection ID key, when hasKey
	hasKey bool
}

// admissible checks the first datagram of a new flow under cluster version
// ver before it is admitted; under AffinityQUIC a datagram that breaks the
// QUIC invariants is dropped (false), and a long header with a client-chosen
// connection ID gets that ID's key.
func (m *Manager) admissible(ver int32, payload []byte, seg int) bool {
	first := payload
	if seg > 0 && seg < len(payload) {
		first = payload[:seg]
	}
	m.admitting = firstDatagram{first: first}
	cfg := &m.versions[ver].cfg
	if cfg.Affinity != AffinityQUIC {
		return true
	}
	route, dcid := cfg.QUIC.Classify(first)
	switch route {
	case quiclb.RouteMalformed:
		m.admitting.first = nil
		m.drop(DropMalformed, segmentCount(len(payload), seg), len(payload))
		return false
	case quiclb.RouteCIDHash:
		m.admitting.key, m.admitting.hasKey = cidHashFrom(m.affinityBase, dcid), true
	}
	return true
}

// admitted completes the OutSelectBackend o of the flow admissible checked.
func (m *Manager) admitted(o *Output) {
	o.Payload = m.admitting.first
	if m.admitting.hasKey {
		o.Key = m.admitting.key
	}
	m.admitting = firstDatagram{}
}

// QUICCIDHash returns the selection key of a new QUIC flow whose first packet
// has a client-chosen destination connection ID dcid: FNV-1a 64 over the seed
// (8 bytes, little-endian) and the ID's bytes, then the splitmix64 finaliser,
// as [AffinityHash] does over an address. Every datagram with the same ID gets
// the same key, whatever address it came from.
func QUICCIDHash(seed uint64, dcid []byte) uint64 {
	return cidHashFrom(fnvSeeded(seed), dcid)
}

func cidHashFrom(h uint64, dcid []byte) uint64 {
	for _, c := range dcid {
		h ^= uint64(c)
		h *= fnvPrime64
	}
	return splitmix64(h)
}

package shard

import (
	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/gso"
)

// gsoSendState holds the scratch space of the two zero-copy GSO send shapes
// that need more than Header and Buf, both built from batchio Gather
// pieces (iovecs) pointing into buffers the shard already has:
//
//   - a PROXY v2 header before every segment of a client GRO run
//     ([core.OutSendToBackend] with Header and SegmentSize): one GSO send
//     of len(header)+segment bytes whose pieces alternate the one header
//     and the segments in the receive buffer ([gso.HeaderEach]);
//   - a client's separate replies within one batch (equal-size datagrams
//     read into separate receive buffers) merged into GSO sends
//     ([gso.Coalesce]).
type gsoSendState struct {
	hdrSends []batchio.Message // the sends of one header run
	upParts  [][]byte          // their Gather pieces
	// clientParts holds the Gather pieces of the coalesced replies of the
	// listener being flushed.
	clientParts [][]byte
}

func newGSOSendState(batch int) gsoSendState {
	return gsoSendState{
		hdrSends: make([]batchio.Message, 0, 4),
		// A header run of up to 64 segments takes 2 pieces per segment
		// after the first; 128-segment GRO runs (newer kernels) fit too.
		upParts:     make([][]byte, 0, 4*gso.MaxSegments),
		clientParts: make([][]byte, 0, batch),
	}
}

// sendHeaderRun sends o, a client run whose every segment needs the PROXY
// v2 header o.Header, on u's socket: as GSO sends of header+segment
// datagrams within the kernel's limits, or, with GSO off or refused, as
// single header+segment datagrams in one sendmmsg (sendRun splits). No
// payload is copied unless the socket's buffer is full (then the run is
// queued, headers and segments interleaved in one pool buffer).
func (s *Shard) sendHeaderRun(u *upstream, o *core.Output) {
	s.flushUpstreamBatch() // keep the flow's order
	st := &s.gsoTx
	tmpl := batchio.Message{TOS: o.TOS}
	st.hdrSends, st.upParts = gso.HeaderEach(st.hdrSends[:0], st.upParts[:0], &tmpl, o.Header, o.Payload, o.SegmentSize)
	for i := range st.hdrSends {
		m := &st.hdrSends[i]
		if len(u.queue) > 0 {
			s.enqueueUpstream(u, m)
			continue
		}
		s.sendUpstreamRun(u, m)
	}
	clear(st.hdrSends)
	clear(st.upParts)
}

// coalesceClientSends merges the replies collected for listener l into GSO
// runs where [gso.Coalesce] allows (same client, source address and TOS;
// equal sizes with one shorter tail; at most 64 segments and 65,507 bytes
// per send) and returns the messages to send. With GSO off on the socket it
// returns them as they are.
func (s *Shard) coalesceClientSends(l *listenerSock) []batchio.Message {
	if l.gsoOff || len(l.out) < 2 {
		return l.out
	}
	var msgs []batchio.Message
	msgs, s.gsoTx.clientParts = gso.Coalesce(l.out, s.gsoTx.clientParts[:0])
	return msgs
}

// releaseClientParts drops the references the last flush's Gather pieces
// held to receive buffers.
func (st *gsoSendState) releaseClientParts() {
	clear(st.clientParts)
	st.clientParts = st.clientParts[:0]
}

// hasFlowListener reports whether any listener is not in DNS mode: only
// those read with UDP_GRO (and need 64 KiB receive buffers).
func hasFlowListener(ls []Listener) bool {
	for i := range ls {
		if ls[i].DNS == nil {
			return true
		}
	}
	return false
}

package shard

import "github.com/fastudp/fastudp/core"

// PayloadPicker is a [Picker] that also routes by the content of a new
// flow's first datagram (QUIC-LB: the server ID in a QUIC connection ID).
// payload is borrowed: it is valid only during the call.
type PayloadPicker interface {
	Picker
	PickPayload(cluster core.ClusterID, key uint64, payload []byte) (core.Backend, bool)
}

// pick chooses the backend of the flow of an OutSelectBackend.
func (s *Shard) pick(o *core.Output) (core.Backend, bool) {
	if pp, ok := s.opts.Picker.(PayloadPicker); ok {
		return pp.PickPayload(o.Cluster, o.Key, o.Payload)
	}
	return s.opts.Picker.Pick(o.Cluster, o.Key)
}

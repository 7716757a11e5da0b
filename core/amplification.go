package core

import "math/bits"

// Amplification guard.
//
// A flow under a cluster with MaxAmplification = R and AmplificationAllowance
// = A may return at most R × bytesIn + A reply bytes in total, where bytesIn
// is the payload it forwarded to its backend and both sides count UDP
// payload only (no PROXY v2 header, no IP or UDP header). A backend datagram
// that would take the flow's reply bytes past that budget is dropped with
// [DropAmplification]; of a GRO run the leading segments that fit are
// forwarded and the rest dropped. A later client datagram raises the budget
// again: the guard bounds the ratio, it does not close the flow.

// amplificationFit returns how many of the take leading datagrams of a reply
// of n bytes (segment size seg, 0 for one datagram) fit the flow's budget.
func amplificationFit(f *flow, cfg *ClusterConfig, n, seg, take int) int {
	hi, budget := bits.Mul64(uint64(cfg.MaxAmplification), f.bytesIn)
	budget, carry := bits.Add64(budget, uint64(cfg.AmplificationAllowance), 0)
	if hi|carry != 0 {
		return take // past 2^64 bytes: no cap left to enforce
	}
	room := budget - min(f.bytesOut, budget)
	if uint64(n) <= room {
		return take
	}
	if seg <= 0 {
		return 0
	}
	// Every segment but the last is seg bytes long, and not all fit, so
	// those that fit are whole segments.
	return int(min(room/uint64(seg), uint64(take-1)))
}

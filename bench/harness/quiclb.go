package harness

import (
	"encoding/hex"
	"strconv"

	"github.com/quic-go/quic-go"

	"github.com/fastudp/fastudp/bench/target"
	"github.com/fastudp/fastudp/quiclb"
	"github.com/fastudp/fastudp/quiclb/quicgo"
)

// The fastudp-quic target is fastudp with affinity quic in front of the
// quic-bulk server, which issues QUIC-LB connection IDs with
// benchQUICServerID: the client's packets are routed by the server ID in
// them. It runs the quic-bulk scenario only.
var (
	benchQUICLB       = quiclb.Config{ConfigID: 0, ServerIDLen: 1, NonceLen: 8}
	benchQUICServerID = []byte{0x01}
)

// quicOnly reports whether target name runs QUIC scenarios only.
func quicOnly(name string) bool { return name == "fastudp-quic" }

// fastudpQUICTarget is fastudp (1 shard) with --affinity quic and the
// quic-bulk server's server ID.
func (h *harness) fastudpQUICTarget() target.Fastudp {
	args := append(append([]string{}, h.o.FastudpArgs...), "--affinity", "quic",
		"--quic-sid-len", strconv.Itoa(int(benchQUICLB.ServerIDLen)), "--quic-nonce-len", strconv.Itoa(int(benchQUICLB.NonceLen)))
	return target.Fastudp{Bin: h.o.Bin, Shards: 1, Metrics: true, Label: "fastudp-quic", Args: args,
		ServerID: hex.EncodeToString(benchQUICServerID)}
}

// benchCIDGenerator is the quic-bulk server's connection ID generator.
func benchCIDGenerator() (quic.ConnectionIDGenerator, error) {
	return quicgo.New(benchQUICLB, benchQUICServerID)
}

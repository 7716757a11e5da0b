package batchio

import (
	"bytes"
	"testing"
)

// TestGatherGSO sends a GSO run whose pieces alternate one header and the
// segments ([hdr, s1, hdr, s2, ...], the PROXY v2 "every datagram" shape):
// the kernel cuts the gathered stream every len(hdr)+seg bytes, so a plain
// socket receives header+segment datagrams and a UDP_GRO socket one run of
// that segment size.
func TestGatherGSO(t *testing.T) {
	const seg, n = 1000, 12
	hdr := []byte("HEADER-28-BYTES-LONG-PROXYv2")
	run := make([]byte, seg*n-300) // a shorter last segment
	for i := range run {
		run[i] = byte(i/seg) + 'a'
	}
	m := Message{Header: hdr, Buf: run[:seg], SegmentSize: len(hdr) + seg}
	for rest := run[seg:]; len(rest) > 0; {
		k := min(seg, len(rest))
		m.Gather = append(m.Gather, hdr, rest[:k])
		rest = rest[k:]
	}
	want := func(i int) []byte {
		return append(bytes.Clone(hdr), run[i*seg:min((i+1)*seg, len(run))]...)
	}
	t.Run("plain", func(t *testing.T) {
		srv, srvAddr := listen(t, "127.0.0.1:0", ListenOptions{})
		cli, _ := dial(t, srvAddr, DialOptions{})
		b := NewBatch(16)
		send(t, b, cli, []Message{m})
		in := recvN(t, b, srv, makeMsgs(n, 2048), n)
		for i := range in {
			if got := in[i].Buf[:in[i].N]; !bytes.Equal(got, want(i)) {
				t.Fatalf("datagram %d: %d bytes %.40q, want %d bytes %.40q", i, len(got), got, len(want(i)), want(i))
			}
		}
		expectEmpty(t, b, srv)
		ms, rx := []Message{m}, makeMsgs(n, 2048)
		if a := testing.AllocsPerRun(20, func() { send(t, b, cli, ms); recvN(t, b, srv, rx, n) }); a != 0 {
			t.Errorf("a send of %d pieces: %v allocations, want 0", 1+len(m.Gather), a)
		}
	})
	t.Run("gro", func(t *testing.T) {
		srv, srvAddr := listen(t, "127.0.0.1:0", ListenOptions{GRO: true})
		cli, _ := dial(t, srvAddr, DialOptions{})
		b := NewBatch(4)
		send(t, b, cli, []Message{m})
		r := recvN(t, b, srv, makeMsgs(1, GROBufferSize), 1)[0]
		var all []byte
		for i := range n {
			all = append(all, want(i)...)
		}
		if r.SegmentSize != len(hdr)+seg || !bytes.Equal(r.Buf[:r.N], all) {
			t.Fatalf("run of %d bytes, segment size %d; want %d, %d", r.N, r.SegmentSize, len(all), len(hdr)+seg)
		}
	})
}

// TestSendPacksIovecs: messages whose pieces need more iovecs than a batch
// of their count has (2 per message) still all go out, in order, in as many
// sendmmsg calls as the iovec array needs; a message above MaxIovecs fails
// with EMSGSIZE without reaching the kernel.
func TestSendPacksIovecs(t *testing.T) {
	srv, srvAddr := listen(t, "127.0.0.1:0", ListenOptions{})
	cli, _ := dial(t, srvAddr, DialOptions{})
	b := NewBatch(4) // 8 + MaxIovecs iovecs
	const msgs, pieces = 8, 300
	out := make([]Message, msgs)
	for i := range out {
		out[i].Buf = []byte{byte(i)}
		for j := range pieces - 1 {
			out[i].Gather = append(out[i].Gather, []byte{byte(j)})
		}
	}
	before := b.Syscalls().Sendmmsg
	send(t, b, cli, out)
	if calls := b.Syscalls().Sendmmsg - before; calls < 3 {
		t.Errorf("%d sendmmsg calls for %d messages of %d iovecs, want at least 3", calls, msgs, pieces)
	}
	in := recvN(t, b, srv, makeMsgs(msgs, 2048), 4)
	in = append(in, recvN(t, b, srv, makeMsgs(msgs, 2048), 4)...)
	for i, m := range in {
		if m.N != pieces || m.Buf[0] != byte(i) || m.Buf[pieces-1] != byte((pieces-2)%256) {
			t.Fatalf("datagram %d: %d bytes starting %d", i, m.N, m.Buf[0])
		}
	}
	big := Message{Buf: []byte{1}, Gather: make([][]byte, MaxIovecs)}
	for i := range big.Gather {
		big.Gather[i] = []byte{2}
	}
	if n, err := b.Send(cli, []Message{{Buf: []byte("ok")}, big}); n != 1 || !IsGSOError(err) {
		t.Fatalf("Send with %d pieces = %d, %v; want 1, EMSGSIZE", MaxIovecs+1, n, err)
	}
	if big.Len() != MaxIovecs+1 {
		t.Fatalf("Len %d", big.Len())
	}
}

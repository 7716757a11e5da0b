package loadgen

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/fastudp/fastudp/batchio"
	"golang.org/x/sys/unix"
)

// EchoConfig configures [StartEcho].
type EchoConfig struct {
	// Addr is the address to listen on; the zero value means 127.0.0.1:0
	// (a free port; see [Echo.Addr]).
	Addr netip.AddrPort
	// Batch is the recvmmsg/sendmmsg batch size (0: batchio's default).
	Batch int
	// MaxDatagram is the largest datagram returned whole (default 2048);
	// longer ones are counted as truncated and dropped.
	MaxDatagram int
	// RecvBuffer and SendBuffer size the socket buffers (default 4 MiB).
	RecvBuffer, SendBuffer int
}

// EchoStats are an echo backend's counters.
type EchoStats struct {
	Received  uint64 // datagrams read
	Returned  uint64 // datagrams sent back
	Dropped   uint64 // not returned: truncated, or the send failed
	Bytes     uint64 // payload bytes read
	Foreign   uint64 // datagrams without a generator header (still echoed)
	PerPhase  [MaxPhases]uint64
	Truncated uint64 // subset of Dropped
}

// Echo is a batched UDP echo backend: one socket, one goroutine locked to
// an OS thread, every datagram returned to its sender unchanged.
type Echo struct {
	fd    int
	addr  netip.AddrPort
	batch *batchio.Batch
	rx    []batchio.Message
	tx    []batchio.Message
	bufs  [][]byte

	stop atomic.Bool
	done chan struct{}
	once sync.Once

	received, returned, dropped, bytes, foreign, truncated atomic.Uint64
	perPhase                                               [MaxPhases]atomic.Uint64
}

// StartEcho opens the socket and starts the backend.
func StartEcho(cfg EchoConfig) (*Echo, error) {
	if !cfg.Addr.IsValid() {
		cfg.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
	}
	if cfg.MaxDatagram <= 0 {
		cfg.MaxDatagram = 2048
	}
	if cfg.RecvBuffer == 0 {
		cfg.RecvBuffer = 4 << 20
	}
	if cfg.SendBuffer == 0 {
		cfg.SendBuffer = 4 << 20
	}
	fd, err := batchio.ListenUDP(cfg.Addr, batchio.ListenOptions{RecvBuffer: cfg.RecvBuffer, SendBuffer: cfg.SendBuffer})
	if err != nil {
		return nil, fmt.Errorf("echo: %w", err)
	}
	addr, err := batchio.LocalAddr(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("echo: %w", err)
	}
	b := batchio.NewBatch(cfg.Batch)
	e := &Echo{
		fd: fd, addr: addr, batch: b,
		rx:   make([]batchio.Message, b.Size()),
		tx:   make([]batchio.Message, b.Size()),
		bufs: make([][]byte, b.Size()),
		done: make(chan struct{}),
	}
	// One more byte than the largest datagram, so a datagram of exactly
	// MaxDatagram bytes is not mistaken for a truncated one.
	for i := range e.rx {
		e.bufs[i] = make([]byte, cfg.MaxDatagram+1)
		e.rx[i].Buf = e.bufs[i]
	}
	go e.loop()
	return e, nil
}

// Addr returns the address the backend listens on.
func (e *Echo) Addr() netip.AddrPort { return e.addr }

// Stats returns the counters so far (updated once per batch).
func (e *Echo) Stats() EchoStats {
	s := EchoStats{
		Received: e.received.Load(), Returned: e.returned.Load(), Dropped: e.dropped.Load(),
		Bytes: e.bytes.Load(), Foreign: e.foreign.Load(), Truncated: e.truncated.Load(),
	}
	for i := range s.PerPhase {
		s.PerPhase[i] = e.perPhase[i].Load()
	}
	return s
}

// Close stops the backend, waits for its goroutine and closes the socket.
func (e *Echo) Close() error {
	e.once.Do(func() {
		e.stop.Store(true)
		<-e.done
		unix.Close(e.fd)
	})
	return nil
}

// pollTimeoutMs bounds how long a loop waits before it looks at its stop
// flag.
const pollTimeoutMs = 20

func (e *Echo) loop() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(e.done)
	pfd := []unix.PollFd{{Fd: int32(e.fd), Events: unix.POLLIN}}
	var phase [MaxPhases]uint64
	for !e.stop.Load() {
		n, err := unix.Poll(pfd, pollTimeoutMs)
		if n == 0 || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return // cannot happen with a valid fd
		}
		for !e.stop.Load() {
			got, err := e.batch.Recv(e.fd, e.rx)
			if err != nil {
				if batchio.Classify(err) == batchio.KindWouldBlock {
					break
				}
				continue // nothing else is expected on an unconnected socket
			}
			var nbytes, foreign, trunc uint64
			out := e.tx[:0]
			for i := range got {
				m := &e.rx[i]
				if m.Flags&batchio.FlagTruncated != 0 {
					trunc++
					continue
				}
				p := m.Buf[:m.N]
				nbytes += uint64(m.N)
				if ph := phaseOf(p); ph >= 0 {
					phase[ph]++
				} else {
					foreign++
				}
				out = append(out, batchio.Message{Buf: p, Addr: m.Addr})
			}
			// Count what arrived before replying, so that a reply seen by
			// the generator is always already counted here.
			e.received.Add(uint64(got))
			e.truncated.Add(trunc)
			e.bytes.Add(nbytes)
			e.foreign.Add(foreign)
			for i, c := range phase {
				if c != 0 {
					e.perPhase[i].Add(c)
					phase[i] = 0
				}
			}
			sent := e.send(out)
			e.returned.Add(uint64(sent))
			e.dropped.Add(uint64(got - sent))
			if got < len(e.rx) {
				break // drained: back to poll
			}
		}
	}
}

// send sends msgs, skipping any message the kernel refuses, and returns how
// many left. A full send buffer drops the rest of the batch.
func (e *Echo) send(msgs []batchio.Message) int { return sendSkipping(e.batch, e.fd, msgs) }

// sendSkipping sends msgs on fd, skipping any message the kernel refuses, and
// returns how many left. A full send buffer drops the rest of the batch.
func sendSkipping(b *batchio.Batch, fd int, msgs []batchio.Message) int {
	sent := 0
	for len(msgs) > 0 {
		n, err := b.Send(fd, msgs)
		sent += n
		if err == nil {
			break
		}
		if k := batchio.Classify(err); k == batchio.KindWouldBlock || k == batchio.KindClosed {
			break
		}
		msgs = msgs[n+1:] // msgs[n] failed: drop it, go on
	}
	return sent
}

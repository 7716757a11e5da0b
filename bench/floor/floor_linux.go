// Package floor holds the benchmark's floor: minimal UDP forwarders that do
// the least a proxy hop can do on this kernel, so a proxy's CPU per datagram
// can be read against what any user-space hop has to pay. They are raw
// recvmmsg/sendmmsg loops on batchio, one goroutine locked to a thread, no
// timeouts, no limits, no metrics, and no allocation per datagram:
//
//   - [Relay] relays opaque datagrams: one client-side socket, and one
//     connected upstream socket per client with a small port → client
//     table, so replies find their client without looking at the payload;
//   - [DNS] forwards DNS: one client-side socket and a single upstream
//     socket; each query's ID is rewritten to an index into a flat table
//     of (client, original ID), restored on the reply.
//
// `fastudp bench floor relay|dns` runs them as a process of their own, so
// the benchmark measures their CPU from /proc like any other target's.
package floor

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"

	"github.com/fastudp/fastudp/batchio"
	"golang.org/x/sys/unix"
)

// Config configures a forwarder.
type Config struct {
	Listen  netip.AddrPort // client side
	Backend netip.AddrPort
	// Responses, for the relay, closes a client's upstream socket after
	// this many replies (1: a new flow per request, as a DNS proxy does);
	// 0 keeps it.
	Responses int
	// Batch is the recvmmsg/sendmmsg batch size (0: batchio's default).
	Batch int
}

// Forwarder is a running floor forwarder.
type Forwarder struct {
	lfd  int
	addr netip.AddrPort
	epfd int
	stop atomic.Bool
	done chan error
}

// Addr returns the client-side address.
func (f *Forwarder) Addr() netip.AddrPort { return f.addr }

// Close stops the forwarder and waits for its loop to end.
func (f *Forwarder) Close() error {
	if f.stop.Swap(true) {
		return nil
	}
	return <-f.done
}

// Wait blocks until the loop ends (only on an error: it runs until Close).
func (f *Forwarder) Wait() error { return <-f.done }

func listen(cfg Config) (*Forwarder, error) {
	lfd, err := batchio.ListenUDP(cfg.Listen, batchio.ListenOptions{RecvBuffer: 4 << 20, SendBuffer: 4 << 20, SpecificPacketInfoOff: true})
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	addr, err := batchio.LocalAddr(lfd)
	if err != nil {
		unix.Close(lfd)
		return nil, err
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		unix.Close(lfd)
		return nil, err
	}
	f := &Forwarder{lfd: lfd, addr: addr, epfd: epfd, done: make(chan error, 1)}
	if err := f.add(lfd, 0); err != nil {
		f.closeFDs()
		return nil, err
	}
	return f, nil
}

func (f *Forwarder) add(fd int, tag int32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: tag}
	return unix.EpollCtl(f.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
}

func (f *Forwarder) closeFDs() {
	unix.Close(f.lfd)
	unix.Close(f.epfd)
}

// pollMs bounds how long the loop waits before it looks at its stop flag.
const pollMs = 50

// send sends msgs on fd, dropping what the kernel refuses.
func send(b *batchio.Batch, fd int, msgs []batchio.Message) {
	for len(msgs) > 0 {
		n, err := b.Send(fd, msgs)
		if err == nil {
			return
		}
		if k := batchio.Classify(err); k == batchio.KindWouldBlock || k == batchio.KindClosed {
			return
		}
		msgs = msgs[n+1:]
	}
}

func newMsgs(n, size int) []batchio.Message {
	m := make([]batchio.Message, n)
	for i := range m {
		m[i].Buf = make([]byte, size)
	}
	return m
}

// upstream is one client's connected socket in the relay.
type upstream struct {
	fd      int
	client  netip.AddrPort
	replies int
}

// StartRelay starts the opaque relay.
func StartRelay(cfg Config) (*Forwarder, error) {
	f, err := listen(cfg)
	if err != nil {
		return nil, err
	}
	go func() { f.done <- f.relayLoop(cfg) }()
	return f, nil
}

func (f *Forwarder) relayLoop(cfg Config) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer f.closeFDs()
	b := batchio.NewBatch(cfg.Batch)
	size := b.Size()
	rx := newMsgs(size, 65536)
	// Replies of one epoll round, sent to their clients in one sendmmsg.
	back := newMsgs(4*size, 65536)
	out := make([]batchio.Message, 0, 4*size)
	var ups []upstream // by epoll tag - 1
	var free []int32
	clients := map[netip.AddrPort]int32{}
	events := make([]unix.EpollEvent, 256)
	defer func() {
		for _, u := range ups {
			if u.fd >= 0 {
				unix.Close(u.fd)
			}
		}
	}()
	drop := func(i int32) {
		u := &ups[i]
		unix.Close(u.fd)
		delete(clients, u.client)
		*u = upstream{fd: -1}
		free = append(free, i)
	}
	flushBack := func() {
		send(b, f.lfd, out)
		out = out[:0]
	}
	for !f.stop.Load() {
		n, err := unix.EpollWait(f.epfd, events, pollMs)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd == 0 {
				f.relayClients(b, rx, &ups, &free, clients, cfg)
				continue
			}
			i := ev.Fd - 1
			for ups[i].fd >= 0 {
				room := back[len(out):min(len(out)+size, cap(back))]
				got, err := b.Recv(ups[i].fd, room)
				if err != nil {
					break
				}
				for j := range got {
					// Buffers hold 64 KiB: nothing is truncated.
					out = append(out, batchio.Message{Buf: room[j].Buf[:room[j].N], Addr: ups[i].client})
				}
				ups[i].replies += got
				if cfg.Responses > 0 && ups[i].replies >= cfg.Responses {
					drop(i)
				}
				if len(out)+size > cap(back) {
					flushBack()
				}
				if got < len(room) {
					break
				}
			}
		}
		flushBack()
	}
	return nil
}

// relayClients drains the client socket and forwards each datagram on its
// client's upstream socket, opening one for a new client; consecutive
// datagrams of one client go out in one sendmmsg.
func (f *Forwarder) relayClients(b *batchio.Batch, rx []batchio.Message, ups *[]upstream, free *[]int32, clients map[netip.AddrPort]int32, cfg Config) {
	for {
		got, err := b.Recv(f.lfd, rx)
		if err != nil {
			return
		}
		start, cur := 0, int32(-1)
		flush := func(end int) {
			if cur >= 0 && end > start {
				send(b, (*ups)[cur].fd, rx[start:end])
			}
		}
		for j := range got {
			m := &rx[j]
			i, ok := clients[m.Addr]
			if !ok {
				fd, err := batchio.DialUpstream(netip.AddrPort{}, cfg.Backend, batchio.DialOptions{})
				if err != nil {
					i = -1
				} else {
					if k := len(*free); k > 0 {
						i = (*free)[k-1]
						*free = (*free)[:k-1]
					} else {
						i = int32(len(*ups))
						*ups = append(*ups, upstream{})
					}
					(*ups)[i] = upstream{fd: fd, client: m.Addr}
					clients[m.Addr] = i
					if f.add(fd, i+1) != nil {
						unix.Close(fd)
						delete(clients, m.Addr)
						(*ups)[i] = upstream{fd: -1}
						*free = append(*free, i)
						i = -1
					}
				}
			}
			if i != cur {
				flush(j)
				start, cur = j, i
			}
			// Connected socket: no address; the buffer is sent as
			// received.
			m.Buf = m.Buf[:m.N]
			m.Addr = netip.AddrPort{}
		}
		flush(got)
		for j := range got {
			rx[j].Buf = rx[j].Buf[:cap(rx[j].Buf)]
		}
		if got < len(rx) {
			return
		}
	}
}

// StartDNS starts the DNS forwarder.
func StartDNS(cfg Config) (*Forwarder, error) {
	f, err := listen(cfg)
	if err != nil {
		return nil, err
	}
	ufd, err := batchio.DialUpstream(netip.AddrPort{}, cfg.Backend, batchio.DialOptions{RecvBuffer: 4 << 20, SendBuffer: 4 << 20})
	if err != nil {
		f.closeFDs()
		return nil, fmt.Errorf("floor: %w", err)
	}
	if err := f.add(ufd, 1); err != nil {
		unix.Close(ufd)
		f.closeFDs()
		return nil, err
	}
	go func() { f.done <- f.dnsLoop(cfg, ufd) }()
	return f, nil
}

// pending is one query in flight in the DNS forwarder.
type pending struct {
	client netip.AddrPort
	id     uint16
	used   bool
}

func (f *Forwarder) dnsLoop(cfg Config, ufd int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer f.closeFDs()
	defer unix.Close(ufd)
	b := batchio.NewBatch(cfg.Batch)
	rx := newMsgs(b.Size(), 4096)
	tx := make([]batchio.Message, 0, b.Size())
	table := make([]pending, 1<<16)
	var next uint16
	events := make([]unix.EpollEvent, 2)
	for !f.stop.Load() {
		n, err := unix.EpollWait(f.epfd, events, pollMs)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd == 0 { // queries
				for {
					got, err := b.Recv(f.lfd, rx)
					if err != nil {
						break
					}
					tx = tx[:0]
					for j := range got {
						m := &rx[j]
						if m.Flags != 0 || m.N < 12 {
							continue
						}
						p := m.Buf[:m.N]
						table[next] = pending{client: m.Addr, id: uint16(p[0])<<8 | uint16(p[1]), used: true}
						p[0], p[1] = byte(next>>8), byte(next)
						next++
						tx = append(tx, batchio.Message{Buf: p})
					}
					send(b, ufd, tx)
					if got < len(rx) {
						break
					}
				}
				continue
			}
			for { // responses
				got, err := b.Recv(ufd, rx)
				if err != nil {
					break
				}
				tx = tx[:0]
				for j := range got {
					m := &rx[j]
					if m.Flags != 0 || m.N < 12 {
						continue
					}
					p := m.Buf[:m.N]
					e := &table[uint16(p[0])<<8|uint16(p[1])]
					if !e.used {
						continue
					}
					p[0], p[1] = byte(e.id>>8), byte(e.id)
					e.used = false
					tx = append(tx, batchio.Message{Buf: p, Addr: e.client})
				}
				send(b, f.lfd, tx)
				if got < len(rx) {
					break
				}
			}
		}
	}
	return nil
}

package shard

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/dns"
	"github.com/fastudp/fastudp/dns/idtable"
)

// DNSListener turns a listener into a DNS-mode listener: its queries are not
// flows but share a few connected upstream sockets per backend, each query
// carried under a free 16-bit ID of its socket (the client's ID is restored
// on the answer), and answers are accepted only when their ID is
// outstanding on that socket and their question matches.
type DNSListener struct {
	// Sockets is the number of upstream sockets per backend (opened on the
	// backend's first query).
	Sockets int
	// MaxInFlight bounds the outstanding queries per socket.
	MaxInFlight int
	// Timeout frees the ID of an unanswered query.
	Timeout time.Duration
}

// dnsSock is one shared upstream socket of a DNS-mode backend.
type dnsSock struct {
	fd      int
	backend core.BackendID
	cluster core.ClusterID
	index   int // among the backend's sockets, for metrics
	table   *idtable.Table
	out     []batchio.Message // queries collected for one sendmmsg
	dirty   bool              // listed in Shard.dnsDirty
}

// dnsBackend lists the upstream sockets of one backend.
type dnsBackend struct {
	socks []int32 // indices into Shard.dnsSocks
	next  int     // the socket the next query tries first
}

// dnsState is a shard's DNS-mode state; the zero value serves no DNS
// listener.
type dnsState struct {
	listener []bool // by ListenerID: DNS mode
	// rx receives DNS queries and answers: the shard's listener array
	// when its buffers are max_rx sized, or an array of its own (batch
	// size × max_rx) when flow listeners read with GRO into 64 KiB
	// buffers, 32 per call (DNS sockets never turn UDP_GRO on).
	rx       []batchio.Message
	socks    []dnsSock
	backends []dnsBackend // by BackendID
	dirty    []int32      // sockets with queries waiting in out
	seed     uint64       // question hash key, secret per shard
	seq      uint64       // queries under AffinityDatagram, mixed into their keys
	deadline core.Time    // when the next outstanding query may expire
	// limit is the per-source limit (source_flow_rate) on queries: each
	// query is one new flow of its source. Configured from the shard's
	// core.Config.Admission and by ConfigSetAdmission (dns_limit.go).
	limit core.SourceLimiter
	// inUse[backend*MaxDNSSockets+index] is the published count of IDs in
	// use on that socket plus one, for the metrics; 0 when the socket is
	// not open.
	inUse []atomic.Int64
}

// MaxDNSSockets bounds DNSListener.Sockets.
const MaxDNSSockets = 16

func randomUint64() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux (getrandom)
	return binary.LittleEndian.Uint64(b[:])
}

func (s *Shard) initDNS() {
	d := &s.dns
	d.deadline = core.Never
	any := false
	d.listener = make([]bool, len(s.opts.Listeners))
	for i, l := range s.opts.Listeners {
		if l.DNS != nil {
			d.listener[i] = true
			any = true
		}
	}
	if !any {
		return
	}
	d.rx = s.rxMsgs
	if len(s.rxMsgs) > 0 && cap(s.rxMsgs[0].Buf) > s.mgr.MaxRxDatagramSize()+1 {
		d.rx = newMessages(s.opts.BatchSize, s.mgr.MaxRxDatagramSize()+1)
	}
	d.seed = randomUint64()
	s.configureDNSLimit(s.opts.Core.Admission)
	d.backends = make([]dnsBackend, s.opts.Backends)
	d.inUse = make([]atomic.Int64, s.opts.Backends*MaxDNSSockets)
}

// DNSInUse returns the published number of IDs in use on socket index of
// DNS-mode backend b in this shard; ok is false when that socket is not open.
func (s *Shard) DNSInUse(b core.BackendID, index int) (n int64, ok bool) {
	i := int(b)*MaxDNSSockets + index
	if index < 0 || index >= MaxDNSSockets || i >= len(s.dns.inUse) {
		return 0, false
	}
	v := s.dns.inUse[i].Load()
	return max(v-1, 0), v > 0
}

// readDNSListener reads a DNS-mode listener's queries in batches and sends
// each batch on to the backends' shared sockets.
func (s *Shard) readDNSListener(li int, now core.Time) {
	l := &s.listeners[li]
	for range listenerReadBudget {
		n, err := s.rx.Recv(l.fd, s.dns.rx)
		if n > 0 {
			s.counters.addShard(ShardBatches, 1)
			s.counters.addShard(ShardBatchDatagrams, uint64(n))
		}
		for i := 0; i < n; i++ {
			m := &s.dns.rx[i]
			lap, ok := s.countClientReceive(li, m)
			if !ok {
				continue
			}
			// A single datagram longer than the buffer fills it, one byte
			// more than max_rx: dnsQuery drops it as malformed.
			local := lap.Addr()
			if segments(m.N, m.SegmentSize) == 1 {
				s.dnsQuery(li, m.Addr, local, m.Buf[:m.N], now)
				continue
			}
			// DNS listeners do not turn UDP_GRO on, but a run that arrives
			// all the same is equal-size queries from one client socket:
			// each segment is a query of its own (sub-slices, no copy).
			for off := 0; off < m.N; off += m.SegmentSize {
				s.dnsQuery(li, m.Addr, local, m.Buf[off:min(off+m.SegmentSize, m.N)], now)
			}
		}
		s.flushDNSQueries()
		if s.listenerReadDone(li, n, len(s.dns.rx), err) {
			return
		}
	}
}

// dnsQuery forwards one query: it picks the backend, takes a free ID on one
// of the backend's sockets, rewrites the query's ID in place and queues it
// for that socket's next sendmmsg.
func (s *Shard) dnsQuery(li int, client netip.AddrPort, local netip.Addr, msg []byte, now core.Time) {
	lid := core.ListenerID(li)
	s.counters.addListener(lid, ListenerDNSQueries, 1)
	if s.stopping {
		s.counters.addListener(lid, ListenerDNSStopping, 1)
		return
	}
	// A query is at most max_rx bytes (the buffer holds one byte more), has
	// QR clear (a response sent to the listener could be a reflection) and
	// exactly one well-formed question.
	if len(msg) > s.mgr.MaxRxDatagramSize() || len(msg) < dns.HeaderLen || msg[2]&0x80 != 0 {
		s.counters.addListener(lid, ListenerDNSMalformed, 1)
		return
	}
	q, err := dns.ParseQuestion(msg)
	if err != nil {
		s.counters.addListener(lid, ListenerDNSMalformed, 1)
		return
	}
	if !s.dns.limit.Allow(now, client) {
		s.counters.addListener(lid, ListenerDropBase+int(core.DropRateLimited), 1)
		return
	}
	lst := &s.opts.Listeners[li]
	key := core.AffinityHash(s.opts.Core.Seed, client, lst.Cluster.Affinity)
	if lst.Cluster.Affinity == core.AffinityDatagram {
		s.dns.seq++
		key = core.Mix64(key ^ s.dns.seq*0x9e3779b97f4a7c15)
	}
	b, ok := s.opts.Picker.Pick(lst.Cluster.Cluster, key)
	if !ok {
		s.counters.addListener(lid, ListenerDNSNoBackend, 1)
		return
	}
	be := s.dnsBackendFor(b, lst.Cluster.Cluster, lst.DNS)
	if be == nil {
		s.counters.addListener(lid, ListenerDNSNoBackend, 1)
		return
	}
	entry := idtable.Query{Client: client, Local: local, Listener: lid, ID: dns.ID(msg), QHash: q.Hash(s.dns.seed)}
	for range be.socks {
		si := be.socks[be.next]
		if be.next++; be.next == len(be.socks) {
			be.next = 0
		}
		ds := &s.dns.socks[si]
		id, ok := ds.table.Add(now, entry)
		if !ok {
			continue
		}
		dns.SetID(msg, id)
		s.counters.addBackend(b.ID, BackendDNSQueries, 1)
		s.counters.addBackend(b.ID, BackendDatagramsIn, 1)
		s.counters.addBackend(b.ID, BackendBytesIn, uint64(len(msg)))
		if d := now.Add(lst.DNS.Timeout); d < s.dns.deadline {
			s.dns.deadline = d
		}
		ds.out = append(ds.out, batchio.Message{Buf: msg})
		if !ds.dirty {
			ds.dirty = true
			s.dns.dirty = append(s.dns.dirty, si)
		}
		if len(ds.out) == cap(ds.out) {
			s.flushDNSSock(int(si))
		}
		return
	}
	s.counters.addBackend(b.ID, BackendDNSShed, 1)
}

// dnsBackendFor returns backend b's sockets, opening them on its first
// query; nil when none could be opened.
func (s *Shard) dnsBackendFor(b core.Backend, cluster core.ClusterID, o *DNSListener) *dnsBackend {
	if int(b.ID) >= len(s.dns.backends) {
		return nil
	}
	be := &s.dns.backends[b.ID]
	if len(be.socks) > 0 {
		return be
	}
	n := min(max(o.Sockets, 1), MaxDNSSockets)
	opts := batchio.DialOptions{RecvBuffer: s.opts.DNSSocketBuffer, SendBuffer: s.opts.DNSSocketBuffer}
	for i := range n {
		fd, err := s.dial(b.Addr, opts)
		if err == nil {
			idx := int32(len(s.dns.socks))
			if err = s.watch(fd, unix.EPOLLIN, tokenDNSUpstream, idx, unix.EPOLL_CTL_ADD); err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			s.openFailed(b, err)
			break
		}
		s.counters.addBackend(b.ID, BackendSocketsOpened, 1)
		be.socks = append(be.socks, int32(len(s.dns.socks)))
		s.dns.socks = append(s.dns.socks, dnsSock{
			fd:      fd,
			backend: b.ID,
			cluster: cluster,
			index:   i,
			table:   idtable.New(o.MaxInFlight, core.Time(o.Timeout), randomUint64()),
			out:     make([]batchio.Message, 0, s.opts.BatchSize),
		})
	}
	if len(be.socks) == 0 {
		return nil
	}
	return be
}

// updateDNS applies new settings to a DNS-mode listener.
func (s *Shard) updateDNS(u *DNSUpdate) {
	li := int(u.Listener)
	if li >= len(s.opts.Listeners) || s.opts.Listeners[li].DNS == nil {
		return
	}
	o := u.Options
	s.opts.Listeners[li].DNS = &o
	cluster := s.opts.Listeners[li].Cluster.Cluster
	for i := range s.dns.socks {
		if ds := &s.dns.socks[i]; ds.cluster == cluster {
			ds.table.SetTimeout(core.Time(o.Timeout))
		}
	}
}

// flushDNSQueries sends the queries collected for every socket.
func (s *Shard) flushDNSQueries() {
	for _, si := range s.dns.dirty {
		s.flushDNSSock(int(si))
	}
	s.dns.dirty = s.dns.dirty[:0]
}

// flushDNSSock sends socket si's collected queries with as few sendmmsg
// calls as the kernel allows. A query that cannot be sent (a full socket
// buffer, an ICMP refusal reported on this send) is dropped at once and its
// ID freed: the client retries, and a DNS query is not worth queueing.
func (s *Shard) flushDNSSock(si int) {
	ds := &s.dns.socks[si]
	msgs := ds.out
	for len(msgs) > 0 {
		n, err := s.tx.Send(ds.fd, msgs)
		msgs = msgs[n:]
		if err == nil {
			if n == 0 {
				break
			}
			continue
		}
		switch batchio.Classify(err) {
		case batchio.KindWouldBlock:
			s.resourceEvent(ResourceSocketBufferFull, ds.backend, netip.AddrPort{}, err)
			s.counters.addBackend(ds.backend, BackendQueueFull, uint64(len(msgs)))
			for i := range msgs {
				s.releaseDNS(ds, msgs[i].Buf)
			}
			msgs = nil
			continue
		default:
			s.upstreamSendFailed(ds.backend, netip.AddrPort{}, err, 1)
		}
		s.releaseDNS(ds, msgs[0].Buf)
		msgs = msgs[1:]
	}
	clear(ds.out)
	ds.out = ds.out[:0]
	ds.dirty = false
}

func (s *Shard) releaseDNS(ds *dnsSock, msg []byte) {
	if ds.table.Release(dns.ID(msg)) {
		s.counters.addBackend(ds.backend, BackendDNSReleased, 1)
	}
}

// readDNSUpstream reads answers from one shared socket in batches, matches
// each to its query, restores the client's ID and sends the batch's answers
// to their clients with sendmmsg.
func (s *Shard) readDNSUpstream(si int, now core.Time) {
	if si >= len(s.dns.socks) {
		return
	}
	if s.upFill > 0 {
		s.flushUpstreamInputs(now) // generic replies waiting in upMsgs go first
	}
	ds := &s.dns.socks[si]
	for {
		n, err := s.rx.Recv(ds.fd, s.dns.rx)
		for i := 0; i < n; i++ {
			m := &s.dns.rx[i]
			s.dnsAnswer(ds, m, now)
		}
		for li := range s.listeners {
			if len(s.listeners[li].out) > 0 {
				s.flushClientSends(li)
			}
		}
		if err != nil {
			switch batchio.Classify(err) {
			case batchio.KindWouldBlock:
			case batchio.KindRefused:
				s.counters.addBackend(ds.backend, BackendRefused, 1)
				s.resourceEvent(ResourceBackendRefused, ds.backend, netip.AddrPort{}, err)
			default:
				s.warnOnce("dns-upstream-recv", "DNS upstream receive failed", "err", err)
			}
			return
		}
		if n < len(s.dns.rx) {
			return
		}
	}
}

func (s *Shard) dnsAnswer(ds *dnsSock, m *batchio.Message, now core.Time) {
	msg := m.Buf[:m.N]
	// A GRO run cannot arrive (DNS sockets do not turn UDP_GRO on); a reply
	// longer than the buffer is cut and never forwarded.
	if m.Flags&(batchio.FlagTruncated|batchio.FlagControlTruncated) != 0 || len(msg) < dns.HeaderLen || msg[2]&0x80 == 0 {
		s.counters.addBackend(ds.backend, BackendDNSMalformed, 1)
		return
	}
	q, err := dns.ParseQuestion(msg)
	if err != nil {
		s.counters.addBackend(ds.backend, BackendDNSMalformed, 1)
		return
	}
	entry, sent, r := ds.table.Take(dns.ID(msg), q.Hash(s.dns.seed))
	switch r {
	case idtable.Unknown:
		s.counters.addBackend(ds.backend, BackendDNSUnknown, 1)
		return
	case idtable.Mismatch:
		s.counters.addBackend(ds.backend, BackendDNSMismatched, 1)
		return
	}
	dns.SetID(msg, entry.ID)
	s.counters.addBackend(ds.backend, BackendDNSAnswers, 1)
	s.counters.addBackend(ds.backend, BackendDatagramsOut, 1)
	s.counters.addBackend(ds.backend, BackendBytesOut, uint64(len(msg)))
	if msg[2]&(dns.FlagTC>>8) != 0 {
		s.counters.addBackend(ds.backend, BackendDNSTruncated, 1)
	}
	lat := time.Duration(now - sent)
	s.counters.addBackend(ds.backend, BackendDNSLatencySum, uint64(max(lat, 0)))
	bucket := 0
	for bucket < len(DNSLatencyBuckets) && lat > DNSLatencyBuckets[bucket] {
		bucket++
	}
	s.counters.addBackend(ds.backend, BackendDNSLatencyBucket+bucket, 1)
	li := int(entry.Listener)
	if li >= len(s.listeners) {
		return
	}
	s.counters.addListener(entry.Listener, ListenerTxDatagrams, 1)
	s.counters.addListener(entry.Listener, ListenerTxBytes, uint64(len(msg)))
	l := &s.listeners[li]
	cm := batchio.Message{Buf: msg, Addr: entry.Client, Local: entry.Local}
	if len(l.queue) > 0 {
		s.enqueueClient(li, &cm)
		return
	}
	s.appendClientSend(li, cm)
}

// expireDNS frees the IDs of queries past their timeout, counting each as a
// timeout of its backend, and finds the next deadline.
func (s *Shard) expireDNS(now core.Time) {
	next := core.Never
	for i := range s.dns.socks {
		ds := &s.dns.socks[i]
		for {
			_, _, ok := ds.table.Expire(now)
			if !ok {
				break
			}
			s.counters.addBackend(ds.backend, BackendDNSTimeouts, 1)
		}
		next = min(next, ds.table.NextDeadline())
	}
	s.dns.deadline = next
}

// dnsInFlight returns the outstanding queries of the shard.
func (s *Shard) dnsInFlight() (n int) {
	for i := range s.dns.socks {
		n += s.dns.socks[i].table.Len()
	}
	return n
}

// publishDNS publishes the IDs in use per socket.
func (s *Shard) publishDNS() {
	for i := range s.dns.socks {
		ds := &s.dns.socks[i]
		if j := int(ds.backend)*MaxDNSSockets + ds.index; j < len(s.dns.inUse) {
			s.dns.inUse[j].Store(int64(ds.table.Len()) + 1)
		}
	}
}

func (s *Shard) closeDNS() {
	for i := range s.dns.socks {
		unix.Close(s.dns.socks[i].fd)
	}
	s.dns.socks = nil
}

package shard

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/dns/idtable"
)

// Handing DNS mode over (a zero-downtime upgrade, handover.go): each
// shard's shared DNS upstream sockets travel with their ID tables
// ([idtable.Table.AppendState]) and the shard's question-hash key, so the
// new process matches the answers to queries sent by the old one and sends
// new queries on the same sockets. The per-source query limiter
// (dns_limit.go) starts afresh.

// DNSSocketState is one shared DNS-mode upstream socket and its
// outstanding queries.
type DNSSocketState struct {
	FD      int
	Backend core.BackendID
	Cluster core.ClusterID
	// Index is the socket's index among its backend's sockets.
	Index int
	// Table is the socket's ID table ([idtable.Table.AppendState]).
	Table []byte
}

// exportDNS appends the shard's DNS sockets and their tables to st.
func (s *Shard) exportDNS(st *ShardState, now core.Time) {
	if len(s.dns.socks) == 0 {
		return
	}
	s.flushDNSQueries() // none should wait: a batch's queries are sent with it
	st.DNSSeed = s.dns.seed
	for i := range s.dns.socks {
		ds := &s.dns.socks[i]
		st.DNSSockets = append(st.DNSSockets, DNSSocketState{
			FD: ds.fd, Backend: ds.backend, Cluster: ds.cluster, Index: ds.index,
			Table: ds.table.AppendState(nil, now),
		})
	}
}

// adoptDNS takes over the DNS sockets of st; it runs after initDNS. A socket
// that cannot be taken over (no DNS listener, a backend this process does
// not have, corrupt state) is closed and its queries are logged as dropped:
// their clients retry.
func (s *Shard) adoptDNS(st *ShardState) {
	if st == nil || len(st.DNSSockets) == 0 {
		return
	}
	now := s.now()
	if s.dns.backends != nil && st.DNSSeed != 0 {
		s.dns.seed = st.DNSSeed
	}
	carried := 0
	for i := range st.DNSSockets {
		c := &st.DNSSockets[i]
		n, err := s.adoptDNSSock(c, now)
		if err != nil {
			unix.Close(c.FD)
			s.log.Warn("upgrade: DNS upstream socket not taken over; its queries get no answer", "backend", c.Backend, "err", err)
			continue
		}
		carried += n
	}
	s.log.Info("upgrade: DNS upstream sockets taken over", "sockets", len(s.dns.socks), "queries_in_flight", carried)
}

func (s *Shard) adoptDNSSock(c *DNSSocketState, now core.Time) (int, error) {
	d := &s.dns
	backend := c.Backend
	if s.opts.RemapBackend != nil {
		backend = s.opts.RemapBackend(backend)
	}
	if d.backends == nil {
		return 0, fmt.Errorf("no DNS-mode listener")
	}
	if int(backend) >= len(d.backends) {
		return 0, fmt.Errorf("backend %d not configured", backend)
	}
	if c.FD < 0 || c.Index < 0 || c.Index >= MaxDNSSockets {
		return 0, fmt.Errorf("socket %d, index %d", c.FD, c.Index)
	}
	be := &d.backends[backend]
	for _, si := range be.socks {
		if d.socks[si].index == c.Index {
			return 0, fmt.Errorf("socket index %d repeated", c.Index)
		}
	}
	// The settings of a DNS listener of the socket's cluster, else of any.
	var o *DNSListener
	for _, l := range s.opts.Listeners {
		if l.DNS != nil && (o == nil || l.Cluster.Cluster == c.Cluster) {
			o = l.DNS
			if l.Cluster.Cluster == c.Cluster {
				break
			}
		}
	}
	table, lost, err := idtable.Restore(c.Table, o.MaxInFlight, core.Time(o.Timeout), randomUint64(), now)
	if err != nil {
		return 0, err
	}
	if lost > 0 {
		s.log.Warn("upgrade: DNS queries over max_in_flight dropped", "backend", backend, "queries", lost)
	}
	idx := int32(len(d.socks))
	if err := s.watch(c.FD, unix.EPOLLIN, tokenDNSUpstream, idx, unix.EPOLL_CTL_ADD); err != nil {
		return 0, err
	}
	be.socks = append(be.socks, idx)
	d.socks = append(d.socks, dnsSock{
		fd: c.FD, backend: backend, cluster: c.Cluster, index: c.Index, table: table,
		out: make([]batchio.Message, 0, s.opts.BatchSize),
	})
	s.counters.addBackend(backend, BackendSocketsOpened, 1)
	d.deadline = min(d.deadline, table.NextDeadline())
	return table.Len(), nil
}

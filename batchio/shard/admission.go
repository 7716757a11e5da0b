package shard

// countSourceEvictions copies the count of sources the per-source admission
// tables (the core's and DNS mode's) forgot while refilling into the shard's
// counters.
func (s *Shard) countSourceEvictions() {
	if e := s.mgr.SourceEvictions() + s.dns.limit.Evictions(); e != s.counters.local[ShardSourceEvictions] {
		s.counters.local[ShardSourceEvictions] = e
		s.counters.dirty = true
	}
}

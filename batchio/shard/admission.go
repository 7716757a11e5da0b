package shard

// countSourceEvictions copies the core's count of sources its per-source
// admission table forgot while refilling into the shard's counters.
func (s *Shard) countSourceEvictions() {
	if e := s.mgr.SourceEvictions(); e != s.counters.local[ShardSourceEvictions] {
		s.counters.local[ShardSourceEvictions] = e
		s.counters.dirty = true
	}
}

package core

import (
	"fmt"
	"math/bits"
)

// CheckInvariants verifies the manager's internal consistency and returns the
// first violation found. It walks every flow, so tests, fuzzers and the trace
// runner call it after each step; the data path never does.
//
// It checks that: Active = Created - Evicted = live slots; live flows never
// exceed the highest cap ever set; every attached flow is found under its key
// and the table holds nothing else; every live flow has one timer entry no
// later than its deadline and the heap is ordered; held datagrams match their
// counts and only waiting flows hold any; config references balance; the
// down-backend count matches the set; and the armed deadline equals the
// earliest timer entry; and the per-source table has its configured, fixed
// size.
func (m *Manager) CheckInvariants() error {
	if err := m.sources.check(); err != nil {
		return err
	}
	live, attached, held := 0, 0, 0
	refs := make([]int32, len(m.versions))
	for i, v := range m.listeners {
		if v >= 0 {
			if int(v) >= len(m.versions) {
				return fmt.Errorf("listener %d: config version %d out of range", i, v)
			}
			refs[v]++
		}
	}
	for idx := range uint32(m.flows.len()) {
		f := m.flows.at(idx)
		if f.gen == 0 {
			return fmt.Errorf("slot %d: generation 0", idx)
		}
		if f.state == stateFree {
			if f.heapPos != -1 || f.pending != 0 || f.attached {
				return fmt.Errorf("free slot %d holds state", idx)
			}
			continue
		}
		live++
		id := makeFlowID(uint32(idx), f.gen)
		if int(f.cfg) >= len(m.versions) {
			return fmt.Errorf("flow %v: config version %d out of range", id, f.cfg)
		}
		refs[f.cfg]++
		if f.attached {
			attached++
			k := f.key
			if got, ok := m.table.find(m.secrets.hash(&k), &k, &m.flows); !ok || got != uint32(idx) {
				return fmt.Errorf("flow %v: attached but not found under its key", id)
			}
			if f.hash != m.secrets.hash(&k) {
				return fmt.Errorf("flow %v: stale key hash", id)
			}
		}
		if p := int(f.heapPos); p < 0 || p >= m.timers.len() || m.timers.entries[p].idx != uint32(idx) {
			return fmt.Errorf("flow %v: timer entry missing", id)
		} else if m.timers.entries[p].at > f.deadline {
			return fmt.Errorf("flow %v: timer entry %d after deadline %d", id, m.timers.entries[p].at, f.deadline)
		}
		if f.deadline > f.expires {
			return fmt.Errorf("flow %v: deadline %d after end of life %d", id, f.deadline, f.expires)
		}
		if f.deadline == Never {
			return fmt.Errorf("flow %v: no finite deadline", id)
		}
		n, entries := 0, 0
		for e := f.pendHead; e >= 0; e = m.held[e].next {
			entries++
			n += segmentCount(len(m.held[e].buf), int(m.held[e].seg))
			held++
			if held > len(m.held) {
				return fmt.Errorf("flow %v: held list loops", id)
			}
		}
		if n != int(f.pending) {
			return fmt.Errorf("flow %v: holds %d datagrams, counts %d", id, n, f.pending)
		}
		if f.pending > 0 && f.state != stateAwaiting {
			return fmt.Errorf("flow %v: established but holds datagrams", id)
		}
		if entries > m.cfg.PendingLimit {
			return fmt.Errorf("flow %v: holds %d messages, limit %d", id, entries, m.cfg.PendingLimit)
		}
	}
	if live != m.stats.Active || uint64(live) != m.stats.Created-m.stats.Evicted {
		return fmt.Errorf("live flows %d, active %d, created-evicted %d", live, m.stats.Active, m.stats.Created-m.stats.Evicted)
	}
	if live > m.maxFlowsSeen {
		return fmt.Errorf("live flows %d above the highest cap %d", live, m.maxFlowsSeen)
	}
	if attached != m.table.count {
		return fmt.Errorf("table holds %d entries, %d flows attached", m.table.count, attached)
	}
	if m.timers.len() != live {
		return fmt.Errorf("timer heap holds %d entries, %d flows live", m.timers.len(), live)
	}
	for i := 1; i < m.timers.len(); i++ {
		if p := (i - 1) / heapArity; m.timers.entries[p].at > m.timers.entries[i].at {
			return fmt.Errorf("timer heap out of order at %d", i)
		}
	}
	for i := range m.versions {
		if refs[i] != m.versions[i].refs {
			return fmt.Errorf("config version %d: %d references, counted %d", i, refs[i], m.versions[i].refs)
		}
	}
	down := 0
	for _, w := range m.down {
		down += bits.OnesCount64(w)
	}
	if down != m.downCount {
		return fmt.Errorf("%d backends marked down, counted %d", down, m.downCount)
	}
	if len(m.down) > MaxDownBackendID/64 {
		return fmt.Errorf("down set of %d words, bound %d", len(m.down), MaxDownBackendID/64)
	}
	if m.out == nil && m.armed != m.timers.min() {
		return fmt.Errorf("armed %d, earliest timer %d", m.armed, m.timers.min())
	}
	return nil
}

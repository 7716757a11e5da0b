package trace

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"

	"github.com/fastudp/fastudp/core"
)

// ViolationError reports that the manager broke its contract while a trace
// ran: [core.Manager.CheckInvariants] failed, or an output contradicted the
// earlier ones (a flow named after it closed, a reply to another client, a
// buffer returned to the pool twice). It is always a bug in the core (or in
// the runner), never in the trace.
type ViolationError struct {
	Line int
	Time core.Time
	Err  error
}

func (e *ViolationError) Error() string {
	return fmt.Sprintf("line %d (at %s): %v", e.Line, fmtTime(e.Time), e.Err)
}

func (e *ViolationError) Unwrap() error { return e.Err }

// Run replays t against a new manager and returns the transcript: each step's
// inputs (">"), the outputs of its Handle call ("<", formatted by
// [FormatOutput]) and the state printed by show ("="), every line prefixed by
// the step's time, then a final line of running totals. The transcript depends
// only on t.
//
// After every Handle call Run checks the manager's invariants and that the
// outputs are consistent with each other; the first failure is returned as a
// [*ViolationError] together with the transcript so far. Run also overwrites
// each call's input buffers after the call and every buffer the core returns
// to the pool, so a payload the core kept a reference to shows up as garbage
// in the transcript.
func Run(t *Trace) ([]byte, error) {
	pool := newCheckPool(t.PoolLimit)
	cfg := t.Config
	cfg.Pool = pool
	m, err := core.NewManager(cfg)
	if err != nil {
		return nil, err
	}
	r := runner{m: m, pool: pool, flows: map[core.FlowID]flowRec{}, closed: map[core.FlowID]bool{}}
	fmt.Fprintf(&r.buf, "manager seed=%d max_flows=%d max_rx=%d pending=%d budget=%d pool=%d\n",
		t.Config.Seed, t.Config.MaxFlows, t.Config.MaxRxDatagramSize, t.Config.PendingLimit,
		t.Config.ExpiryBudget, t.PoolLimit)
	for i := range t.Steps {
		s := &t.Steps[i]
		var err error
		switch s.Kind {
		case StepShow:
			r.show(s.Time)
		case StepHandle:
			err = r.handle(s)
		default:
			err = fmt.Errorf("unknown step kind %d", s.Kind)
		}
		if err != nil {
			return r.buf.Bytes(), &ViolationError{Line: s.Line, Time: s.Time, Err: err}
		}
	}
	r.totals()
	return r.buf.Bytes(), nil
}

type flowRec struct {
	listener      core.ListenerID
	client, local netip.AddrPort
	opened        bool
}

type runner struct {
	m      *core.Manager
	pool   *checkPool
	buf    bytes.Buffer
	out    []core.Output
	flows  map[core.FlowID]flowRec // live flows, as the outputs told
	closed map[core.FlowID]bool
}

func (r *runner) prefix(t core.Time, mark string) {
	fmt.Fprintf(&r.buf, "%-10s%s ", "@"+fmtTime(t), mark)
}

func (r *runner) handle(s *Step) error {
	ins := make([]core.Input, len(s.Inputs))
	var scratch [][]byte
	for i := range s.Inputs {
		in := s.Inputs[i].In
		if in.Payload != nil {
			// A private copy the core may read only during the call.
			p := append(make([]byte, 0, len(in.Payload)), in.Payload...)
			in.Payload = p
			scratch = append(scratch, p)
		}
		if in.Config != nil {
			ev := *in.Config
			in.Config = &ev
		}
		ins[i] = in
	}
	if s.Batch {
		r.prefix(s.Time, ">")
		r.buf.WriteString("batch {\n")
		for i := range s.Inputs {
			r.prefix(s.Time, ">")
			r.buf.WriteString("  " + s.Inputs[i].Text + "\n")
		}
		r.prefix(s.Time, ">")
		r.buf.WriteString("}\n")
	} else {
		for i := range s.Inputs {
			r.prefix(s.Time, ">")
			r.buf.WriteString(s.Inputs[i].Text + "\n")
		}
	}
	r.out = r.m.Handle(s.Time, ins, r.out[:0])
	var firstErr error
	for i := range r.out {
		o := &r.out[i]
		r.prefix(s.Time, "<")
		r.buf.WriteString(FormatOutput(o))
		r.buf.WriteByte('\n')
		if err := r.check(o); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("output %d (%s): %w", i, o.Kind, err)
		}
	}
	for _, p := range scratch {
		for i := range p {
			p[i] = 0xEE
		}
	}
	if firstErr != nil {
		return firstErr
	}
	if err := r.pool.err; err != nil {
		return err
	}
	if err := r.m.CheckInvariants(); err != nil {
		return fmt.Errorf("invariant: %w", err)
	}
	if n := r.m.FlowCount(); n != len(r.flows) {
		return fmt.Errorf("manager reports %d live flows, outputs describe %d", n, len(r.flows))
	}
	return nil
}

// check holds o against what earlier outputs said: a flow is created once,
// named only while live, and answers only its own client.
func (r *runner) check(o *core.Output) error {
	switch o.Kind {
	case core.OutMetric:
		switch o.Metric {
		case core.MetricFlowCreated:
			if o.Flow == 0 {
				return errors.New("flow created with id 0")
			}
			if _, live := r.flows[o.Flow]; live || r.closed[o.Flow] {
				return fmt.Errorf("flow %v created twice", o.Flow)
			}
			r.flows[o.Flow] = flowRec{listener: o.Listener}
		case core.MetricRequestsReached:
			return r.live(o.Flow)
		}
	case core.OutSelectBackend:
		if err := r.live(o.Flow); err != nil {
			return err
		}
		f := r.flows[o.Flow]
		if f.client.IsValid() {
			return fmt.Errorf("flow %v: select emitted twice", o.Flow)
		}
		f.client, f.local = o.Client, o.Local
		r.flows[o.Flow] = f
	case core.OutOpenUpstream:
		if err := r.live(o.Flow); err != nil {
			return err
		}
		f := r.flows[o.Flow]
		if f.opened {
			return fmt.Errorf("flow %v: opened twice", o.Flow)
		}
		f.opened = true
		r.flows[o.Flow] = f
	case core.OutSendToBackend:
		if err := r.live(o.Flow); err != nil {
			return err
		}
		if !r.flows[o.Flow].opened {
			return fmt.Errorf("flow %v: send before open", o.Flow)
		}
	case core.OutSendToClient:
		if err := r.live(o.Flow); err != nil {
			return err
		}
		f := r.flows[o.Flow]
		if o.Client != f.client || o.Local != f.local || o.Listener != f.listener {
			return fmt.Errorf("flow %v of %v→%v on listener %d: reply from %v to %v on listener %d",
				o.Flow, f.client, f.local, f.listener, o.Local, o.Client, o.Listener)
		}
	case core.OutCloseFlow:
		if err := r.live(o.Flow); err != nil {
			return err
		}
		delete(r.flows, o.Flow)
		r.closed[o.Flow] = true
	}
	return nil
}

func (r *runner) live(id core.FlowID) error {
	if _, ok := r.flows[id]; ok {
		return nil
	}
	if r.closed[id] {
		return fmt.Errorf("flow %v named after it closed", id)
	}
	return fmt.Errorf("flow %v named but never created", id)
}

// show prints the manager's state and its live flows in slot order.
func (r *runner) show(t core.Time) {
	m := r.m
	r.prefix(t, "=")
	fmt.Fprintf(&r.buf, "flows=%d max_flows=%d max_rx=%d draining=%v armed=%s pool_lent=%d",
		m.FlowCount(), m.MaxFlows(), m.MaxRxDatagramSize(), m.Draining(), fmtTime(m.NextDeadline()), r.pool.lent())
	if m.BackendsDown() > 0 {
		// Only when some backend is down, so older transcripts read as before.
		sep := " down="
		m.DownBackends(func(id core.BackendID) bool {
			fmt.Fprintf(&r.buf, "%s%d", sep, id)
			sep = ","
			return true
		})
	}
	r.buf.WriteByte('\n')
	m.Flows(func(f core.FlowInfo) bool {
		state, att := "awaiting", "attached"
		if f.Established {
			state = "established"
		}
		if !f.Attached {
			att = "detached"
		}
		r.prefix(t, "=")
		fmt.Fprintf(&r.buf, "  flow=%v listener=%d client=%v local=%v backend=%d %s %s requests=%d responses=%d deadline=%s in=%d/%dB out=%d/%dB\n",
			f.ID, f.Listener, f.Client, f.Local, f.Backend, state, att, f.Requests, f.Responses,
			fmtTime(f.Deadline), f.Stats.DatagramsIn, f.Stats.BytesIn, f.Stats.DatagramsOut, f.Stats.BytesOut)
		return true
	})
}

// totals prints the manager's running totals.
func (r *runner) totals() {
	s := r.m.Stats()
	fmt.Fprintf(&r.buf, "%-10s= created=%d evicted=%d active=%d in=%d/%dB out=%d/%dB",
		"end", s.Created, s.Evicted, s.Active, s.DatagramsIn, s.BytesIn, s.DatagramsOut, s.BytesOut)
	for i, n := range s.Drops {
		if n != 0 {
			fmt.Fprintf(&r.buf, " drop.%v=%d", core.DropReason(i), n)
		}
	}
	for i, n := range s.Closes {
		if n != 0 {
			fmt.Fprintf(&r.buf, " close.%v=%d", core.CloseReason(i), n)
		}
	}
	fmt.Fprintf(&r.buf, " pool_lent=%d\n", r.pool.lent())
}

// checkPool is a [core.BufferPool] that lends at most limit buffers at once
// (0: no limit), notices a buffer returned twice or never lent, and overwrites
// every returned buffer so a stale reference shows as garbage.
type checkPool struct {
	inner *core.SlicePool
	limit int
	out   map[*byte]bool
	err   error
}

func newCheckPool(limit int) *checkPool {
	return &checkPool{inner: core.NewSlicePool(64), limit: limit, out: map[*byte]bool{}}
}

func (p *checkPool) lent() int { return len(p.out) }

func (p *checkPool) Get(n int) []byte {
	if p.limit > 0 && len(p.out) >= p.limit {
		return nil
	}
	b := p.inner.Get(n)
	if cap(b) == 0 {
		return b
	}
	p.out[&b[:1][0]] = true
	return b
}

func (p *checkPool) Put(b []byte) {
	if cap(b) == 0 {
		return
	}
	k := &b[:1][0]
	if !p.out[k] {
		if p.err == nil {
			p.err = errors.New("pool: a buffer returned that is not lent")
		}
		return
	}
	delete(p.out, k)
	b = b[:cap(b)]
	for i := range b {
		b[i] = 0xDD
	}
	p.inner.Put(b)
}

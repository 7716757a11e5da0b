package trace

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/fastudp/fastudp/core"
)

// MaxPayload bounds a payload written in a trace (data, hex or len): the
// largest GRO run a socket can return.
const MaxPayload = 65535

// Trace is a parsed trace: the manager's configuration and the steps to replay.
type Trace struct {
	// Config configures the manager; Pool is always nil (the runner supplies
	// its own checking pool).
	Config core.Config
	// PoolLimit caps the buffers the runner's pool lends at once; 0 means no
	// cap.
	PoolLimit int
	Steps     []Step
}

// StepKind says what a [Step] does.
type StepKind uint8

const (
	// StepHandle is one call to [core.Manager.Handle] with Inputs.
	StepHandle StepKind = iota + 1
	// StepShow prints the manager's state and live flows.
	StepShow
)

// Step is one action of a trace, run at Time.
type Step struct {
	Line  int // 1-based line of the step (of "batch {" for a batch)
	Time  core.Time
	Kind  StepKind
	Batch bool // written as a batch block (echoed as one)
	// Inputs are the inputs of one Handle call, in order.
	Inputs []Input
}

// Input is one input of a step and the text it was written as.
type Input struct {
	Line int
	Text string // the directive in canonical form: tokens joined by one space
	In   core.Input
}

// ParseError is an error in a trace, at Line (1-based).
type ParseError struct {
	Line int
	Msg  string
}

func (e *ParseError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// ParseReader parses a trace from r.
func ParseReader(r io.Reader) (*Trace, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return Parse(b)
}

// Parse parses the text of a trace. The error of a bad trace is a
// [*ParseError] naming the line.
func Parse(src []byte) (*Trace, error) {
	p := parser{tr: &Trace{}}
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		if err := p.line(line, sc.Text()); err != nil {
			return nil, &ParseError{Line: line, Msg: err.Error()}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, &ParseError{Line: line + 1, Msg: err.Error()}
	}
	if p.batch != nil {
		return nil, &ParseError{Line: p.batch.Line, Msg: "batch { is never closed"}
	}
	return p.tr, nil
}

type parser struct {
	tr        *Trace
	now       core.Time
	sawConfig bool
	sawStep   bool
	batch     *Step // the open batch block, or nil
}

func (p *parser) line(n int, text string) error {
	toks, err := tokenize(text)
	if err != nil {
		return err
	}
	if len(toks) == 0 {
		return nil
	}
	if p.batch != nil {
		switch {
		case toks[0] == "}":
			if len(toks) != 1 {
				return errors.New("nothing may follow }")
			}
			p.tr.Steps = append(p.tr.Steps, *p.batch)
			p.batch = nil
			return nil
		case toks[0] == "at" || strings.HasPrefix(toks[0], "+"):
			return errors.New("a batch runs at one time: no time inside batch { }")
		case toks[0] == "batch" || toks[0] == "show" || toks[0] == "manager":
			return fmt.Errorf("%s is not allowed inside batch { }", toks[0])
		}
		in, err := parseInput(toks)
		if err != nil {
			return err
		}
		p.batch.Inputs = append(p.batch.Inputs, Input{Line: n, Text: strings.Join(toks, " "), In: in})
		return nil
	}
	switch {
	case toks[0] == "at":
		if len(toks) < 2 {
			return errors.New("at wants a time, e.g. at 1.5s")
		}
		d, err := parseDuration(toks[1])
		if err != nil {
			return err
		}
		if d < 0 {
			return fmt.Errorf("time %s is negative", toks[1])
		}
		if core.Time(d) < p.now {
			return fmt.Errorf("time %s is before the current time %s", toks[1], fmtTime(p.now))
		}
		p.now = core.Time(d)
		toks = toks[2:]
	case strings.HasPrefix(toks[0], "+"):
		d, err := parseDuration(toks[0][1:])
		if err != nil {
			return err
		}
		if d < 0 {
			return fmt.Errorf("time step %s is negative", toks[0])
		}
		if p.now > core.Time(math.MaxInt64-int64(d)) {
			return fmt.Errorf("time step %s overflows the clock", toks[0])
		}
		p.now += core.Time(d)
		toks = toks[1:]
	}
	if len(toks) == 0 {
		return nil
	}
	switch toks[0] {
	case "}":
		return errors.New("} without batch {")
	case "manager":
		if p.sawConfig {
			return errors.New("a second manager line")
		}
		if p.sawStep {
			return errors.New("the manager line must come before every step")
		}
		p.sawConfig = true
		return p.manager(toks[1:])
	case "batch":
		if len(toks) != 2 || toks[1] != "{" {
			return errors.New("write a batch as batch { on its own line, its inputs, then }")
		}
		p.sawStep = true
		p.batch = &Step{Line: n, Time: p.now, Kind: StepHandle, Batch: true}
		return nil
	case "show":
		if len(toks) != 1 {
			return errors.New("show takes no arguments")
		}
		p.sawStep = true
		p.tr.Steps = append(p.tr.Steps, Step{Line: n, Time: p.now, Kind: StepShow})
		return nil
	}
	in, err := parseInput(toks)
	if err != nil {
		return err
	}
	p.sawStep = true
	p.tr.Steps = append(p.tr.Steps, Step{Line: n, Time: p.now, Kind: StepHandle,
		Inputs: []Input{{Line: n, Text: strings.Join(toks, " "), In: in}}})
	return nil
}

func (p *parser) manager(toks []string) error {
	a, err := parseArgs(toks)
	if err != nil {
		return err
	}
	c := &p.tr.Config
	if c.Seed, err = a.uint("seed", 64, 0); err != nil {
		return err
	}
	fields := []struct {
		key string
		dst *int
	}{{"max_flows", &c.MaxFlows}, {"max_rx", &c.MaxRxDatagramSize}, {"pending", &c.PendingLimit},
		{"budget", &c.ExpiryBudget}, {"pool", &p.tr.PoolLimit}}
	for _, f := range fields {
		v, err := a.uint(f.key, 31, 0)
		if err != nil {
			return err
		}
		*f.dst = int(v)
	}
	if err := a.done(); err != nil {
		return err
	}
	// Reject what NewManager would, so that a trace that parses always runs.
	if _, err := core.NewManager(*c); err != nil {
		return err
	}
	return nil
}

// parseInput turns the tokens of one directive into a core input.
func parseInput(toks []string) (core.Input, error) {
	verb := toks[0]
	a, err := parseArgs(toks[1:])
	if err != nil {
		return core.Input{}, err
	}
	var in core.Input
	switch verb {
	case "client":
		in.Kind = core.InClientDatagram
		l, err := a.uint("listener", 16, 0)
		if err != nil {
			return in, err
		}
		in.Listener = core.ListenerID(l)
		if in.Src, err = a.addrPort("src", true); err != nil {
			return in, err
		}
		if in.Dst, err = a.addrPort("dst", true); err != nil {
			return in, err
		}
		if err := a.datagram(&in); err != nil {
			return in, err
		}
	case "backend":
		in.Kind = core.InBackendDatagram
		if in.Flow, err = a.flow(); err != nil {
			return in, err
		}
		if err := a.datagram(&in); err != nil {
			return in, err
		}
	case "resolve":
		in.Kind = core.InBackendResolved
		if in.Flow, err = a.flow(); err != nil {
			return in, err
		}
		if a.flag("fail") {
			in.NoBackend = true
			break
		}
		b, err := a.uint("backend", 32, 0)
		if err != nil {
			return in, err
		}
		in.Backend.ID = core.BackendID(b)
		if in.Backend.Addr, err = a.addrPort("addr", true); err != nil {
			return in, fmt.Errorf("%w (or write resolve flow=I#G fail)", err)
		}
	case "abort":
		in.Kind = core.InAbortFlow
		if in.Flow, err = a.flow(); err != nil {
			return in, err
		}
	case "timer":
		in.Kind = core.InTimer
	case "invalid":
		// An input of no known kind: the core must ignore it and count it.
	case "cluster":
		ev := core.ConfigEvent{Kind: core.ConfigSetCluster}
		if err := a.cluster(&ev); err != nil {
			return in, err
		}
		in = core.ConfigInput(ev)
	case "remove-cluster":
		l, err := a.uint("listener", 16, 0)
		if err != nil {
			return in, err
		}
		in = core.ConfigInput(core.ConfigEvent{Kind: core.ConfigRemoveCluster, Listener: core.ListenerID(l)})
	case "max-flows", "max-rx":
		if len(a.bare) != 1 {
			return in, fmt.Errorf("%s wants one number, e.g. %s 3", verb, verb)
		}
		v, err := strconv.ParseInt(a.bare[0], 0, 32)
		if err != nil {
			return in, fmt.Errorf("%s %q: not a number", verb, a.bare[0])
		}
		a.bare = nil
		kind := core.ConfigSetMaxFlows
		if verb == "max-rx" {
			kind = core.ConfigSetMaxRxDatagramSize
		}
		in = core.ConfigInput(core.ConfigEvent{Kind: kind, Value: int(v)})
	case "backend-down", "backend-up":
		if len(a.bare) != 1 {
			return in, fmt.Errorf("%s wants one backend id, e.g. %s 1", verb, verb)
		}
		v, err := strconv.ParseUint(a.bare[0], 0, 32)
		if err != nil {
			return in, fmt.Errorf("%s %q: want an unsigned 32-bit backend id", verb, a.bare[0])
		}
		a.bare = nil
		kind := core.ConfigBackendDown
		if verb == "backend-up" {
			kind = core.ConfigBackendUp
		}
		in = core.ConfigInput(core.ConfigEvent{Kind: kind, Backend: core.BackendID(v)})
	case "drain":
		in = core.ConfigInput(core.ConfigEvent{Kind: core.ConfigDrain})
	case "undrain":
		in = core.ConfigInput(core.ConfigEvent{Kind: core.ConfigUndrain})
	case "close-all":
		in = core.ConfigInput(core.ConfigEvent{Kind: core.ConfigCloseAll})
	default:
		return in, fmt.Errorf("unknown directive %q", verb)
	}
	return in, a.done()
}

// args are the key=value pairs and bare words after a directive.
type args struct {
	kv   map[string]string
	bare []string
}

func parseArgs(toks []string) (*args, error) {
	a := &args{kv: map[string]string{}}
	for _, t := range toks {
		k, v, ok := strings.Cut(t, "=")
		if !ok {
			a.bare = append(a.bare, t)
			continue
		}
		if k == "" {
			return nil, fmt.Errorf("%q: empty key", t)
		}
		if _, dup := a.kv[k]; dup {
			return nil, fmt.Errorf("%s= given twice", k)
		}
		if strings.HasPrefix(v, `"`) {
			u, err := strconv.Unquote(v)
			if err != nil {
				return nil, fmt.Errorf("%s=%s: bad quoted string", k, v)
			}
			v = u
		}
		a.kv[k] = v
	}
	return a, nil
}

// take returns and consumes the value of key.
func (a *args) take(key string) (string, bool) {
	v, ok := a.kv[key]
	delete(a.kv, key)
	return v, ok
}

// flag consumes the bare word w.
func (a *args) flag(w string) bool {
	for i, b := range a.bare {
		if b == w {
			a.bare = append(a.bare[:i], a.bare[i+1:]...)
			return true
		}
	}
	return false
}

// done reports the first argument nothing consumed.
func (a *args) done() error {
	if len(a.bare) > 0 {
		return fmt.Errorf("unexpected %q", a.bare[0])
	}
	if len(a.kv) > 0 {
		keys := make([]string, 0, len(a.kv))
		for k := range a.kv {
			keys = append(keys, k)
		}
		// Name the smallest key so the message does not depend on map order.
		min := keys[0]
		for _, k := range keys[1:] {
			if k < min {
				min = k
			}
		}
		return fmt.Errorf("unknown key %s=", min)
	}
	return nil
}

func (a *args) uint(key string, bits int, def uint64) (uint64, error) {
	v, ok := a.take(key)
	if !ok {
		return def, nil
	}
	n, err := strconv.ParseUint(v, 0, bits)
	if err != nil {
		return 0, fmt.Errorf("%s=%s: want an unsigned %d-bit number", key, v, bits)
	}
	return n, nil
}

func (a *args) dur(key string) (time.Duration, error) {
	v, ok := a.take(key)
	if !ok {
		return 0, nil
	}
	d, err := parseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%s: %v", key, v, err)
	}
	return d, nil
}

func (a *args) addrPort(key string, required bool) (netip.AddrPort, error) {
	v, ok := a.take(key)
	if !ok {
		if required {
			return netip.AddrPort{}, fmt.Errorf("missing %s=ADDR:PORT", key)
		}
		return netip.AddrPort{}, nil
	}
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s=%s: want ADDR:PORT or [ADDR]:PORT", key, v)
	}
	return ap, nil
}

func (a *args) flow() (core.FlowID, error) {
	v, ok := a.take("flow")
	if !ok {
		return 0, errors.New("missing flow=INDEX#GEN")
	}
	return ParseFlowID(v)
}

// datagram reads the payload (data=, hex= or len=), seg= and tos= of in.
func (a *args) datagram(in *core.Input) error {
	n := 0
	if v, ok := a.take("data"); ok {
		in.Payload = []byte(v)
		n++
	}
	if v, ok := a.take("hex"); ok {
		b, err := hex.DecodeString(v)
		if err != nil {
			return fmt.Errorf("hex=%s: %v", v, err)
		}
		in.Payload = b
		n++
	}
	if v, ok := a.take("len"); ok {
		l, err := strconv.ParseUint(v, 0, 31)
		if err != nil || l > MaxPayload {
			return fmt.Errorf("len=%s: want 0..%d", v, MaxPayload)
		}
		in.Payload = Pattern(int(l))
		n++
	}
	if n != 1 {
		return errors.New(`want exactly one of data="...", hex=HEX, len=N`)
	}
	if len(in.Payload) > MaxPayload {
		return fmt.Errorf("payload of %d bytes is over %d", len(in.Payload), MaxPayload)
	}
	if in.Payload == nil {
		in.Payload = []byte{}
	}
	seg, err := a.uint("seg", 16, 0)
	if err != nil {
		return err
	}
	in.SegmentSize = int(seg)
	tos, err := a.uint("tos", 8, 0)
	if err != nil {
		return err
	}
	in.TOS = uint8(tos)
	return nil
}

func (a *args) cluster(ev *core.ConfigEvent) error {
	l, err := a.uint("listener", 16, 0)
	if err != nil {
		return err
	}
	ev.Listener = core.ListenerID(l)
	c := &ev.Cluster
	id, err := a.uint("id", 32, 0)
	if err != nil {
		return err
	}
	c.Cluster = core.ClusterID(id)
	if v, ok := a.take("affinity"); ok {
		if c.Affinity, err = core.ParseAffinity(v); err != nil {
			return err
		}
	}
	if v, ok := a.take("proxy"); ok {
		if c.ProxyProtocol, err = core.ParseProxyMode(v); err != nil {
			return err
		}
	}
	resp, err := a.uint("responses", 32, 0)
	if err != nil {
		return err
	}
	req, err := a.uint("requests", 32, 0)
	if err != nil {
		return err
	}
	c.Responses, c.Requests = uint32(resp), uint32(req)
	if c.FrontTimeout, err = a.dur("front"); err != nil {
		return err
	}
	if c.BackTimeout, err = a.dur("back"); err != nil {
		return err
	}
	if c.Lifetime, err = a.dur("lifetime"); err != nil {
		return err
	}
	if c.PublicAddr, err = a.addrPort("public", false); err != nil {
		return err
	}
	if v, ok := a.take("down_flows"); ok {
		switch v {
		case "continue":
		case "close":
			c.CloseOnBackendDown = true
		default:
			return fmt.Errorf("down_flows=%s: want continue or close", v)
		}
	}
	return nil
}

// ParseFlowID parses a flow id written INDEX#GEN, as [core.FlowID.String]
// prints it.
func ParseFlowID(s string) (core.FlowID, error) {
	i, g, ok := strings.Cut(s, "#")
	if !ok {
		return 0, fmt.Errorf("flow %q: want INDEX#GEN, e.g. 0#1", s)
	}
	idx, err1 := strconv.ParseUint(i, 10, 32)
	gen, err2 := strconv.ParseUint(g, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("flow %q: want INDEX#GEN, e.g. 0#1", s)
	}
	return core.FlowID(gen<<32 | idx), nil
}

// parseDuration parses a Go duration ("1.5s", "200ms"); a bare 0 is allowed.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want e.g. 1.5s or 200ms", s)
	}
	return d, nil
}

// Pattern returns n bytes of the lowercase alphabet repeated ("abc...zab..."),
// the payload written len=n. The letters show which part of a run an output
// carries.
func Pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}

// tokenize splits a line into tokens at spaces and tabs. A double quote starts
// a quoted part (backslash escapes the next byte) that runs to the next
// unescaped quote and may hold spaces. A # that begins a token starts a comment
// to the end of the line; inside a token (flow=0#1) it is an ordinary byte.
func tokenize(line string) ([]string, error) {
	var toks []string
	i := 0
	for {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r') {
			i++
		}
		if i >= len(line) || line[i] == '#' {
			return toks, nil
		}
		start := i
		for i < len(line) && line[i] != ' ' && line[i] != '\t' && line[i] != '\r' {
			if line[i] == '"' {
				i++
				for i < len(line) && line[i] != '"' {
					if line[i] == '\\' {
						i++
					}
					i++
				}
				if i >= len(line) {
					return nil, errors.New("unterminated quoted string")
				}
			}
			i++
		}
		toks = append(toks, line[start:i])
	}
}

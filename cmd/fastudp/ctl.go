package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/control"
	"github.com/fastudp/fastudp/quiclb"
)

const ctlUsage = `Usage: fastudp ctl [--control PATH] [--json] COMMAND [ARGS]

Changes and inspects a running fastudp through its control socket.

Commands:
  status                                 the process, its shards and each cluster's backends and flows
  backends [CLUSTER]                     backends: weight, state, health, live flows
  backend add CLUSTER ADDR [--weight W] [--server-id HEX] [--backup]
                                         add a backend (weight 1..10000, default 100; its QUIC-LB
                                         server ID for a cluster with a quic_lb table; as a backup)
  backend remove CLUSTER ADDR            remove a backend
  backend drain CLUSTER ADDR             send a backend no new flows; its live flows go on
  backend undrain CLUSTER ADDR           let a drained backend take new flows again
  backend weight CLUSTER ADDR W          set a backend's weight for new flows
  backend backup CLUSTER ADDR on|off     make a backend a backup (new flows only while no
                                         primary is usable) or a primary again
  flows [--limit N]                      live flows (default 100, at most 100000)
  reload                                 re-read the config file and apply what can change live
  upgrade                                start the binary on disk and hand it every socket and flow

ADDR is IP:PORT ("10.0.0.1:53", "[2001:db8::1]:443").

Flags, before or after the command:
  --control PATH   the control socket (default ` + control.DefaultPath + `)
  --json           print the answer as JSON
  --timeout D      give up after D (default 30s)

Exit status: 0 done, 1 the proxy refused or could not be reached, 2 usage error.
`

// ctlOptions are the flags of `fastudp ctl`.
type ctlOptions struct {
	control  string
	json     bool
	timeout  time.Duration
	weight   int
	serverID string
	backup   bool
	limit    int
	given    []string // the command's flags given explicitly
}

// isGiven reports whether the flag name was given after the command.
func (o *ctlOptions) isGiven(name string) bool { return slices.Contains(o.given, name) }

// runCtl implements `fastudp ctl`: one request to the control API, its
// answer printed as a table or as JSON. It returns the exit status.
func runCtl(args []string, stdout, stderr io.Writer) int {
	err := ctlCommand(args, stdout, stderr)
	if err == nil {
		return 0
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
		if ee.err == nil {
			return code
		}
	}
	fmt.Fprintln(stderr, "fastudp ctl:", err)
	if code == 2 {
		fmt.Fprintln(stderr, `run "fastudp ctl --help" for the commands`)
	}
	return code
}

func usageError(format string, a ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, a...)}
}

// newCtlFlags returns the flags every ctl command accepts.
func newCtlFlags(name string, o *ctlOptions) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by runCtl
	fs.StringVar(&o.control, "control", o.control, "the control socket `PATH`")
	fs.BoolVar(&o.json, "json", o.json, "print the answer as JSON")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "give up after `D`")
	return fs
}

// parseInterleaved parses fs's flags wherever they are among args and
// returns the other arguments in order ("--" ends the flags).
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// flagError turns a flag parsing error into the command's outcome: help is
// printed on stdout and succeeds, anything else is a usage error.
func flagError(err error, stdout io.Writer) error {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, ctlUsage)
		return nil
	}
	return &exitError{code: 2, err: err}
}

// parseCtl parses a ctl command line into a checked request, sending
// nothing. A nil request with a nil error means help was printed.
func parseCtl(args []string, stdout, stderr io.Writer) (ctlRequest, ctlOptions, error) {
	o := ctlOptions{control: control.DefaultPath, timeout: 30 * time.Second}
	global := newCtlFlags("fastudp ctl", &o)
	if err := global.Parse(args); err != nil {
		return nil, o, flagError(err, stdout)
	}
	args = global.Args()
	if len(args) == 0 {
		fmt.Fprint(stderr, ctlUsage)
		return nil, o, &exitError{code: 2}
	}
	cmd, args := args[0], args[1:]
	if cmd == "help" {
		fmt.Fprint(stdout, ctlUsage)
		return nil, o, nil
	}
	if cmd == "backend" {
		if len(args) == 0 {
			return nil, o, usageError("backend: want add, remove, drain, undrain, weight or backup")
		}
		cmd, args = "backend "+args[0], args[1:]
	}
	fs := newCtlFlags("fastudp ctl "+cmd, &o)
	switch cmd {
	case "backend add":
		fs.IntVar(&o.weight, "weight", 0, "the backend's `W`eight")
		fs.StringVar(&o.serverID, "server-id", "", "the backend's QUIC-LB server ID in `HEX`")
		fs.BoolVar(&o.backup, "backup", false, "add the backend as a backup")
	case "flows":
		fs.IntVar(&o.limit, "limit", 0, "show at most `N` flows")
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return nil, o, flagError(err, stdout)
	}
	fs.Visit(func(f *flag.Flag) { o.given = append(o.given, f.Name) })
	if o.timeout <= 0 {
		return nil, o, usageError("--timeout must be positive")
	}
	if o.control == "" {
		return nil, o, usageError("--control: empty path")
	}
	req, err := parseCtlRequest(cmd, pos, &o)
	return req, o, err
}

func ctlCommand(args []string, stdout, stderr io.Writer) error {
	req, o, err := parseCtl(args, stdout, stderr)
	if err != nil || req == nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cl := control.NewClient(o.control)
	defer cl.Close()
	v, err := req(ctx, cl)
	if err != nil {
		var ae *control.APIError
		if !errors.As(err, &ae) {
			return fmt.Errorf("%w (is fastudp running? --control gives the socket)", err)
		}
		return err
	}
	if o.json {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("encode answer: %w", err)
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	return printCtl(stdout, v)
}

// ctlRequest sends one checked request and returns the typed answer.
type ctlRequest func(ctx context.Context, cl *control.Client) (any, error)

// backendTarget is the CLUSTER ADDR pair of the backend commands.
type backendTarget struct {
	cluster string
	addr    netip.AddrPort
}

// parseCtlRequest checks cmd's arguments before anything is sent, so that a
// typo is a usage error (exit 2) rather than a server error.
func parseCtlRequest(cmd string, pos []string, o *ctlOptions) (ctlRequest, error) {
	nargs := func(lo, hi int, synopsis string) error {
		if len(pos) < lo || len(pos) > hi {
			return usageError("usage: fastudp ctl %s", synopsis)
		}
		return nil
	}
	target := func() (backendTarget, error) {
		if pos[0] == "" {
			return backendTarget{}, usageError("%s: empty CLUSTER", cmd)
		}
		ap, err := netip.ParseAddrPort(pos[1])
		if err != nil {
			return backendTarget{}, usageError("%s: ADDR must be IP:PORT: %v", cmd, err)
		}
		return backendTarget{pos[0], ap}, nil
	}
	switch cmd {
	case "status":
		if err := nargs(0, 0, "status"); err != nil {
			return nil, err
		}
		return func(ctx context.Context, cl *control.Client) (any, error) { return cl.Status(ctx) }, nil
	case "backends":
		if err := nargs(0, 1, "backends [CLUSTER]"); err != nil {
			return nil, err
		}
		cluster := ""
		if len(pos) == 1 {
			cluster = pos[0]
		}
		return func(ctx context.Context, cl *control.Client) (any, error) { return cl.Backends(ctx, cluster) }, nil
	case "backend add":
		if err := nargs(2, 2, "backend add CLUSTER ADDR [--weight W] [--server-id HEX] [--backup]"); err != nil {
			return nil, err
		}
		t, err := target()
		if err != nil {
			return nil, err
		}
		if o.isGiven("weight") && (o.weight < 1 || o.weight > config.MaxWeight) {
			return nil, usageError("--weight %d: want 1..%d", o.weight, config.MaxWeight)
		}
		if o.isGiven("server-id") && o.serverID == "" {
			return nil, usageError("--server-id: empty (give the server ID in hexadecimal, e.g. 0a01)")
		}
		sid, err := control.ParseServerID(o.serverID)
		if err != nil {
			return nil, usageError("--server-id %q: want 1..%d bytes in hexadecimal (e.g. 0a01)", o.serverID, quiclb.MaxServerIDLen)
		}
		opts := control.AddOptions{Weight: o.weight, ServerID: sid, Backup: o.backup}
		return func(ctx context.Context, cl *control.Client) (any, error) {
			return cl.AddBackendWith(ctx, t.cluster, t.addr, opts)
		}, nil
	case "backend backup":
		if err := nargs(3, 3, "backend backup CLUSTER ADDR on|off"); err != nil {
			return nil, err
		}
		t, err := target()
		if err != nil {
			return nil, err
		}
		var on bool
		switch pos[2] {
		case "on":
			on = true
		case "off":
		default:
			return nil, usageError("backend backup: %q: want on (a backup) or off (a primary)", pos[2])
		}
		return func(ctx context.Context, cl *control.Client) (any, error) {
			return cl.SetBackup(ctx, t.cluster, t.addr, on)
		}, nil
	case "backend remove":
		if err := nargs(2, 2, "backend remove CLUSTER ADDR"); err != nil {
			return nil, err
		}
		t, err := target()
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, cl *control.Client) (any, error) {
			return cl.RemoveBackend(ctx, t.cluster, t.addr)
		}, nil
	case "backend drain", "backend undrain":
		if err := nargs(2, 2, cmd+" CLUSTER ADDR"); err != nil {
			return nil, err
		}
		t, err := target()
		if err != nil {
			return nil, err
		}
		drain := cmd == "backend drain"
		return func(ctx context.Context, cl *control.Client) (any, error) {
			return cl.DrainBackend(ctx, t.cluster, t.addr, drain)
		}, nil
	case "backend weight":
		if err := nargs(3, 3, "backend weight CLUSTER ADDR W"); err != nil {
			return nil, err
		}
		t, err := target()
		if err != nil {
			return nil, err
		}
		w, err := strconv.Atoi(pos[2])
		if err != nil || w < 1 || w > config.MaxWeight {
			return nil, usageError("backend weight: W %q: want an integer in 1..%d", pos[2], config.MaxWeight)
		}
		return func(ctx context.Context, cl *control.Client) (any, error) {
			return cl.SetWeight(ctx, t.cluster, t.addr, w)
		}, nil
	case "flows":
		if err := nargs(0, 0, "flows [--limit N]"); err != nil {
			return nil, err
		}
		if o.isGiven("limit") && (o.limit < 1 || o.limit > control.MaxFlowLimit) {
			return nil, usageError("--limit %d: want 1..%d", o.limit, control.MaxFlowLimit)
		}
		limit := o.limit
		return func(ctx context.Context, cl *control.Client) (any, error) { return cl.Flows(ctx, limit) }, nil
	case "reload":
		if err := nargs(0, 0, "reload"); err != nil {
			return nil, err
		}
		return func(ctx context.Context, cl *control.Client) (any, error) { return cl.Reload(ctx) }, nil
	case "upgrade":
		if err := nargs(0, 0, "upgrade"); err != nil {
			return nil, err
		}
		return func(ctx context.Context, cl *control.Client) (any, error) { return cl.Upgrade(ctx) }, nil
	}
	if rest, ok := strings.CutPrefix(cmd, "backend "); ok {
		return nil, usageError("backend: unknown subcommand %q (want add, remove, drain, undrain, weight or backup)", rest)
	}
	return nil, usageError("unknown command %q", cmd)
}

// printCtl prints an answer for people: aligned tables.
func printCtl(w io.Writer, v any) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	switch v := v.(type) {
	case control.Status:
		printStatus(tw, v)
	case []control.Backend:
		printBackends(tw, v)
	case control.BackendChange:
		printChange(tw, v)
	case []control.Flow:
		printFlows(tw, v)
	case control.ReloadResult:
		printReload(tw, v)
	case control.UpgradeResult:
		fmt.Fprintf(tw, "upgraded\tpid %d -> %d\n", v.OldPID, v.NewPID)
		fmt.Fprintf(tw, "flows handed over\t%d\n", v.Flows)
		fmt.Fprintf(tw, "paused\t%s\n", v.Paused)
		if v.DNSQueriesCarried > 0 {
			fmt.Fprintf(tw, "dns queries in flight, carried\t%d\n", v.DNSQueriesCarried)
		}
	default:
		return fmt.Errorf("no table for %T", v)
	}
	return tw.Flush()
}

func printStatus(w io.Writer, st control.Status) {
	cfg := st.ConfigPath
	if cfg == "" {
		cfg = "(none: quick start)"
	}
	fmt.Fprintf(w, "pid\t%d\n", st.PID)
	fmt.Fprintf(w, "version\t%s\n", st.Version)
	fmt.Fprintf(w, "uptime\t%s\n", st.Uptime.Round(time.Second))
	fmt.Fprintf(w, "config\t%s\n", cfg)
	fmt.Fprintf(w, "shards\t%d\n", st.Shards)
	fmt.Fprintln(w, "\t")
	fmt.Fprintln(w, "CLUSTER\tUP\tDOWN\tDRAINING\tFLOWS\tPLACEMENT")
	for _, c := range st.Clusters {
		placement := c.Placement
		if placement == "" {
			placement = "-"
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%s\n", c.Name, c.Up, c.Down, c.Draining, c.Flows, placement)
	}
}

func printBackends(w io.Writer, bs []control.Backend) {
	fmt.Fprintln(w, "CLUSTER\tADDRESS\tNAME\tWEIGHT\tTIER\tSERVER ID\tSTATE\tFLOWS\tHEALTH")
	for _, b := range bs {
		flows := "-"
		if b.ActiveFlows != nil {
			flows = strconv.FormatInt(*b.ActiveFlows, 10)
		}
		tier := "primary"
		if b.Backup {
			tier = "backup"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", b.Cluster, b.Address, orDash(b.Name), b.Weight, tier, orDash(b.ServerID),
			b.State, flows, healthText(b.Health))
	}
}

// healthText summarises the checks' view of a backend in one cell.
func healthText(h *control.Health) string {
	if h == nil {
		return "-"
	}
	s := "healthy"
	if !h.Healthy {
		s = "unhealthy"
	}
	if h.Reason != "" {
		s += ": " + h.Reason
	} else if h.LastError != "" {
		s += " (last failure: " + h.LastError + ")"
	}
	return s
}

func printChange(w io.Writer, c control.BackendChange) {
	switch c.Action {
	case control.ActionAdded:
		extra := ""
		if c.Backup {
			extra += ", backup"
		}
		if c.ServerID != "" {
			extra += ", server ID " + c.ServerID
		}
		fmt.Fprintf(w, "added %s to cluster %s (weight %d%s)\n", c.Address, c.Cluster, c.Weight, extra)
	case control.ActionBackup:
		fmt.Fprintf(w, "%s in cluster %s is a backup: new flows only while no primary is usable\n", c.Address, c.Cluster)
	case control.ActionPrimary:
		fmt.Fprintf(w, "%s in cluster %s is a primary\n", c.Address, c.Cluster)
	case control.ActionRemoved:
		fmt.Fprintf(w, "removed %s from cluster %s\n", c.Address, c.Cluster)
	case control.ActionDrained:
		fmt.Fprintf(w, "draining %s in cluster %s: no new flows, live flows go on\n", c.Address, c.Cluster)
	case control.ActionUndrained:
		fmt.Fprintf(w, "%s in cluster %s takes new flows again\n", c.Address, c.Cluster)
	case control.ActionWeighted:
		fmt.Fprintf(w, "weight of %s in cluster %s is now %d\n", c.Address, c.Cluster, c.Weight)
	default:
		fmt.Fprintf(w, "%s %s in cluster %s\n", c.Action, c.Address, c.Cluster)
	}
}

func printFlows(w io.Writer, fs []control.Flow) {
	fmt.Fprintln(w, "CLIENT\tLOCAL\tLISTENER\tCLUSTER\tBACKEND\tSHARD\tAGE\tDGRAMS IN\tDGRAMS OUT\tBYTES IN\tBYTES OUT")
	for _, f := range fs {
		local, backend := "-", "(pending)"
		if f.Local.IsValid() {
			local = f.Local.String()
		}
		if f.Backend.IsValid() {
			backend = f.Backend.String()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\n", f.Client, local, orDash(f.Listener), orDash(f.Cluster), backend,
			f.Shard, f.Age.Round(time.Millisecond), f.DatagramsIn, f.DatagramsOut, f.BytesIn, f.BytesOut)
	}
}

func printReload(w io.Writer, r control.ReloadResult) {
	if r.Unchanged() {
		fmt.Fprintf(w, "reloaded %s: no changes\n", r.ConfigPath)
		return
	}
	fmt.Fprintf(w, "reloaded %s\n", r.ConfigPath)
	list := func(label string, items []string) {
		if len(items) > 0 {
			fmt.Fprintf(w, "%s\t%s\n", label, strings.Join(items, ", "))
		}
	}
	refs := func(bs []control.BackendRef) []string {
		out := make([]string, len(bs))
		for i, b := range bs {
			out[i] = b.Cluster + " " + b.Address.String()
		}
		return out
	}
	list("clusters added:", r.ClustersAdded)
	list("clusters removed:", r.ClustersRemoved)
	list("clusters changed:", r.ClustersChanged)
	list("backends added:", refs(r.BackendsAdded))
	list("backends removed:", refs(r.BackendsRemoved))
	list("backends changed:", refs(r.BackendsChanged))
	list("NOT applied, need a restart:", r.RestartRequired)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

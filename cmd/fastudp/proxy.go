package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/batchio/shard"
	"github.com/fastudp/fastudp/bpf"
	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/control"
	"github.com/fastudp/fastudp/health"
)

// proxy is a running fastudp: its shards, the backend picker and the metrics
// endpoint.
type proxy struct {
	cfg      *config.Config
	log      *slog.Logger
	group    *shard.Group
	picker   *clusterPicker
	registry *prometheus.Registry
	metrics  *http.Server
	metricsL net.Listener
	access   io.Closer
	dnsTCP   []*dnsTCP
	health   *health.Monitor
	// cfgPath is the file reload reads ("" for quick-start flags);
	// reloadMu serialises reloads and control-API changes of p.cfg.
	cfgPath  string
	reloadMu sync.Mutex
	control  *control.Server
	ctlTCP   *control.Server
	// stopBackground stops the health monitor and the passive reports.
	stopBackground context.CancelFunc
	// upg upgrades the process (nil unless started by fastudp run).
	upg *upgrader
}

// startProxy binds every listener on every shard and starts them; path is
// the config file reload reads ("" for quick-start flags). The config
// must have passed Validate.
func startProxy(ctx context.Context, cfg *config.Config, path string, log *slog.Logger) (*proxy, error) {
	return startProxyWith(ctx, cfg, path, log, nil, nil)
}

// startProxyWith is startProxy for a process that can upgrade itself (upg)
// and, with t set, takes over the sockets and flows of the process that
// started it (see upgrade.go); t's commit comes just before the shards start.
func startProxyWith(ctx context.Context, cfg *config.Config, path string, log *slog.Logger, upg *upgrader, t *takeover) (*proxy, error) {
	p := &proxy{cfg: cfg, log: log, cfgPath: path, upg: upg}
	healthChanged := make(chan struct{}, 1)
	p.health = health.NewMonitor(health.Options{
		Logger: log.With("component", "health"),
		// Called with a cluster's lock held: only a non-blocking nudge.
		OnChange: func(*health.Cluster, *health.View) {
			select {
			case healthChanged <- struct{}{}:
			default:
			}
		},
	})
	// fail undoes what was started before an error.
	fail := func(err error) (*proxy, error) {
		_ = stopDNSTCP(context.Background(), p.dnsTCP)
		if p.control != nil {
			_ = p.control.Close()
		}
		if p.ctlTCP != nil {
			_ = p.ctlTCP.Close()
		}
		if p.metrics != nil {
			_ = p.metrics.Close()
		}
		if p.group != nil {
			p.group.Close()
		}
		if p.stopBackground != nil {
			p.stopBackground()
		}
		p.health.Close()
		p.closeAccess()
		return nil, err
	}
	picker, err := newClusterPicker(cfg, p.health)
	if err != nil {
		return fail(err)
	}
	p.picker = picker
	var accessLog *slog.Logger
	if cfg.AccessLog != "" {
		w, closer, err := openAccessLog(cfg.AccessLog)
		if err != nil {
			return fail(err)
		}
		p.access = closer
		accessLog = slog.New(slog.NewJSONHandler(w, nil))
	}
	shards := cfg.ShardCount()
	listeners := make([]shard.Listener, len(cfg.Listeners))
	for i, l := range cfg.Listeners {
		cc, _ := cfg.ListenerCoreConfig(i)
		listeners[i] = shard.Listener{Name: l.Name, Addr: l.Address, Cluster: cc}
		if cl := cfg.Cluster(l.Cluster); cl != nil && cl.Mode == config.ModeDNS {
			listeners[i].DNS = &shard.DNSListener{Sockets: cl.DNS.Sockets, MaxInFlight: cl.DNS.MaxInFlight, Timeout: cl.DNS.Timeout}
		}
	}
	g, err := shard.NewGroup(shard.GroupOptions{
		Shards:          shards,
		Listeners:       listeners,
		Listen:          batchio.ListenOptions{RecvBuffer: cfg.SocketReceiveBuffer, SendBuffer: cfg.SocketSendBuffer, SpecificPacketInfoOff: true},
		Backends:        picker.capacity,
		Core:            cfg.CoreConfig(shards),
		BatchSize:       cfg.BatchSize,
		UpstreamSources: cfg.UpstreamSources,
		// Upstream sockets keep the kernel's default buffers: each carries
		// one flow, and sizing them costs syscalls on every new flow. The
		// few shared sockets of DNS mode carry many queries each and get
		// the listeners' size.
		DNSSocketBuffer: max(cfg.SocketReceiveBuffer, cfg.SocketSendBuffer),
		Picker:          picker,
		Logger:          log,
		AccessLog:       accessLog,
		PinCPUs:         cfg.CPUPinning,
		GRO:             cfg.GRO,
		NoGSO:           !cfg.GSO,
		Steering:        steeringOptions(cfg),
		Resume:          t.groupState(),
		RemapBackend:    t.remap(picker),
		FDCeiling:       shard.FDCeiling(noFileLimit()), // limits.go
	})
	if err != nil {
		return fail(err)
	}
	p.group = g
	picker.setShards(g.Shards()) // live flows per backend, for lb = "p2c"
	p.registry = prometheus.NewRegistry()
	p.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p.registry.MustRegister(shard.NewDynamicCollector(g.Shards(), picker.listenerLabels(cfg), picker.labels))
	p.registry.MustRegister(shard.NewResourceCollector(g.Shards(), picker.labels))
	if dnsL := dnsListeners(cfg); slices.Contains(dnsL, true) {
		p.registry.MustRegister(shard.NewDNSCollector(g.Shards(), picker.listenerLabels(cfg), picker.labels, dnsL))
	}
	names := make([]string, len(cfg.Listeners))
	for i, l := range cfg.Listeners {
		names[i] = l.Name
	}
	p.registry.MustRegister(shard.NewSteeringCollector(g, names))
	p.registry.MustRegister(newQUICCollector(picker))
	if cfg.Metrics != "" {
		ln := t.listener("metrics", cfg.Metrics)
		if ln == nil {
			if ln, err = net.Listen("tcp", cfg.Metrics); err != nil {
				return fail(fmt.Errorf("metrics listener %s: %w", cfg.Metrics, err))
			}
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(p.registry, promhttp.HandlerOpts{}))
		if os.Getenv("FASTUDP_PPROF") == "1" {
			// Profiling for whoever can reach the metrics address: off
			// unless asked for, since profiles reveal internals.
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			log.Warn("FASTUDP_PPROF=1: serving /debug/pprof/ on the metrics listener")
		}
		p.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		p.metricsL = ln
		go func() {
			if err := p.metrics.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		}()
	}
	logSteering(log, g.Steering())
	p.dnsTCP, err = startDNSTCP(cfg, g.Addrs(), picker, log, t)
	if err != nil {
		return fail(err)
	}
	if len(p.dnsTCP) > 0 {
		p.registry.MustRegister(newDNSTCPCollector(p.dnsTCP))
	}
	p.registry.MustRegister(health.NewCollector(p.health))
	bg, stopBG := context.WithCancel(context.Background())
	p.stopBackground = stopBG
	if err := p.health.Start(bg); err != nil {
		return fail(fmt.Errorf("health: %w", err))
	}
	go picker.reportPassive(bg, g.Shards())
	go p.watchHealth(bg, healthChanged)
	if cfg.Control != "" {
		// /run/fastudp is not there after a reboot (systemd's
		// RuntimeDirectory= makes it too); the socket itself is 0600.
		if err := os.MkdirAll(filepath.Dir(cfg.Control), 0o755); err != nil {
			return fail(fmt.Errorf("control socket directory: %w", err))
		}
		var srv *control.Server
		if ln := t.listener("control", cfg.Control); ln != nil {
			srv = control.ListenInherited(ln, &proxyController{p: p, started: time.Now()}, log.With("component", "control"))
		} else if srv, err = control.Listen(cfg.Control, &proxyController{p: p, started: time.Now()}, log.With("component", "control")); err != nil {
			return fail(fmt.Errorf("control socket: %w", err))
		}
		p.control = srv
		go func() {
			if err := srv.Serve(); err != nil {
				log.Error("control API stopped", "err", err)
			}
		}()
		log.Info("control API", "socket", cfg.Control)
	}
	if cfg.ControlTCP != "" {
		token, err := readToken(cfg.ControlTokenFile)
		if err != nil {
			return fail(err)
		}
		var srv *control.Server
		if ln := t.listener("control_tcp", cfg.ControlTCP); ln != nil {
			srv, err = control.ListenTCPInherited(ln, token, &proxyController{p: p, started: time.Now()}, log.With("component", "control"))
		} else {
			srv, err = control.ListenTCP(cfg.ControlTCP, token, &proxyController{p: p, started: time.Now()}, log.With("component", "control"))
		}
		if err != nil {
			return fail(fmt.Errorf("control_tcp: %w", err))
		}
		p.ctlTCP = srv
		go func() {
			if err := srv.Serve(); err != nil {
				log.Error("control API (tcp) stopped", "err", err)
			}
		}()
		log.Info("control API", "tcp", srv.Addr().String())
	}
	if err := t.commit(); err != nil {
		return fail(err)
	}
	if t != nil && p.control != nil {
		_ = p.control.AdoptSocketFile(cfg.Control) // gone: nothing to remove at exit
	}
	g.Start(ctx)
	t.started()
	for i, a := range g.Addrs() {
		log.Info("listening", "listener", cfg.Listeners[i].Name, "address", a, "cluster", cfg.Listeners[i].Cluster, "shards", shards)
	}
	if p.metricsL != nil {
		log.Info("metrics", "address", "http://"+p.metricsL.Addr().String()+"/metrics")
	}
	return p, nil
}

// dnsListeners says which listeners (by ListenerID) are in DNS mode.
func dnsListeners(cfg *config.Config) []bool {
	out := make([]bool, len(cfg.Listeners))
	for i, l := range cfg.Listeners {
		if cl := cfg.Cluster(l.Cluster); cl != nil {
			out[i] = cl.Mode == config.ModeDNS
		}
	}
	return out
}

// steeringOptions maps the config's steering keys to the group's.
func steeringOptions(cfg *config.Config) shard.SteeringOptions {
	so := shard.SteeringOptions{Mode: bpf.ModeKernel, Key: bpf.KeyFlow, Seed: cfg.Seed, PinPath: cfg.SteeringPin}
	switch cfg.Steering {
	case config.SteeringHash:
		so.Mode = bpf.ModeHash
	case config.SteeringCPU:
		so.Mode = bpf.ModeCPU
	}
	if cfg.SteeringKey == config.SteeringKeyIP {
		so.Key = bpf.KeyIP
	}
	return so
}

// logSteering says how datagrams reach shards and, when the eBPF program
// could not be used, why and what is used instead.
func logSteering(log *slog.Logger, st shard.SteeringStatus) {
	if st.Fallback == nil {
		log.Info("steering", "mode", st.Requested.String(), "key", st.Key.String(), "active", st.Active)
		return
	}
	instead := "the kernel's SO_REUSEPORT hash"
	if st.Active == shard.SteeringActiveIncomingCPU {
		instead = "SO_INCOMING_CPU on each shard socket (the kernel prefers the receiving CPU's shard)"
	}
	msg := "steering: cannot use the eBPF program; falling back to " + instead
	if errors.Is(st.Fallback, bpf.ErrPermission) {
		msg = "steering: no permission to load the eBPF program: missing capability CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8); falling back to " + instead
	}
	args := []any{"mode", st.Requested.String(), "active", st.Active, "err", st.Fallback}
	if st.FallbackAlso != nil {
		args = append(args, "fallback_err", st.FallbackAlso)
	}
	log.Warn(msg, args...)
}

// addrs returns the bound listener addresses.
func (p *proxy) addrs() []netip.AddrPort { return p.group.Addrs() }

// stop drains the shards within grace, waits for them and closes the rest.
func (p *proxy) stop(grace time.Duration) error {
	if p.control != nil {
		_ = p.control.Close()
	}
	if p.ctlTCP != nil {
		_ = p.ctlTCP.Close()
	}
	p.group.Stop(grace)
	tcpCtx, cancelTCP := context.WithTimeout(context.Background(), grace)
	tcpErr := stopDNSTCP(tcpCtx, p.dnsTCP)
	cancelTCP()
	err := errors.Join(p.group.Wait(), tcpErr)
	p.stopBackground()
	p.health.Close()
	if p.metrics != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = p.metrics.Shutdown(ctx)
		cancel()
	}
	p.closeAccess()
	return err
}

func (p *proxy) closeAccess() {
	if p.access != nil {
		_ = p.access.Close()
	}
}

func openAccessLog(dst string) (io.Writer, io.Closer, error) {
	switch dst {
	case "stderr":
		return os.Stderr, nil, nil
	case "stdout":
		return os.Stdout, nil, nil
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("access log: %w", err)
	}
	return f, f, nil
}

package control

import (
	"errors"
	"net/netip"
	"time"
)

// DefaultPath is where `fastudp run` serves the control socket and where
// `fastudp ctl` looks for it unless told otherwise.
const DefaultPath = "/run/fastudp/control.sock"

// Sentinel errors a [Controller] wraps to choose the HTTP status of its
// answer; a [Client] returns an [*APIError] that matches the same sentinel
// through [errors.Is].
var (
	// ErrNotFound reports an unknown cluster or backend (HTTP 404).
	ErrNotFound = errors.New("not found")
	// ErrInvalid reports a bad argument or an invalid configuration file
	// (HTTP 400).
	ErrInvalid = errors.New("invalid argument")
	// ErrConflict reports a change that contradicts the current state, such
	// as adding a backend that already exists (HTTP 409).
	ErrConflict = errors.New("conflict")
)

// Controller is what the control API drives; the proxy implements it.
// Methods are called from HTTP handler goroutines concurrently. Errors should
// wrap [ErrNotFound], [ErrInvalid] or [ErrConflict] where one applies; their
// message is shown to the operator as is.
type Controller interface {
	// Status describes the running process and summarises each cluster.
	Status() Status
	// Backends lists the backends of cluster, or of every cluster when
	// cluster is "". An unknown cluster is an [ErrNotFound].
	Backends(cluster string) ([]Backend, error)
	// AddBackend adds addr to cluster as opts says (its weight already
	// checked to be in 1..config.MaxWeight). An existing backend is an
	// [ErrConflict]; a server ID the cluster cannot take (no quic_lb table,
	// wrong length, another backend's) is an [ErrInvalid].
	AddBackend(cluster string, addr netip.AddrPort, opts AddOptions) error
	// RemoveBackend removes addr from cluster; its live flows end as the
	// proxy's policy says.
	RemoveBackend(cluster string, addr netip.AddrPort) error
	// DrainBackend makes addr take no new flows while its live flows go on
	// (drain true), or takes it out of draining (drain false).
	DrainBackend(cluster string, addr netip.AddrPort, drain bool) error
	// SetWeight changes the weight of addr (in 1..config.MaxWeight) for new
	// flows.
	SetWeight(cluster string, addr netip.AddrPort, weight int) error
	// SetBackup moves addr to the backup tier (backup true: it takes new
	// flows only while no primary is usable) or back to the primaries.
	SetBackup(cluster string, addr netip.AddrPort, backup bool) error
	// Flows returns at most limit live flows (limit is in 1..[MaxFlowLimit]).
	Flows(limit int) ([]Flow, error)
	// Reload re-reads the configuration file and applies what can change
	// live. An invalid file is an [ErrInvalid] explaining what is wrong, and
	// the running configuration stays.
	Reload() (ReloadResult, error)
}

// AddOptions are the settings of a backend added through the API.
type AddOptions struct {
	// Weight is in 1..config.MaxWeight.
	Weight int
	// ServerID is the backend's QUIC-LB server ID as raw bytes ("" for
	// none), for clusters with a quic_lb table.
	ServerID string
	// Backup puts the backend in the backup tier.
	Backup bool
}

// Status describes the running proxy.
type Status struct {
	PID     int    `json:"pid"`
	Version string `json:"version"`
	// StartedAt is when the proxy started; Uptime how long ago that was
	// (nanoseconds in JSON).
	StartedAt time.Time     `json:"started_at"`
	Uptime    time.Duration `json:"uptime_ns"`
	// ConfigPath is the file Reload reads; empty in quick-start mode.
	ConfigPath string           `json:"config_path,omitempty"`
	Shards     int              `json:"shards"`
	Clusters   []ClusterSummary `json:"clusters"`
}

// ClusterSummary counts a cluster's backends by state and its live flows.
type ClusterSummary struct {
	Name     string `json:"name"`
	Up       int    `json:"up"`
	Down     int    `json:"down"`
	Draining int    `json:"draining"`
	Flows    int64  `json:"flows"`
	// Placement is a fingerprint of what decides each client's backend
	// (algorithm, seed, backends with weights and tiers, mode, affinity):
	// processes with equal placements and the same usable backends pick
	// alike. Empty when unknown.
	Placement string `json:"placement,omitempty"`
}

// State is a backend's state as the control API reports it.
type State string

// The states of a backend. A draining backend takes no new flows but keeps
// its live ones, whatever its health.
const (
	StateUp       State = "up"
	StateDown     State = "down"
	StateDraining State = "draining"
)

// Backend describes one backend of a cluster.
type Backend struct {
	Cluster string         `json:"cluster"`
	Name    string         `json:"name,omitempty"`
	Address netip.AddrPort `json:"address"`
	Weight  int            `json:"weight"`
	// Backup reports a backend of the backup tier: it takes new flows only
	// while no primary is usable.
	Backup bool `json:"backup,omitempty"`
	// ServerID is the backend's QUIC-LB server ID in hexadecimal; empty for
	// none.
	ServerID string `json:"server_id,omitempty"`
	State    State  `json:"state"`
	// Health holds the health checks' details; nil when the proxy has none.
	Health *Health `json:"health,omitempty"`
	// ActiveFlows is the number of live flows on the backend; nil when
	// unknown.
	ActiveFlows *int64 `json:"active_flows,omitempty"`
}

// Health is what the health checks know about a backend.
type Health struct {
	// Healthy is the checks' verdict, draining or not.
	Healthy bool `json:"healthy"`
	// Usable reports whether new flows may go to the backend now (fail-open
	// included).
	Usable bool `json:"usable"`
	// Since is when Healthy last changed.
	Since time.Time `json:"since,omitzero"`
	// Reason explains the last change; LastError the last failed probe.
	Reason          string `json:"reason,omitempty"`
	LastError       string `json:"last_error,omitempty"`
	ProbeSuccesses  uint64 `json:"probe_successes"`
	ProbeFailures   uint64 `json:"probe_failures"`
	PassiveFailures uint64 `json:"passive_failures"`
}

// Flow describes one live flow. "In" counts what the client sent (forwarded
// to the backend), "out" what was sent back to the client.
type Flow struct {
	Client netip.AddrPort `json:"client"`
	// Local is the address the client sent to.
	Local    netip.AddrPort `json:"local,omitzero"`
	Listener string         `json:"listener"`
	Cluster  string         `json:"cluster"`
	// Backend is the zero AddrPort while the flow waits for one.
	Backend netip.AddrPort `json:"backend,omitzero"`
	Shard   int            `json:"shard"`
	// Age is how long the flow has lived (nanoseconds in JSON).
	Age          time.Duration `json:"age_ns"`
	DatagramsIn  uint64        `json:"datagrams_in"`
	DatagramsOut uint64        `json:"datagrams_out"`
	BytesIn      uint64        `json:"bytes_in"`
	BytesOut     uint64        `json:"bytes_out"`
}

// BackendRef names a backend in a [ReloadResult].
type BackendRef struct {
	Cluster string         `json:"cluster"`
	Address netip.AddrPort `json:"address"`
	Name    string         `json:"name,omitempty"`
}

// ReloadResult says what a reload changed.
type ReloadResult struct {
	// ConfigPath is the file that was read.
	ConfigPath      string       `json:"config_path"`
	ClustersAdded   []string     `json:"clusters_added"`
	ClustersRemoved []string     `json:"clusters_removed"`
	ClustersChanged []string     `json:"clusters_changed"`
	BackendsAdded   []BackendRef `json:"backends_added"`
	BackendsRemoved []BackendRef `json:"backends_removed"`
	// BackendsChanged lists backends whose weight or name changed.
	BackendsChanged []BackendRef `json:"backends_changed"`
	// RestartRequired lists the keys that changed in the file but cannot
	// change live (listeners, shards, batch size, steering): they were NOT
	// applied and take effect only after a restart.
	RestartRequired []string `json:"restart_required"`
}

// Unchanged reports whether the reload changed nothing and left nothing
// unapplied.
func (r *ReloadResult) Unchanged() bool {
	return len(r.ClustersAdded)+len(r.ClustersRemoved)+len(r.ClustersChanged)+
		len(r.BackendsAdded)+len(r.BackendsRemoved)+len(r.BackendsChanged)+
		len(r.RestartRequired) == 0
}

// BackendChange is the answer to a change of one backend: what was done, to
// which backend, and the weight now in force where it applies.
type BackendChange struct {
	// Action is "added", "removed", "drained", "undrained", "weighted",
	// "backup" or "primary".
	Action  string         `json:"action"`
	Cluster string         `json:"cluster"`
	Address netip.AddrPort `json:"address"`
	Weight  int            `json:"weight,omitempty"`
	// Backup and ServerID (hexadecimal) are those of an added backend.
	Backup   bool   `json:"backup,omitempty"`
	ServerID string `json:"server_id,omitempty"`
}

// The actions of a [BackendChange].
const (
	ActionAdded     = "added"
	ActionRemoved   = "removed"
	ActionDrained   = "drained"
	ActionUndrained = "undrained"
	ActionWeighted  = "weighted"
	ActionBackup    = "backup"
	ActionPrimary   = "primary"
)

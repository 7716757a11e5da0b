package control

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/quiclb"
)

// Request limits.
const (
	// MaxBodySize bounds a request body; larger ones get HTTP 413.
	MaxBodySize = 64 << 10
	// DefaultFlowLimit is how many flows GET /v1/flows returns without
	// ?limit; MaxFlowLimit is the most it returns.
	DefaultFlowLimit = 100
	MaxFlowLimit     = 100000
)

// The request bodies. The client encodes the same structs the server
// decodes; pointers tell a missing field from a zero one.
type (
	addBackendBody struct {
		Cluster string `json:"cluster"`
		Address string `json:"address"`
		Weight  *int   `json:"weight,omitempty"`
		// ServerID is the QUIC-LB server ID in hexadecimal.
		ServerID string `json:"server_id,omitempty"`
		Backup   bool   `json:"backup,omitempty"`
	}
	backupBody struct {
		Cluster string `json:"cluster"`
		Address string `json:"address"`
		Backup  *bool  `json:"backup"`
	}
	drainBody struct {
		Cluster string `json:"cluster"`
		Address string `json:"address"`
		Drain   *bool  `json:"drain"`
	}
	weightBody struct {
		Cluster string `json:"cluster"`
		Address string `json:"address"`
		Weight  *int   `json:"weight"`
	}
)

// backendArgs is a decoded and checked backend request.
type backendArgs struct {
	cluster string
	addr    netip.AddrPort
	weight  int
	drain   bool
	backup  bool
	// serverID is a QUIC-LB server ID, raw bytes.
	serverID string
}

// decodeStrict decodes exactly one JSON object from body into v, rejecting
// unknown fields and anything after the object.
func decodeStrict(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return fmt.Errorf("%w: empty request body, want a JSON object", ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: request body: data after the JSON object", ErrInvalid)
	}
	return nil
}

// checkCluster checks a cluster name as the config does.
func checkCluster(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: cluster is required", ErrInvalid)
	case len(name) > config.MaxNameLen:
		return fmt.Errorf("%w: cluster name longer than %d bytes", ErrInvalid, config.MaxNameLen)
	}
	return nil
}

// parseAddress parses a backend address, which must be IP:PORT with a
// non-zero port.
func parseAddress(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, fmt.Errorf("%w: address is required (IP:PORT)", ErrInvalid)
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: address: %v", ErrInvalid, err)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: address %s: port 0", ErrInvalid, s)
	}
	if ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("%w: address %s: unspecified IP", ErrInvalid, s)
	}
	return ap, nil
}

// checkWeight checks a weight against the config's bounds.
func checkWeight(w int) error {
	if w < 1 || w > config.MaxWeight {
		return fmt.Errorf("%w: weight %d out of range 1..%d", ErrInvalid, w, config.MaxWeight)
	}
	return nil
}

// checkTarget checks the cluster and address every backend request names.
func checkTarget(cluster, address string) (backendArgs, error) {
	if err := checkCluster(cluster); err != nil {
		return backendArgs{}, err
	}
	ap, err := parseAddress(address)
	if err != nil {
		return backendArgs{}, err
	}
	return backendArgs{cluster: cluster, addr: ap}, nil
}

// decodeAddBackend decodes the body of POST /v1/backends. A missing weight
// is config.DefaultWeight.
func decodeAddBackend(body []byte) (backendArgs, error) {
	var b addBackendBody
	if err := decodeStrict(body, &b); err != nil {
		return backendArgs{}, err
	}
	a, err := checkTarget(b.Cluster, b.Address)
	if err != nil {
		return backendArgs{}, err
	}
	a.weight = config.DefaultWeight
	if b.Weight != nil {
		a.weight = *b.Weight
	}
	if err := checkWeight(a.weight); err != nil {
		return backendArgs{}, err
	}
	sid, err := ParseServerID(b.ServerID)
	if err != nil {
		return backendArgs{}, err
	}
	a.serverID, a.backup = sid, b.Backup
	return a, nil
}

// ParseServerID decodes a QUIC-LB server ID given in hexadecimal (optional
// "0x", 1..quiclb.MaxServerIDLen bytes) into raw bytes; "" is no server ID.
// Errors wrap [ErrInvalid].
func ParseServerID(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	h := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) == 0 {
		return "", fmt.Errorf("%w: server_id %q: want hexadecimal bytes (e.g. \"0a01\")", ErrInvalid, s)
	}
	if len(b) > quiclb.MaxServerIDLen {
		return "", fmt.Errorf("%w: server_id %q: %d bytes, at most %d", ErrInvalid, s, len(b), quiclb.MaxServerIDLen)
	}
	return string(b), nil
}

// decodeBackup decodes the body of POST /v1/backends/backup; backup is
// required.
func decodeBackup(body []byte) (backendArgs, error) {
	var b backupBody
	if err := decodeStrict(body, &b); err != nil {
		return backendArgs{}, err
	}
	a, err := checkTarget(b.Cluster, b.Address)
	if err != nil {
		return backendArgs{}, err
	}
	if b.Backup == nil {
		return backendArgs{}, fmt.Errorf("%w: backup is required (true or false)", ErrInvalid)
	}
	a.backup = *b.Backup
	return a, nil
}

// decodeDrain decodes the body of POST /v1/backends/drain; drain is
// required, so that a forgotten field never undrains a backend.
func decodeDrain(body []byte) (backendArgs, error) {
	var b drainBody
	if err := decodeStrict(body, &b); err != nil {
		return backendArgs{}, err
	}
	a, err := checkTarget(b.Cluster, b.Address)
	if err != nil {
		return backendArgs{}, err
	}
	if b.Drain == nil {
		return backendArgs{}, fmt.Errorf("%w: drain is required (true or false)", ErrInvalid)
	}
	a.drain = *b.Drain
	return a, nil
}

// decodeWeight decodes the body of POST /v1/backends/weight.
func decodeWeight(body []byte) (backendArgs, error) {
	var b weightBody
	if err := decodeStrict(body, &b); err != nil {
		return backendArgs{}, err
	}
	a, err := checkTarget(b.Cluster, b.Address)
	if err != nil {
		return backendArgs{}, err
	}
	if b.Weight == nil {
		return backendArgs{}, fmt.Errorf("%w: weight is required", ErrInvalid)
	}
	if err := checkWeight(*b.Weight); err != nil {
		return backendArgs{}, err
	}
	a.weight = *b.Weight
	return a, nil
}

// queryParams checks that q has only the allowed keys, each at most once,
// and returns the value of each key ("" when absent) and whether it was
// present.
func queryParams(q url.Values, allowed ...string) (map[string]string, error) {
	out := make(map[string]string, len(allowed))
	for k, vs := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			return nil, fmt.Errorf("%w: unknown query parameter %q", ErrInvalid, k)
		}
		if len(vs) != 1 {
			return nil, fmt.Errorf("%w: query parameter %q given %d times", ErrInvalid, k, len(vs))
		}
		out[k] = vs[0]
	}
	return out, nil
}

// decodeBackendsQuery decodes the query of GET /v1/backends: an optional
// cluster ("" means all).
func decodeBackendsQuery(rawQuery string) (string, error) {
	q, err := parseQuery(rawQuery)
	if err != nil {
		return "", err
	}
	p, err := queryParams(q, "cluster")
	if err != nil {
		return "", err
	}
	c, ok := p["cluster"]
	if !ok {
		return "", nil
	}
	if err := checkCluster(c); err != nil {
		return "", err
	}
	return c, nil
}

// decodeRemoveQuery decodes the query of DELETE /v1/backends.
func decodeRemoveQuery(rawQuery string) (backendArgs, error) {
	q, err := parseQuery(rawQuery)
	if err != nil {
		return backendArgs{}, err
	}
	p, err := queryParams(q, "cluster", "address")
	if err != nil {
		return backendArgs{}, err
	}
	return checkTarget(p["cluster"], p["address"])
}

// decodeFlowsQuery decodes the query of GET /v1/flows: limit in
// 1..MaxFlowLimit, DefaultFlowLimit when absent.
func decodeFlowsQuery(rawQuery string) (int, error) {
	q, err := parseQuery(rawQuery)
	if err != nil {
		return 0, err
	}
	p, err := queryParams(q, "limit")
	if err != nil {
		return 0, err
	}
	s, ok := p["limit"]
	if !ok {
		return DefaultFlowLimit, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxFlowLimit {
		return 0, fmt.Errorf("%w: limit %q: want an integer in 1..%d", ErrInvalid, s, MaxFlowLimit)
	}
	return n, nil
}

// decodeEmptyQuery rejects any query parameter, for routes that take none.
func decodeEmptyQuery(rawQuery string) error {
	q, err := parseQuery(rawQuery)
	if err != nil {
		return err
	}
	_, err = queryParams(q)
	return err
}

func parseQuery(rawQuery string) (url.Values, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, fmt.Errorf("%w: query: %v", ErrInvalid, err)
	}
	return q, nil
}

// decodeReload checks the body of POST /v1/reload, which takes no
// arguments: empty or {}.
func decodeReload(body []byte) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	return decodeStrict(body, &struct{}{})
}

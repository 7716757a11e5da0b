package control

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// maxResponseSize bounds a response the client reads (a flow listing at
// MaxFlowLimit is about 30 MB).
const maxResponseSize = 256 << 20

// APIError is an error answer of the control API.
type APIError struct {
	// StatusCode is the HTTP status; Message the server's explanation.
	StatusCode int
	Message    string
}

func (e *APIError) Error() string { return e.Message }

// Is matches the sentinel that corresponds to the status: [ErrInvalid] for
// 400, [ErrNotFound] for 404, [ErrConflict] for 409.
func (e *APIError) Is(target error) bool {
	switch e.StatusCode {
	case http.StatusBadRequest:
		return target == ErrInvalid
	case http.StatusNotFound:
		return target == ErrNotFound
	case http.StatusConflict:
		return target == ErrConflict
	}
	return false
}

// Client calls the control API. Its methods are safe for concurrent use.
// Errors from the server are [*APIError]; others (the socket is missing,
// the server went away) are transport errors naming the endpoint.
type Client struct {
	hc       *http.Client
	base     string // URL prefix: "http://host"
	endpoint string // the socket path or TCP address, for error messages
	token    string // bearer token; "" on the unix socket
}

// NewClient returns a client of the control socket at path. It connects on
// each call (or reuses an idle connection) and never before.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns: 2,
	}
	return &Client{hc: &http.Client{Transport: tr}, base: "http://fastudp", endpoint: path}
}

// NewTCPClient returns a client of a loopback TCP control listener at addr
// ("127.0.0.1:9901") that sends token as a bearer token.
func NewTCPClient(addr, token string) *Client {
	tr := &http.Transport{Proxy: nil, MaxIdleConns: 2}
	return &Client{hc: &http.Client{Transport: tr}, base: "http://" + addr, endpoint: addr, token: token}
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// do sends a request with body v encoded as JSON (none if v is nil) and
// decodes a 200 answer into out.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, v, out any) error {
	var body io.Reader
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("control: encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if v != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("control: cannot reach fastudp at %s: %w", c.endpoint, unwrapURLError(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize))
	if err != nil {
		return fmt.Errorf("control: %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return apiError(resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("control: %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// unwrapURLError drops the *url.Error layer, whose message repeats the
// made-up URL of the unix socket.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// apiError builds the error of a non-200 answer from its JSON body, or its
// text if it is not JSON.
func apiError(status int, body []byte) *APIError {
	var eb errorBody
	if err := json.Unmarshal(body, &eb); err == nil && eb.Error != "" {
		return &APIError{StatusCode: status, Message: eb.Error}
	}
	msg := strings.TrimSpace(string(body))
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &APIError{StatusCode: status, Message: fmt.Sprintf("HTTP %d: %s", status, msg)}
}

// Status returns the proxy's status (GET /v1/status).
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, nil, &st)
	return st, err
}

// Backends lists the backends of cluster, or of every cluster when cluster
// is "" (GET /v1/backends).
func (c *Client) Backends(ctx context.Context, cluster string) ([]Backend, error) {
	var q url.Values
	if cluster != "" {
		q = url.Values{"cluster": {cluster}}
	}
	var out backendsBody
	err := c.do(ctx, http.MethodGet, "/v1/backends", q, nil, &out)
	return out.Backends, err
}

// AddBackend adds addr to cluster (POST /v1/backends). Weight 0 asks for the
// server's default weight; the answer says which weight applies.
func (c *Client) AddBackend(ctx context.Context, cluster string, addr netip.AddrPort, weight int) (BackendChange, error) {
	return c.AddBackendWith(ctx, cluster, addr, AddOptions{Weight: weight})
}

// AddBackendWith adds addr to cluster with opts (POST /v1/backends): weight
// 0 asks for the server's default, opts.ServerID is raw bytes ("" for none).
func (c *Client) AddBackendWith(ctx context.Context, cluster string, addr netip.AddrPort, opts AddOptions) (BackendChange, error) {
	b := addBackendBody{Cluster: cluster, Address: addrString(addr), ServerID: hex.EncodeToString([]byte(opts.ServerID)), Backup: opts.Backup}
	if opts.Weight != 0 {
		b.Weight = &opts.Weight
	}
	var out BackendChange
	err := c.do(ctx, http.MethodPost, "/v1/backends", nil, b, &out)
	return out, err
}

// RemoveBackend removes addr from cluster (DELETE /v1/backends).
func (c *Client) RemoveBackend(ctx context.Context, cluster string, addr netip.AddrPort) (BackendChange, error) {
	q := url.Values{"cluster": {cluster}, "address": {addrString(addr)}}
	var out BackendChange
	err := c.do(ctx, http.MethodDelete, "/v1/backends", q, nil, &out)
	return out, err
}

// DrainBackend drains addr of cluster, or undrains it when drain is false
// (POST /v1/backends/drain).
func (c *Client) DrainBackend(ctx context.Context, cluster string, addr netip.AddrPort, drain bool) (BackendChange, error) {
	b := drainBody{Cluster: cluster, Address: addrString(addr), Drain: &drain}
	var out BackendChange
	err := c.do(ctx, http.MethodPost, "/v1/backends/drain", nil, b, &out)
	return out, err
}

// SetWeight sets the weight of addr of cluster (POST /v1/backends/weight).
func (c *Client) SetWeight(ctx context.Context, cluster string, addr netip.AddrPort, weight int) (BackendChange, error) {
	b := weightBody{Cluster: cluster, Address: addrString(addr), Weight: &weight}
	var out BackendChange
	err := c.do(ctx, http.MethodPost, "/v1/backends/weight", nil, b, &out)
	return out, err
}

// SetBackup moves addr of cluster to the backup tier, or back to the
// primaries when backup is false (POST /v1/backends/backup).
func (c *Client) SetBackup(ctx context.Context, cluster string, addr netip.AddrPort, backup bool) (BackendChange, error) {
	b := backupBody{Cluster: cluster, Address: addrString(addr), Backup: &backup}
	var out BackendChange
	err := c.do(ctx, http.MethodPost, "/v1/backends/backup", nil, b, &out)
	return out, err
}

// Flows returns at most limit live flows (GET /v1/flows); limit 0 asks for
// the server's default ([DefaultFlowLimit]).
func (c *Client) Flows(ctx context.Context, limit int) ([]Flow, error) {
	var q url.Values
	if limit != 0 {
		q = url.Values{"limit": {strconv.Itoa(limit)}}
	}
	var out flowsBody
	err := c.do(ctx, http.MethodGet, "/v1/flows", q, nil, &out)
	return out.Flows, err
}

// Reload makes the proxy re-read its configuration file (POST /v1/reload).
// An invalid file is an [*APIError] matching [ErrInvalid] that explains it.
func (c *Client) Reload(ctx context.Context) (ReloadResult, error) {
	var out ReloadResult
	err := c.do(ctx, http.MethodPost, "/v1/reload", nil, nil, &out)
	return out, err
}

// addrString formats addr, or "" for the zero AddrPort (which the server
// then reports as missing).
func addrString(addr netip.AddrPort) string {
	if !addr.IsValid() {
		return ""
	}
	return addr.String()
}

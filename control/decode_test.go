package control

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/fastudp/fastudp/config"
)

func Test_decodeAddBackend(t *testing.T) {
	a := netip.MustParseAddrPort("10.0.0.1:53")
	tests := []struct {
		name string
		body string
		want backendArgs
		err  string
	}{
		{"default weight", `{"cluster":"dns","address":"10.0.0.1:53"}`, backendArgs{cluster: "dns", addr: a, weight: config.DefaultWeight}, ""},
		{"weight", `{"cluster":"dns","address":"10.0.0.1:53","weight":10000}`, backendArgs{cluster: "dns", addr: a, weight: 10000}, ""},
		{"IPv6", ` {"cluster":"q","address":"[2001:db8::1]:443","weight":1} `, backendArgs{cluster: "q", addr: netip.MustParseAddrPort("[2001:db8::1]:443"), weight: 1}, ""},
		{"null weight is the default", `{"cluster":"dns","address":"10.0.0.1:53","weight":null}`, backendArgs{cluster: "dns", addr: a, weight: config.DefaultWeight}, ""},
		{"negative weight", `{"cluster":"dns","address":"10.0.0.1:53","weight":-1}`, backendArgs{}, "out of range"},
		{"fractional weight", `{"cluster":"dns","address":"10.0.0.1:53","weight":1.5}`, backendArgs{}, "request body"},
		{"unspecified IP", `{"cluster":"dns","address":"0.0.0.0:53"}`, backendArgs{}, "unspecified"},
		{"zone", `{"cluster":"dns","address":"[fe80::1%eth0]:53"}`, backendArgs{cluster: "dns", addr: netip.MustParseAddrPort("[fe80::1%eth0]:53"), weight: 100}, ""},
		{"unknown field", `{"cluster":"dns","address":"10.0.0.1:53","x":1}`, backendArgs{}, "unknown field"},
		{"two objects", `{"cluster":"dns","address":"10.0.0.1:53"}{}`, backendArgs{}, "data after"},
		{"truncated", `{"cluster":"dns"`, backendArgs{}, "request body"},
		{"whitespace only", " \n", backendArgs{}, "empty request body"},
		{"server ID and backup", `{"cluster":"q","address":"10.0.0.1:53","server_id":"0x0A01","backup":true}`,
			backendArgs{cluster: "q", addr: a, weight: 100, serverID: "\x0a\x01", backup: true}, ""},
		{"server ID not hex", `{"cluster":"q","address":"10.0.0.1:53","server_id":"0g"}`, backendArgs{}, "want hexadecimal"},
		{"server ID odd digits", `{"cluster":"q","address":"10.0.0.1:53","server_id":"abc"}`, backendArgs{}, "want hexadecimal"},
		{"server ID too long", `{"cluster":"q","address":"10.0.0.1:53","server_id":"000102030405060708090a0b0c0d0e0f"}`, backendArgs{}, "at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeAddBackend([]byte(tt.body))
			if tt.err != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want ErrInvalid containing %q", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func Test_decodeFlowsQuery(t *testing.T) {
	tests := []struct {
		query string
		want  int
		ok    bool
	}{
		{"", DefaultFlowLimit, true},
		{"limit=1", 1, true},
		{"limit=100000", 100000, true},
		{"limit=", 0, false},
		{"limit=0", 0, false},
		{"limit=-5", 0, false},
		{"limit=100001", 0, false},
		{"limit=99999999999999999999", 0, false},
		{"limit=1&limit=2", 0, false},
		{"limit=1&x=2", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			got, err := decodeFlowsQuery(tt.query)
			if (err == nil) != tt.ok || got != tt.want || (err != nil && !errors.Is(err, ErrInvalid)) {
				t.Fatalf("got %d, %v; want %d, ok %v", got, err, tt.want, tt.ok)
			}
		})
	}
}

// checkArgs asserts what every successful decoding promises.
func checkArgs(t *testing.T, a backendArgs, weighted bool) {
	t.Helper()
	if a.cluster == "" || len(a.cluster) > config.MaxNameLen {
		t.Fatalf("cluster %q accepted", a.cluster)
	}
	if !a.addr.IsValid() || a.addr.Port() == 0 || a.addr.Addr().IsUnspecified() {
		t.Fatalf("address %v accepted", a.addr)
	}
	if weighted && (a.weight < 1 || a.weight > config.MaxWeight) {
		t.Fatalf("weight %d accepted", a.weight)
	}
}

// FuzzDecodeRequest feeds every request decoder the same body and query:
// none may panic, every rejection is an ErrInvalid, every acceptance obeys
// the documented bounds, and what the client would encode for an accepted
// request decodes to the same arguments.
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"cluster":"dns","address":"10.0.0.1:53","weight":5}`), "cluster=dns&address=10.0.0.1:53")
	f.Add([]byte(`{"cluster":"dns","address":"[::1]:53","drain":true}`), "limit=10")
	f.Add([]byte(`{"cluster":"dns","address":"[fe80::1%eth0]:53","weight":10000}`), "cluster=q")
	f.Add([]byte(`{}`), "")
	f.Add([]byte(`{"cluster":"q","address":"10.0.0.1:443","server_id":"0x0a01","backup":true}`), "")
	f.Add([]byte(`{"cluster":"q","address":"10.0.0.1:443","backup":false}`), "")
	f.Add([]byte(`{"cluster":"dns","address":"10.0.0.1:53"} x`), "limit=%zz")
	f.Add([]byte(`{"cluster":"a","address":"1.2.3.4:1","weight":1e3}`), "cluster=&address=")
	f.Fuzz(func(t *testing.T, body []byte, query string) {
		expectInvalid := func(err error) {
			t.Helper()
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("rejection is not ErrInvalid: %v", err)
			}
		}
		if a, err := decodeAddBackend(body); err == nil {
			checkArgs(t, a, true)
			w := a.weight
			b, _ := json.Marshal(addBackendBody{Cluster: a.cluster, Address: a.addr.String(), Weight: &w,
				ServerID: hex.EncodeToString([]byte(a.serverID)), Backup: a.backup})
			if again, err := decodeAddBackend(b); err != nil || again != a {
				t.Fatalf("re-encoded %s: %+v, %v; want %+v", b, again, err, a)
			}
		} else {
			expectInvalid(err)
		}
		if a, err := decodeBackup(body); err == nil {
			checkArgs(t, a, false)
			bk := a.backup
			b, _ := json.Marshal(backupBody{Cluster: a.cluster, Address: a.addr.String(), Backup: &bk})
			if again, err := decodeBackup(b); err != nil || again != a {
				t.Fatalf("re-encoded %s: %+v, %v; want %+v", b, again, err, a)
			}
		} else {
			expectInvalid(err)
		}
		if a, err := decodeDrain(body); err == nil {
			checkArgs(t, a, false)
			d := a.drain
			b, _ := json.Marshal(drainBody{Cluster: a.cluster, Address: a.addr.String(), Drain: &d})
			if again, err := decodeDrain(b); err != nil || again != a {
				t.Fatalf("re-encoded %s: %+v, %v; want %+v", b, again, err, a)
			}
		} else {
			expectInvalid(err)
		}
		if a, err := decodeWeight(body); err == nil {
			checkArgs(t, a, true)
		} else {
			expectInvalid(err)
		}
		expectInvalid(decodeReload(body))
		if c, err := decodeBackendsQuery(query); err == nil {
			if len(c) > config.MaxNameLen {
				t.Fatalf("cluster %q accepted", c)
			}
		} else {
			expectInvalid(err)
		}
		if a, err := decodeRemoveQuery(query); err == nil {
			checkArgs(t, a, false)
		} else {
			expectInvalid(err)
		}
		if n, err := decodeFlowsQuery(query); err == nil {
			if n < 1 || n > MaxFlowLimit {
				t.Fatalf("limit %d accepted", n)
			}
		} else {
			expectInvalid(err)
		}
		expectInvalid(decodeEmptyQuery(query))
	})
}

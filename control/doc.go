// Package control is fastudp's control API: HTTP+JSON on a unix socket
// (mode 0600, owned by the user running the proxy) and, optionally, on a
// loopback TCP listener that requires a bearer token.
//
// The running proxy implements [Controller]; [Listen] and [ListenTCP] serve
// it, and [Client] is the typed client `fastudp ctl` uses. The routes are:
//
//	GET    /v1/status
//	GET    /v1/backends[?cluster=NAME]
//	POST   /v1/backends          {"cluster": "dns", "address": "10.0.0.1:53", "weight": 100}
//	DELETE /v1/backends?cluster=NAME&address=IP:PORT
//	POST   /v1/backends/drain    {"cluster": "dns", "address": "10.0.0.1:53", "drain": true}
//	POST   /v1/backends/weight   {"cluster": "dns", "address": "10.0.0.1:53", "weight": 50}
//	GET    /v1/flows[?limit=N]
//	POST   /v1/reload
//
// Requests are decoded strictly: unknown JSON fields and query parameters,
// trailing data and bodies over [MaxBodySize] are rejected. Every error
// answer is a JSON object {"error": "..."} with a status derived from the
// controller's error: [ErrInvalid] gives 400, [ErrNotFound] 404,
// [ErrConflict] 409 and anything else 500.
package control

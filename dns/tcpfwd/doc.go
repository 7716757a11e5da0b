// Package tcpfwd forwards DNS-over-TCP connections to backends.
//
// fastudp's DNS mode proxies UDP queries. A client that gets a truncated
// (TC=1) answer retries over TCP to the same address and port (RFC 7766
// §5), so fastudp runs a [Server] on the address:port of each DNS-mode UDP
// listener. Each accepted connection goes to a backend chosen by the
// caller's [Picker]; the backend's TCP address is its UDP address, since DNS
// servers serve both transports on one port.
//
// Forwarding is message-aware, not a byte copy: both directions are streams
// of messages, each preceded by its two-byte big-endian length (RFC 1035
// §4.2.2). Each direction is its own goroutine that reads a whole message and
// writes it, length and all, with one write; so pipelined queries whose
// answers come back in any order pass through unchanged. Whole messages are
// what is counted ([Stats].Queries and Answers), what resets the idle timer
// (a message in either direction), and what is checked: a zero-length
// message or a stream that ends inside a message closes the connection and
// is counted as malformed. Each direction reuses one buffer of 2+65535 bytes
// for the life of the connection, taken from a pool the server owns.
//
// When one side finishes cleanly (end of stream at a message boundary) the
// other side's write half is shut (TCP half-close), so answers to queries
// already sent still arrive; the connection is closed once both directions
// are done. Any error closes both sides at once.
//
// The package does no metrics I/O: [Server.Stats] returns a snapshot of
// atomic counters that the caller exports (as Prometheus metrics, say).
package tcpfwd

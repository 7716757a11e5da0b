// Package trace replays text traces against a [core.Manager] and prints what
// it did, so that a golden file pins the core's behaviour and a diff of it
// reads as a change of behaviour.
//
// Like core, the package does no I/O: [Parse] takes the text of a trace and
// [Run] returns the transcript; the tests read testdata/traces/*.trace and
// compare each transcript with the .golden file beside it
// (go test ./core/trace -update rewrites them).
//
// # Format
//
// A trace is read line by line. A # at the start of a token begins a comment
// (inside a token, as in flow=0#1, it does not). Arguments are key=value;
// values may be Go-quoted strings ("a b\x00"). Durations are Go durations
// (1.5s, 200ms, 0).
//
//	manager seed=1 max_flows=4 max_rx=1500 pending=4 budget=1024 pool=0
//
// configures the manager (0 or absent: the core's default; pool=N lets the
// runner's buffer pool lend at most N buffers at once). It may appear once,
// before any step.
//
// Time starts at 0. "at 1.5s" sets it, "+200ms" advances it; either may stand
// alone or prefix a step ("at 31s timer"). Time never goes back. Every step
// runs at the current time, and each input directive is one Handle call of
// its own, unless a batch groups several into one call:
//
//	batch {
//	client src=10.0.0.1:5000 dst=192.0.2.1:53 data="a"
//	client src=10.0.0.2:5000 dst=192.0.2.1:53 data="b"
//	}
//
// Input directives:
//
//	client [listener=0] src=ADDR:PORT dst=ADDR:PORT PAYLOAD [seg=N] [tos=N]
//	backend flow=I#G PAYLOAD [seg=N] [tos=N]
//	resolve flow=I#G [backend=N] addr=ADDR:PORT  |  resolve flow=I#G fail
//	abort flow=I#G
//	timer
//	invalid                    (an input of no known kind)
//	cluster [listener=0] [id=N] [affinity=ip|ip-port|datagram|quic] [responses=N] [requests=N]
//	        [front=DUR] [back=DUR] [lifetime=DUR] [proxy=off|first|every] [public=ADDR:PORT]
//	remove-cluster [listener=0]
//	max-flows N
//	max-rx N
//	drain | undrain | close-all
//
// PAYLOAD is data="..." (a Go string), hex=0a0b or len=N (N bytes of
// "abcd...zabc...", so a preview shows which part of a run it is). seg=N makes
// the payload a GRO run of N-byte segments; tos is the TOS byte. In the
// transcript, a send-backend with both hdr= and seg= carries the header in
// front of every segment (see [core.OutSendToBackend]).
//
// "show" prints the manager's state and its live flows (not a Handle call).
//
// # Transcript
//
// Every line starts with "@TIME" and a mark: ">" an input as written, "<" an
// output of that Handle call ([FormatOutput]), "=" a line of show. The last
// line, "end =", holds the manager's running totals.
package trace

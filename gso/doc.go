// Package gso will hold fastudp's UDP GSO/GRO support: encoding and decoding
// of the UDP_SEGMENT and UDP_GRO control messages, splitting and coalescing
// runs of equal-size datagrams, per-socket limits and feature detection.
//
// Status: not implemented yet (the GSO/GRO issue). Today batchio already
// reads the UDP_GRO segment size and writes UDP_SEGMENT when a message asks
// for it, and core accounts for coalesced runs segment by segment; nothing
// in fastudp turns GRO or GSO on.
package gso

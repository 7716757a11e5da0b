// Package quiclb routes QUIC by the server ID in its connection IDs, after
// the IETF draft "QUIC-LB: Generating Routable QUIC Connection IDs": servers
// put a server ID in every connection ID they issue, and a load balancer reads
// it back, so a client that changed address (NAT rebinding, Wi-Fi to
// cellular) and therefore its connection ID still reaches its server.
//
// It has three parts, none of which allocates:
//
//   - [ParseHeader] reads a datagram's first packet by the version-independent
//     invariants of RFC 8999: the header form, and for a long header the
//     version and both connection IDs (up to 255 bytes each, whatever the
//     version). A short header's destination connection ID has no length on
//     the wire; [Config.ShortDCID] takes it from the configuration.
//   - [Config] is a QUIC-LB configuration: a config rotation ID (0..6; 7
//     marks an unroutable ID), the server ID length and the nonce length, and
//     whether the first octet encodes the connection ID's length.
//   - [Config.Encode] builds a connection ID (first octet, server ID, nonce)
//     and [Config.ServerID] reads the server ID back.
//
// Without a key, connection IDs are plaintext: the server ID is visible to
// observers, so connections through one server can be told apart from those
// through another. With a 16-byte key (Config.Encrypted, Config.Key), the
// server ID and nonce are encrypted as the draft specifies: one AES-128-ECB
// block when they are 16 bytes together, else the draft's four-pass
// Feistel-like construction over AES-128-ECB. A [Codec], built once per
// configuration by [NewCodec], encodes and decodes both kinds without
// allocating; [Config.Encode] and [Config.ServerID] handle plaintext IDs only.
// The draft's test vectors are in this package's tests.
//
// Servers use [Codec.Encode] through a connection ID generator (for
// quic-go, package quiclb/quicgo); fastudp's QUIC selector uses the rest.
package quiclb

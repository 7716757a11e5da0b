package loadgen

import (
	"bytes"
	"encoding/binary"
)

// proxySig is the PROXY protocol v2 signature.
var proxySig = []byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

// StripProxy returns b without a leading PROXY protocol v2 header (a proxy
// run with proxy_protocol first or every puts one there), or b itself when
// it has none or it is cut short.
func StripProxy(b []byte) []byte {
	if len(b) < 16 || !bytes.Equal(b[:12], proxySig) {
		return b
	}
	n := 16 + int(binary.BigEndian.Uint16(b[14:16]))
	if n > len(b) {
		return b
	}
	return b[n:]
}

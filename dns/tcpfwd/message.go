package tcpfwd

import (
	"encoding/binary"
	"errors"
	"io"
)

// frameBufSize holds the largest framed message: the two-byte length prefix
// and a 65535-byte DNS message (RFC 1035 §4.2.2).
const frameBufSize = 2 + 65535

// errZeroLength reports a message whose length prefix is zero. No DNS
// message is shorter than its 12-byte header, and a zero-length frame is the
// classic way to desynchronise a naive relay, so it ends the connection.
var errZeroLength = errors.New("tcpfwd: zero-length message")

// readMessage reads one length-prefixed message from r into buf and returns
// the whole frame, buf[:2+n], prefix included, ready to be written on as is.
// buf must be at least frameBufSize long (a shorter one is a bug and panics).
//
// It returns io.EOF if r ends before the first byte of a frame (a clean
// end), io.ErrUnexpectedEOF if r ends inside one, errZeroLength for a frame
// of length zero, and any other error of r as it is.
func readMessage(r io.Reader, buf []byte) ([]byte, error) {
	buf = buf[:frameBufSize]
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(buf[:2]))
	if n == 0 {
		return nil, errZeroLength
	}
	if _, err := io.ReadFull(r, buf[2:2+n]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf[:2+n], nil
}

// isFramingError reports whether err from readMessage means the stream
// itself is malformed, as opposed to ended or failed.
func isFramingError(err error) bool {
	return errors.Is(err, errZeroLength) || errors.Is(err, io.ErrUnexpectedEOF)
}

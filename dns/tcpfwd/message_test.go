package tcpfwd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func frame(msg []byte) []byte {
	return binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
}

func Test_readMessage(t *testing.T) {
	big := bytes.Repeat([]byte{0xab}, 65535)
	errBoom := errors.New("boom")
	tests := []struct {
		name    string
		r       io.Reader
		want    [][]byte // messages, without prefix
		wantErr error    // after the messages
	}{
		{name: "empty stream", r: bytes.NewReader(nil), wantErr: io.EOF},
		{name: "one prefix byte", r: bytes.NewReader([]byte{0}), wantErr: io.ErrUnexpectedEOF},
		{name: "zero length", r: bytes.NewReader([]byte{0, 0, 1, 2}), wantErr: errZeroLength},
		{name: "short body", r: bytes.NewReader([]byte{0, 5, 1, 2}), wantErr: io.ErrUnexpectedEOF},
		{name: "prefix only", r: bytes.NewReader([]byte{0, 5}), wantErr: io.ErrUnexpectedEOF},
		{
			name: "two messages",
			r:    bytes.NewReader([]byte{0, 1, 7, 0, 3, 1, 2, 3}),
			want: [][]byte{{7}, {1, 2, 3}}, wantErr: io.EOF,
		},
		{
			name: "byte at a time",
			r:    iotest.OneByteReader(bytes.NewReader([]byte{0, 2, 9, 8, 0, 1, 5})),
			want: [][]byte{{9, 8}, {5}}, wantErr: io.EOF,
		},
		{
			name: "largest message",
			r:    bytes.NewReader(append(frame(big), big...)),
			want: [][]byte{big}, wantErr: io.EOF,
		},
		{
			name: "message then zero length",
			r:    bytes.NewReader([]byte{0, 1, 7, 0, 0}),
			want: [][]byte{{7}}, wantErr: errZeroLength,
		},
		{
			name:    "reader error inside a message",
			r:       io.MultiReader(bytes.NewReader([]byte{0, 4, 1}), iotest.ErrReader(errBoom)),
			wantErr: errBoom,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf := make([]byte, frameBufSize)
			for i, want := range tt.want {
				got, err := readMessage(tt.r, buf)
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				if !bytes.Equal(got, append(frame(want), want...)) {
					t.Fatalf("message %d: got %d bytes, want %d", i, len(got), 2+len(want))
				}
			}
			if _, err := readMessage(tt.r, buf); !errors.Is(err, tt.wantErr) {
				t.Fatalf("final error %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// FuzzReadMessage reads frames from arbitrary bytes until an error and checks
// that the frames tile a prefix of the input exactly, and that the error
// says why the rest was not a frame.
func FuzzReadMessage(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 7, 0, 3, 1, 2, 3})
	f.Add([]byte{0, 0})
	f.Add([]byte{0, 9, 1})
	f.Add([]byte{0xff, 0xff, 1})
	buf := make([]byte, frameBufSize)
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		off := 0
		for {
			got, err := readMessage(r, buf)
			if err != nil {
				rest := in[off:]
				switch {
				case errors.Is(err, io.EOF):
					if len(rest) != 0 {
						t.Fatalf("EOF with %d bytes left", len(rest))
					}
				case errors.Is(err, errZeroLength):
					if len(rest) < 2 || rest[0] != 0 || rest[1] != 0 {
						t.Fatalf("zero length reported for % x", rest[:min(len(rest), 2)])
					}
				case errors.Is(err, io.ErrUnexpectedEOF):
					if len(rest) >= 2 && len(rest) >= 2+int(binary.BigEndian.Uint16(rest)) {
						t.Fatalf("unexpected EOF with a whole frame left")
					}
				default:
					t.Fatalf("unexpected error %v", err)
				}
				if !isFramingError(err) && !errors.Is(err, io.EOF) {
					t.Fatalf("error %v is neither EOF nor framing", err)
				}
				return
			}
			if len(got) < 3 || int(binary.BigEndian.Uint16(got)) != len(got)-2 {
				t.Fatalf("frame of %d bytes has prefix % x", len(got), got[:2])
			}
			if !bytes.Equal(got, in[off:off+len(got)]) {
				t.Fatalf("frame at %d differs from the input", off)
			}
			off += len(got)
		}
	})
}

package quiclb

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"sync"
)

// KeyLen is the length of a QUIC-LB key: AES-128.
const KeyLen = 16

// errEncrypted is returned by [Config.Encode] for an encrypted configuration.
var errEncrypted = errors.New("quiclb: encrypted configuration: encode with a Codec (NewCodec)")

// Codec encodes and decodes the connection IDs of one [Config], plaintext or
// encrypted. With a key (Config.Encrypted), the server ID and nonce are
// encrypted with AES-128 as the draft describes: a single AES-ECB block when
// they are 16 bytes together, else the draft's four-pass Feistel-like
// construction (any length up to 19 bytes). The AES cipher is built once, by
// [NewCodec]; decoding allocates nothing. A Codec is safe for concurrent use.
type Codec struct {
	cfg   Config
	block cipher.Block // nil: plaintext
	// scratch holds *[2][16]byte blocks for the cipher: the arguments of an
	// interface call escape, so stack arrays would be allocated each time.
	scratch sync.Pool
}

// NewCodec returns the Codec of cfg, which must be valid or the zero Config
// (no QUIC-LB configuration: no server IDs, see [Config.Classify]).
func NewCodec(cfg Config) (*Codec, error) {
	if cfg == (Config{}) {
		return &Codec{}, nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Codec{cfg: cfg}
	if cfg.Encrypted {
		b, err := aes.NewCipher(cfg.Key[:])
		if err != nil {
			return nil, fmt.Errorf("quiclb: key: %w", err)
		}
		c.block = b
		c.scratch.New = func() any { return new([2][16]byte) }
	}
	return c, nil
}

// Config returns the Codec's configuration.
func (c *Codec) Config() Config { return c.cfg }

// Encode writes into dst (at least [Config.CIDLen] bytes) a connection ID
// carrying serverID (ServerIDLen bytes) and nonce (NonceLen bytes), encrypted
// when the configuration has a key; random supplies the first octet's low 5
// bits when the length is not self-encoded. It returns the ID's length.
func (c *Codec) Encode(dst, serverID, nonce []byte, random byte) (int, error) {
	n, err := c.cfg.encodePlain(dst, serverID, nonce, random)
	if err != nil || c.block == nil {
		return n, err
	}
	s := c.scratch.Get().(*[2][16]byte)
	defer c.scratch.Put(s)
	c.encrypt(s, dst[1:n])
	return n, nil
}

// ServerID returns the server ID in cid (see [Config.ServerID] for which IDs
// belong to the configuration), decrypted into dst (at least ServerIDLen
// bytes) when the configuration has a key, or pointing into cid when it has
// none. It allocates nothing.
func (c *Codec) ServerID(cid, dst []byte) ([]byte, bool) {
	if c.cfg.ServerIDLen == 0 || !c.cfg.ownID(cid) {
		return nil, false
	}
	sidLen := int(c.cfg.ServerIDLen)
	if c.block == nil {
		return cid[1 : 1+sidLen], true
	}
	if len(dst) < sidLen || len(cid) > 1+MaxIDLen {
		return nil, false // a self-encoded length may say up to 32 bytes
	}
	s := c.scratch.Get().(*[2][16]byte)
	var plain [MaxIDLen]byte
	c.decryptSID(s, cid[1:], sidLen, plain[:])
	c.scratch.Put(s)
	sid := dst[:sidLen:sidLen]
	copy(sid, plain[:sidLen])
	return sid, true
}

// Classify is [Config.Classify] with decryption: a server ID it returns is
// decrypted into sid (at least ServerIDLen bytes) when the configuration
// has a key. It allocates nothing.
func (c *Codec) Classify(pkt, sid []byte) (Route, []byte) {
	return c.cfg.classify(pkt, c, sid)
}

// encrypt encrypts the plaintext connection ID p (server ID and nonce, 1..19
// bytes) in place.
func (c *Codec) encrypt(s *[2][16]byte, p []byte) {
	n := len(p)
	if n == KeyLen {
		copy(s[0][:], p)
		c.block.Encrypt(s[1][:], s[0][:])
		copy(p, s[1][:])
		return
	}
	cidLen := byte(n + 1)
	var left, right [10]byte
	half := split(p, &left, &right)
	l, r := left[:half], right[:half]
	odd := n%2 == 1
	c.pass(s, l, r, cidLen, 1, odd)
	c.pass(s, l, r, cidLen, 2, odd)
	c.pass(s, l, r, cidLen, 3, odd)
	c.pass(s, l, r, cidLen, 4, odd)
	join(p, l, r)
}

// decryptSID decrypts the ciphertext connection ID ct (after the first
// octet) into plain (len(ct) bytes at least), far enough that its first
// sidLen bytes are the plaintext's (all of it when sidLen is len(ct)).
func (c *Codec) decryptSID(s *[2][16]byte, ct []byte, sidLen int, plain []byte) {
	n := len(ct)
	if n == KeyLen {
		copy(s[0][:], ct)
		c.block.Decrypt(s[1][:], s[0][:])
		copy(plain, s[1][:])
		return
	}
	cidLen := byte(n + 1)
	var left, right [10]byte
	half := split(ct, &left, &right)
	l, r := left[:half], right[:half]
	odd := n%2 == 1
	c.pass(s, l, r, cidLen, 4, odd)
	c.pass(s, l, r, cidLen, 3, odd)
	c.pass(s, l, r, cidLen, 2, odd)
	// The server ID lies in left_0 unless it is longer than the nonce.
	if 2*sidLen > n {
		c.pass(s, l, r, cidLen, 1, odd)
	}
	join(plain[:n], l, r)
}

// pass is one round of the four-pass construction: odd passes (1, 3) XOR
// the right half with the low bytes of AES(expand_left(left, cidLen, i));
// even passes (2, 4) XOR the left half with the high bytes of
// AES(expand_right(right, cidLen, i)). With an odd plaintext length the
// halves share the middle octet: left keeps its high nibble, right its low.
func (c *Codec) pass(s *[2][16]byte, l, r []byte, cidLen, i byte, odd bool) {
	in, out := &s[0], &s[1]
	*in = [16]byte{}
	half := len(l)
	if i%2 == 1 {
		copy(in[:], l)
		in[14], in[15] = i, cidLen
		c.block.Encrypt(out[:], in[:])
		for j := range r {
			r[j] ^= out[16-half+j]
		}
		if odd {
			r[0] &= 0x0f
		}
		return
	}
	copy(in[16-half:], r)
	in[0], in[1] = cidLen, i
	c.block.Encrypt(out[:], in[:])
	for j := range l {
		l[j] ^= out[j]
	}
	if odd {
		l[half-1] &= 0xf0
	}
}

// split splits p (at most 19 bytes) into equal halves of ceil(len/2) bytes;
// with an odd length the middle octet's high nibble goes to the left half
// and its low nibble to the right.
func split(p []byte, left, right *[10]byte) int {
	n := len(p)
	half := (n + 1) / 2
	copy(left[:half], p[:half])
	copy(right[:half], p[n-half:])
	if n%2 == 1 {
		left[half-1] &= 0xf0
		right[0] &= 0x0f
	}
	return half
}

// join is the inverse of split: it writes the halves l and r into p.
func join(p, l, r []byte) {
	n, half := len(p), len(l)
	copy(p[:half], l)
	if n%2 == 1 {
		p[half-1] = l[half-1] | r[0]
		copy(p[half:], r[1:])
		return
	}
	copy(p[half:], r)
}

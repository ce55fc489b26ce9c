package registry

import (
	"encoding/binary"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
)

// bcrypt for the tests only: distribution's htpasswd auth takes bcrypt
// lines, and latch has no bcrypt dependency. Blowfish's initial state is
// the fractional hex digits of pi, computed here with Machin's formula.

var (
	piOnce  sync.Once
	piWords []uint32 // 18 P words, then 4×256 S words
)

func blowfishInit() []uint32 {
	piOnce.Do(func() {
		const words = 18 + 4*256
		bits := uint(words*32 + 64)
		one := new(big.Int).Lsh(big.NewInt(1), bits)
		atanInv := func(x int64) *big.Int {
			// atan(1/x) = sum (-1)^k / ((2k+1) x^(2k+1)), scaled by 2^bits.
			sum := new(big.Int)
			pow := new(big.Int).Div(one, big.NewInt(x))
			x2 := big.NewInt(x * x)
			for k := int64(0); pow.Sign() != 0; k++ {
				term := new(big.Int).Div(pow, big.NewInt(2*k+1))
				if k%2 == 0 {
					sum.Add(sum, term)
				} else {
					sum.Sub(sum, term)
				}
				pow.Div(pow, x2)
			}
			return sum
		}
		pi := new(big.Int).Mul(atanInv(5), big.NewInt(16))
		pi.Sub(pi, new(big.Int).Mul(atanInv(239), big.NewInt(4)))
		frac := new(big.Int).Sub(pi, new(big.Int).Lsh(big.NewInt(3), bits))
		frac.Rsh(frac, 64) // drop the guard bits
		b := frac.FillBytes(make([]byte, words*4))
		piWords = make([]uint32, words)
		for i := range piWords {
			piWords[i] = binary.BigEndian.Uint32(b[4*i:])
		}
	})
	return append([]uint32(nil), piWords...)
}

type blowfish struct {
	p [18]uint32
	s [4][256]uint32
}

func (c *blowfish) f(x uint32) uint32 {
	return ((c.s[0][x>>24] + c.s[1][byte(x>>16)]) ^ c.s[2][byte(x>>8)]) + c.s[3][byte(x)]
}

func (c *blowfish) encrypt(l, r uint32) (uint32, uint32) {
	for i := 0; i < 16; i += 2 {
		l ^= c.p[i]
		r ^= c.f(l)
		r ^= c.p[i+1]
		l ^= c.f(r)
	}
	l ^= c.p[16]
	r ^= c.p[17]
	return r, l
}

func nextWord(b []byte, j *int) uint32 {
	var w uint32
	for i := 0; i < 4; i++ {
		w = w<<8 | uint32(b[*j])
		*j = (*j + 1) % len(b)
	}
	return w
}

// expand is Blowfish's key schedule with a salt (nil for none).
func (c *blowfish) expand(key, salt []byte) {
	j := 0
	for i := range c.p {
		c.p[i] ^= nextWord(key, &j)
	}
	j = 0
	var l, r uint32
	next := func() {
		if salt != nil {
			l ^= nextWord(salt, &j)
			r ^= nextWord(salt, &j)
		}
		l, r = c.encrypt(l, r)
	}
	for i := 0; i < 18; i += 2 {
		next()
		c.p[i], c.p[i+1] = l, r
	}
	for k := 0; k < 4; k++ {
		for i := 0; i < 256; i += 2 {
			next()
			c.s[k][i], c.s[k][i+1] = l, r
		}
	}
}

const bcryptAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

func bcryptBase64(b []byte) string {
	var sb strings.Builder
	for i := 0; i < len(b); i += 3 {
		var v uint32
		n := min(3, len(b)-i)
		for k := 0; k < 3; k++ {
			v <<= 8
			if k < n {
				v |= uint32(b[i+k])
			}
		}
		for k := 0; k <= n; k++ {
			sb.WriteByte(bcryptAlphabet[(v>>(18-6*uint(k)))&63])
		}
	}
	return sb.String()
}

func bcryptUnbase64(s string) []byte {
	var out []byte
	for i := 0; i < len(s); i += 4 {
		var v uint32
		n := min(4, len(s)-i)
		for k := 0; k < 4; k++ {
			v <<= 6
			if k < n {
				v |= uint32(strings.IndexByte(bcryptAlphabet, s[i+k]))
			}
		}
		for k := 0; k < n-1; k++ {
			out = append(out, byte(v>>(16-8*uint(k))))
		}
	}
	return out
}

// bcryptHash gives "$2y$CC$<salt 22><hash 31>" for password and a 16-byte
// salt, as htpasswd -B does.
func bcryptHash(password string, salt []byte, cost int) string {
	init := blowfishInit()
	var c blowfish
	copy(c.p[:], init[:18])
	for k := 0; k < 4; k++ {
		copy(c.s[k][:], init[18+256*k:])
	}
	key := append([]byte(password), 0)
	if len(key) > 72 {
		key = key[:72]
	}
	c.expand(key, salt)
	for i := 0; i < 1<<cost; i++ {
		c.expand(key, nil)
		c.expand(salt, nil)
	}
	text := []byte("OrpheanBeholderScryDoubt")
	for i := 0; i < 24; i += 8 {
		l, r := binary.BigEndian.Uint32(text[i:]), binary.BigEndian.Uint32(text[i+4:])
		for j := 0; j < 64; j++ {
			l, r = c.encrypt(l, r)
		}
		binary.BigEndian.PutUint32(text[i:], l)
		binary.BigEndian.PutUint32(text[i+4:], r)
	}
	return fmt.Sprintf("$2y$%02d$%s%s", cost, bcryptBase64(salt), bcryptBase64(text[:23]))
}

// TestBcryptVector checks the helper against known bcrypt hashes, so a
// failing htpasswd test means latch, not the helper.
func TestBcryptVector(t *testing.T) {
	if w := blowfishInit(); w[0] != 0x243f6a88 || w[17] != 0x8979fb1b || w[18] != 0xd1310ba6 || w[len(w)-1] != 0x3ac372e6 {
		t.Fatalf("pi words %08x %08x %08x %08x", w[0], w[17], w[18], w[len(w)-1])
	}
	for _, v := range []struct{ pass, hash string }{
		{"allmine", "$2y$10$XajjQvNhvvRt5GSeFk1xFeyqRrsxkhBkUiQeg0dt.wU1qD4aFDcga"},
		{"U*U", "$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"},
	} {
		salt := bcryptUnbase64(v.hash[7:29])
		if got := bcryptHash(v.pass, salt, int(v.hash[4]-'0')*10+int(v.hash[5]-'0')); got != v.hash {
			t.Errorf("bcrypt(%q): got %s, want %s", v.pass, got, v.hash)
		}
	}
}

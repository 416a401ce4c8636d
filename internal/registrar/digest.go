package registrar

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// credentials are the fields of a digest Authorization header.
type credentials struct {
	username, realm, nonce, uri, response string
	algorithm, cnonce, qop, ncRaw, opaque string
	nc                                    uint32
}

var errMalformed = errors.New("registrar: malformed digest credentials")

// parseCredentials parses `Digest k=v, k="v", ...` (RFC 2617 / 7616).
func parseCredentials(h string) (credentials, error) {
	var c credentials
	h = strings.TrimSpace(h)
	if len(h) < 7 || !strings.EqualFold(h[:7], "digest ") {
		return c, errMalformed
	}
	params, ok := parseAuthParams(h[7:])
	if !ok {
		return c, errMalformed
	}
	for k, v := range params {
		switch k {
		case "username":
			c.username = v
		case "realm":
			c.realm = v
		case "nonce":
			c.nonce = v
		case "uri":
			c.uri = v
		case "response":
			c.response = strings.ToLower(v)
		case "algorithm":
			c.algorithm = v
		case "cnonce":
			c.cnonce = v
		case "qop":
			c.qop = strings.ToLower(v)
		case "nc":
			c.ncRaw = v
		case "opaque":
			c.opaque = v
		}
	}
	if c.username == "" || c.nonce == "" || c.response == "" || c.uri == "" {
		return c, errMalformed
	}
	if c.qop != "" {
		if c.qop != "auth" || c.cnonce == "" || len(c.ncRaw) != 8 {
			return c, errMalformed
		}
		n, err := strconv.ParseUint(c.ncRaw, 16, 32)
		if err != nil || n == 0 {
			return c, errMalformed
		}
		c.nc = uint32(n)
	}
	return c, nil
}

// parseAuthParams splits a comma-separated list of key=value or
// key="quoted value" pairs. Keys are lower-cased.
func parseAuthParams(s string) (map[string]string, bool) {
	m := make(map[string]string, 10)
	for {
		s = strings.TrimLeft(s, " \t\r\n,")
		if s == "" {
			return m, true
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return nil, false
		}
		key := strings.ToLower(strings.TrimSpace(s[:eq]))
		s = strings.TrimLeft(s[eq+1:], " \t")
		var val string
		if strings.HasPrefix(s, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, false // unterminated quote
			}
			val, s = b.String(), s[i+1:]
		} else {
			end := strings.IndexByte(s, ',')
			if end < 0 {
				end = len(s)
			}
			val, s = strings.TrimSpace(s[:end]), s[end:]
		}
		m[key] = val
	}
}

func md5hex(parts ...string) string {
	h := md5.New()
	for i, p := range parts {
		if i > 0 {
			h.Write([]byte{':'})
		}
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// expectedResponse computes the digest response for c with password.
func expectedResponse(c *credentials, method, password string) string {
	ha1 := md5hex(c.username, c.realm, password)
	ha2 := md5hex(method, c.uri)
	if c.qop == "" {
		return md5hex(ha1, c.nonce, ha2)
	}
	return md5hex(ha1, c.nonce, c.ncRaw, c.cnonce, c.qop, ha2)
}

// Nonces are 8 bytes of issue time (Unix ns), 4 random bytes and 12 bytes of
// HMAC-SHA256 over both, hex-encoded: the registrar recognises its own
// nonces and their age without storing them.
const (
	nonceRawLen = 8 + 4 + 12
	nonceHexLen = 2 * nonceRawLen
)

func (r *Registrar) newNonce(now time.Time) string {
	var b [nonceRawLen]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixNano()))
	_, _ = rand.Read(b[8:12])
	mac := hmac.New(sha256.New, r.secret[:])
	mac.Write(b[:12])
	copy(b[12:], mac.Sum(nil))
	return hex.EncodeToString(b[:])
}

// nonceIssued verifies a nonce and returns when it was issued.
func (r *Registrar) nonceIssued(nonce string) (time.Time, bool) {
	if len(nonce) != nonceHexLen {
		return time.Time{}, false
	}
	var b [nonceRawLen]byte
	if _, err := hex.Decode(b[:], []byte(nonce)); err != nil {
		return time.Time{}, false
	}
	mac := hmac.New(sha256.New, r.secret[:])
	mac.Write(b[:12])
	if !hmac.Equal(mac.Sum(nil)[:12], b[12:]) {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b[:8]))), true
}

// nonceState tracks the highest nc seen on a nonce.
type nonceState struct {
	issued time.Time
	lastNC uint32
}

// challengeHeader builds the WWW-Authenticate (or Proxy-Authenticate) value.
func (r *Registrar) challengeHeader(nonce string, stale bool) string {
	var b strings.Builder
	b.WriteString(`Digest realm="`)
	b.WriteString(r.cfg.realm())
	b.WriteString(`", nonce="`)
	b.WriteString(nonce)
	b.WriteString(`", qop="auth", algorithm=MD5`)
	if stale {
		b.WriteString(`, stale=true`)
	}
	return b.String()
}

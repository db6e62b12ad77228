package chatkit

// Native Go fuzz targets for the module's parsers and encoders: the start
// and refresh bodies, the anonymous-visitor cookie, the user id mapping, what
// OpenAI answers, the JSON string encoder and the Caddyfile.
//
// Every target checks properties, not only the absence of panics. The seeds
// below are added with f.Add and are also committed under
// testdata/fuzz/<FuzzName>/seed-*, so a plain `go test` replays them and
// `go test -fuzz` starts from them. After changing a seed list, rewrite the
// files with
//
//	CHATKIT_WRITE_FUZZ_SEEDS=1 go test -run '^TestFuzzSeedCorpusCommitted$' .
//
// Fuzz one target at a time, for example
//
//	go test -run '^$' -fuzz '^FuzzRefreshBody$' -fuzztime 60s .

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// fzSeed is one seed corpus entry: a file name and the target's arguments.
type fzSeed struct {
	name string
	args []any
}

// fzBodyLimit is the default max_body, which the HTTP-level checks use.
const fzBodyLimit = defaultMaxBody

// fzJSONSpace is JSON's insignificant whitespace (RFC 8259, section 2).
const fzJSONSpace = " \t\r\n"

// fzJSONBodies are bodies every JSON-reading target starts from.
func fzJSONBodies() []fzSeed {
	deepObject := strings.Repeat(`{"a":`, 2000) + "1" + strings.Repeat("}", 2000)
	tooDeep := `{"a":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + "}"
	bodies := []struct{ name, body string }{
		{"empty", ""},
		{"space", " "},
		{"json-whitespace", " \t\r\n \r\n"},
		{"null", "null"},
		{"array", "[]"},
		{"array-of-object", `[{"a":1}]`},
		{"string", `"str"`},
		{"number", "0"},
		{"number-exp", "-1.5e10"},
		{"true", "true"},
		{"false", "false"},
		{"empty-object", "{}"},
		{"spaced-object", " \n{ } \t"},
		{"open-brace", "{"},
		{"close-brace", "}"},
		{"mismatched", "{]"},
		{"simple-object", `{"a":1}`},
		{"object-trailing-garbage", `{"a":1}x`},
		{"two-objects", `{} {}`},
		{"object-then-nul", "{\"a\":1}\x00"},
		{"nul-in-object", "{\x00}"},
		{"trailing-comma", `{"a":1,}`},
		{"single-quotes", `{'a':1}`},
		{"bare-key", `{a:1}`},
		{"missing-colon", `{"a" 1}`},
		{"leading-zero", `{"a":01}`},
		{"bare-fraction", `{"a":.5}`},
		{"nan", `{"a":NaN}`},
		{"infinity", `{"a":Infinity}`},
		{"huge-number", `{"a":1e400}`},
		{"negative-zero", `{"a":-0}`},
		{"nested-values", `{"a":[1,2,{"b":null}],"c":{"d":true,"e":"f"}}`},
		{"duplicate-keys", `{"a":1,"a":2}`},
		{"comment", `{} // comment`},
		{"truncated-literal", `{"a":tru}`},
		{"truncated-value", `{"a":nul`},
		{"truncated-string", `{"a":"x`},
		{"raw-newline-in-string", "{\"a\":\"line\nbreak\"}"},
		{"bad-escape", `{"a":"\x"}`},
		{"lone-surrogate", `{"a":"\ud800"}`},
		{"escaped-unicode", `{"a":"\u00e9\u4e2d\ud83d\ude00"}`},
		{"raw-unicode", `{"ключ":"значение","鍵":"値"}`},
		{"invalid-utf8-value", "{\"a\":\"\xff\xfe\"}"},
		{"invalid-utf8-key", "{\"\xff\":1}"},
		{"bom", "\xef\xbb\xbf{}"},
		{"deep-object", deepObject},
		{"too-deep", tooDeep},
		{"huge-string", `{"a":"` + strings.Repeat("x", 9000) + `"}`},
		{"over-limit-whitespace", "{}" + strings.Repeat(" ", fzBodyLimit)},
		{"exactly-limit", "{}" + strings.Repeat(" ", fzBodyLimit-2)},
		// Whitespace that bytes.TrimSpace removes but JSON does not allow.
		{"vertical-tab-object", "\v{}"},
		{"form-feed-only", "\f"},
		{"nbsp-object", "\u00a0{}\u00a0"},
		{"nel-object", "\u0085{}"},
	}
	seeds := make([]fzSeed, len(bodies))
	for i, b := range bodies {
		seeds[i] = fzSeed{b.name, []any{[]byte(b.body)}}
	}
	return seeds
}

// fzJSONObject reports whether b is one JSON object (JSON whitespace only
// around it) and returns its members, decoded by encoding/json.
func fzJSONObject(b []byte) (map[string]json.RawMessage, bool) {
	t := bytes.Trim(b, fzJSONSpace)
	if len(t) == 0 || t[0] != '{' {
		return nil, false
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		return nil, false
	}
	return m, true
}

// ---------------------------------------------------------------- start body

func fzStartBodySeeds() []fzSeed { return fzJSONBodies() }

// FuzzStartBody: the start body is accepted iff it is empty (JSON
// whitespace only) or exactly one JSON object, as encoding/json sees it.
func FuzzStartBody(f *testing.F) {
	for _, s := range fzStartBodySeeds() {
		f.Add(s.args[0].([]byte))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := validateStartBody(b)
		if err != nil && !errors.Is(err, errStartBody) {
			t.Fatalf("validateStartBody(%q) = unexpected error %v", b, err)
		}
		_, isObject := fzJSONObject(b)
		empty := len(bytes.Trim(b, fzJSONSpace)) == 0
		want := empty || isObject
		if (err == nil) != want {
			t.Fatalf("validateStartBody(%q): accepted=%v, but empty=%v and encoding/json object=%v", b, err == nil, empty, isObject)
		}
		// The brief's formulation with map[string]any: whatever it decodes
		// as an object must be accepted.
		var m map[string]any
		if t0 := bytes.Trim(b, fzJSONSpace); len(t0) > 0 && t0[0] == '{' && json.Unmarshal(b, &m) == nil && err != nil {
			t.Fatalf("validateStartBody(%q) refused an object encoding/json decodes", b)
		}
	})
}

// -------------------------------------------------------------- refresh body

func fzRefreshBodySeeds() []fzSeed {
	bodies := []struct{ name, body string }{
		{"secret", `{"currentClientSecret":"cks_abc123"}`},
		{"secret-spaced", " \n {\"currentClientSecret\" : \"cks_abc\" } \r\n"},
		{"secret-with-other-keys", `{"other":{"nested":[1,2,3]},"currentClientSecret":"cks_x","more":null}`},
		{"secret-empty", `{"currentClientSecret":""}`},
		{"secret-spaces", `{"currentClientSecret":"   "}`},
		{"secret-escaped-blank", `{"currentClientSecret":"\t\n\r "}`},
		{"secret-unicode-blank", `{"currentClientSecret":"\u00a0\u3000\u2028"}`},
		{"secret-null", `{"currentClientSecret":null}`},
		{"secret-number", `{"currentClientSecret":123}`},
		{"secret-true", `{"currentClientSecret":true}`},
		{"secret-array", `{"currentClientSecret":["cks_a"]}`},
		{"secret-object", `{"currentClientSecret":{"value":"cks_a"}}`},
		{"secret-nul", `{"currentClientSecret":"cks_\u0000nul"}`},
		{"secret-invalid-utf8", "{\"currentClientSecret\":\"cks_\xff\xfe\"}"},
		{"secret-lone-surrogate", `{"currentClientSecret":"\ud83d"}`},
		{"secret-emoji", `{"currentClientSecret":"\ud83d\ude00"}`},
		{"secret-html", `{"currentClientSecret":"<script>&amp;</script>"}`},
		{"secret-2048", `{"currentClientSecret":"` + strings.Repeat("x", maxClientSecretLen) + `"}`},
		{"secret-2049", `{"currentClientSecret":"` + strings.Repeat("x", maxClientSecretLen+1) + `"}`},
		{"secret-1024-two-byte-runes", `{"currentClientSecret":"` + strings.Repeat("é", maxClientSecretLen/2) + `"}`},
		{"secret-1025-two-byte-runes", `{"currentClientSecret":"` + strings.Repeat("é", maxClientSecretLen/2+1) + `"}`},
		{"secret-escaped-2048", `{"currentClientSecret":"` + strings.Repeat(`\u0041`, maxClientSecretLen) + `"}`},
		{"secret-truncated-object", `{"currentClientSecret":"cks_x"`},
		{"secret-truncated-string", `{"currentClientSecret":"cks_x}`},
		{"secret-trailing-garbage", `{"currentClientSecret":"cks_x"}]`},
		{"secret-padded-over-limit", `{"currentClientSecret":"cks_x"}` + strings.Repeat(" ", fzBodyLimit)},
		{"duplicate-key-last-wins", `{"currentClientSecret":"cks_a","currentClientSecret":"cks_b"}`},
		{"duplicate-key-last-invalid", `{"currentClientSecret":"cks_a","currentClientSecret":5}`},
		{"wrong-key", `{"clientSecret":"cks_x"}`},
		{"array-wrapped", `[{"currentClientSecret":"cks_x"}]`},
		{"string-body", `"cks_x"`},
		{"form-encoded", `currentClientSecret=cks_x`},
		// encoding/json matches struct fields case-insensitively; the
		// documented key is exactly currentClientSecret.
		{"case-variant-key", `{"CurrentClientSecret":"cks_case"}`},
		{"case-variant-collision", `{"currentClientSecret":"cks_a","CURRENTCLIENTSECRET":"cks_b"}`},
		{"case-variant-collision-number", `{"currentClientSecret":"cks_a","currentclientsecret":5}`},
		{"case-fold-long-s", `{"currentClientſecret":"cks_long_s"}`},
		// Whitespace that bytes.TrimSpace removes but JSON does not allow.
		{"vertical-tab-secret", "\v{\"currentClientSecret\":\"cks_x\"}"},
		{"nel-secret", "\u0085{\"currentClientSecret\":\"cks_x\"}\u00a0"},
	}
	seeds := fzJSONBodies()
	for _, b := range bodies {
		seeds = append(seeds, fzSeed{b.name, []any{[]byte(b.body)}})
	}
	return seeds
}

// fzCountingReader counts the bytes read through it.
type fzCountingReader struct {
	r io.Reader
	n int64
}

func (c *fzCountingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// fzCheckReadBody reads b through readBody twice, with a known and with an
// unknown (chunked) length, and checks the limit is honoured.
func fzCheckReadBody(t *testing.T, b []byte) {
	t.Helper()
	over := int64(len(b)) > fzBodyLimit

	known := httptest.NewRequest(http.MethodPost, "/api/chatkit/refresh", bytes.NewReader(b))
	counted := &fzCountingReader{r: bytes.NewReader(b)}
	chunked := httptest.NewRequest(http.MethodPost, "/api/chatkit/refresh", counted)
	if chunked.ContentLength != -1 {
		t.Fatalf("test setup: chunked request has ContentLength %d", chunked.ContentLength)
	}
	for _, r := range []*http.Request{known, chunked} {
		body, tooLarge, err := readBody(r, fzBodyLimit)
		if err != nil {
			t.Fatalf("readBody(len %d, ContentLength %d): %v", len(b), r.ContentLength, err)
		}
		if tooLarge != over {
			t.Fatalf("readBody(len %d, ContentLength %d): tooLarge=%v, want %v", len(b), r.ContentLength, tooLarge, over)
		}
		if int64(len(body)) > fzBodyLimit {
			t.Fatalf("readBody(len %d, ContentLength %d) returned %d bytes, over the %d limit", len(b), r.ContentLength, len(body), fzBodyLimit)
		}
		if tooLarge && body != nil {
			t.Fatalf("readBody(len %d, ContentLength %d): tooLarge with a %d-byte body", len(b), r.ContentLength, len(body))
		}
		if !tooLarge && !bytes.Equal(body, b) {
			t.Fatalf("readBody(len %d, ContentLength %d) returned a different body (%d bytes)", len(b), r.ContentLength, len(body))
		}
	}
	if counted.n > fzBodyLimit+1 {
		t.Fatalf("readBody consumed %d bytes of a chunked body, more than limit+1 (%d)", counted.n, fzBodyLimit+1)
	}
}

// FuzzRefreshBody: a refresh body yields a secret iff it is one JSON object
// whose "currentClientSecret" member is a non-blank string of at most 2048
// bytes, and the secret is exactly what encoding/json decodes for that key.
// Bodies also go through readBody with the default 8 KiB limit.
func FuzzRefreshBody(f *testing.F) {
	for _, s := range fzRefreshBodySeeds() {
		f.Add(s.args[0].([]byte))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		secret, err := parseRefreshBody(b)
		if err != nil && !errors.Is(err, errRefreshBody) && !errors.Is(err, errRefreshSecret) && !errors.Is(err, errRefreshLong) {
			t.Fatalf("parseRefreshBody(%q) = unexpected error %v", b, err)
		}
		if err != nil && secret != "" {
			t.Fatalf("parseRefreshBody(%q) returned secret %q with error %v", b, secret, err)
		}

		m, isObject := fzJSONObject(b)
		want, wantOK := "", false
		if raw, ok := m["currentClientSecret"]; ok && len(raw) > 0 && raw[0] == '"' {
			var s string
			if json.Unmarshal(raw, &s) == nil && strings.TrimSpace(s) != "" && len(s) <= maxClientSecretLen {
				want, wantOK = s, true
			}
		}

		if err == nil {
			if !isObject {
				t.Fatalf("parseRefreshBody(%q) accepted a body that is not a JSON object (secret %q)", b, secret)
			}
			if strings.TrimSpace(secret) == "" {
				t.Fatalf("parseRefreshBody(%q) returned a blank secret %q", b, secret)
			}
			if len(secret) > maxClientSecretLen {
				t.Fatalf("parseRefreshBody(%q) returned a %d-byte secret", b, len(secret))
			}
			if !wantOK || secret != want {
				t.Fatalf("parseRefreshBody(%q) = %q, but the object's currentClientSecret member is %q (usable=%v)", b, secret, want, wantOK)
			}
		} else if wantOK {
			t.Fatalf("parseRefreshBody(%q) refused (%v) a usable currentClientSecret %q", b, err, want)
		}
		if isObject && errors.Is(err, errRefreshBody) {
			t.Fatalf("parseRefreshBody(%q) says a JSON object is not one", b)
		}

		// The HTTP path: readBody with the default limit, then the same
		// answer for the body padded with JSON whitespace up to the limit,
		// and too large one byte past it.
		fzCheckReadBody(t, b)
		if len(b) <= fzBodyLimit {
			padded := append(bytes.Clone(b), bytes.Repeat([]byte(" "), fzBodyLimit-len(b))...)
			fzCheckReadBody(t, padded)
			secret2, err2 := parseRefreshBody(padded)
			if secret2 != secret || (err2 == nil) != (err == nil) {
				t.Fatalf("trailing whitespace changed the answer for %q: (%q, %v) became (%q, %v)", b, secret, err, secret2, err2)
			}
			fzCheckReadBody(t, append(padded, ' '))
		}
	})
}

// ---------------------------------------------------------- anonymous cookie

// fzCookieSecret is the configured cookie_secret for the cookie target.
const fzCookieSecret = "fuzz-cookie-secret-0123456789-abcdef"

// fzNow is the fixed clock of the cookie and Retry-After checks.
var fzNow = time.Unix(1_800_000_000, 0)

// fzMaxUnix is the last Unix second time.Unix can represent (62135596800
// seconds separate year 1 from 1970). A cookie carrying a later expiry
// cannot be issued by the server and must be refused.
const fzMaxUnix = math.MaxInt64 - 62135596800

// fzSignCookie encodes a cookie independently of identity.go, from the
// documented layout: base64url(version 1, 16 id bytes, big-endian Unix
// expiry, HMAC-SHA256 of those 25 bytes) with the key
// HMAC-SHA256("caddy-chatkit cookie signing key v1", secret). Cookies issued
// before an upgrade must keep verifying after it.
func fzSignCookie(secret string, id [cookieIDLen]byte, expires int64) string {
	return fzSignCookieVersion(secret, 1, id, expires)
}

func fzSignCookieVersion(secret string, version byte, id [cookieIDLen]byte, expires int64) string {
	derive := hmac.New(sha256.New, []byte("caddy-chatkit cookie signing key v1"))
	derive.Write([]byte(secret))
	payload := make([]byte, 0, cookieRawLen)
	payload = append(payload, version)
	payload = append(payload, id[:]...)
	payload = binary.BigEndian.AppendUint64(payload, uint64(expires))
	mac := hmac.New(sha256.New, derive.Sum(nil))
	mac.Write(payload)
	return base64.RawURLEncoding.EncodeToString(mac.Sum(payload))
}

func fzIdentity(secret string) *identitySource {
	s := newIdentitySource("", nil, secret, nil)
	s.now = func() time.Time { return fzNow }
	return s
}

func fzCookieSeeds() []fzSeed {
	var id [cookieIDLen]byte
	for i := range id {
		id[i] = byte(0xa0 + i)
	}
	valid := fzSignCookie(fzCookieSecret, id, fzNow.Unix()+3600)
	renewable := fzSignCookie(fzCookieSecret, id, fzNow.Unix()+int64(defaultCookieMaxAge/time.Second)-1)
	flip := func(v string, i int) string {
		b := []byte(v)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	values := []struct{ name, value string }{
		{"valid", valid},
		{"valid-renewable", renewable},
		{"expired", fzSignCookie(fzCookieSecret, id, fzNow.Unix()-1)},
		{"expires-now", fzSignCookie(fzCookieSecret, id, fzNow.Unix())},
		{"expires-max", fzSignCookie(fzCookieSecret, id, math.MaxInt64)},
		{"expires-last-representable", fzSignCookie(fzCookieSecret, id, fzMaxUnix)},
		{"expires-first-unrepresentable", fzSignCookie(fzCookieSecret, id, fzMaxUnix+1)},
		{"expires-negative", fzSignCookie(fzCookieSecret, id, -1)},
		{"other-key", fzSignCookie(fzCookieSecret+"!", id, fzNow.Unix()+3600)},
		{"flip-first", flip(valid, 0)},
		{"flip-id", flip(valid, 5)},
		{"flip-expiry", flip(valid, 28)},
		{"flip-mac", flip(valid, 50)},
		{"flip-last", flip(valid, len(valid)-1)},
		{"truncated", valid[:len(valid)-1]},
		{"extended", valid + "A"},
		{"padded", valid + "="},
		{"padding-inside", valid[:len(valid)-1] + "="},
		{"std-alphabet", strings.NewReplacer("-", "+", "_", "/").Replace(valid)},
		{"newline-inside", valid[:40] + "\n" + valid[41:]},
		{"crlf-inside", valid[:40] + "\r\n" + valid[42:]},
		{"quoted", `"` + valid[1:len(valid)-1] + `"`},
		{"version-0", fzSignCookieVersion(fzCookieSecret, 0, id, fzNow.Unix()+3600)},
		{"version-2", fzSignCookieVersion(fzCookieSecret, 2, id, fzNow.Unix()+3600)},
		{"empty", ""},
		{"spaces", strings.Repeat(" ", len(valid))},
		{"all-A", strings.Repeat("A", len(valid))},
		{"unicode", strings.Repeat("é", len(valid)/2)},
		{"invalid-utf8", strings.Repeat("\xff", len(valid))},
		{"huge", strings.Repeat("A", 1<<14)},
	}
	idBytes := []struct {
		name  string
		id    []byte
		ahead int64
	}{
		{"", id[:], 3600},
		{"", nil, 1},
		{"", bytes.Repeat([]byte{0xff}, 16), math.MaxInt64},
		{"", bytes.Repeat([]byte{0x01}, 16), fzMaxUnix - 1_800_000_000 - 1},
		{"", []byte("short"), -1},
		{"", bytes.Repeat([]byte{7}, 40), math.MinInt64},
		{"", make([]byte, 16), int64(defaultCookieMaxAge / time.Second)},
	}
	var seeds []fzSeed
	for i, v := range values {
		r := idBytes[i%len(idBytes)]
		seeds = append(seeds, fzSeed{v.name, []any{v.value, r.id, r.ahead}})
	}
	return seeds
}

// FuzzAnonymousCookie: verify accepts a value iff it is exactly what sign
// produces for the id and expiry it carries and that expiry is in the
// future; sign then verify returns the id; identify never trusts a value
// verify refuses.
func FuzzAnonymousCookie(f *testing.F) {
	for _, s := range fzCookieSeeds() {
		f.Add(s.args[0].(string), s.args[1].([]byte), s.args[2].(int64))
	}
	s := fzIdentity(fzCookieSecret)
	other := fzIdentity(fzCookieSecret + "-other")
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

	f.Fuzz(func(t *testing.T, value string, rawID []byte, ahead int64) {
		// 1. Arbitrary values: an independent decode says whether the value
		// is a canonical, correctly signed, unexpired cookie.
		wantOK := false
		var wantID [cookieIDLen]byte
		if len(value) == base64.RawURLEncoding.EncodedLen(cookieRawLen) {
			if raw, err := base64.RawURLEncoding.DecodeString(value); err == nil && len(raw) == cookieRawLen && raw[0] == 1 {
				copy(wantID[:], raw[1:])
				exp := int64(binary.BigEndian.Uint64(raw[1+cookieIDLen:]))
				wantOK = fzSignCookie(fzCookieSecret, wantID, exp) == value && exp > fzNow.Unix() && exp <= fzMaxUnix
			}
		}
		id, expires, ok := s.verify(value, fzNow)
		if ok != wantOK {
			t.Fatalf("verify(%q) = %v, independent decode says %v", value, ok, wantOK)
		}
		if ok {
			if id != wantID {
				t.Fatalf("verify(%q) id %x, value carries %x", value, id, wantID)
			}
			if !expires.After(fzNow) {
				t.Fatalf("verify(%q) accepted expiry %v at %v", value, expires, fzNow)
			}
			if again := s.sign(id, expires); again != value {
				t.Fatalf("verify(%q) accepted a value sign does not produce (%q)", value, again)
			}
			if _, _, ok := s.verify(value, expires); ok {
				t.Fatalf("verify(%q) accepted at its expiry %v", value, expires)
			}
			if _, _, ok := other.verify(value, fzNow); ok {
				t.Fatalf("a value signed with one secret verifies with another: %q", value)
			}
			for i := range len(value) {
				b := []byte(value)
				b[i] = alphabet[(strings.IndexByte(alphabet, b[i])+1+int(ahead&63)%63)%64]
				if _, _, ok := s.verify(string(b), fzNow); ok {
					t.Fatalf("verify accepted %q, %q with byte %d changed", b, value, i)
				}
			}
		}

		// 2. identify with the value as the cookie: the visitor keeps the
		// id only if verify accepted the cookie as parsed by net/http.
		r := httptest.NewRequest(http.MethodPost, "/api/chatkit/start", nil)
		r.Header.Set("Cookie", defaultCookieName+"="+value)
		presentedOK := false
		var presentedID [cookieIDLen]byte
		var presentedExp time.Time
		if c, err := r.Cookie(defaultCookieName); err == nil {
			presentedID, presentedExp, presentedOK = s.verify(c.Value, fzNow)
		}
		fzCheckIdentify(t, s, r, presentedOK, presentedID, presentedExp)

		// 3. Round trip for a fuzzed id and a future expiry.
		var rid [cookieIDLen]byte
		copy(rid[:], rawID)
		offset := 1 + int64(uint64(ahead)%uint64(fzMaxUnix-fzNow.Unix()))
		exp := time.Unix(fzNow.Unix()+offset, 0)
		signed := s.sign(rid, exp)
		if len(signed) != base64.RawURLEncoding.EncodedLen(cookieRawLen) || strings.Trim(signed, alphabet) != "" {
			t.Fatalf("sign(%x, %d) = %q: not %d base64url characters", rid, exp.Unix(), signed, base64.RawURLEncoding.EncodedLen(cookieRawLen))
		}
		if indep := fzSignCookie(fzCookieSecret, rid, exp.Unix()); signed != indep {
			t.Fatalf("sign(%x, %d) = %q, the documented layout gives %q", rid, exp.Unix(), signed, indep)
		}
		if err := (&http.Cookie{Name: defaultCookieName, Value: signed}).Valid(); err != nil {
			t.Fatalf("sign(%x, %d) = %q is not a valid cookie value: %v", rid, exp.Unix(), signed, err)
		}
		gotID, gotExp, ok := s.verify(signed, fzNow)
		if !ok || gotID != rid || gotExp.Unix() != exp.Unix() {
			t.Fatalf("verify(sign(%x, %d)) = %x, %d, %v", rid, exp.Unix(), gotID, gotExp.Unix(), ok)
		}
		if _, _, ok := s.verify(signed, exp); ok {
			t.Fatalf("verify(sign(%x, %d)) accepted at the expiry", rid, exp.Unix())
		}
		if _, _, ok := s.verify(signed, exp.Add(-time.Second)); !ok {
			t.Fatalf("verify(sign(%x, %d)) refused a second before the expiry", rid, exp.Unix())
		}
		if _, _, ok := other.verify(signed, fzNow); ok {
			t.Fatalf("sign(%x, %d) verifies with another secret", rid, exp.Unix())
		}
		r = httptest.NewRequest(http.MethodPost, "/api/chatkit/refresh", nil)
		r.AddCookie(&http.Cookie{Name: defaultCookieName, Value: signed})
		fzCheckIdentify(t, s, r, true, rid, exp)
	})
}

// fzCheckIdentify checks identify for a request whose cookie verify judged
// (ok, id, expires).
func fzCheckIdentify(t *testing.T, s *identitySource, r *http.Request, ok bool, id [cookieIDLen]byte, expires time.Time) {
	t.Helper()
	v, err := s.identify(context.Background(), r, caddy.NewReplacer(), true)
	if err != nil {
		t.Fatalf("identify: %v", err)
	}
	encoded, found := strings.CutPrefix(v.user, anonymousUserPrefix)
	userID, decErr := base64.RawURLEncoding.DecodeString(encoded)
	if !found || decErr != nil || len(userID) != cookieIDLen {
		t.Fatalf("identify: user %q is not %s + a base64url 16-byte id", v.user, anonymousUserPrefix)
	}
	if ok && !bytes.Equal(userID, id[:]) {
		t.Fatalf("identify: a valid cookie for %x became user %q", id, v.user)
	}
	renew := !ok || expires.Sub(fzNow) < defaultCookieMaxAge/2
	if renew != (v.cookie != nil) {
		t.Fatalf("identify: cookie valid=%v expiring %v; new cookie sent=%v", ok, expires, v.cookie != nil)
	}
	if v.cookie == nil {
		return
	}
	c := v.cookie
	if c.Name != defaultCookieName || !c.HttpOnly || !c.Secure || c.Path != "/" || c.SameSite != http.SameSiteLaxMode ||
		c.MaxAge != int(defaultCookieMaxAge/time.Second) {
		t.Fatalf("identify: cookie attributes %+v", c)
	}
	newID, newExp, newOK := s.verify(c.Value, fzNow)
	if !newOK || !bytes.Equal(newID[:], userID) || !newExp.Equal(fzNow.Add(defaultCookieMaxAge)) {
		t.Fatalf("identify: issued cookie %q verifies as %x, %v, %v for user %q", c.Value, newID, newExp, newOK, v.user)
	}
}

// ------------------------------------------------------------------ user ids

func fzUserIDSeeds() []fzSeed {
	long := strings.Repeat("x", 300)
	sum := sha256.Sum256([]byte(long))
	pairs := []struct{ name, a, b string }{
		{"same", "alice", "alice"},
		{"case", "alice", "Alice"},
		{"leading-space", " alice", "alice"},
		{"trailing-space", "alice ", "alice"},
		{"trailing-nbsp", "alice\u00a0", "alice"},
		{"tab", "\talice", "alice"},
		{"newline", "alice\n", "alice"},
		{"nul", "ali\x00ce", "alice"},
		{"crlf-header", "a\r\nX-Other: 1", "a"},
		{"invalid-utf8", "\xff", "\xfe"},
		{"invalid-vs-replacement", "\xff", "\ufffd"},
		{"surrogate", "\xed\xa0\x80", "\ufffd\ufffd\ufffd"},
		{"long-vs-its-old-hash", long, "sha256:" + hex.EncodeToString(sum[:])},
		{"long-vs-new-prefix", long, "-sha256:" + hex.EncodeToString(sum[:])},
		{"at-limit", strings.Repeat("é", 128), strings.Repeat("é", 128) + "x"},
		{"nfc-nfd", "é", "e\u0301"},
		{"prefixed", "user:alice", "alice"},
		{"anon-lookalike", "anon:AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAA"},
		{"blank", "", " "},
		{"blank-unicode", "\u3000", "\t\r\n"},
	}
	seeds := make([]fzSeed, len(pairs))
	for i, p := range pairs {
		seeds[i] = fzSeed{p.name, []any{p.a, p.b}}
	}
	return seeds
}

// FuzzUserID: two placeholder values get the same upstream user id iff they
// are the same bytes; a blank value gets none; every id is user:<the value,
// unchanged> or user-sha256:<64 hex digits>, and arrives intact in the
// upstream JSON and the identity header; plain short ASCII stays readable.
func FuzzUserID(f *testing.F) {
	for _, s := range fzUserIDSeeds() {
		f.Add(s.args[0].(string), s.args[1].(string))
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		idA, okA := userID(a)
		idB, okB := userID(b)
		for _, c := range []struct {
			value, id string
			ok        bool
		}{{a, idA, okA}, {b, idB, okB}} {
			if blank := strings.TrimSpace(c.value) == ""; c.ok == blank {
				t.Fatalf("userID(%q) ok = %v for a value that is blank: %v", c.value, c.ok, blank)
			}
			if !c.ok {
				continue
			}
			if literal, found := strings.CutPrefix(c.id, "user:"); found {
				if literal != c.value {
					t.Fatalf("userID(%q) = %q: a literal id that is not the value", c.value, c.id)
				}
			} else if digest, found := strings.CutPrefix(c.id, "user-sha256:"); !found || len(digest) != 64 || strings.Trim(digest, "0123456789abcdef") != "" {
				t.Fatalf("userID(%q) = %q: neither user:<value> nor user-sha256:<hex>", c.value, c.id)
			}
			checkTransportableUser(t, c.id)
			plain := len(c.value) <= maxPlaceholderUser && strings.IndexFunc(c.value, func(r rune) bool { return r <= ' ' || r >= 0x7f }) < 0
			if plain && c.id != "user:"+c.value {
				t.Fatalf("userID(%q) = %q: a short printable ASCII id was not kept as it is", c.value, c.id)
			}
		}
		if okA && okB && (idA == idB) != (a == b) {
			t.Fatalf("userID(%q) = %q and userID(%q) = %q", a, idA, b, idB)
		}
	})
}

// ---------------------------------------------------------- upstream answers

func fzUpstreamSeeds() []fzSeed {
	payloads := []struct{ name, payload string }{
		{"session", `{"id":"cksess_123","object":"chatkit.session","client_secret":"ek_abc","expires_at":1800000600,"workflow":{"id":"wf_1"}}`},
		{"session-minimal", `{"client_secret":"ek_abc","expires_at":1}`},
		{"session-no-secret", `{"id":"cksess_1","expires_at":1800000600}`},
		{"session-empty-secret", `{"client_secret":"","expires_at":1800000600}`},
		{"session-null-secret", `{"client_secret":null,"expires_at":1800000600}`},
		{"session-number-secret", `{"client_secret":5,"expires_at":1800000600}`},
		{"session-object-secret", `{"client_secret":{"value":"ek_abc","expires_at":1800000600},"expires_at":1800000600}`},
		{"session-zero-expiry", `{"client_secret":"ek_abc","expires_at":0}`},
		{"session-negative-expiry", `{"client_secret":"ek_abc","expires_at":-1}`},
		{"session-float-expiry", `{"client_secret":"ek_abc","expires_at":1800000600.5}`},
		{"session-string-expiry", `{"client_secret":"ek_abc","expires_at":"1800000600"}`},
		{"session-huge-expiry", `{"client_secret":"ek_abc","expires_at":9223372036854775808}`},
		{"session-max-expiry", `{"client_secret":"ek_abc","expires_at":9223372036854775807}`},
		{"session-html-secret", `{"client_secret":"<\u2028>&\"\\","expires_at":1}`},
		{"session-invalid-utf8-secret", "{\"client_secret\":\"ek_\xff\",\"expires_at\":1}"},
		{"session-case-variant", `{"CLIENT_SECRET":"ek_abc","Expires_At":1}`},
		{"session-duplicate", `{"client_secret":"ek_a","client_secret":"","expires_at":1}`},
		{"session-trailing", `{"client_secret":"ek_abc","expires_at":1}{}`},
		{"session-array", `[{"client_secret":"ek_abc","expires_at":1}]`},
		{"api-error", `{"error":{"message":"Incorrect API key provided: sk-abc","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`},
		{"api-error-numeric-code", `{"error":{"type":"server_error","code":500,"param":1e300}}`},
		{"api-error-float-code", `{"error":{"type":"x","code":1.5e-7,"param":-0}}`},
		{"api-error-long", `{"error":{"type":"` + strings.Repeat("t", 100) + `","code":"` + strings.Repeat("c", 100) + `","param":"` + strings.Repeat("p", 200) + `"}}`},
		{"api-error-long-multibyte", `{"error":{"type":"` + strings.Repeat("é", 40) + `","code":"` + strings.Repeat("中", 30) + `","param":"` + strings.Repeat("😀", 40) + `"}}`},
		{"api-error-wrong-types", `{"error":{"type":5,"code":["a"],"param":{"a":1}}}`},
		{"api-error-string", `{"error":"bad"}`},
		{"api-error-null", `{"error":null}`},
		{"html-error-page", `<html><body>502 Bad Gateway</body></html>`},
	}
	headers := []struct{ name, retryAfter, retryAfterMs string }{
		{"none", "", ""},
		{"seconds", "5", ""},
		{"zero", "0", ""},
		{"negative", "-5", ""},
		{"fraction", "1.5", ""},
		{"ms", "", "250"},
		{"ms-and-seconds", "30", "1500.5"},
		{"ms-negative", "2", "-100"},
		{"http-date-future", fzNow.Add(90 * time.Second).UTC().Format(http.TimeFormat), ""},
		{"http-date-past", fzNow.Add(-90 * time.Second).UTC().Format(http.TimeFormat), ""},
		{"http-date-far-future", "Fri, 31 Dec 9999 23:59:59 GMT", ""},
		{"rfc850-date", "Sunday, 15-Jan-2027 08:00:00 GMT", ""},
		{"garbage", "soon", "later"},
		{"hex-float", "0x1p4", ""},
		{"exponent-in-range", "1e3", ""},
		{"ms-overflow-range", "", "1e400"},
	}
	// Payload seeds pair with the headers above; the ones below are seeds
	// of their own.
	overflow := []struct{ name, retryAfter, retryAfterMs string }{
		// Finite values whose product with the unit overflows int64, and
		// NaN, which compares false both ways.
		{"seconds-huge", "1e10", ""},
		{"seconds-nan", "NaN", ""},
		{"seconds-inf", "+Inf", ""},
		{"ms-huge", "", "1e300"},
		{"ms-inf", "", "Infinity"},
	}
	var seeds []fzSeed
	for i, p := range payloads {
		h := headers[i%len(headers)]
		seeds = append(seeds, fzSeed{p.name, []any{[]byte(p.payload), h.retryAfter, h.retryAfterMs}})
	}
	for _, h := range append(headers, overflow...) {
		seeds = append(seeds, fzSeed{"retry-after-" + h.name, []any{[]byte(`{}`), h.retryAfter, h.retryAfterMs}})
	}
	return seeds
}

// fzScalar mirrors what the log may show for a JSON scalar.
func fzScalar(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return ""
}

// FuzzUpstreamResponse: a decoded session always has a secret and an expiry
// and turns into a valid browser answer; the error fields kept from an
// OpenAI error are bounded prefixes of what it sent; Retry-After never
// yields a negative wait.
func FuzzUpstreamResponse(f *testing.F) {
	for _, s := range fzUpstreamSeeds() {
		f.Add(s.args[0].([]byte), s.args[1].(string), s.args[2].(string))
	}
	f.Fuzz(func(t *testing.T, payload []byte, retryAfter, retryAfterMs string) {
		var session createdSession
		if err := decodeSession(payload, &session); err == nil {
			if session.ClientSecret == "" || session.ExpiresAt <= 0 {
				t.Fatalf("decodeSession(%q) accepted %+v", payload, session)
			}
			if !json.Valid(payload) {
				t.Fatalf("decodeSession accepted invalid JSON %q", payload)
			}
			// The browser's answer, built as serveMint builds it.
			out := []byte(`{"client_secret":`)
			out = appendJSONString(out, session.ClientSecret)
			out = append(out, `,"expires_at":`...)
			out = strconv.AppendInt(out, session.ExpiresAt, 10)
			out = append(out, '}')
			var back struct {
				ClientSecret string `json:"client_secret"`
				ExpiresAt    int64  `json:"expires_at"`
			}
			dec := json.NewDecoder(bytes.NewReader(out))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&back); err != nil || dec.More() {
				t.Fatalf("browser answer %q for session %+v is not one JSON object: %v", out, session, err)
			}
			if back.ClientSecret != session.ClientSecret || back.ExpiresAt != session.ExpiresAt {
				t.Fatalf("browser answer %q decodes to %+v, want %+v", out, back, session)
			}
		}

		errType, code, param := decodeAPIError(payload)
		if len(errType) > 64 || len(code) > 64 || len(param) > 128 {
			t.Fatalf("decodeAPIError(%q) = %d, %d, %d bytes; limits are 64, 64, 128", payload, len(errType), len(code), len(param))
		}
		if !json.Valid(payload) && (errType != "" || code != "" || param != "") {
			t.Fatalf("decodeAPIError(%q) found fields in invalid JSON: %q %q %q", payload, errType, code, param)
		}
		var oracle struct {
			Error struct {
				Type  any `json:"type"`
				Code  any `json:"code"`
				Param any `json:"param"`
			} `json:"error"`
		}
		_ = json.Unmarshal(payload, &oracle)
		for _, c := range []struct {
			name, got, sent string
			limit           int
		}{
			{"type", errType, fzScalar(oracle.Error.Type), 64},
			{"code", code, fzScalar(oracle.Error.Code), 64},
			{"param", param, fzScalar(oracle.Error.Param), 128},
		} {
			if !strings.HasPrefix(c.sent, c.got) {
				t.Fatalf("decodeAPIError(%q) %s = %q, not a prefix of %q", payload, c.name, c.got, c.sent)
			}
			// Cut at a character boundary, so up to 3 bytes short of the limit.
			if utf8.ValidString(c.sent) && !utf8.ValidString(c.got) {
				t.Fatalf("decodeAPIError(%q) %s = %q split a character", payload, c.name, c.got)
			}
			if c.got != "" && len(c.got) <= c.limit-utf8.UTFMax && c.got != c.sent {
				t.Fatalf("decodeAPIError(%q) %s = %q, cut short of %q", payload, c.name, c.got, c.sent)
			}
		}

		h := http.Header{}
		if retryAfter != "" {
			h.Set("Retry-After", retryAfter)
		}
		if retryAfterMs != "" {
			h.Set("Retry-After-Ms", retryAfterMs)
		}
		wait := parseRetryAfter(h, fzNow)
		if wait < 0 {
			t.Fatalf("parseRetryAfter(Retry-After %q, Retry-After-Ms %q) = %v, negative", retryAfter, retryAfterMs, wait)
		}
		if retryAfter == "" && retryAfterMs == "" && wait != 0 {
			t.Fatalf("parseRetryAfter without headers = %v", wait)
		}
		if n, err := strconv.Atoi(retryAfter); err == nil && retryAfterMs == "" && n >= 0 && n <= 1e6 &&
			strings.Trim(retryAfter, "0123456789") == "" && wait != time.Duration(n)*time.Second {
			t.Fatalf("parseRetryAfter(Retry-After %q) = %v, want %ds", retryAfter, wait, n)
		}
	})
}

// --------------------------------------------------------------- JSON string

func fzJSONStringSeeds() []fzSeed {
	var all [256]byte
	for i := range all {
		all[i] = byte(i)
	}
	values := []struct{ name, s string }{
		{"empty", ""},
		{"ascii", "hello, world"},
		{"quotes-backslash", `"\"\\/`},
		{"controls", "\x00\x01\x1f\b\f\n\r\t\x7f"},
		{"html", "<script>alert('&amp;')</script>"},
		{"line-separators", "\u2028\u2029"},
		{"bom", "\ufeff"},
		{"replacement-char", "\ufffd"},
		{"multibyte", "é中😀"},
		{"max-rune", "\U0010ffff"},
		{"invalid-single", "\xff"},
		{"invalid-run", "\xff\xfe\xfd"},
		{"truncated-3-byte", "\xe2\x82"},
		{"truncated-4-byte-at-end", "a\xf0\x9f\x98"},
		{"surrogate-encoded", "\xed\xa0\x80"},
		{"overlong-slash", "\xc0\xaf"},
		{"overlong-nul", "\xc0\x80"},
		{"beyond-max-rune", "\xf4\x90\x80\x80"},
		{"continuation-only", "\x80\x80"},
		{"mixed", "ok\xffé\xe2\x82<\x00>"},
		{"all-bytes", string(all[:])},
		{"huge", strings.Repeat("a\"<é\xff", 4000)},
	}
	seeds := make([]fzSeed, len(values))
	for i, v := range values {
		seeds[i] = fzSeed{v.name, []any{v.s}}
	}
	return seeds
}

// FuzzJSONString: appendJSONString always yields one valid JSON string,
// safe to embed in HTML, that decodes to s with every byte that is not
// part of a valid UTF-8 sequence replaced by U+FFFD, exactly as
// encoding/json.Marshal and a Go []rune conversion replace them.
func FuzzJSONString(f *testing.F) {
	for _, s := range fzJSONStringSeeds() {
		f.Add(s.args[0].(string))
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := appendJSONString(nil, s)
		if !json.Valid(out) || len(out) < 2 || out[0] != '"' || out[len(out)-1] != '"' {
			t.Fatalf("appendJSONString(%q) = %q, not a JSON string", s, out)
		}
		if !utf8.Valid(out) {
			t.Fatalf("appendJSONString(%q) = %q, not UTF-8", s, out)
		}
		for i, c := range out {
			if c < 0x20 || c == '<' || c == '>' || c == '&' {
				t.Fatalf("appendJSONString(%q) = %q: raw byte %#x at %d", s, out, c, i)
			}
		}
		var got string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("appendJSONString(%q) = %q: %v", s, out, err)
		}
		// Per byte, like a range loop: strings.ToValidUTF8 would instead
		// collapse a run of invalid bytes into one U+FFFD.
		want := string([]rune(s))
		if got != want {
			t.Fatalf("appendJSONString(%q) decodes to %q, want %q", s, got, want)
		}
		if utf8.ValidString(s) && (got != s || got != strings.ToValidUTF8(s, "\uFFFD")) {
			t.Fatalf("appendJSONString(%q) changed valid UTF-8 into %q", s, got)
		}
		marshaled, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var viaMarshal string
		if err := json.Unmarshal(marshaled, &viaMarshal); err != nil || viaMarshal != got {
			t.Fatalf("appendJSONString(%q) decodes to %q, json.Marshal's encoding to %q", s, got, viaMarshal)
		}
		prefix := []byte(`{"k":`)
		if withPrefix := appendJSONString(bytes.Clone(prefix), s); !bytes.Equal(withPrefix, append(prefix, out...)) {
			t.Fatalf("appendJSONString after a prefix = %q, want %q", withPrefix, append(prefix, out...))
		}
	})
}

// ----------------------------------------------------------------- Caddyfile

func fzCaddyfileSeeds() []fzSeed {
	bodies := []struct{ name, body string }{
		{"minimal", "workflow wf_123"},
		{"workflow-version", "workflow wf_123 7"},
		{"every-option", `workflow wf_68df4b13b3588190a09d19288d4610ec 3
api_key {file./run/secrets/openai_api_key}
api_base https://api.openai.com/v1
organization org_example
project proj_example
tracing off
state_variable plan pro
state_variable visitor_host {host}
start_path /chat/start
refresh_path /chat/refresh
health_path /chat/health
user {http.request.header.X-User-Id}
cookie_name chat_uid
cookie_secret {env.CHATKIT_COOKIE_SECRET}
cookie_max_age 7d
session_ttl 5m
max_requests_per_minute 30
file_upload on {
	max_file_size 10
	max_files 2
}
history on {
	recent_threads 20
}
thread_titling off
timeout 15s
max_body 16KiB
allow_origins https://www.example.com https://*.example.org
allow_origins http://localhost:3000
rate_limit 20 500ms {
	key {http.request.header.X-Api-Client}
	ipv4_prefix 24
	ipv6_prefix 64
	max_keys 1000
	zone shared
}
budget 1000 1h
retries 0
circuit_breaker 3 10s
error_cache off
revoke_on_refresh on`},
		{"empty-block", ""},
		{"no-workflow", "api_key sk-test"},
		{"workflow-no-args", "workflow"},
		{"workflow-three-args", "workflow a b c"},
		{"workflow-latest", "workflow wf_1 LaTeSt"},
		{"workflow-empty-quoted", `workflow ""`},
		{"workflow-quoted-space", `workflow "wf with space" "v 2"`},
		{"workflow-backtick", "workflow `wf\"quoted\"`"},
		{"workflow-escaped-quote", `workflow "wf\"1"`},
		{"workflow-heredoc", "workflow <<EOF\n\twf_here\n\tEOF"},
		{"workflow-unicode", "workflow wf_日本語 é"},
		{"workflow-invalid-utf8", "workflow wf_\xff\xfe"},
		{"workflow-nul", "workflow wf\x00x"},
		{"workflow-block", "workflow wf_1 {\n}\n"},
		{"duplicate-workflow", "workflow a\nworkflow b"},
		{"tracing-before-workflow", "tracing on\nstate_variable a b\nworkflow wf"},
		{"state-variable-duplicate", "workflow wf\nstate_variable a b\nstate_variable a c"},
		{"state-variable-placeholder", "workflow wf\nstate_variable who {http.request.header.X-User}"},
		{"state-variable-one-arg", "workflow wf\nstate_variable a"},
		{"health-off", "workflow wf\nhealth_path off"},
		{"rate-limit-off", "workflow wf\nrate_limit off"},
		{"rate-limit-off-block", "workflow wf\nrate_limit off {\n\tkey x\n}"},
		{"rate-limit-block-only", "workflow wf\nrate_limit {\n\tzone z\n\tzone y\n}"},
		{"rate-limit-bad", "workflow wf\nrate_limit 0 -1s"},
		{"rate-limit-prefix-range", "workflow wf\nrate_limit 1 1s {\n\tipv4_prefix 33\n\tipv6_prefix 129\n}"},
		{"file-upload-bounds", "workflow wf\nfile_upload on {\n\tmax_file_size 513\n}"},
		{"file-upload-nested", "workflow wf\nfile_upload off {\n\tmax_files 1 {\n\t\tx\n\t}\n}"},
		{"history-duplicate", "workflow wf\nhistory on {\n\trecent_threads 1\n\trecent_threads 2\n}"},
		{"max-body-huge", "workflow wf\nmax_body 18446744073709551615"},
		{"max-body-eb", "workflow wf\nmax_body 8EiB"},
		{"max-body-fraction", "workflow wf\nmax_body 1.5kb"},
		{"durations", "workflow wf\ntimeout 2562047h\nsession_ttl 1ns\ncookie_max_age 1d2h3m\nerror_cache 30s"},
		{"duration-overflow", "workflow wf\ntimeout 99999999999999999h"},
		{"retries-bounds", "workflow wf\nretries 11"},
		{"circuit-breaker-off", "workflow wf\ncircuit_breaker off"},
		{"circuit-breaker-bad", "workflow wf\ncircuit_breaker 1"},
		{"budget-bad", "workflow wf\nbudget 0 1h"},
		{"integers-overflow", "workflow wf\nmax_requests_per_minute 99999999999999999999"},
		{"unknown", "workflow wf\nfrobnicate on"},
		{"comment", "# a comment\nworkflow wf # trailing comment"},
		{"line-continuation", "workflow \\\nwf_continued"},
		{"early-close", "workflow wf\n}\nextra {\n"},
		{"stray-open", "{\nworkflow wf"},
		{"nested-open", "workflow wf\napi_key {\n\tnested\n}"},
		{"directive-args", "}\nchatkit extra {\nworkflow wf"},
		{"long-token", "workflow wf_" + strings.Repeat("x", 5000)},
		{"crlf", "workflow wf\r\napi_key k\r\n"},
		{"protect-only", "protect /chatkit /chatkit-upload\nidentity_header X-Site-User\nmax_upload 5MB\nbudget 100 1h"},
		{"protect-only-minting-option", "protect /chatkit\nsession_ttl 5m"},
		{"protect-only-tracing", "protect /chatkit\ntracing off"},
		{"protect-relative-path", "protect chatkit"},
		{"identity-header-without-protect", "workflow wf\nidentity_header X-User"},
		{"identity-header-hop-by-hop", "protect /chatkit\nidentity_header Connection"},
		{"identity-header-not-a-token", "protect /chatkit\nidentity_header \"X User\""},
		{"zero-values", "workflow wf\nrate_limit 0 1s\nbudget 0 0s\nerror_cache 0s\nretries 0"},
		{"paths-collide-then-freed", "workflow wf\nstart_path /api/health\nhealth_path off"},
		{"rate-limit-off-zone", "workflow wf\nrate_limit off {\n\tzone z\n}"},
		{"agent-only", "agent {\n\tmodel gpt-5-mini\n\tinstructions \"Be brief.\"\n}"},
		{"agent-every-option", "workflow wf\nprotect /x\nagent /chat {\n\tprompt pmpt_1 2\n\tinstructions_file /etc/a.md\n\tstore sqlite a.db\n\thistory 7\n\tmax_output_tokens 99\n\treasoning_effort high\n\tmax_input 9\n\ttitle_model off\n\ttoken_budget user 1 1s\n\ttoken_budget site 2 2s\n\tidle_timeout 3s\n\topenai_store on\n}"},
		{"agent-minting-option", "agent {\n\tmodel m\n}\nsession_ttl 1m"},
		{"agent-nested-bad", "agent {\n\tmodel m {\n\t\tx\n\t}\n\ttoken_budget user 1 1s\n\ttoken_budget user 1 1s\n}"},
	}
	seeds := make([]fzSeed, len(bodies))
	for i, b := range bodies {
		seeds[i] = fzSeed{b.name, []any{b.body}}
	}
	return seeds
}

// FuzzCaddyfile: parsing never panics; a parsed handler has a workflow id,
// protect or agent, passes the rules JSON configs pass, and survives the JSON encoding Caddy stores it in, byte for byte and
// field for field.
func FuzzCaddyfile(f *testing.F) {
	for _, s := range fzCaddyfileSeeds() {
		f.Add(s.args[0].(string))
	}
	f.Fuzz(func(t *testing.T, body string) {
		input := "chatkit {\n" + body + "\n}"
		// NewTestDispenser exits the process on a lexer error, and
		// substitutes {$ENV} from the environment: keep to what it
		// tokenizes and to inputs independent of the environment.
		if strings.Contains(input, "{$") {
			return
		}
		if _, err := caddyfile.Tokenize([]byte(input), "Testfile"); err != nil {
			return
		}
		h := new(Handler)
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		again := new(Handler)
		err2 := again.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if (err == nil) != (err2 == nil) || (err == nil && !reflect.DeepEqual(h, again)) {
			t.Fatalf("parsing %q twice gave different results: %v / %v", input, err, err2)
		}
		if err != nil {
			return
		}
		if (h.Workflow == nil || h.Workflow.ID == "") && len(h.Protect) == 0 && h.Agent == nil {
			t.Fatalf("parsed %q with neither a workflow id, protect nor agent: %+v", input, h.Workflow)
		}
		// The parser and JSON configs share one set of rules.
		if err := h.validate(); err != nil {
			t.Fatalf("parsed %q, which the JSON rules refuse: %v", input, err)
		}
		first, err := json.Marshal(h)
		if err != nil {
			t.Fatalf("marshaling the handler parsed from %q: %v", input, err)
		}
		var back Handler
		dec := json.NewDecoder(bytes.NewReader(first))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&back); err != nil {
			t.Fatalf("decoding %s (from %q): %v", first, input, err)
		}
		second, err := json.Marshal(&back)
		if err != nil {
			t.Fatalf("re-marshaling %s: %v", first, err)
		}
		if !bytes.Equal(first, second) {
			t.Fatalf("JSON round trip of %q changed\n%s\ninto\n%s", input, first, second)
		}
		// encoding/json replaces invalid UTF-8, so field equality holds
		// only for valid input; the JSON above must match regardless.
		if utf8.ValidString(input) && !reflect.DeepEqual(*h, back) {
			t.Fatalf("JSON round trip of %q changed the handler\nbefore: %#v\n after: %#v", input, *h, back)
		}
	})
}

// ------------------------------------------------------ committed seed files

// TestFuzzSeedCorpusCommitted checks that every seed above is also a file
// under testdata/fuzz, and writes them when CHATKIT_WRITE_FUZZ_SEEDS=1.
func TestFuzzSeedCorpusCommitted(t *testing.T) {
	targets := map[string][]fzSeed{
		"FuzzStartBody":        fzStartBodySeeds(),
		"FuzzRefreshBody":      fzRefreshBodySeeds(),
		"FuzzAnonymousCookie":  fzCookieSeeds(),
		"FuzzUserID":           fzUserIDSeeds(),
		"FuzzUpstreamResponse": fzUpstreamSeeds(),
		"FuzzJSONString":       fzJSONStringSeeds(),
		"FuzzCaddyfile":        fzCaddyfileSeeds(),
	}
	write := os.Getenv("CHATKIT_WRITE_FUZZ_SEEDS") == "1"
	for target, seeds := range targets {
		dir := filepath.Join("testdata", "fuzz", target)
		if write {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		names := make(map[string]bool)
		for _, s := range seeds {
			if names[s.name] {
				t.Fatalf("%s: duplicate seed name %q", target, s.name)
			}
			names[s.name] = true
			path := filepath.Join(dir, "seed-"+s.name)
			want := fzMarshalCorpus(t, s.args)
			if write {
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s is missing or stale (%v); rewrite with CHATKIT_WRITE_FUZZ_SEEDS=1", path, err)
			}
		}
	}
}

// fzMarshalCorpus renders arguments in Go's "go test fuzz v1" format.
func fzMarshalCorpus(t *testing.T, args []any) []byte {
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case string:
			fmt.Fprintf(&b, "string(%q)\n", v)
		case int64:
			fmt.Fprintf(&b, "int64(%d)\n", v)
		default:
			t.Fatalf("no corpus encoding for %T", a)
		}
	}
	return b.Bytes()
}

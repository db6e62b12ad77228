package chatkit

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
)

const (
	defaultCookieName   = "chatkit_uid"
	defaultCookieMaxAge = 30 * 24 * time.Hour
	minCookieSecretLen  = 32
	// cookieKeyStorageKey is where the generated signing key lives in
	// Caddy's storage, shared by restarts and by instances sharing storage.
	cookieKeyStorageKey = "chatkit/cookie_signing_key"

	// Upstream user ids carry their source, so an anonymous id can never
	// equal an id taken from the user placeholder.
	anonymousUserPrefix   = "anon:"
	placeholderUserPrefix = "user:"
	// maxPlaceholderUser bounds the user id sent upstream; longer values
	// are replaced by their hash.
	maxPlaceholderUser = 256
)

// Cookie layout, before base64url: version, 128 random id bits, expiry in
// Unix seconds, HMAC-SHA256 over the preceding bytes.
const (
	cookieVersion    = 1
	cookieIDLen      = 16
	cookiePayloadLen = 1 + cookieIDLen + 8
	cookieRawLen     = cookiePayloadLen + sha256.Size
)

var (
	errNoUser = errors.New("the user placeholder resolved to an empty value")
)

// identitySource establishes who the end user is: from the configured
// placeholder, or from a signed cookie for anonymous visitors.
type identitySource struct {
	userTemplate string
	cookieName   string
	maxAge       time.Duration
	storage      certmagic.Storage
	now          func() time.Time

	key     atomic.Pointer[[]byte]
	keyMu   sync.Mutex
	macPool sync.Pool
}

func newIdentitySource(userTemplate string, cfg *CookieConfig, secret string, storage certmagic.Storage) *identitySource {
	s := &identitySource{
		userTemplate: userTemplate,
		cookieName:   defaultCookieName,
		maxAge:       defaultCookieMaxAge,
		storage:      storage,
		now:          time.Now,
	}
	if cfg != nil {
		if cfg.Name != "" {
			s.cookieName = cfg.Name
		}
		if cfg.MaxAge > 0 {
			s.maxAge = time.Duration(cfg.MaxAge)
		}
	}
	if secret != "" {
		// Derive a fixed-size key so any secret length signs the same way.
		mac := hmac.New(sha256.New, []byte("caddy-chatkit cookie signing key v1"))
		mac.Write([]byte(secret))
		key := mac.Sum(nil)
		s.setKey(key)
	}
	return s
}

func (s *identitySource) setKey(key []byte) {
	s.macPool = sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}
	s.key.Store(&key)
}

// anonymous reports whether users are identified by cookie.
func (s *identitySource) anonymous() bool { return s.userTemplate == "" }

// visitor is the outcome of identifying one request.
type visitor struct {
	// user is the namespaced id sent upstream as `user`.
	user string
	// cookie, when set, must be sent to the browser (a new or renewed id).
	cookie *http.Cookie
}

// identify returns the request's user. In anonymous mode a missing,
// expired or forged cookie yields a fresh id rather than an error.
func (s *identitySource) identify(ctx context.Context, r *http.Request, repl *caddy.Replacer, secure bool) (visitor, error) {
	if !s.anonymous() {
		id := strings.TrimSpace(repl.ReplaceAll(s.userTemplate, ""))
		if id == "" {
			return visitor{}, errNoUser
		}
		if len(id) > maxPlaceholderUser {
			sum := sha256.Sum256([]byte(id))
			id = "sha256:" + hex.EncodeToString(sum[:])
		}
		return visitor{user: placeholderUserPrefix + id}, nil
	}

	if _, err := s.signingKey(ctx); err != nil {
		return visitor{}, err
	}
	now := s.now()
	var id [cookieIDLen]byte
	renew := true
	if c, err := r.Cookie(s.cookieName); err == nil {
		if got, expires, ok := s.verify(c.Value, now); ok {
			id = got
			// Renew once half the lifetime has passed, so a returning
			// visitor keeps the same id indefinitely.
			renew = expires.Sub(now) < s.maxAge/2
		} else {
			_, _ = rand.Read(id[:])
		}
	} else {
		_, _ = rand.Read(id[:])
	}
	v := visitor{user: anonymousUserPrefix + base64.RawURLEncoding.EncodeToString(id[:])}
	if renew {
		v.cookie = &http.Cookie{
			Name:     s.cookieName,
			Value:    s.sign(id, now.Add(s.maxAge)),
			Path:     "/",
			MaxAge:   int(s.maxAge / time.Second),
			HttpOnly: true,
			Secure:   secure,
			SameSite: http.SameSiteLaxMode,
		}
	}
	return v, nil
}

func (s *identitySource) sign(id [cookieIDLen]byte, expires time.Time) string {
	var raw [cookieRawLen]byte
	raw[0] = cookieVersion
	copy(raw[1:], id[:])
	binary.BigEndian.PutUint64(raw[1+cookieIDLen:], uint64(expires.Unix()))
	s.appendMAC(raw[:cookiePayloadLen], raw[:cookiePayloadLen])
	return base64.RawURLEncoding.EncodeToString(raw[:])
}

// appendMAC appends the HMAC of payload to dst, with a pooled hash.
func (s *identitySource) appendMAC(dst, payload []byte) []byte {
	mac := s.macPool.Get().(hash.Hash)
	defer s.macPool.Put(mac)
	mac.Reset()
	mac.Write(payload)
	return mac.Sum(dst)
}

// verify checks a cookie value's signature and expiry in constant time
// with respect to the signature.
func (s *identitySource) verify(value string, now time.Time) (id [cookieIDLen]byte, expires time.Time, ok bool) {
	var raw [cookieRawLen]byte
	var encoded [(cookieRawLen*8 + 5) / 6]byte // the unpadded base64 length
	if len(encoded) != len(value) {
		return id, expires, false
	}
	copy(encoded[:], value) // decode from the stack, not a heap copy
	if n, err := base64.RawURLEncoding.Decode(raw[:], encoded[:]); err != nil || n != cookieRawLen {
		return id, expires, false
	}
	if raw[0] != cookieVersion {
		return id, expires, false
	}
	var want [sha256.Size]byte
	s.appendMAC(want[:0], raw[:cookiePayloadLen])
	if !hmac.Equal(want[:], raw[cookiePayloadLen:]) {
		return id, expires, false
	}
	expires = time.Unix(int64(binary.BigEndian.Uint64(raw[1+cookieIDLen:])), 0)
	if !expires.After(now) {
		return id, expires, false
	}
	copy(id[:], raw[1:1+cookieIDLen])
	return id, expires, true
}

// signingKey returns the cookie key, loading or creating it in Caddy's
// storage on first use (not in Provision, which must stay free of I/O).
func (s *identitySource) signingKey(ctx context.Context) ([]byte, error) {
	if k := s.key.Load(); k != nil {
		return *k, nil
	}
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	if k := s.key.Load(); k != nil {
		return *k, nil
	}
	if s.storage == nil {
		return nil, errors.New("no cookie key and no storage to keep one")
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	key, err := loadOrCreateKey(ctx, s.storage)
	if err != nil {
		return nil, err
	}
	s.setKey(key)
	return key, nil
}

func loadOrCreateKey(ctx context.Context, storage certmagic.Storage) ([]byte, error) {
	key, err := loadKey(ctx, storage)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	// Another instance sharing the storage may be creating it right now.
	if err := storage.Lock(ctx, cookieKeyStorageKey); err != nil {
		return nil, fmt.Errorf("locking cookie key: %w", err)
	}
	defer func() { _ = storage.Unlock(context.WithoutCancel(ctx), cookieKeyStorageKey) }()
	key, err = loadKey(ctx, storage)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	encoded := []byte(base64.StdEncoding.EncodeToString(key))
	if err := storage.Store(ctx, cookieKeyStorageKey, encoded); err != nil {
		return nil, fmt.Errorf("storing cookie key: %w", err)
	}
	return key, nil
}

func loadKey(ctx context.Context, storage certmagic.Storage) ([]byte, error) {
	encoded, err := storage.Load(ctx, cookieKeyStorageKey)
	if err != nil {
		return nil, err
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(encoded)))
	if err != nil || len(key) < 32 {
		return nil, fmt.Errorf("the cookie key in storage (%s) is corrupt; delete it to generate a new one", cookieKeyStorageKey)
	}
	return key, nil
}

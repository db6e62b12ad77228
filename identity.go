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
	"unicode"
	"unicode/utf8"

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
	// equal an id taken from the user placeholder. Each prefix is its own
	// namespace: none is a prefix of another's possible ids.
	anonymousUserPrefix   = "anon:"
	placeholderUserPrefix = "user:"
	// hashedUserPrefix holds placeholder values that cannot travel as they
	// are (see userID); no literal id can start with it.
	hashedUserPrefix = "user-sha256:"
	// maxPlaceholderUser bounds a literal user id in bytes.
	maxPlaceholderUser = 256

	// keyLoadTimeout bounds one load of the cookie key from storage, and
	// keyRetryAfter how long a failed load is answered from memory before
	// storage is tried again.
	keyLoadTimeout = 10 * time.Second
	keyRetryAfter  = 5 * time.Second
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
	macPool sync.Pool

	// keyMu guards the loading state below (never held through I/O); the
	// key itself, once set, is read without it.
	keyMu      sync.Mutex
	keyLoading *keyLoad // the load from storage in flight, nil when none
	keyErr     error    // the last load's failure, answered until keyRetryAt
	keyRetryAt time.Time
}

// keyLoad is one load of the cookie key from storage, shared by every
// request that needs the key while it runs.
type keyLoad struct {
	done chan struct{} // closed once key and err are set
	key  []byte
	err  error
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
		user, ok := userID(repl.ReplaceAll(s.userTemplate, ""))
		if !ok {
			return visitor{}, errNoUser
		}
		return visitor{user: user}, nil
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

// userID maps a placeholder value to the id sent upstream, one to one:
// distinct values never share an id. A value that is a plain string
// (literalUser) is sent byte for byte as user:<value>; any other is sent as
// user-sha256:<hex of its bytes>, because it would not survive the trip:
// JSON turns invalid UTF-8 into U+FFFD, HTTP parsers drop control
// characters and trim edge whitespace, and the session's user is bounded.
// ok is false for an empty or all-whitespace value, which is a missing
// header rather than somebody's name.
func userID(value string) (id string, ok bool) {
	if strings.TrimSpace(value) == "" {
		return "", false
	}
	if literalUser(value) {
		return placeholderUserPrefix + value, true
	}
	sum := sha256.Sum256([]byte(value))
	return hashedUserPrefix + hex.EncodeToString(sum[:]), true
}

// literalUser reports whether value can be sent upstream and to the
// backend exactly as it is: at most maxPlaceholderUser bytes of valid
// UTF-8, with no control character and no whitespace at either end.
func literalUser(value string) bool {
	if len(value) > maxPlaceholderUser || !utf8.ValidString(value) {
		return false
	}
	first, _ := utf8.DecodeRuneInString(value)
	last, _ := utf8.DecodeLastRuneInString(value)
	if unicode.IsSpace(first) || unicode.IsSpace(last) {
		return false
	}
	return strings.IndexFunc(value, unicode.IsControl) < 0
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
// Concurrent first requests share one load, each waiting only as long as
// its own context lives; a failed load is answered from memory for
// keyRetryAfter, so a broken storage is not hit by every request.
func (s *identitySource) signingKey(ctx context.Context) ([]byte, error) {
	if k := s.key.Load(); k != nil {
		return *k, nil
	}
	s.keyMu.Lock()
	if k := s.key.Load(); k != nil {
		s.keyMu.Unlock()
		return *k, nil
	}
	if s.storage == nil {
		s.keyMu.Unlock()
		return nil, errors.New("no cookie key and no storage to keep one")
	}
	if s.keyErr != nil && s.now().Before(s.keyRetryAt) {
		err := s.keyErr
		s.keyMu.Unlock()
		return nil, err
	}
	load := s.keyLoading
	if load == nil {
		load = &keyLoad{done: make(chan struct{})}
		s.keyLoading = load
		// Detached from this request: if it goes away, the load still
		// serves the requests waiting for it and the ones after.
		go s.runKeyLoad(context.WithoutCancel(ctx), load)
	}
	s.keyMu.Unlock()

	select {
	case <-load.done:
		return load.key, load.err
	case <-ctx.Done():
		return nil, fmt.Errorf("gave up waiting for the cookie key: %w", context.Cause(ctx))
	}
}

func (s *identitySource) runKeyLoad(ctx context.Context, load *keyLoad) {
	ctx, cancel := context.WithTimeout(ctx, keyLoadTimeout)
	defer cancel()
	key, err := loadOrCreateKeyRecovered(ctx, s.storage)

	s.keyMu.Lock()
	if err == nil {
		s.setKey(key)
		s.keyErr = nil
	} else {
		s.keyErr = err
		s.keyRetryAt = s.now().Add(keyRetryAfter)
	}
	s.keyLoading = nil
	s.keyMu.Unlock()

	load.key, load.err = key, err
	close(load.done)
}

// loadOrCreateKeyRecovered turns a panicking storage module into an error:
// it runs on its own goroutine, where a panic would stop Caddy.
func loadOrCreateKeyRecovered(ctx context.Context, storage certmagic.Storage) (key []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			key, err = nil, fmt.Errorf("the storage module panicked loading the cookie key: %v", p)
		}
	}()
	return loadOrCreateKey(ctx, storage)
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

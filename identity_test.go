package chatkit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"golang.org/x/net/http/httpguts"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestIdentity(t *testing.T, clock *fakeClock) *identitySource {
	t.Helper()
	s := newIdentitySource("", nil, strings.Repeat("s", 32), nil)
	s.now = clock.now
	return s
}

func identifyWith(t *testing.T, s *identitySource, cookie *http.Cookie) visitor {
	t.Helper()
	r := httptest.NewRequest("POST", "/api/chatkit/start", nil)
	if cookie != nil {
		r.AddCookie(cookie)
	}
	v, err := s.identify(context.Background(), r, caddy.NewReplacer(), false)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestAnonymousCookieLifecycle(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	s := newTestIdentity(t, clock)

	first := identifyWith(t, s, nil)
	if first.cookie == nil || first.cookie.MaxAge != 30*24*3600 || !first.cookie.HttpOnly ||
		first.cookie.SameSite != http.SameSiteLaxMode || first.cookie.Path != "/" {
		t.Fatalf("new visitor cookie = %+v", first.cookie)
	}

	// Within the first half of its life the cookie is kept as is.
	clock.t = clock.t.Add(14 * 24 * time.Hour)
	again := identifyWith(t, s, first.cookie)
	if again.user != first.user || again.cookie != nil {
		t.Fatalf("day 14: user %q→%q, cookie re-sent %v", first.user, again.user, again.cookie != nil)
	}

	// Past half its life it is renewed with the same id.
	clock.t = clock.t.Add(2 * 24 * time.Hour)
	renewed := identifyWith(t, s, first.cookie)
	if renewed.user != first.user || renewed.cookie == nil || renewed.cookie.Value == first.cookie.Value {
		t.Fatalf("day 16: want the same user with a renewed cookie")
	}

	// The old cookie, once expired, yields a fresh id; the renewed one lives on.
	clock.t = clock.t.Add(15 * 24 * time.Hour)
	if v := identifyWith(t, s, first.cookie); v.user == first.user || v.cookie == nil {
		t.Fatal("an expired cookie kept its id")
	}
	if v := identifyWith(t, s, renewed.cookie); v.user != first.user {
		t.Fatal("the renewed cookie lost its id")
	}
}

func TestAnonymousCookieRejectsTampering(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	s := newTestIdentity(t, clock)
	v := identifyWith(t, s, nil)
	value := v.cookie.Value
	if _, _, ok := s.verify(value, clock.t); !ok {
		t.Fatal("genuine cookie rejected")
	}
	for i := range value {
		b := []byte(value)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		if _, _, ok := s.verify(string(b), clock.t); ok {
			t.Fatalf("cookie with byte %d changed was accepted", i)
		}
	}
	other := newIdentitySource("", nil, strings.Repeat("t", 32), nil)
	if _, _, ok := other.verify(value, clock.t); ok {
		t.Fatal("a cookie signed with another key was accepted")
	}
	for _, junk := range []string{"", "x", strings.Repeat("A", 76), strings.Repeat("=", 500), "anon:abc"} {
		if _, _, ok := s.verify(junk, clock.t); ok {
			t.Fatalf("junk %q accepted", junk)
		}
	}
}

// placeholderIdentity identifies requests by their X-User header.
func placeholderIdentity(t *testing.T) func(value string) (visitor, error) {
	t.Helper()
	s := newIdentitySource("{http.request.header.X-User}", nil, "", nil)
	return func(value string) (visitor, error) {
		r := httptest.NewRequest("POST", "/", nil)
		repl := caddy.NewReplacer()
		repl.Set("http.request.header.X-User", value)
		return s.identify(context.Background(), r, repl, false)
	}
}

func hashedUser(value string) string {
	sum := sha256.Sum256([]byte(value))
	return "user-sha256:" + hex.EncodeToString(sum[:])
}

func TestUserIDsNeverCollide(t *testing.T) {
	identify := placeholderIdentity(t)
	long := strings.Repeat("x", 300)
	longest := strings.Repeat("é", 128) // 256 bytes
	cases := []struct {
		value   string
		literal bool // sent upstream as user:<value>, byte for byte
	}{
		{"alice", true},
		{"ALICE", true},
		{"42", true},
		{"a b", true},
		{"user:alice", true},
		{"anon:AAAAAAAAAAAAAAAAAAAAAA", true},
		{"-sha256:" + hashedUser("x")[len("user-sha256:"):], true},
		{"é", true},
		{"e\u0301", true}, // the same letter, decomposed: other bytes, other id
		{"\ufffd", true},
		{"a\ufffdb", true},
		{longest, true},
		{"ünïcödé and spaces inside", true},
		// Trimming used to merge these with "alice".
		{" alice", false},
		{"alice ", false},
		{"alice\u00a0", false},
		{"\u3000alice", false},
		{"\talice", false},
		// Control characters do not survive an HTTP header.
		{"alice\n", false},
		{"ali\x00ce", false},
		{"ali\x7fce", false},
		{"ali\u0085ce", false},
		{"a\r\nX-Other: 1", false},
		// Invalid UTF-8 used to become U+FFFD in the upstream JSON.
		{"\xff", false},
		{"\xfe", false},
		{"\xff\xfe", false},
		{"a\xffb", false},
		{"\xed\xa0\x80", false}, // an encoded surrogate
		{"\xc0\xaf", false},     // an overlong "/"
		// Too long; its hash once equalled the literal id "sha256:<hex>".
		{long, false},
		{longest + "x", false},
		{"sha256:" + hashedUser(long)[len("user-sha256:"):], true},
	}
	anon := identifyWith(t, newTestIdentity(t, &fakeClock{t: time.Unix(1_800_000_000, 0)}), nil).user

	owner := map[string]string{anon: "an anonymous visitor"}
	for _, tc := range cases {
		v, err := identify(tc.value)
		if err != nil {
			t.Fatalf("%q: %v", tc.value, err)
		}
		if v.cookie != nil {
			t.Fatalf("%q: an identified user got an anonymous cookie", tc.value)
		}
		want := hashedUser(tc.value)
		if tc.literal {
			want = "user:" + tc.value
		}
		if v.user != want {
			t.Errorf("%q: id %q, want %q", tc.value, v.user, want)
		}
		if prev, dup := owner[v.user]; dup {
			t.Errorf("%q and %q share the id %q", tc.value, prev, v.user)
		}
		owner[v.user] = tc.value
		checkTransportableUser(t, v.user)
		if again, _ := identify(tc.value); again.user != v.user {
			t.Errorf("%q: id not stable: %q then %q", tc.value, v.user, again.user)
		}
	}

	// Empty or all-whitespace is a missing header, not a name.
	for _, blank := range []string{"", " ", "   ", "\t", " \r\n ", "\u00a0", "\u2003\u3000"} {
		if _, err := identify(blank); !errors.Is(err, errNoUser) {
			t.Errorf("blank user %q: err = %v, want errNoUser", blank, err)
		}
	}
}

// checkTransportableUser checks that id arrives unchanged wherever it is
// sent: in the upstream JSON body and as the identity header.
func checkTransportableUser(t *testing.T, id string) {
	t.Helper()
	if !utf8.ValidString(id) || strings.IndexFunc(id, unicode.IsControl) >= 0 {
		t.Errorf("id %q is not valid UTF-8 free of control characters", id)
	}
	if strings.TrimSpace(id) != id || !httpguts.ValidHeaderFieldValue(id) {
		t.Errorf("id %q would not survive an HTTP header", id)
	}
	var decoded string
	if err := json.Unmarshal(appendJSONString(nil, id), &decoded); err != nil || decoded != id {
		t.Errorf("id %q comes out of the upstream JSON as %q (%v)", id, decoded, err)
	}
}

// TestUserIDsDistinctThroughCaddy sends spellings that once merged through
// a real Caddy and reads the user ids the fake OpenAI decoded.
func TestUserIDsDistinctThroughCaddy(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "user {http.request.header.X-Test-User}", "")
	c := client(t)
	long := strings.Repeat("y", 257)
	sent := map[string]string{
		"\xff":   hashedUser("\xff"),
		"\xfe":   hashedUser("\xfe"),
		"\ufffd": "user:\ufffd",
		long:     hashedUser(long),
		"sha256:" + hashedUser(long)[len("user-sha256:"):]: "user:sha256:" + hashedUser(long)[len("user-sha256:"):],
	}
	for value, want := range sent {
		expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Test-User", value), fake)
		if got := lastUser(t, fake); got != want {
			t.Errorf("X-Test-User %q reached OpenAI as user %q, want %q", value, got, want)
		}
	}
}

func TestCookieKeySharedThroughStorage(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	a := newIdentitySource("", nil, "", storage)
	b := newIdentitySource("", nil, "", storage)
	var wg sync.WaitGroup
	keys := make([][]byte, 2)
	for i, s := range []*identitySource{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := s.signingKey(context.Background())
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		}()
	}
	wg.Wait()
	if len(keys[0]) != 32 || string(keys[0]) != string(keys[1]) {
		t.Fatal("two sources sharing storage disagree on the key")
	}
	v := identifyWith(t, a, nil)
	if w := identifyWith(t, b, v.cookie); w.user != v.user {
		t.Fatal("instance b does not accept instance a's cookie")
	}

	// A corrupt stored key is an error that says what to do, not a new key.
	if err := storage.Store(context.Background(), cookieKeyStorageKey, []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	c := newIdentitySource("", nil, "", storage)
	if _, err := c.signingKey(context.Background()); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Fatalf("corrupt key: err = %v", err)
	}
}

// syncClock is a clock the key loader's goroutine may read while the test
// moves it.
type syncClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *syncClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *syncClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var errStorageDown = errors.New("storage is down")

// probedStorage is a real file storage that counts Load and Lock calls, can
// hold every Load until released, and can fail.
type probedStorage struct {
	certmagic.Storage
	loads, locks atomic.Int32
	entered      chan struct{} // gets a value as each Load starts
	gate         chan struct{} // when non-nil, Load waits until it is closed
	failing      atomic.Bool
}

func newProbedStorage(t *testing.T) *probedStorage {
	return &probedStorage{Storage: &certmagic.FileStorage{Path: t.TempDir()}, entered: make(chan struct{}, 100)}
}

func (p *probedStorage) Load(ctx context.Context, key string) ([]byte, error) {
	p.loads.Add(1)
	p.entered <- struct{}{}
	if p.gate != nil {
		select {
		case <-p.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if p.failing.Load() {
		return nil, errStorageDown
	}
	return p.Storage.Load(ctx, key)
}

func (p *probedStorage) Lock(ctx context.Context, name string) error {
	p.locks.Add(1)
	if p.failing.Load() {
		return errStorageDown
	}
	return p.Storage.Lock(ctx, name)
}

func storageIdentity(storage certmagic.Storage, clock *syncClock) *identitySource {
	s := newIdentitySource("", nil, "", storage)
	s.now = clock.now
	return s
}

func identifyCtx(ctx context.Context, s *identitySource) (visitor, error) {
	r := httptest.NewRequest("POST", "/api/chatkit/start", nil).WithContext(ctx)
	return s.identify(ctx, r, caddy.NewReplacer(), false)
}

// waitFor fails the test if ch yields nothing in a time no correct run
// comes near; it guards against a hang, it does not measure.
func waitFor[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("still waiting: %s", what)
		panic("unreachable")
	}
}

func TestCookieKeyOneLoadForConcurrentFirstRequests(t *testing.T) {
	storage := newProbedStorage(t)
	storage.gate = make(chan struct{})
	s := storageIdentity(storage, &syncClock{t: time.Unix(1_800_000_000, 0)})

	const n = 20
	users := make(chan string, n)
	for range n {
		go func() {
			v, err := identifyCtx(context.Background(), s)
			if err != nil {
				t.Error(err)
			}
			users <- v.user
		}()
	}
	waitFor(t, storage.entered, "the first request's storage load")
	close(storage.gate)
	seen := make(map[string]bool)
	for range n {
		seen[waitFor(t, users, "a first request")] = true
	}
	// An empty storage: one Load finds nothing, the lock is taken, a second
	// Load under it finds nothing, the key is stored.
	if loads, locks := storage.loads.Load(), storage.locks.Load(); loads != 2 || locks != 1 {
		t.Fatalf("%d concurrent first requests made %d Loads and %d Locks, want one key creation (2, 1)", n, loads, locks)
	}
	if len(seen) != n {
		t.Fatalf("%d requests got %d distinct anonymous ids", n, len(seen))
	}
	if k, err := loadKey(context.Background(), storage.Storage); err != nil || string(k) != string(*s.key.Load()) {
		t.Fatalf("the stored key is not the one in use (%v)", err)
	}
}

func TestCookieKeyFailureCachedBriefly(t *testing.T) {
	storage := newProbedStorage(t)
	storage.failing.Store(true)
	clock := &syncClock{t: time.Unix(1_800_000_000, 0)}
	s := storageIdentity(storage, clock)

	// However many requests arrive at once, a failing storage is asked once.
	const n = 20
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := identifyCtx(context.Background(), s)
			errs <- err
		}()
	}
	for range n {
		if err := waitFor(t, errs, "a request against a failing storage"); !errors.Is(err, errStorageDown) {
			t.Fatalf("err = %v, want the storage's error", err)
		}
	}
	if got := storage.loads.Load(); got != 1 {
		t.Fatalf("%d requests against a failing storage made %d Loads, want 1", n, got)
	}

	// Until the window ends the failure is answered from memory; then
	// storage is tried again, once per window while it keeps failing.
	clock.advance(keyRetryAfter - time.Nanosecond)
	if _, err := identifyCtx(context.Background(), s); !errors.Is(err, errStorageDown) || storage.loads.Load() != 1 {
		t.Fatalf("inside the window: err = %v, Loads = %d, want the cached error and no Load", err, storage.loads.Load())
	}
	clock.advance(time.Nanosecond)
	for range 3 {
		if _, err := identifyCtx(context.Background(), s); !errors.Is(err, errStorageDown) {
			t.Fatalf("second window: err = %v", err)
		}
	}
	if got := storage.loads.Load(); got != 2 {
		t.Fatalf("after one window: %d Loads, want 2", got)
	}

	// A recovered storage serves the first request after the window.
	storage.failing.Store(false)
	if _, err := identifyCtx(context.Background(), s); !errors.Is(err, errStorageDown) {
		t.Fatalf("recovered storage inside the window: err = %v, want the cached error", err)
	}
	clock.advance(keyRetryAfter)
	first, err := identifyCtx(context.Background(), s)
	if err != nil || first.cookie == nil {
		t.Fatalf("recovered storage after the window: %v", err)
	}
	loads := storage.loads.Load()
	again, err := identifyCtx(context.Background(), s)
	if err != nil || storage.loads.Load() != loads {
		t.Fatalf("with the key loaded: err = %v, Loads %d→%d", err, loads, storage.loads.Load())
	}
	r := httptest.NewRequest("POST", "/api/chatkit/start", nil)
	r.AddCookie(first.cookie)
	if v, err := s.identify(context.Background(), r, caddy.NewReplacer(), false); err != nil || v.user != first.user || again.user == first.user {
		t.Fatalf("the recovered key does not keep visitors apart and recognised (%v)", err)
	}
}

func TestCookieKeyWaitEndsWithItsRequest(t *testing.T) {
	storage := newProbedStorage(t)
	storage.gate = make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-storage.gate:
		default:
			close(storage.gate)
		}
	})
	s := storageIdentity(storage, &syncClock{t: time.Unix(1_800_000_000, 0)})

	// Both the request that started the load and one that joined it leave
	// when their own request ends, while storage still hangs.
	for _, who := range []string{"the request that started the load", "a request waiting for it"} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := identifyCtx(ctx, s)
			done <- err
		}()
		if who == "the request that started the load" {
			waitFor(t, storage.entered, "the storage load")
		}
		cancel()
		if err := waitFor(t, done, who+" after its context ended"); !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: err = %v, want context.Canceled", who, err)
		}
	}

	// The load itself went on and now serves everybody, without a new one.
	close(storage.gate)
	if _, err := identifyCtx(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if loads, locks := storage.loads.Load(), storage.locks.Load(); loads != 2 || locks != 1 {
		t.Fatalf("Loads %d, Locks %d: want the one abandoned key creation (2, 1)", loads, locks)
	}
}

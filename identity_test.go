package chatkit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
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

func TestUserPlaceholderNamespacing(t *testing.T) {
	s := newIdentitySource("{http.request.header.X-User}", nil, "", nil)
	repl := caddy.NewReplacer()
	r := httptest.NewRequest("POST", "/", nil)
	repl.Map(func(key string) (any, bool) {
		if key == "http.request.header.X-User" {
			return r.Header.Get("X-User"), true
		}
		return nil, false
	})
	if _, err := s.identify(context.Background(), r, repl, false); err != errNoUser {
		t.Fatalf("empty user: err = %v", err)
	}
	r.Header.Set("X-User", "   ")
	if _, err := s.identify(context.Background(), r, repl, false); err != errNoUser {
		t.Fatalf("blank user: err = %v", err)
	}
	r.Header.Set("X-User", "42")
	if v, _ := s.identify(context.Background(), r, repl, false); v.user != "user:42" || v.cookie != nil {
		t.Fatalf("user = %+v", v)
	}
	r.Header.Set("X-User", strings.Repeat("x", 300))
	if v, _ := s.identify(context.Background(), r, repl, false); !strings.HasPrefix(v.user, "user:sha256:") || len(v.user) > 100 {
		t.Fatalf("long user id not hashed: %q", v.user)
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

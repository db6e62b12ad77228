package chatkit

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestSessionRegistry(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r := newSessionRegistry(3)
	r.remember("ek_a", issuedSession{sessionID: "cksess_a", user: "anon:1", expiresAt: now.Unix() + 600}, now)

	if _, ok := r.take("ek_a", "anon:2", now); ok {
		t.Fatal("another user's refresh found the session")
	}
	got, ok := r.take("ek_a", "anon:1", now)
	if !ok || got.sessionID != "cksess_a" {
		t.Fatalf("take = %+v %v", got, ok)
	}
	if _, ok := r.take("ek_a", "anon:1", now); ok {
		t.Fatal("a session was taken twice")
	}

	// Expired entries are not returned and are forgotten.
	r.remember("ek_old", issuedSession{sessionID: "cksess_old", user: "anon:1", expiresAt: now.Unix() + 10}, now)
	if _, ok := r.take("ek_old", "anon:1", now.Add(11*time.Second)); ok {
		t.Fatal("an expired session was returned")
	}
	r.remember("ek_b", issuedSession{sessionID: "cksess_b", user: "anon:1", expiresAt: now.Unix() + 10}, now)
	r.forgetExpired(now.Add(time.Minute))
	if r.len() != 0 {
		t.Fatalf("%d entries left after expiry", r.len())
	}

	// Bounded: never more than the limit, whatever is remembered.
	for i := 0; i < 50; i++ {
		r.remember("ek_"+strconv.Itoa(i), issuedSession{sessionID: "s", user: "u", expiresAt: now.Unix() + 600}, now)
	}
	if r.len() > 3 {
		t.Fatalf("registry holds %d entries, limit 3", r.len())
	}
}

func TestSessionRegistryStoresNoSecrets(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r := newSessionRegistry(10)
	r.remember("ek_secret_value", issuedSession{sessionID: "cksess_x", user: "anon:1", expiresAt: now.Unix() + 60}, now)
	for k := range r.entries {
		if string(k[:]) == "ek_secret_value" || k != digestSecret("ek_secret_value") {
			t.Fatal("the registry is not keyed by the secret's digest")
		}
	}
}

// liveHandlers returns the chatkit handlers of the running config, as Caddy
// provisioned them.
func liveHandlers(t *testing.T) []*Handler {
	t.Helper()
	app, err := caddy.ActiveContext().AppIfConfigured("http")
	if err != nil {
		t.Fatal(err)
	}
	var found []*Handler
	var walk func(routes caddyhttp.RouteList)
	walk = func(routes caddyhttp.RouteList) {
		for _, route := range routes {
			for _, mh := range route.Handlers {
				switch h := mh.(type) {
				case *Handler:
					found = append(found, h)
				case *caddyhttp.Subroute:
					walk(h.Routes)
				}
			}
		}
	}
	for _, srv := range app.(*caddyhttp.App).Servers {
		walk(srv.Routes)
	}
	return found
}

func TestRevokePanicIsLoggedAndCaddyKeepsServing(t *testing.T) {
	fake := newFake(t)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startSite(t, fake, jsonLogTo(logFile), "revoke_on_refresh on", "")
	handlers := liveHandlers(t)
	if len(handlers) != 1 {
		t.Fatalf("%d chatkit handlers running, want 1", len(handlers))
	}
	// Set before any request reaches the handler.
	handlers[0].beforeRevoke = func() { panic("injected: a bug in the background cancel") }

	browser := client(t)
	secret := expectSecret(t, do(t, browser, "POST", "/api/chatkit/start", ""), fake)
	expectSecret(t, do(t, browser, "POST", "/api/chatkit/refresh", `{"currentClientSecret":"`+secret+`"}`), fake)

	// The panic is logged, with what it interrupted and where.
	var logged map[string]any
	for deadline := time.Now().Add(5 * time.Second); logged == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the panic in the background cancel was not logged")
		}
		raw, err := os.ReadFile(logFile)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(raw)) {
			if strings.Contains(line, "injected: a bug") && strings.HasSuffix(line, "\n") {
				if err := json.Unmarshal([]byte(line), &logged); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if logged["level"] != "error" || logged["task"] != "cancel replaced session" || !strings.Contains(logged["stack"].(string), "revokeInBackground") {
		t.Fatalf("panic log entry = %v", logged)
	}
	if n := countCancels(fake); n != 0 {
		t.Fatalf("%d cancels reached OpenAI past the panic", n)
	}

	// Caddy still serves, and a reload (whose cleanup waits for background
	// work) completes: the goroutine ended.
	expectSecret(t, do(t, browser, "POST", "/api/chatkit/start", ""), fake)
	startSite(t, fake, jsonLogTo(logFile), "", "")
	expectSecret(t, do(t, browser, "POST", "/api/chatkit/start", ""), fake)
	assertNoLeakedGoroutines(t)
}

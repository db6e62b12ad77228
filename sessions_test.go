package chatkit

import (
	"strconv"
	"testing"
	"time"
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

package chatkit

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Integration tests of the limiter through a real Caddy. Each test names
// its own zone: zones outlive configs on purpose.

func expectRateLimitHeaders(t *testing.T, r reply, burst, window, remaining int) {
	t.Helper()
	policy := `"chatkit";q=` + strconv.Itoa(burst) + `;w=` + strconv.Itoa(window)
	if got := r.header.Get("RateLimit-Policy"); got != policy {
		t.Fatalf("RateLimit-Policy = %q, want %q", got, policy)
	}
	prefix := `"chatkit";r=` + strconv.Itoa(remaining) + `;t=`
	if got := r.header.Get("RateLimit"); !strings.HasPrefix(got, prefix) {
		t.Fatalf("RateLimit = %q, want prefix %q", got, prefix)
	}
}

func TestRateLimitBurstThenRefusal(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "rate_limit 3 1m {\n\t\t\tzone burst-test\n\t\t}", "")
	c := client(t)
	for i := 0; i < 3; i++ {
		r := do(t, c, "POST", "/api/chatkit/start", "")
		expectSecret(t, r, fake)
		expectRateLimitHeaders(t, r, 3, 180, 2-i)
	}
	calls := fake.CreateCount()
	r := do(t, c, "POST", "/api/chatkit/refresh", `{"currentClientSecret":"x"}`)
	expectError(t, r, http.StatusTooManyRequests, "rate_limit_exceeded")
	expectRateLimitHeaders(t, r, 3, 180, 0)
	wait, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || wait < 1 || wait > 60 {
		t.Fatalf("Retry-After = %q, want 1..60 whole seconds", r.header.Get("Retry-After"))
	}
	if fake.CreateCount() != calls {
		t.Fatal("a refused request reached OpenAI")
	}
	// Health and plain OPTIONS cost nothing and carry no limit headers.
	h := do(t, c, "GET", "/api/health", "")
	if h.status != 200 || h.header.Get("RateLimit") != "" {
		t.Fatalf("health = %d, RateLimit %q", h.status, h.header.Get("RateLimit"))
	}
}

func TestRateLimitChargesBadRequestsToo(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "rate_limit 2 1m {\n\t\t\tzone probe-test\n\t\t}", "")
	c := client(t)
	for i := 0; i < 2; i++ {
		expectError(t, do(t, c, "POST", "/api/chatkit/refresh", "{}"), http.StatusBadRequest, "bad_request")
	}
	expectError(t, do(t, c, "POST", "/api/chatkit/start", ""), http.StatusTooManyRequests, "rate_limit_exceeded")
	if fake.CreateCount() != 0 {
		t.Fatal("upstream called")
	}
}

func TestRateLimitSpoofedForwardedHeadersLandInPeerBucket(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "rate_limit 2 1m {\n\t\t\tzone spoof-test\n\t\t}", "")
	c := client(t)
	for i, spoof := range []string{"203.0.113.1", "203.0.113.2", "203.0.113.3"} {
		r := do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", spoof, "CF-Connecting-IP", spoof, "X-Real-IP", spoof)
		if i < 2 {
			expectSecret(t, r, fake)
		} else {
			expectError(t, r, http.StatusTooManyRequests, "rate_limit_exceeded")
		}
	}
}

func TestRateLimitTrustedProxyClientsGetOwnBuckets(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "servers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}",
		"rate_limit 1 1m {\n\t\t\tzone proxy-test\n\t\t}", "")
	c := client(t)
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "198.51.100.7"), fake)
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "198.51.100.8"), fake)
	expectError(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "198.51.100.7"),
		http.StatusTooManyRequests, "rate_limit_exceeded")
	// Addresses in one IPv6 /64 share a bucket; another /64 does not.
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "2001:db8:1:2::1"), fake)
	expectError(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "2001:db8:1:2:ffff::9"),
		http.StatusTooManyRequests, "rate_limit_exceeded")
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "2001:db8:1:3::1"), fake)
}

func TestRateLimitSurvivesReload(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "rate_limit 2 1m {\n\t\t\tzone reload-test\n\t\t}", "")
	c := client(t)
	for i := 0; i < 2; i++ {
		expectSecret(t, do(t, c, "POST", "/api/chatkit/start", ""), fake)
	}
	expectError(t, do(t, c, "POST", "/api/chatkit/start", ""), http.StatusTooManyRequests, "rate_limit_exceeded")

	// A changed config (same zone, same limits, another option).
	startSite(t, fake, "", "session_ttl 2m\n\t\trate_limit 2 1m {\n\t\t\tzone reload-test\n\t\t}", "")
	expectError(t, do(t, c, "POST", "/api/chatkit/start", ""), http.StatusTooManyRequests, "rate_limit_exceeded")

	// A reload that lowers the limits still refuses.
	startSite(t, fake, "", "rate_limit 1 1m {\n\t\t\tzone reload-test\n\t\t}", "")
	r := do(t, c, "POST", "/api/chatkit/start", "")
	expectError(t, r, http.StatusTooManyRequests, "rate_limit_exceeded")
	expectRateLimitHeaders(t, r, 1, 60, 0)
}

func TestRateLimitKeyPlaceholder(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "rate_limit 1 1m {\n\t\t\tzone user-key-test\n\t\t\tkey {http.request.header.X-Account}\n\t\t}", "")
	c := client(t)
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Account", "a"), fake)
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Account", "b"), fake)
	expectError(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Account", "a"), http.StatusTooManyRequests, "rate_limit_exceeded")
	// Empty key value falls back to the client IP (its own bucket).
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", ""), fake)
	expectError(t, do(t, c, "POST", "/api/chatkit/start", ""), http.StatusTooManyRequests, "rate_limit_exceeded")
}

func TestBudgetCapsSessionsAcrossClients(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "servers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}",
		"rate_limit 5 1s {\n\t\t\tzone budget-test\n\t\t}\n\t\tbudget 3 1h", "")
	c := client(t)
	for i := 0; i < 3; i++ {
		expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "192.0.2."+strconv.Itoa(i+1)), fake)
	}
	r := do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "192.0.2.99")
	expectError(t, r, http.StatusServiceUnavailable, "budget_exhausted")
	wait, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || wait < 1 || wait > 1200 {
		t.Fatalf("Retry-After = %q, want up to one refill (1200s)", r.header.Get("Retry-After"))
	}
	if fake.CreateCount() != 3 {
		t.Fatalf("upstream got %d calls, want 3", fake.CreateCount())
	}
}

func TestRateLimitHeadersOnFreeAnswers(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "rate_limit 2 1m {\n\t\t\tzone free-answers-test\n\t\t}", "")
	c := client(t)
	// A wrong method and a refused origin carry the headers but spend nothing.
	r := do(t, c, "GET", "/api/chatkit/start", "")
	expectError(t, r, http.StatusMethodNotAllowed, "method_not_allowed")
	expectRateLimitHeaders(t, r, 2, 120, 2)
	r = do(t, c, "POST", "/api/chatkit/start", "", "Origin", "https://evil.example")
	expectError(t, r, http.StatusForbidden, "origin_not_allowed")
	expectRateLimitHeaders(t, r, 2, 120, 2)
	expectRateLimitHeaders(t, do(t, c, "POST", "/api/chatkit/start", ""), 2, 120, 1)
	expectRateLimitHeaders(t, do(t, c, "POST", "/api/chatkit/start", ""), 2, 120, 0)
	r = do(t, c, "GET", "/api/chatkit/refresh", "")
	expectRateLimitHeaders(t, r, 2, 120, 0)
	if !strings.HasSuffix(r.header.Get("RateLimit"), ";t=60") {
		t.Fatalf("RateLimit = %q, want the next token in 60s", r.header.Get("RateLimit"))
	}
}

package chatkit

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
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
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startSite(t, fake, "servers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}\n\tlog {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t}",
		"rate_limit 5 1s {\n\t\t\tzone budget-test\n\t\t}\n\t\tbudget 3 1h", "")
	c := client(t)
	for i := 0; i < 3; i++ {
		expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "192.0.2."+strconv.Itoa(i+1)), fake)
	}
	r := do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "192.0.2.99")
	expectError(t, r, http.StatusServiceUnavailable, "budget_exhausted")
	// Exactly when the first session leaves the hour: it was minted a
	// moment ago, so (rounded up) the whole hour.
	if got := r.header.Get("Retry-After"); got != "3600" && got != "3599" {
		t.Fatalf("Retry-After = %q, want 3600 (the oldest session leaves the window in an hour)", got)
	}
	if fake.CreateCount() != 3 {
		t.Fatalf("upstream got %d calls, want 3", fake.CreateCount())
	}
	// The refusals are counted; the log warns once for the window.
	series := `caddy_chatkit_budget_exhausted_total{zone="zone:budget-test"}`
	before := scrapeCounter(t, series)
	for i := 0; i < 3; i++ {
		expectError(t, do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-For", "192.0.2.98"),
			http.StatusServiceUnavailable, "budget_exhausted")
	}
	if got := scrapeCounter(t, series); got != before+3 {
		t.Fatalf("%s = %v, want %v", series, got, before+3)
	}
	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), "site-wide budget exhausted"); n != 1 {
		t.Fatalf("%d budget warnings for four refusals in one window, want 1", n)
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

// ---- limiter outside Caddy, on an injected clock -------------------------

// testClock is an injectable clock (the janitor reads it concurrently).
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock(t time.Time) *testClock { return &testClock{t: t} }

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// wallSteppedBack returns what time.Now() returns at `at` once the system
// clock has been stepped back by d (NTP, a resumed VM): at's monotonic
// reading with a wall reading d earlier. The time package has no way to
// build one, so this edits its representation (wall: the hasMonotonic bit,
// 33 bits of seconds, 30 of nanoseconds; ext: the monotonic reading), then
// checks the result through the public API, so a change of layout fails
// the test instead of fooling it.
func wallSteppedBack(t *testing.T, at time.Time, d time.Duration) time.Time {
	t.Helper()
	type timeRep struct {
		wall uint64
		ext  int64
		loc  *time.Location
	}
	if unsafe.Sizeof(at) != unsafe.Sizeof(timeRep{}) || d%time.Second != 0 || d < 0 {
		t.Fatal("wallSteppedBack: unexpected time.Time layout or step")
	}
	stepped := at
	rep := (*timeRep)(unsafe.Pointer(&stepped))
	if rep.wall&(1<<63) == 0 {
		t.Fatal("wallSteppedBack: the time has no monotonic reading")
	}
	rep.wall -= uint64(d/time.Second) << 30
	if !stepped.Round(0).Equal(at.Round(0).Add(-d)) || stepped.Sub(at) != 0 || !strings.Contains(stepped.String(), " m=") {
		t.Fatalf("wallSteppedBack: got %v from %v", stepped, at)
	}
	return stepped
}

func TestWallSteppedBackIsWhatItSays(t *testing.T) {
	at := time.Now()
	later := wallSteppedBack(t, at.Add(time.Second), time.Hour)
	if got := later.Sub(at); got != time.Second {
		t.Fatalf("monotonic reading moved %v, want 1s", got)
	}
	if got := later.UnixNano() - at.UnixNano(); got != int64(time.Second-time.Hour) {
		t.Fatalf("wall reading moved %v, want 1s-1h", time.Duration(got))
	}
}

// unitHandler provisions a minting handler outside Caddy (as Caddy would:
// Provision, then Validate) on an injected clock, against the fake.
// extra is more JSON fields, each with a leading comma.
func unitHandler(t *testing.T, fake *fakeopenai.Server, now func() time.Time, extra string) *Handler {
	t.Helper()
	raw := `{"api_base":"` + fake.URL() + `","api_key":"` + fakeopenai.DefaultAPIKey +
		`","workflow":{"id":"wf_unit"},"cookie":{"secret":"0123456789abcdef0123456789abcdef"}` + extra + `}`
	h := new(Handler)
	if err := json.Unmarshal([]byte(raw), h); err != nil {
		t.Fatal(err)
	}
	h.now = now
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return h
}

// serveUnit sends one request from peer (an IP) through h.
func serveUnit(t *testing.T, h *Handler, method, path, peer string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, nil)
	r.RemoteAddr = net.JoinHostPort(peer, "40000")
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
	w := httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	return w
}

func expectUnitStatus(t *testing.T, w *httptest.ResponseRecorder, status int, what string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("%s: status %d, want %d (%s)", what, w.Code, status, w.Body)
	}
}

func TestBudgetExactAcrossWindowEdge(t *testing.T) {
	fake := newFake(t)
	start := time.Unix(1_700_000_000, 0)
	clock := newTestClock(start)
	h := unitHandler(t, fake, clock.now, `,"rate_limit":{"burst":100,"zone":"budget-edge-test"},"budget":{"sessions":3,"interval":"1h"}`)
	// Three sessions at the very end of one hour...
	clock.set(start.Add(time.Hour - 3*time.Second))
	for i := range 3 {
		expectUnitStatus(t, serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.1"), 200, "end of the first hour")
		if i < 2 {
			clock.advance(time.Second)
		}
	}
	// ...and none at the start of the next, nor until the first of them
	// is an hour old (a bucket of 3 refilled over the hour let 2 more in
	// by then). Retry-After counts down to exactly that moment.
	for _, at := range []time.Duration{time.Hour, time.Hour + 20*time.Minute, 2*time.Hour - 3*time.Second - time.Millisecond} {
		clock.set(start.Add(at))
		w := serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.2")
		expectUnitStatus(t, w, http.StatusServiceUnavailable, "the next hour")
		want := time.Duration(2*time.Hour - 3*time.Second - at)
		if got := w.Header().Get("Retry-After"); got != retryAfterSeconds(want) {
			t.Fatalf("at +%v: Retry-After %s, want %s", at, got, retryAfterSeconds(want))
		}
	}
	if fake.CreateCount() != 3 {
		t.Fatalf("%d sessions minted, want 3", fake.CreateCount())
	}
	// The first leaves the window: one more, and no second.
	clock.set(start.Add(2*time.Hour - 3*time.Second))
	expectUnitStatus(t, serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.2"), 200, "when the first left")
	w := serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.3")
	expectUnitStatus(t, w, http.StatusServiceUnavailable, "right after")
	if got := w.Header().Get("Retry-After"); got != "1" {
		t.Fatalf("Retry-After %s, want 1 (the second leaves in 1s)", got)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestBudgetWarnsOncePerWindowAndCounts(t *testing.T) {
	fake := newFake(t)
	start := time.Unix(1_700_000_000, 0)
	clock := newTestClock(start)
	h := unitHandler(t, fake, clock.now, `,"rate_limit":{"burst":100,"zone":"budget-warn-test"},"budget":{"sessions":2,"interval":"10m"}`)
	core, logs := observer.New(zap.WarnLevel)
	h.limiter.logger = zap.New(core)
	counter := budgetExhausted.WithLabelValues("zone:budget-warn-test")
	before := counterValue(t, counter)

	exhaust := func(refusals int) {
		t.Helper()
		for range 2 {
			expectUnitStatus(t, serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.1"), 200, "within the budget")
		}
		for range refusals {
			clock.advance(time.Minute)
			expectUnitStatus(t, serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.1"), http.StatusServiceUnavailable, "past the budget")
		}
	}
	exhaust(4)
	if n := logs.FilterMessageSnippet("budget exhausted").Len(); n != 1 {
		t.Fatalf("%d warnings for four refusals in one window, want 1", n)
	}
	if got := counterValue(t, counter) - before; got != 4 {
		t.Fatalf("budget_exhausted_total rose by %v, want 4", got)
	}
	// The next window, exhausted again: one more warning.
	clock.advance(10 * time.Minute)
	exhaust(2)
	warnings := logs.FilterMessageSnippet("budget exhausted").All()
	if len(warnings) != 2 {
		t.Fatalf("%d warnings over two windows, want 2", len(warnings))
	}
	if got := counterValue(t, counter) - before; got != 6 {
		t.Fatalf("budget_exhausted_total rose by %v, want 6", got)
	}
	if f := warnings[1].ContextMap(); f["budget"] != int64(2) || f["retry_after"] != 9*time.Minute {
		t.Fatalf("warning fields %v, want budget 2 and retry_after 9m (the first refusal, a minute into the window)", f)
	}
}

func TestWallClockStepBackLocksNobodyOut(t *testing.T) {
	fake := newFake(t)
	clock := newTestClock(time.Now())
	h := unitHandler(t, fake, clock.now, `,"rate_limit":{"burst":10,"interval":"1s","zone":"clock-step-test"},"budget":{"sessions":2,"interval":"1h"}`)
	expectUnitStatus(t, serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.1"), 200, "before the step")

	// The system clock steps back an hour; a second passes.
	clock.set(wallSteppedBack(t, clock.now().Add(time.Second), time.Hour))
	w := serveUnit(t, h, "GET", "/api/chatkit/start", "192.0.2.1")
	if got := w.Header().Get("RateLimit"); got != `"chatkit";r=10;t=0` {
		t.Fatalf("RateLimit after the step = %q, want a full bucket", got)
	}
	expectUnitStatus(t, serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.1"), 200, "the same client after the step")
	// The budget counts on: its second session, then a wait of (under)
	// one hour, not two.
	w = serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.2")
	expectUnitStatus(t, w, http.StatusServiceUnavailable, "a third session in the hour")
	if got := w.Header().Get("Retry-After"); got != "3599" {
		t.Fatalf("Retry-After %s, want 3599 (the first session leaves the window then)", got)
	}
	// The janitor sweeps on the same base: nothing recent is dropped, so
	// the client's spent token stays spent.
	h.limiter.zone.sweep(clock.now)
	if w := serveUnit(t, h, "GET", "/api/chatkit/start", "192.0.2.1"); w.Header().Get("RateLimit") != `"chatkit";r=9;t=1` {
		t.Fatalf("RateLimit after a sweep = %q", w.Header().Get("RateLimit"))
	}
}

func TestJanitorSurvivesAPanickingSweep(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	z := makeLimiterZone(100)
	z.logger.Store(zap.New(core))
	sweeps := 0
	z.sweepHook = func() {
		sweeps++
		if sweeps == 1 {
			panic("injected sweep failure")
		}
	}
	l := limit{burst: 1, interval: time.Second}
	z.keepLenientLimit(l)
	clock := newTestClock(time.Now())
	z.buckets.allow(stringBucketKey("idle"), l, z.clock.nanos(clock.now()))
	clock.advance(time.Minute) // the bucket has refilled: the next sweep drops it

	ticks := make(chan time.Time)
	go z.janitor(clock.now, ticks)
	// An unbuffered send returns once the janitor has taken the tick, so
	// the third send proves the first two sweeps have finished.
	for range 3 {
		select {
		case ticks <- time.Time{}:
		case <-z.done:
			t.Fatal("the janitor stopped after a panic in a sweep")
		}
	}
	if err := z.Destruct(); err != nil {
		t.Fatal(err)
	}
	if sweeps != 3 {
		t.Fatalf("%d sweeps ran, want 3: the janitor stopped after the panic", sweeps)
	}
	if n := z.buckets.len(); n != 0 {
		t.Fatalf("%d buckets left: the sweeps after the panic did nothing", n)
	}
	entries := logs.FilterMessageSnippet("recovered from a panic").All()
	if len(entries) != 1 {
		t.Fatalf("%d panic reports, want 1", len(entries))
	}
	f := entries[0].ContextMap()
	if f["panic"] != "injected sweep failure" || f["task"] != "rate-limit janitor sweep" || !strings.Contains(fmt.Sprint(f["stack"]), "sweep") {
		t.Fatalf("panic report %v does not say what failed and where", f)
	}
}

package chatkit

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// assertNoLeakedGoroutines fails if, after a short grace period for
// goroutines that are already finishing, any goroutine is still running
// the module's upstream code or a fake handler.
func assertNoLeakedGoroutines(t *testing.T) {
	t.Helper()
	suspects := []string{"caddy-chatkit.(*upstreamClient)", "caddy-chatkit.(*Handler).revokeInBackground", "fakeopenai.(*Server)"}
	deadline := time.Now().Add(3 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var leaked []string
		for _, g := range strings.Split(stacks, "\n\n") {
			for _, s := range suspects {
				if strings.Contains(g, s) {
					leaked = append(leaked, g)
					break
				}
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines outlived the test:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRetryThenSuccess(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "timeout 5s", "")
	c := client(t)

	fake.Inject(fakeopenai.Fault{Status: 500})
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", ""), fake)
	if n := fake.CreateCount(); n != 2 {
		t.Fatalf("500 then success: %d upstream calls, want 2", n)
	}

	// A reset connection is retried too.
	fake.Reset()
	fake.Inject(fakeopenai.Fault{Kind: fakeopenai.FaultReset})
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", ""), fake)
	if n := fake.CreateCount(); n != 2 {
		t.Fatalf("reset then success: %d upstream calls, want 2", n)
	}

	// 429 with a Retry-After that fits in the deadline: waited out, then 200.
	fake.Reset()
	fake.Inject(fakeopenai.Fault{Status: 429, Header: map[string]string{"Retry-After": "1"}})
	started := time.Now()
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", ""), fake)
	if elapsed := time.Since(started); elapsed < 900*time.Millisecond {
		t.Fatalf("Retry-After 1 was not obeyed: retried after %s", elapsed)
	}

	// Retries stop at `retries` (default 2): three attempts, then 502.
	fake.Reset()
	fake.Inject(fakeopenai.Fault{Status: 503, Times: 3})
	expectError(t, do(t, c, "POST", "/api/chatkit/start", ""), http.StatusBadGateway, "upstream_error")
	if n := fake.CreateCount(); n != 3 {
		t.Fatalf("%d upstream calls, want 3", n)
	}
	assertNoLeakedGoroutines(t)
}

func TestNoRetryWhenOpenAISaysNo(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "timeout 5s\n\t\terror_cache off", "")
	c := client(t)
	cases := []struct {
		fault fakeopenai.Fault
		code  string
	}{
		{fakeopenai.Fault{Status: 400}, "upstream_rejected"},
		{fakeopenai.Fault{Status: 401}, "upstream_auth_failed"},
		{fakeopenai.Fault{Status: 403}, "upstream_auth_failed"},
		{fakeopenai.Fault{Status: 404}, "workflow_not_found"},
		{fakeopenai.Fault{Status: 500, Header: map[string]string{"x-should-retry": "false"}}, "upstream_error"},
		{fakeopenai.Fault{Kind: fakeopenai.FaultMalformedJSON}, "upstream_invalid_response"},
	}
	for _, tc := range cases {
		fake.Reset()
		fake.Inject(tc.fault)
		expectError(t, do(t, c, "POST", "/api/chatkit/start", ""), http.StatusBadGateway, tc.code)
		if n := fake.CreateCount(); n != 1 {
			t.Fatalf("%+v was retried: %d calls", tc.fault, n)
		}
	}
	// x-should-retry: true makes a 409 retried.
	fake.Reset()
	fake.Inject(fakeopenai.Fault{Status: 409, Header: map[string]string{"x-should-retry": "true"}})
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", ""), fake)
	if n := fake.CreateCount(); n != 2 {
		t.Fatalf("409 with x-should-retry true: %d calls, want 2", n)
	}
	assertNoLeakedGoroutines(t)
}

func TestRetryAfterBeyondDeadlineAnswers503(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "timeout 2s", "")
	fake.Inject(fakeopenai.Fault{Status: 429, Header: map[string]string{"Retry-After": "30"}})
	started := time.Now()
	r := do(t, client(t), "POST", "/api/chatkit/start", "")
	expectError(t, r, http.StatusServiceUnavailable, "upstream_rate_limited")
	if r.header.Get("Retry-After") != "30" {
		t.Fatalf("Retry-After = %q, want OpenAI's 30", r.header.Get("Retry-After"))
	}
	if elapsed := time.Since(started); elapsed > time.Second || fake.CreateCount() != 1 {
		t.Fatalf("waited %s and made %d calls; want an immediate answer", elapsed, fake.CreateCount())
	}
	assertNoLeakedGoroutines(t)
}

func TestDeadlineBoundsEveryFault(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "timeout 600ms", "")
	c := client(t)
	for _, f := range []fakeopenai.Fault{
		{Kind: fakeopenai.FaultHangMidBody, Times: 5},
		{Delay: 5 * time.Second, Times: 5},
		{Status: 500, Delay: 300 * time.Millisecond, Times: 5},
	} {
		fake.Reset()
		fake.Inject(f)
		started := time.Now()
		r := do(t, c, "POST", "/api/chatkit/start", "")
		if elapsed := time.Since(started); elapsed > 1500*time.Millisecond {
			t.Fatalf("%+v held the request %s past a 600ms timeout", f, elapsed)
		}
		if r.status != http.StatusGatewayTimeout && r.status != http.StatusBadGateway {
			t.Fatalf("%+v: status %d", f, r.status)
		}
	}
	assertNoLeakedGoroutines(t)
}

func TestAuthErrorsAreCached(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "error_cache 30s", "")
	c := client(t)
	fake.Inject(fakeopenai.Fault{Status: 404})
	first := do(t, c, "POST", "/api/chatkit/start", "")
	expectError(t, first, http.StatusBadGateway, "workflow_not_found")
	for i := 0; i < 5; i++ {
		again := do(t, c, "POST", "/api/chatkit/start", "")
		expectError(t, again, http.StatusBadGateway, "workflow_not_found")
	}
	if n := fake.CreateCount(); n != 1 {
		t.Fatalf("cached 404 still called OpenAI: %d calls", n)
	}
	h := do(t, c, "GET", "/api/health", "")
	if h.json["status"] != "degraded" || h.status != 200 {
		t.Fatalf("health after a workflow 404 = %d %s", h.status, h.body)
	}
	assertNoLeakedGoroutines(t)
}

func TestCircuitBreakerOpensAndAnswersFast(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "retries 0\n\t\tcircuit_breaker 3 1m", "")
	c := client(t)
	fake.Inject(fakeopenai.Fault{Status: 500, Times: 3})
	for i := 0; i < 3; i++ {
		expectError(t, do(t, c, "POST", "/api/chatkit/start", ""), http.StatusBadGateway, "upstream_error")
	}
	r := do(t, c, "POST", "/api/chatkit/start", "")
	expectError(t, r, http.StatusServiceUnavailable, "circuit_open")
	wait, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || wait < 1 || wait > 60 {
		t.Fatalf("circuit_open Retry-After = %q", r.header.Get("Retry-After"))
	}
	if n := fake.CreateCount(); n != 3 {
		t.Fatalf("open breaker called OpenAI: %d calls", n)
	}
	if h := do(t, c, "GET", "/api/health", ""); h.json["status"] != "degraded" {
		t.Fatalf("health with an open breaker = %s", h.body)
	}
	assertNoLeakedGoroutines(t)
}

func TestRevokeOnRefresh(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "revoke_on_refresh on", "")
	alice := client(t)
	first := expectSecret(t, do(t, alice, "POST", "/api/chatkit/start", ""), fake)
	firstID := fake.Sessions()[0].ID

	// Another visitor presenting alice's secret cancels nothing.
	expectSecret(t, do(t, client(t), "POST", "/api/chatkit/refresh", `{"currentClientSecret":"`+first+`"}`), fake)
	// A secret this server never issued cancels nothing either.
	expectSecret(t, do(t, alice, "POST", "/api/chatkit/refresh", `{"currentClientSecret":"ek_not_ours"}`), fake)

	expectSecret(t, do(t, alice, "POST", "/api/chatkit/refresh", `{"currentClientSecret":"`+first+`"}`), fake)
	// The fake records a call when it arrives and cancels the session when
	// it answers it: wait for the answer, then count the calls.
	deadline := time.Now().Add(3 * time.Second)
	for fake.Sessions()[0].Status != "cancelled" {
		if time.Now().After(deadline) {
			t.Fatalf("session status = %s after 3 s, want cancelled", fake.Sessions()[0].Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var cancels []string
	for _, rq := range fake.Requests() {
		if strings.HasSuffix(rq.Path, "/cancel") {
			cancels = append(cancels, rq.Path)
		}
	}
	if len(cancels) != 1 || !strings.Contains(cancels[0], firstID) {
		t.Fatalf("cancel calls = %v, want exactly one for %s", cancels, firstID)
	}

	// A failing cancel (the fake forgot the session) never fails a refresh.
	second := expectSecret(t, do(t, alice, "POST", "/api/chatkit/start", ""), fake)
	fake.Reset()
	expectSecret(t, do(t, alice, "POST", "/api/chatkit/refresh", `{"currentClientSecret":"`+second+`"}`), fake)
	assertNoLeakedGoroutines(t)
}

// responsesClient is an upstream client on the fake, as the agent builds it.
func responsesClient(t *testing.T, fake *fakeopenai.Server, retries int) *upstreamClient {
	t.Helper()
	c := newUpstreamClient(upstreamConfig{apiBase: fake.URL(), apiKey: fakeopenai.DefaultAPIKey, retries: retries})
	c.baseDelay = time.Millisecond
	t.Cleanup(c.close)
	return c
}

func TestOpenStreamRetriesOnlyBeforeHeaders(t *testing.T) {
	fake := newFake(t)
	c := responsesClient(t, fake, 2)
	body := []byte(`{"model":"gpt-5-mini","input":"hi","stream":true}`)

	fake.ScriptResponse(fakeopenai.ResponseScript{Status: 502})
	resp, call, uerr := c.openStream(context.Background(), time.Now().Add(5*time.Second), body)
	if uerr != nil {
		t.Fatalf("502 then a stream: %v", uerr)
	}
	if call.retries != 1 || fake.ResponsesCount() != 2 || call.status != 200 || call.requestID == "" {
		t.Fatalf("call %+v after %d requests", call, fake.ResponsesCount())
	}
	events, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !strings.Contains(string(events), "event: response.completed") {
		t.Fatalf("stream: %v %q", err, events)
	}
	got := fake.Requests()[1]
	if got.Path != "/v1/responses" || got.Header.Get("OpenAI-Beta") != "" || got.Header.Get("Accept") != "text/event-stream" ||
		got.Header.Get("Content-Type") != "application/json" || got.Header.Get("Authorization") != "Bearer "+fakeopenai.DefaultAPIKey {
		t.Fatalf("request %s %v", got.Path, got.Header)
	}

	// A wait OpenAI asks for that the deadline cannot hold: answered now.
	fake.ScriptResponse(fakeopenai.ResponseScript{Status: 429, Header: map[string]string{"Retry-After": "7"}})
	start := time.Now()
	_, _, uerr = c.openStream(context.Background(), time.Now().Add(2*time.Second), body)
	if uerr == nil || uerr.failure != failRateLimited || uerr.retryAfter != 7*time.Second || time.Since(start) > time.Second {
		t.Fatalf("429 past the deadline: %+v after %s", uerr, time.Since(start))
	}

	// A 200 that is not an event stream is unusable.
	_, _, uerr = c.openStream(context.Background(), time.Now().Add(5*time.Second), []byte(`{"model":"gpt-5-mini","input":"hi"}`))
	if uerr == nil || uerr.failure != failInvalidResponse {
		t.Fatalf("a JSON answer to a stream request: %+v", uerr)
	}

	// The title call is not streamed and has no beta header either.
	_, payload, uerr := c.postResponses(context.Background(), []byte(`{"model":"gpt-5-nano","input":"hi","store":false}`))
	if text, _, ok := agentResponseText(payload); uerr != nil || !ok || text != "You said: hi" {
		t.Fatalf("postResponses: %v %q", uerr, payload)
	}
	if h := fake.Requests()[len(fake.Requests())-1].Header; h.Get("OpenAI-Beta") != "" || h.Get("Accept") != "application/json" {
		t.Fatalf("title call headers %v", h)
	}
	assertNoLeakedGoroutines(t)
}

package chatkit

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// These tests run a real Caddy inside the test binary (caddytest: admin on
// localhost:2999, HTTP on 9080) in front of the fake OpenAI API. One Caddy
// per test binary: none of them may run in parallel.

const siteURL = "http://localhost:9080"

// caddyConfig wraps a chatkit block and the rest of a site in the global
// options every caddytest config needs.
func caddyConfig(globalExtra, chatkitBlock, siteExtra string) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
	%s
}
http://localhost:9080 {
	chatkit {
		%s
	}
	%s
	handle {
		respond "the next handler" 200
	}
}
`, globalExtra, chatkitBlock, siteExtra)
}

// startSite loads a config whose chatkit block points at fake.
func startSite(t *testing.T, fake *fakeopenai.Server, globalExtra, chatkitExtra, siteExtra string) *caddytest.Tester {
	t.Helper()
	if !strings.Contains(chatkitExtra, "rate_limit") {
		// Buckets outlive configs by design; tests that do not test the
		// limiter must not spend from a shared zone.
		chatkitExtra += "\n\t\trate_limit off"
	}
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\tworkflow wf_test\n\t\t%s", fake.URL(), fakeopenai.DefaultAPIKey, chatkitExtra)
	return newTester(t, caddyConfig(globalExtra, block, siteExtra))
}

// newTester loads a Caddyfile into the test binary's Caddy.
func newTester(t *testing.T, config string) *caddytest.Tester {
	t.Helper()
	tester := caddytest.NewTester(t)
	tester.InitServer(config, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	return tester
}

func newFake(t *testing.T) *fakeopenai.Server {
	t.Helper()
	fake := fakeopenai.New(fakeopenai.Options{})
	t.Cleanup(fake.Close)
	return fake
}

// client is a browser-like client with its own cookie jar.
func client(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := plainClient(t)
	c.Jar = jar
	return c
}

// plainClient has no cookie jar. Each test client has its own transport:
// a keep-alive connection to a server that a config reload closed must
// not be reused by the next test.
func plainClient(t *testing.T) *http.Client {
	t.Helper()
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport, Timeout: 10 * time.Second}
}

type reply struct {
	status int
	header http.Header
	body   string
	json   map[string]any
}

func do(t *testing.T, c *http.Client, method, path, body string, headers ...string) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, siteURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if strings.EqualFold(headers[i], "Host") {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, body: string(raw)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.json); err != nil {
			t.Fatalf("%s %s: invalid JSON %q: %v", method, path, raw, err)
		}
	}
	return r
}

// expectError checks the module's JSON error shape.
func expectError(t *testing.T, r reply, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d (body %s)", r.status, status, r.body)
	}
	if r.json["error"] != code {
		t.Fatalf("error = %v, want %q (body %s)", r.json["error"], code, r.body)
	}
	if msg, _ := r.json["message"].(string); msg == "" {
		t.Fatalf("error without message: %s", r.body)
	}
	id, _ := r.json["request_id"].(string)
	if id == "" || r.header.Get("X-Request-Id") != id {
		t.Fatalf("request_id %q does not match header %q", id, r.header.Get("X-Request-Id"))
	}
}

// expectSecret checks a successful mint and returns the secret.
func expectSecret(t *testing.T, r reply, fake *fakeopenai.Server) string {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status = %d, want 200 (body %s)", r.status, r.body)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("Cache-Control = %q, want no-store", cc)
	}
	if r.header.Get("X-Request-Id") == "" {
		t.Fatal("no X-Request-Id header")
	}
	secret, _ := r.json["client_secret"].(string)
	expires, isNum := r.json["expires_at"].(float64)
	if secret == "" || !isNum || expires != float64(int64(expires)) || len(r.json) != 2 {
		t.Fatalf("body %s is not {client_secret, expires_at}", r.body)
	}
	sessions := fake.Sessions()
	last := sessions[len(sessions)-1]
	if last.ClientSecret != secret || last.ExpiresAt != int64(expires) {
		t.Fatalf("returned secret/expiry do not match the fake's last session")
	}
	return secret
}

func lastUser(t *testing.T, fake *fakeopenai.Server) string {
	t.Helper()
	cr := fake.LastCreate()
	if cr == nil {
		t.Fatal("the fake received no create request")
	}
	return cr.User
}

func TestMintStartAndRefreshSameUser(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "", "")
	browser := client(t)

	// Exactly what the WordPress client sends: no body, no Content-Type.
	r := do(t, browser, "POST", "/api/chatkit/start", "")
	secret := expectSecret(t, r, fake)
	cookie := r.header.Get("Set-Cookie")
	for _, want := range []string{"chatkit_uid=", "Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=2592000"} {
		if !strings.Contains(cookie, want) {
			t.Errorf("Set-Cookie %q lacks %q", cookie, want)
		}
	}
	if strings.Contains(cookie, "Secure") {
		t.Errorf("cookie over plain HTTP must not be Secure: %q", cookie)
	}
	user := lastUser(t, fake)
	if !strings.HasPrefix(user, "anon:") || len(user) < len("anon:")+22 {
		t.Fatalf("anonymous user %q is not a namespaced 128-bit id", user)
	}

	// The exact upstream call.
	reqs := fake.Requests()
	got := reqs[len(reqs)-1]
	if got.Header.Get("Authorization") != "Bearer "+fakeopenai.DefaultAPIKey ||
		got.Header.Get("OpenAI-Beta") != "chatkit_beta=v1" ||
		got.Header.Get("Content-Type") != "application/json" || got.Path != "/v1/chatkit/sessions" {
		t.Fatalf("upstream request headers/path wrong: %s %v", got.Path, got.Header)
	}
	var sent map[string]any
	if err := json.Unmarshal(got.Body, &sent); err != nil {
		t.Fatal(err)
	}
	if len(sent) != 2 || sent["workflow"].(map[string]any)["id"] != "wf_test" || len(sent["workflow"].(map[string]any)) != 1 {
		t.Fatalf("unconfigured options were sent upstream: %s", got.Body)
	}

	r = do(t, browser, "POST", "/api/chatkit/refresh", `{"currentClientSecret":"`+secret+`"}`, "Content-Type", "application/json")
	second := expectSecret(t, r, fake)
	if second == secret {
		t.Fatal("refresh returned the same secret")
	}
	if lastUser(t, fake) != user {
		t.Fatalf("refresh minted for %q, want the same user %q", lastUser(t, fake), user)
	}
	if r.header.Get("Set-Cookie") != "" {
		t.Errorf("a fresh valid cookie should not be re-sent: %q", r.header.Get("Set-Cookie"))
	}

	// A new browser (cleared cookies) is a new user.
	r = do(t, client(t), "POST", "/api/chatkit/start", "{}", "Content-Type", "application/json")
	expectSecret(t, r, fake)
	if lastUser(t, fake) == user {
		t.Fatal("a browser without the cookie got the same user")
	}

	// A refresh without any cookie is not refused: it gets a fresh id.
	r = do(t, client(t), "POST", "/api/chatkit/refresh", `{"currentClientSecret":"ek_unknown_to_this_server"}`)
	expectSecret(t, r, fake)
	if r.header.Get("Set-Cookie") == "" {
		t.Fatal("refresh without cookie should set one")
	}
}

func TestMintBodyValidation(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "", "")
	c := client(t)

	accepted := []struct{ body, contentType string }{
		{"", ""},
		{"", "application/json"},
		{"{}", "application/json"},
		{`{"anything": [1, 2]}`, "text/plain"},
		{" \n{} ", "application/x-www-form-urlencoded"},
	}
	for _, a := range accepted {
		r := do(t, c, "POST", "/api/chatkit/start", a.body, "Content-Type", a.contentType)
		expectSecret(t, r, fake)
	}

	before := fake.CreateCount()
	refused := []struct{ path, body string }{
		{"/api/chatkit/start", "null"},
		{"/api/chatkit/start", "[]"},
		{"/api/chatkit/start", "hello"},
		{"/api/chatkit/start", `{"unterminated": `},
		{"/api/chatkit/start", `{} {}`},
		{"/api/chatkit/refresh", ""},
		{"/api/chatkit/refresh", "null"},
		{"/api/chatkit/refresh", "{}"},
		{"/api/chatkit/refresh", `{"currentClientSecret":null}`},
		{"/api/chatkit/refresh", `{"currentClientSecret":""}`},
		{"/api/chatkit/refresh", `{"currentClientSecret":"  \t "}`},
		{"/api/chatkit/refresh", `{"currentClientSecret":42}`},
		{"/api/chatkit/refresh", `{"currentClientSecret":["ek_x"]}`},
		{"/api/chatkit/refresh", `["ek_x"]`},
		{"/api/chatkit/refresh", `"ek_x"`},
		{"/api/chatkit/refresh", `{"currentClientSecret":"` + strings.Repeat("k", 2049) + `"}`},
	}
	for _, rf := range refused {
		r := do(t, c, "POST", rf.path, rf.body, "Content-Type", "application/json")
		expectError(t, r, http.StatusBadRequest, "bad_request")
	}
	if n := fake.CreateCount() - before; n != 0 {
		t.Fatalf("%d upstream calls for refused bodies", n)
	}

	r := do(t, c, "POST", "/api/chatkit/start", `{"pad":"`+strings.Repeat("x", 9000)+`"}`)
	expectError(t, r, http.StatusRequestEntityTooLarge, "payload_too_large")
}

func TestMethodsPathsAndHealth(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "", "")
	c := client(t)

	for _, m := range []string{"GET", "PUT", "DELETE", "PATCH"} {
		for _, p := range []string{"/api/chatkit/start", "/api/chatkit/refresh"} {
			r := do(t, c, m, p, "")
			expectError(t, r, http.StatusMethodNotAllowed, "method_not_allowed")
			if r.header.Get("Allow") != "OPTIONS, POST" {
				t.Fatalf("%s %s: Allow = %q", m, p, r.header.Get("Allow"))
			}
		}
	}
	r := do(t, c, "POST", "/api/health", "")
	expectError(t, r, http.StatusMethodNotAllowed, "method_not_allowed")
	if r.header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("health Allow = %q", r.header.Get("Allow"))
	}

	r = do(t, c, "GET", "/api/health", "")
	if r.status != 200 || r.json["status"] != "ok" || r.json["version"] != moduleVersion || len(r.json) != 2 {
		t.Fatalf("health = %d %s", r.status, r.body)
	}
	if r.header.Get("X-Request-Id") == "" {
		t.Fatal("health has no request id header")
	}

	// Everything else goes to the next handler untouched.
	for _, p := range []string{"/", "/wp-admin/", "/api/chatkit/start/", "/api/chatkit", "/api/healthz"} {
		r = do(t, c, "POST", p, "some=form&data=1", "Content-Type", "application/x-www-form-urlencoded")
		if r.status != 200 || r.body != "the next handler" || r.header.Get("X-Request-Id") != "" {
			t.Fatalf("POST %s was not passed on untouched: %d %q", p, r.status, r.body)
		}
	}
	if fake.CreateCount() != 0 {
		t.Fatal("upstream called for non-mint requests")
	}
}

func TestHealthOffAndCustomPaths(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "start_path /chat/token\n\t\trefresh_path /chat/token/refresh\n\t\thealth_path off", "")
	c := client(t)
	r := do(t, c, "GET", "/api/health", "")
	if r.body != "the next handler" {
		t.Fatalf("health_path off still answered: %s", r.body)
	}
	r = do(t, c, "POST", "/chat/token", "")
	expectSecret(t, r, fake)
	r = do(t, c, "POST", "/chat/token/refresh", `{"currentClientSecret":"x"}`)
	expectSecret(t, r, fake)
	r = do(t, c, "POST", "/api/chatkit/start", "")
	if r.body != "the next handler" {
		t.Fatalf("default start path still answered after start_path was changed")
	}
}

func TestUserPlaceholder(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "user {http.request.header.X-Test-User}", "")
	c := client(t)

	r := do(t, c, "POST", "/api/chatkit/start", "")
	expectError(t, r, http.StatusUnauthorized, "unauthorized")
	if fake.CreateCount() != 0 {
		t.Fatal("upstream called without a user")
	}
	// Body validation comes before identity.
	r = do(t, c, "POST", "/api/chatkit/refresh", "{}")
	expectError(t, r, http.StatusBadRequest, "bad_request")

	r = do(t, c, "POST", "/api/chatkit/start", "", "X-Test-User", "alice")
	expectSecret(t, r, fake)
	if got := lastUser(t, fake); got != "user:alice" {
		t.Fatalf("user = %q, want user:alice", got)
	}
	if r.header.Get("Set-Cookie") != "" {
		t.Fatal("identified users need no anonymous cookie")
	}
	// An id that looks like an anonymous one still cannot collide with one.
	r = do(t, c, "POST", "/api/chatkit/refresh", `{"currentClientSecret":"x"}`, "X-Test-User", "anon:abc")
	expectSecret(t, r, fake)
	if got := lastUser(t, fake); got != "user:anon:abc" {
		t.Fatalf("user = %q", got)
	}
}

func TestConfiguredOptionsReachUpstream(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", `session_ttl 90s
		max_requests_per_minute 25
		tracing off
		state_variable plan gold
		state_variable page {http.request.header.X-Page}
		file_upload on {
			max_file_size 20
			max_files 3
		}
		history on {
			recent_threads 7
		}
		thread_titling off`, "")
	r := do(t, client(t), "POST", "/api/chatkit/start", "", "X-Page", "pricing")
	expectSecret(t, r, fake)
	cr := fake.LastCreate()
	if cr.ExpiresAfter == nil || cr.ExpiresAfter.Anchor != "created_at" || cr.ExpiresAfter.Seconds != 90 {
		t.Fatalf("expires_after = %+v", cr.ExpiresAfter)
	}
	if cr.RateLimits == nil || *cr.RateLimits.MaxRequestsPer1Minute != 25 {
		t.Fatalf("rate_limits = %+v", cr.RateLimits)
	}
	if cr.Workflow.Tracing == nil || *cr.Workflow.Tracing.Enabled {
		t.Fatal("tracing off not sent")
	}
	if cr.Workflow.StateVariables["plan"] != "gold" || cr.Workflow.StateVariables["page"] != "pricing" {
		t.Fatalf("state variables = %v", cr.Workflow.StateVariables)
	}
	cfg := cr.ChatKitConfiguration
	if cfg == nil || !*cfg.FileUpload.Enabled || *cfg.FileUpload.MaxFileSize != 20 || *cfg.FileUpload.MaxFiles != 3 ||
		!*cfg.History.Enabled || *cfg.History.RecentThreads != 7 || *cfg.AutomaticThreadTitling.Enabled {
		t.Fatalf("chatkit_configuration = %+v", cfg)
	}
	// Placeholders are resolved per request.
	do(t, client(t), "POST", "/api/chatkit/start", "", "X-Page", "blog")
	if got := fake.LastCreate().Workflow.StateVariables["page"]; got != "blog" {
		t.Fatalf("second request's page = %v", got)
	}
}

func TestUpstreamFaultsMapToDocumentedAnswers(t *testing.T) {
	fake := newFake(t)
	// One attempt, no memory: each fault maps straight to its answer.
	startSite(t, fake, "", "timeout 500ms\n\t\tretries 0\n\t\terror_cache off\n\t\tcircuit_breaker off", "")
	c := client(t)
	cases := []struct {
		fault  fakeopenai.Fault
		status int
		code   string
	}{
		{fakeopenai.Fault{Status: 401}, 502, "upstream_auth_failed"},
		{fakeopenai.Fault{Status: 403}, 502, "upstream_auth_failed"},
		{fakeopenai.Fault{Status: 404}, 502, "workflow_not_found"},
		{fakeopenai.Fault{Status: 400}, 502, "upstream_rejected"},
		{fakeopenai.Fault{Status: 429, Header: map[string]string{"Retry-After": "7"}}, 503, "upstream_rate_limited"},
		{fakeopenai.Fault{Status: 500}, 502, "upstream_error"},
		{fakeopenai.Fault{Status: 503}, 502, "upstream_error"},
		{fakeopenai.Fault{Kind: fakeopenai.FaultMalformedJSON}, 502, "upstream_invalid_response"},
		{fakeopenai.Fault{Kind: fakeopenai.FaultMissingSecret}, 502, "upstream_invalid_response"},
		{fakeopenai.Fault{Kind: fakeopenai.FaultHugeBody}, 502, "upstream_invalid_response"},
		{fakeopenai.Fault{Kind: fakeopenai.FaultLyingLength}, 502, "upstream_invalid_response"},
		{fakeopenai.Fault{Kind: fakeopenai.FaultReset}, 502, "upstream_unreachable"},
		{fakeopenai.Fault{Kind: fakeopenai.FaultHangMidBody}, 502, "upstream_invalid_response"},
		{fakeopenai.Fault{Delay: 2 * time.Second}, 504, "upstream_timeout"},
	}
	for _, tc := range cases {
		fake.Inject(tc.fault)
		started := time.Now()
		r := do(t, c, "POST", "/api/chatkit/start", "")
		expectError(t, r, tc.status, tc.code)
		if elapsed := time.Since(started); elapsed > 3*time.Second {
			t.Fatalf("%+v took %s, past the 500ms timeout", tc.fault, elapsed)
		}
		if tc.status == 503 && r.header.Get("Retry-After") != "7" {
			t.Fatalf("upstream 429 Retry-After = %q, want 7", r.header.Get("Retry-After"))
		}
		// Nothing of the upstream body reaches the browser.
		for _, leak := range []string{"Incorrect API key", "not found.", "server_error", fakeopenai.DefaultAPIKey} {
			if strings.Contains(r.body, leak) {
				t.Fatalf("response leaks upstream text %q: %s", leak, r.body)
			}
		}
	}
	// After the faults the same site works again.
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", ""), fake)
	assertNoLeakedGoroutines(t)
}

func TestUpstreamUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/v1"
	ln.Close()
	newTester(t, caddyConfig("", "api_base "+closed+"\n\t\tapi_key sk-x\n\t\tworkflow wf_test\n\t\trate_limit off", ""))
	r := do(t, client(t), "POST", "/api/chatkit/start", "")
	expectError(t, r, http.StatusBadGateway, "upstream_unreachable")
	assertNoLeakedGoroutines(t)
}

func TestForwardedHeadersOnlyFromTrustedProxies(t *testing.T) {
	fake := newFake(t)
	// The test client connects from 127.0.0.1: first as an untrusted peer.
	startSite(t, fake, "", "", "")
	c := client(t)
	r := do(t, c, "POST", "/api/chatkit/start", "", "X-Forwarded-Proto", "https")
	expectSecret(t, r, fake)
	if strings.Contains(r.header.Get("Set-Cookie"), "Secure") {
		t.Fatal("X-Forwarded-Proto from an untrusted peer made the cookie Secure")
	}
	r = do(t, c, "POST", "/api/chatkit/start", "", "Origin", "https://www.example.com",
		"X-Forwarded-Proto", "https", "X-Forwarded-Host", "www.example.com")
	expectError(t, r, http.StatusForbidden, "origin_not_allowed")

	// Now 127.0.0.1 is a trusted TLS-terminating proxy (a CDN in front of WordPress).
	startSite(t, fake, "servers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}", "", "")
	r = do(t, client(t), "POST", "/api/chatkit/start", "", "Origin", "https://www.example.com",
		"X-Forwarded-Proto", "https", "X-Forwarded-Host", "www.example.com")
	expectSecret(t, r, fake)
	if !strings.Contains(r.header.Get("Set-Cookie"), "Secure") {
		t.Fatalf("cookie behind a trusted HTTPS proxy is not Secure: %q", r.header.Get("Set-Cookie"))
	}
}

func TestCookieIdentityCannotBeForged(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "cookie_secret 0123456789abcdef0123456789abcdef-test", "")
	c := client(t)
	r := do(t, c, "POST", "/api/chatkit/start", "")
	expectSecret(t, r, fake)
	user := lastUser(t, fake)
	value := strings.TrimPrefix(strings.Split(r.header.Get("Set-Cookie"), ";")[0], "chatkit_uid=")

	// Flip one character of the id part: a new id, never the chosen one.
	forged := []byte(value)
	if forged[5] == 'A' {
		forged[5] = 'B'
	} else {
		forged[5] = 'A'
	}
	for _, bad := range []string{string(forged), "anon:attacker", value[:len(value)-2], ""} {
		r = do(t, plainClient(t), "POST", "/api/chatkit/start", "", "Cookie", "chatkit_uid="+bad)
		expectSecret(t, r, fake)
		if got := lastUser(t, fake); got == user || got == "anon:attacker" {
			t.Fatalf("forged cookie %q was accepted as %q", bad, got)
		}
		if r.header.Get("Set-Cookie") == "" {
			t.Fatal("forged cookie did not get a fresh one")
		}
	}
	// The genuine cookie still works, from any client.
	do(t, plainClient(t), "POST", "/api/chatkit/refresh", `{"currentClientSecret":"x"}`, "Cookie", "chatkit_uid="+value)
	if lastUser(t, fake) != user {
		t.Fatal("the genuine cookie lost its user")
	}
}

func TestCookieKeyPersistsInStorage(t *testing.T) {
	fake := newFake(t)
	storage := t.TempDir()
	global := "storage file_system " + storage
	startSite(t, fake, global, "", "")
	r := do(t, client(t), "POST", "/api/chatkit/start", "")
	expectSecret(t, r, fake)
	user := lastUser(t, fake)
	cookie := strings.Split(r.header.Get("Set-Cookie"), ";")[0]

	// A different config (a restart, another instance) with the same
	// storage accepts the cookie.
	startSite(t, fake, global, "session_ttl 5m", "")
	r = do(t, plainClient(t), "POST", "/api/chatkit/start", "", "Cookie", cookie)
	expectSecret(t, r, fake)
	if lastUser(t, fake) != user {
		t.Fatal("the stored cookie key did not survive a config change")
	}
}

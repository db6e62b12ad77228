package chatkit

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// readLogLines returns every JSON line of a log file.
func readLogLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %s", sc.Text())
		}
		lines = append(lines, m)
	}
	return lines
}

// TestSecretsNeverLeak runs the module's scenarios with a canary API key and
// checks that the key appears in no log line, response, header or metric,
// and that each client secret appears only in the body that delivered it.
func TestSecretsNeverLeak(t *testing.T) {
	const canaryKey = "sk-canary-0123456789-DO-NOT-LEAK"
	fake := fakeopenai.New(fakeopenai.Options{APIKey: canaryKey})
	t.Cleanup(fake.Close)
	dir := t.TempDir()
	moduleLog, accessLog := filepath.Join(dir, "caddy.log"), filepath.Join(dir, "access.log")
	config := `{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
	log {
		output file ` + moduleLog + `
		format json
		level DEBUG
	}
}
http://localhost:9080 {
	log {
		output file ` + accessLog + `
		format json
	}
	log_append chatkit_outcome {http.chatkit.outcome}
	log_append chatkit_session {http.chatkit.session_id}
	log_append chatkit_user {http.chatkit.user_hash}
	chatkit {
		api_base ` + fake.URL() + `
		api_key ` + canaryKey + `
		workflow wf_test
		revoke_on_refresh on
		retries 1
		error_cache off
		rate_limit 12 1h {
			zone canary-test
		}
	}
	respond "the next handler"
}
`
	tester := caddytest.NewTester(t)
	tester.InitServer(config, "caddyfile")

	var transcript strings.Builder
	record := func(resp *http.Response) string {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for k, vs := range resp.Header {
			if k == "Set-Cookie" {
				continue // the one place the cookie is meant to be
			}
			transcript.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
		}
		return string(body)
	}
	post := func(c *http.Client, path, body string) (int, string) {
		resp, err := c.Post(siteURL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, record(resp)
	}

	browser := client(t)
	var deliveredIn = map[string]string{} // secret → the body that delivered it
	status, body := post(browser, "/api/chatkit/start", "")
	if status != 200 {
		t.Fatalf("start: %d %s", status, body)
	}
	secret := fake.Sessions()[len(fake.Sessions())-1].ClientSecret
	deliveredIn[secret] = body
	for i := 0; i < 3; i++ {
		status, body = post(browser, "/api/chatkit/refresh", `{"currentClientSecret":"`+secret+`"}`)
		if status != 200 {
			t.Fatalf("refresh: %d %s", status, body)
		}
		transcript.WriteString(body + "\n")
		secret = fake.Sessions()[len(fake.Sessions())-1].ClientSecret
		deliveredIn[secret] = body
	}
	// Faults and refusals, each echoing the presented secret in the request.
	for _, f := range []fakeopenai.Fault{{Status: 401}, {Status: 404}, {Status: 500, Times: 2}, {Kind: fakeopenai.FaultMalformedJSON}, {Status: 429}} {
		fake.Inject(f)
		_, body = post(browser, "/api/chatkit/refresh", `{"currentClientSecret":"`+secret+`"}`)
		transcript.WriteString(body + "\n")
	}
	for _, bad := range []string{`{"currentClientSecret":"` + secret + `", "x": }`, `{"currentClientSecret":["` + secret + `"]}`} {
		_, body = post(browser, "/api/chatkit/refresh", bad)
		transcript.WriteString(body + "\n")
	}
	// Health, then refusals: a foreign origin, its preflight, a wrong method, then the
	// rate limit (a burst of 12 in this config, 11 spent so far).
	send := func(method, path, body string, headers ...string) {
		req, _ := http.NewRequest(method, siteURL+path, strings.NewReader(body))
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := browser.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		transcript.WriteString(record(resp) + "\n")
	}
	send("GET", "/api/health", "")
	send("POST", "/api/chatkit/refresh", `{"currentClientSecret":"`+secret+`"}`, "Origin", "https://evil.example")
	send("OPTIONS", "/api/chatkit/refresh", "", "Origin", "https://evil.example", "Access-Control-Request-Method", "POST")
	send("GET", "/api/chatkit/start", "")
	send("POST", "/api/chatkit/refresh", `{"currentClientSecret":"`+secret+`"}`)
	send("POST", "/api/chatkit/refresh", `{"currentClientSecret":"`+secret+`"}`)

	// Background cancels finish before the logs are read.
	deadline := time.Now().Add(3 * time.Second)
	for countCancels(fake) < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	metrics, err := http.Get("http://localhost:2999/metrics")
	if err != nil {
		t.Fatal(err)
	}
	transcript.WriteString(record(metrics))

	logs := ""
	for _, p := range []string{moduleLog, accessLog} {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		logs += string(raw)
	}
	cookie := ""
	for _, c := range browser.Jar.Cookies(mustURL(siteURL)) {
		cookie = c.Value
	}
	if cookie == "" || len(deliveredIn) != 4 {
		t.Fatalf("scenario incomplete: cookie %q, %d secrets", cookie, len(deliveredIn))
	}
	everything := logs + transcript.String()
	for _, canary := range []string{canaryKey, "canary-0123456789", cookie} {
		if strings.Contains(everything, canary) {
			t.Errorf("%q leaked into logs, headers, bodies or metrics", canary)
		}
	}
	for secret, body := range deliveredIn {
		if strings.Contains(logs, secret) {
			t.Errorf("client secret leaked into the logs")
		}
		if n := strings.Count(transcript.String(), secret); n > 1 || (n == 1 && !strings.Contains(body, secret)) {
			t.Errorf("client secret appears %d times outside the response that delivered it", n)
		}
	}

	// One structured entry per handled request, with the documented fields.
	var entries []map[string]any
	for _, l := range readLogLines(t, moduleLog) {
		if l["logger"] == "http.handlers.chatkit" && l["endpoint"] != nil {
			entries = append(entries, l)
		}
	}
	if len(entries) != 17 {
		t.Fatalf("%d chatkit request log entries, want 17 (one per request)", len(entries))
	}
	outcomes := map[string]int{}
	for _, e := range entries {
		outcomes[e["outcome"].(string)]++
	}
	for _, o := range []string{"success", "upstream_error", "bad_request", "health", "origin_denied", "method_not_allowed", "rate_limited"} {
		if outcomes[o] == 0 {
			t.Errorf("no %q request in the scenario: %v", o, outcomes)
		}
	}
	first := entries[0]
	for _, field := range []string{"request_id", "endpoint", "outcome", "status", "duration", "client_ip", "upstream_status", "upstream_duration", "retries", "openai_request_id", "session_id", "user_hash"} {
		if _, ok := first[field]; !ok {
			t.Errorf("log entry lacks %q: %v", field, first)
		}
	}
	if first["level"] != "info" || first["outcome"] != "success" || !strings.HasPrefix(first["session_id"].(string), "cksess_") {
		t.Errorf("success entry = %v", first)
	}
	levels := map[string]string{}
	for _, e := range entries {
		if code, ok := e["upstream_status"].(float64); ok && code >= 400 {
			levels[e["level"].(string)] = e["msg"].(string)
		}
	}
	if !strings.Contains(levels["error"], "API key") && !strings.Contains(levels["error"], "workflow") {
		t.Errorf("auth/workflow errors are not logged at error with a hint: %v", levels)
	}
	if levels["warn"] == "" {
		t.Errorf("server errors are not logged at warn: %v", levels)
	}

	// Placeholders reach the access log.
	var access []map[string]any
	for _, l := range readLogLines(t, accessLog) {
		if l["chatkit_outcome"] != nil {
			access = append(access, l)
		}
	}
	if len(access) == 0 || access[0]["chatkit_outcome"] != "success" ||
		!strings.HasPrefix(access[0]["chatkit_session"].(string), "cksess_") || len(access[0]["chatkit_user"].(string)) != 12 {
		t.Fatalf("access log placeholders missing: %v", access)
	}
}

func countCancels(fake *fakeopenai.Server) int {
	n := 0
	for _, r := range fake.Requests() {
		if strings.HasSuffix(r.Path, "/cancel") {
			n++
		}
	}
	return n
}

func mustURL(raw string) *url.URL {
	u, err := url.Parse(raw)
	if err != nil {
		panic(err)
	}
	return u
}

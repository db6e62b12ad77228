package chatkit

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// readmeSection returns the text of the README's `## <title>` section.
func readmeSection(t *testing.T, title string) string {
	t.Helper()
	raw, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	start := strings.Index(text, "\n## "+title+"\n")
	if start < 0 {
		t.Fatalf("README has no %q section", title)
	}
	text = text[start+len("\n## "+title+"\n"):]
	if end := strings.Index(text, "\n## "); end >= 0 {
		text = text[:end]
	}
	return text
}

// errorTableRow is a row of the README's error table: `| 429 | `code` | …`.
var errorTableRow = regexp.MustCompile("^\\| *([0-9]{3}) *\\| *`([a-z_]+)` *\\|")

func TestREADMEErrorTableListsExactlyTheAnswers(t *testing.T) {
	inCode := map[string]bool{}
	for _, a := range allAnswers() {
		inCode[strconv.Itoa(a.status)+" "+a.code] = true
	}
	inREADME := map[string]bool{}
	for _, line := range strings.Split(readmeSection(t, "Endpoints"), "\n") {
		m := errorTableRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		row := m[1] + " " + m[2]
		if inREADME[row] {
			t.Errorf("README error table lists %q twice", row)
		}
		inREADME[row] = true
	}
	if len(inREADME) == 0 {
		t.Fatal("no error table found in the README's Endpoints section")
	}
	for row := range inCode {
		if !inREADME[row] {
			t.Errorf("answer %q is missing from the README's error table", row)
		}
	}
	for row := range inREADME {
		if !inCode[row] {
			t.Errorf("the README's error table lists %q, which the code never answers", row)
		}
	}
	// Every outcome an answer logs is documented with the log fields.
	observability := readmeSection(t, "Observability")
	for _, a := range allAnswers() {
		if !strings.Contains(observability, "`"+a.outcome+"`") {
			t.Errorf("outcome %q (answer %s) is not listed in the README's Observability section", a.outcome, a.code)
		}
	}
}

// TestAllAnswersListsEveryAnswer keeps allAnswers complete: every `answer{…}`
// literal in the package's code must be one of the values it returns, so an
// answer added later (or written inline at a call site) fails here until it
// is listed, and then the README test holds the README to it.
func TestAllAnswersListsEveryAnswer(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	literals := 0
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.CompositeLit); ok {
				if id, ok := lit.Type.(*ast.Ident); ok && id.Name == "answer" {
					literals++
					if name != "answers.go" {
						t.Errorf("%s: an answer written outside answers.go", fset.Position(lit.Pos()))
					}
				}
			}
			return true
		})
	}
	answers := allAnswers()
	distinct := map[answer]bool{}
	for _, a := range answers {
		if distinct[a] {
			t.Errorf("allAnswers lists %+v twice", a)
		}
		distinct[a] = true
		if a.status < 400 || a.status > 599 || a.code == "" || a.message == "" || a.outcome == "" {
			t.Errorf("incomplete answer %+v", a)
		}
	}
	if literals != len(distinct) {
		t.Fatalf("the code writes %d answer literals but allAnswers lists %d distinct answers", literals, len(distinct))
	}
}

// TestFailureRulesDecideEverything checks, for every kind of upstream
// failure, that the code paths which act on it take what its rule says.
func TestFailureRulesDecideEverything(t *testing.T) {
	h := &Handler{}
	for f := upstreamFailure(1); f < failureCount; f++ {
		rule := f.rule()
		uerr := &upstreamError{failure: f}
		if !slices.Contains(allAnswers(), rule.answer) || rule.log == "" {
			t.Errorf("failure %d: incomplete rule %+v", f, rule)
		}
		// A configuration error is an answer from OpenAI: it must end a
		// run of failures, or health and the error cache never see it.
		if rule.configError && rule.breaker != breakerResets {
			t.Errorf("failure %d: a configuration error that does not reset the breaker", f)
		}

		if level, msg := upstreamLogLevel(uerr); level != rule.level || msg != rule.log {
			t.Errorf("failure %d logs %s %q, rule says %s %q", f, level, msg, rule.level, rule.log)
		}

		rec := httptest.NewRecorder()
		x := &exchange{w: rec, r: httptest.NewRequest(http.MethodPost, "/api/chatkit/start", nil), repl: caddy.NewReplacer(), requestID: "req-1"}
		h.failUpstream(x, uerr)
		if rec.Code != rule.answer.status || x.outcome != rule.answer.outcome || !strings.Contains(rec.Body.String(), `"error":"`+rule.answer.code+`"`) {
			t.Errorf("failure %d answered %d %s %s, rule says %+v", f, rec.Code, x.outcome, rec.Body, rule.answer)
		}
		if got, want := rec.Header().Get("Retry-After"), rule.waitByDefault > 0; (got != "") != want {
			t.Errorf("failure %d: Retry-After %q, rule's default wait %s", f, got, rule.waitByDefault)
		}

		// Breaker: after one counted failure (threshold 2), this one opens
		// it, ends the run, or changes nothing.
		now := time.Unix(1_800_000_000, 0)
		g := &upstreamGuard{threshold: 2, cooldown: time.Minute}
		g.record(&upstreamError{failure: failServer, status: 500}, false, now)
		g.record(uerr, false, now)
		want := map[breakerEffect]int{breakerCounts: 2, breakerResets: 0, breakerIgnores: 1}[rule.breaker]
		if g.failures != want || g.isOpen() != (rule.breaker == breakerCounts) {
			t.Errorf("failure %d: breaker run %d (open %v), rule's effect %d", f, g.failures, g.isOpen(), rule.breaker)
		}
		fresh := &upstreamGuard{threshold: 2, cooldown: time.Minute}
		fresh.record(uerr, false, now)
		if fresh.degraded(now) != rule.configError {
			t.Errorf("failure %d: health degraded %v after one, rule's config error %v", f, fresh.degraded(now), rule.configError)
		}

		// Retries, without a status that OpenAI's SDKs never retry.
		for _, header := range []string{"", "true", "false"} {
			want := map[string]bool{"": rule.retry == retryUnlessRefused, "true": rule.retry != retryNever, "false": false}[header]
			if got := (&upstreamError{failure: f, shouldRetry: header}).retryable(); got != want {
				t.Errorf("failure %d with x-should-retry %q: retryable %v, rule says %d", f, header, got, rule.retry)
			}
		}
		if rule.metricClass != "" && statusClass(0, uerr) != rule.metricClass {
			t.Errorf("failure %d: status class %q, rule says %q", f, statusClass(0, uerr), rule.metricClass)
		}
	}
}

// TestUpstreamFailuresThroughCaddy makes OpenAI fail in each way the
// module tells apart, through a real Caddy, and checks what the browser,
// the log, the health endpoint, the breaker and the metrics show against
// the failure's rule.
func TestUpstreamFailuresThroughCaddy(t *testing.T) {
	fake := newFake(t)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	cases := []struct {
		failure upstreamFailure
		fault   fakeopenai.Fault
		status  int    // what the fake answers; 0: no answer
		timeout string // the module's timeout
	}{
		{failNetwork, fakeopenai.Fault{Kind: fakeopenai.FaultReset}, 0, "2s"},
		{failTimeout, fakeopenai.Fault{Delay: 3 * time.Second}, 0, "300ms"},
		// The browser gives up first (browserTimeout).
		{failCanceled, fakeopenai.Fault{Delay: 3 * time.Second}, 0, "5s"},
		{failAuth, fakeopenai.Fault{Status: 401}, 401, "2s"},
		{failNotFound, fakeopenai.Fault{Status: 404}, 404, "2s"},
		{failRateLimited, fakeopenai.Fault{Status: 429}, 429, "2s"},
		{failServer, fakeopenai.Fault{Status: 500}, 500, "2s"},
		{failRejected, fakeopenai.Fault{Status: 400}, 400, "2s"},
		{failInvalidResponse, fakeopenai.Fault{Kind: fakeopenai.FaultMalformedJSON}, 200, "2s"},
	}
	const browserTimeout = 300 * time.Millisecond
	covered := map[upstreamFailure]bool{}
	for _, tc := range cases {
		covered[tc.failure] = true
	}
	for f := upstreamFailure(1); f < failureCount; f++ {
		if !covered[f] {
			t.Errorf("failure %d has no case through Caddy", f)
		}
	}

	for i, tc := range cases {
		rule := tc.failure.rule()
		// A new workflow per run: a new handler with a closed breaker.
		site := func(run string) {
			t.Helper()
			block := "api_base " + fake.URL() + "\n\t\tapi_key " + fakeopenai.DefaultAPIKey +
				"\n\t\tworkflow wf_case" + strconv.Itoa(i) + run + "\n\t\ttimeout " + tc.timeout +
				"\n\t\tretries 0\n\t\terror_cache off\n\t\tcircuit_breaker 2 1h\n\t\trate_limit off"
			newTester(t, caddyConfig(jsonLogTo(logFile), block, ""))
		}
		browser := client(t)
		quick := plainClient(t)
		quick.Timeout = browserTimeout
		// fail makes one request meet the fault and returns its log entry.
		fail := func() (reply, map[string]any) {
			t.Helper()
			fake.Inject(tc.fault)
			before := len(startEntries(t, logFile))
			var r reply
			if tc.failure == failCanceled {
				if resp, err := quick.Post(siteURL+"/api/chatkit/start", "", nil); err == nil {
					resp.Body.Close()
					t.Fatalf("case %d: the browser got %d before it gave up", i, resp.StatusCode)
				}
			} else {
				r = do(t, browser, "POST", "/api/chatkit/start", "")
			}
			return r, waitForStartEntry(t, logFile, before)
		}

		site("a")
		class := statusClass(tc.status, &upstreamError{failure: tc.failure})
		classSeries := `caddy_chatkit_upstream_duration_seconds_count{operation="create_session",status_class="` + class + `"}`
		classBefore := scrapeCounter(t, classSeries)
		r, entry := fail()
		if tc.failure != failCanceled {
			expectError(t, r, rule.answer.status, rule.answer.code)
			if msg := r.json["message"].(string); !strings.HasPrefix(msg, rule.answer.message) {
				t.Errorf("case %d: message %q, rule says %q", i, msg, rule.answer.message)
			}
			wantWait := ""
			if rule.waitByDefault > 0 {
				wantWait = retryAfterSeconds(rule.waitByDefault) // the fake gave none
			}
			if got := r.header.Get("Retry-After"); got != wantWait {
				t.Errorf("case %d: Retry-After %q, want %q", i, got, wantWait)
			}
		}
		if entry["level"] != rule.level.String() || entry["msg"] != rule.log || entry["outcome"] != rule.answer.outcome {
			t.Errorf("case %d: logged %v %q outcome %v, rule says %s %q %s", i, entry["level"], entry["msg"], entry["outcome"], rule.level, rule.log, rule.answer.outcome)
		}
		if got := scrapeCounter(t, classSeries); got != classBefore+1 {
			t.Errorf("case %d: %s went %v → %v, want one more", i, classSeries, classBefore, got)
		}
		health := do(t, browser, "GET", "/api/health", "")
		if degraded := health.json["status"] == "degraded"; degraded != rule.configError {
			t.Errorf("case %d: health %s after one failure, rule's config error %v", i, health.body, rule.configError)
		}
		// A second one opens the breaker (threshold 2) only if it counts.
		fail()
		next := do(t, browser, "POST", "/api/chatkit/start", "")
		if rule.breaker == breakerCounts {
			expectError(t, next, http.StatusServiceUnavailable, answerCircuitOpen.code)
			continue
		}
		expectSecret(t, next, fake)

		// Between two server errors, a failure that ends the run keeps the
		// breaker closed; one that says nothing lets them open it.
		site("b")
		fake.Inject(fakeopenai.Fault{Status: 500})
		expectError(t, do(t, browser, "POST", "/api/chatkit/start", ""), http.StatusBadGateway, failServer.rule().answer.code)
		fail()
		fake.Inject(fakeopenai.Fault{Status: 500})
		expectError(t, do(t, browser, "POST", "/api/chatkit/start", ""), http.StatusBadGateway, failServer.rule().answer.code)
		next = do(t, browser, "POST", "/api/chatkit/start", "")
		if rule.breaker == breakerIgnores {
			expectError(t, next, http.StatusServiceUnavailable, answerCircuitOpen.code)
		} else {
			expectSecret(t, next, fake)
		}
	}
	assertNoLeakedGoroutines(t)
}

// jsonLogTo is the global option that sends Caddy's log, debug and up, to
// path as JSON lines.
func jsonLogTo(path string) string {
	return "log {\n\t\toutput file " + path + "\n\t\tformat json\n\t\tlevel DEBUG\n\t}"
}

// startEntries returns the module's log entries for start requests. A
// last line still being written is left for the next read.
func startEntries(t *testing.T, path string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for line := range strings.Lines(string(raw)) {
		if !strings.HasSuffix(line, "\n") {
			break
		}
		var l map[string]any
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("log line is not JSON: %s", line)
		}
		if l["logger"] == "http.handlers.chatkit" && l["endpoint"] == "start" {
			out = append(out, l)
		}
	}
	return out
}

// waitForStartEntry waits for the start entry after the first `before`
// (a request the browser abandoned is logged after the browser has gone).
func waitForStartEntry(t *testing.T, path string, before int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if entries := startEntries(t, path); len(entries) > before {
			return entries[before]
		}
		if time.Now().After(deadline) {
			t.Fatal("the request was never logged")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

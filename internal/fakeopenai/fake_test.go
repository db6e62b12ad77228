package fakeopenai

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var fixedNow = time.Unix(1_800_000_000, 0)

func newTestServer(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.Now == nil {
		opts.Now = func() time.Time { return fixedNow }
	}
	s := New(opts)
	t.Cleanup(s.Close)
	return s
}

// newClient gives each test its own transport so connections do not outlive it.
func newClient(t *testing.T, timeout time.Duration) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: timeout}
}

type result struct {
	status int
	header http.Header
	body   []byte
}

func (r result) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v: %.200s", err, r.body)
	}
	return m
}

// errorFields returns error.type, error.code and error.param (nil when null).
func (r result) errorFields(t *testing.T) (typ string, code, param any, message string) {
	t.Helper()
	m := r.json(t)
	e, ok := m["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error object in %s", r.body)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := e[k]; !ok {
			t.Errorf("error object lacks %q: %s", k, r.body)
		}
	}
	typ, _ = e["type"].(string)
	message, _ = e["message"].(string)
	return typ, e["code"], e["param"], message
}

type reqOpt func(*http.Request)

func withHeader(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }
func withoutHeader(k string) reqOpt { return func(r *http.Request) { r.Header.Del(k) } }

func send(t *testing.T, c *http.Client, method, url, body string, opts ...reqOpt) (result, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+DefaultAPIKey)
	req.Header.Set("OpenAI-Beta", "chatkit_beta=v1")
	req.Header.Set("Content-Type", "application/json")
	for _, o := range opts {
		o(req)
	}
	resp, err := c.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: b}, err
}

func mustSend(t *testing.T, c *http.Client, method, url, body string, opts ...reqOpt) result {
	t.Helper()
	r, err := send(t, c, method, url, body, opts...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

const minimalBody = `{"user":"u1","workflow":{"id":"wf_abc"}}`

var requestIDRe = regexp.MustCompile(`^req_[0-9a-f]{32}$`)

func TestCreateSuccessShapeAndDefaults(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody)
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	if id := r.header.Get("x-request-id"); !requestIDRe.MatchString(id) {
		t.Errorf("x-request-id %q", id)
	}
	m := r.json(t)
	want := []string{"id", "object", "client_secret", "expires_at", "status", "user", "workflow",
		"rate_limits", "max_requests_per_1_minute", "chatkit_configuration"}
	var got []string
	for k := range m {
		got = append(got, k)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("fields %v, want %v", got, want)
	}
	if _, ok := m["expires_after"]; ok {
		t.Error("response must not carry expires_after")
	}
	if id, _ := m["id"].(string); !regexp.MustCompile(`^cksess_[0-9a-f]{32}$`).MatchString(id) {
		t.Errorf("id %q", id)
	}
	if sec, _ := m["client_secret"].(string); !strings.HasPrefix(sec, "ek_") || len(sec) < 20 {
		t.Errorf("client_secret %q", sec)
	}
	checks := map[string]any{
		"object":     "chatkit.session",
		"status":     "active",
		"user":       "u1",
		"expires_at": float64(fixedNow.Unix() + 600),
		"workflow": map[string]any{"id": "wf_abc", "version": nil, "state_variables": nil,
			"tracing": map[string]any{"enabled": true}},
		"rate_limits":               map[string]any{"max_requests_per_1_minute": float64(10)},
		"max_requests_per_1_minute": float64(10),
		"chatkit_configuration": map[string]any{
			"automatic_thread_titling": map[string]any{"enabled": true},
			"file_upload":              map[string]any{"enabled": false, "max_file_size": float64(512), "max_files": float64(10)},
			"history":                  map[string]any{"enabled": true, "recent_threads": nil},
		},
	}
	for k, v := range checks {
		if !jsonEqual(m[k], v) {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}

	ss := s.Sessions()
	if len(ss) != 1 || ss[0].ID != m["id"] || ss[0].ClientSecret != m["client_secret"] ||
		ss[0].User != "u1" || ss[0].WorkflowID != "wf_abc" || ss[0].Status != "active" ||
		ss[0].ExpiresAt != fixedNow.Unix()+600 {
		t.Errorf("Sessions() = %+v", ss)
	}
	lc := s.LastCreate()
	if lc == nil || lc.User != "u1" || lc.Workflow.ID != "wf_abc" || lc.Workflow.Version != nil ||
		lc.ExpiresAfter != nil || lc.RateLimits != nil || lc.ChatKitConfiguration != nil || lc.Workflow.StateVariables != nil {
		t.Errorf("LastCreate() = %+v", lc)
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func TestCreateEchoesEverySentField(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	body := `{
		"user": "user-42",
		"workflow": {"id": "wf_full", "version": "latest",
			"state_variables": {"plan": "pro", "seats": 3, "beta": true},
			"tracing": {"enabled": false}},
		"expires_after": {"anchor": "created_at", "seconds": 120},
		"rate_limits": {"max_requests_per_1_minute": 5},
		"chatkit_configuration": {
			"automatic_thread_titling": {"enabled": false},
			"file_upload": {"enabled": true, "max_file_size": 20, "max_files": 3},
			"history": {"enabled": false, "recent_threads": 7}}
	}`
	r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", body, withHeader("Content-Type", "application/json; charset=utf-8"))
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	m := r.json(t)
	checks := map[string]any{
		"user":       "user-42",
		"expires_at": float64(fixedNow.Unix() + 120),
		"workflow": map[string]any{"id": "wf_full", "version": "latest",
			"state_variables": map[string]any{"plan": "pro", "seats": 3, "beta": true},
			"tracing":         map[string]any{"enabled": false}},
		"rate_limits":               map[string]any{"max_requests_per_1_minute": 5},
		"max_requests_per_1_minute": 5,
		"chatkit_configuration": map[string]any{
			"automatic_thread_titling": map[string]any{"enabled": false},
			"file_upload":              map[string]any{"enabled": true, "max_file_size": 20, "max_files": 3},
			"history":                  map[string]any{"enabled": false, "recent_threads": 7},
		},
	}
	for k, v := range checks {
		if !jsonEqual(m[k], v) {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	if _, ok := m["expires_after"]; ok {
		t.Error("response must not carry expires_after")
	}

	lc := s.LastCreate()
	if lc == nil {
		t.Fatal("LastCreate() = nil")
	}
	switch {
	case lc.Workflow.Version == nil || *lc.Workflow.Version != "latest",
		lc.Workflow.Tracing == nil || lc.Workflow.Tracing.Enabled == nil || *lc.Workflow.Tracing.Enabled,
		lc.Workflow.StateVariables["seats"] != float64(3) || lc.Workflow.StateVariables["plan"] != "pro",
		lc.ExpiresAfter == nil || *lc.ExpiresAfter != ExpiresAfter{Anchor: "created_at", Seconds: 120},
		lc.RateLimits == nil || *lc.RateLimits.MaxRequestsPer1Minute != 5,
		*lc.ChatKitConfiguration.FileUpload.MaxFileSize != 20,
		*lc.ChatKitConfiguration.FileUpload.MaxFiles != 3,
		*lc.ChatKitConfiguration.History.RecentThreads != 7,
		*lc.ChatKitConfiguration.AutomaticThreadTitling.Enabled:
		t.Errorf("LastCreate() did not record the body faithfully: %+v", lc)
	}

	// The returned copy must be independent of the record.
	*lc.Workflow.Version = "mutated"
	lc.Workflow.StateVariables["plan"] = "mutated"
	again := s.LastCreate()
	if *again.Workflow.Version != "latest" || again.Workflow.StateVariables["plan"] != "pro" {
		t.Error("LastCreate() shares memory with the record")
	}
}

func TestCreateValidation(t *testing.T) {
	long := strings.Repeat("k", 65)
	cases := []struct {
		name   string
		body   string
		opts   []reqOpt
		status int
		code   any // nil means JSON null
		param  any
	}{
		{"unknown top-level", `{"user":"u","workflow":{"id":"wf_a"},"model":"x"}`, nil, 400, "unknown_parameter", "model"},
		{"unknown nested config", `{"user":"u","workflow":{"id":"wf_a"},"chatkit_configuration":{"foo":1}}`, nil, 400, "unknown_parameter", "chatkit_configuration.foo"},
		{"unknown deep", `{"user":"u","workflow":{"id":"wf_a"},"chatkit_configuration":{"history":{"enabled":true,"limit":2}}}`, nil, 400, "unknown_parameter", "chatkit_configuration.history.limit"},
		{"unknown in workflow", `{"user":"u","workflow":{"id":"wf_a","name":"n"}}`, nil, 400, "unknown_parameter", "workflow.name"},
		{"unknown in tracing", `{"user":"u","workflow":{"id":"wf_a","tracing":{"enabled":true,"x":1}}}`, nil, 400, "unknown_parameter", "workflow.tracing.x"},
		{"unknown in expires_after", `{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"anchor":"created_at","seconds":5,"ms":1}}`, nil, 400, "unknown_parameter", "expires_after.ms"},
		{"missing user", `{"workflow":{"id":"wf_a"}}`, nil, 400, "missing_required_parameter", "user"},
		{"empty user", `{"user":"","workflow":{"id":"wf_a"}}`, nil, 400, "invalid_value", "user"},
		{"user not string", `{"user":7,"workflow":{"id":"wf_a"}}`, nil, 400, "invalid_type", "user"},
		{"user null", `{"user":null,"workflow":{"id":"wf_a"}}`, nil, 400, "invalid_type", "user"},
		{"missing workflow", `{"user":"u"}`, nil, 400, "missing_required_parameter", "workflow"},
		{"workflow not object", `{"user":"u","workflow":"wf_a"}`, nil, 400, "invalid_type", "workflow"},
		{"missing workflow id", `{"user":"u","workflow":{}}`, nil, 400, "missing_required_parameter", "workflow.id"},
		{"empty workflow id", `{"user":"u","workflow":{"id":""}}`, nil, 400, "invalid_value", "workflow.id"},
		{"version not string", `{"user":"u","workflow":{"id":"wf_a","version":2}}`, nil, 400, "invalid_type", "workflow.version"},
		{"tracing enabled string", `{"user":"u","workflow":{"id":"wf_a","tracing":{"enabled":"true"}}}`, nil, 400, "invalid_type", "workflow.tracing.enabled"},
		{"state var object", `{"user":"u","workflow":{"id":"wf_a","state_variables":{"a":{"b":1}}}}`, nil, 400, "invalid_value", "workflow.state_variables.a"},
		{"state var null", `{"user":"u","workflow":{"id":"wf_a","state_variables":{"a":null}}}`, nil, 400, "invalid_value", "workflow.state_variables.a"},
		{"state var key too long", `{"user":"u","workflow":{"id":"wf_a","state_variables":{"` + long + `":"v"}}}`, nil, 400, "invalid_value", "workflow.state_variables"},
		{"bad anchor", `{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"anchor":"now","seconds":5}}`, nil, 400, "invalid_value", "expires_after.anchor"},
		{"missing anchor", `{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"seconds":5}}`, nil, 400, "missing_required_parameter", "expires_after.anchor"},
		{"missing seconds", `{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"anchor":"created_at"}}`, nil, 400, "missing_required_parameter", "expires_after.seconds"},
		{"seconds zero", `{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"anchor":"created_at","seconds":0}}`, nil, 400, "invalid_value", "expires_after.seconds"},
		{"seconds 601", `{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"anchor":"created_at","seconds":601}}`, nil, 400, "invalid_value", "expires_after.seconds"},
		{"seconds fraction", `{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"anchor":"created_at","seconds":1.5}}`, nil, 400, "invalid_type", "expires_after.seconds"},
		{"seconds string", `{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"anchor":"created_at","seconds":"60"}}`, nil, 400, "invalid_type", "expires_after.seconds"},
		{"rate limit zero", `{"user":"u","workflow":{"id":"wf_a"},"rate_limits":{"max_requests_per_1_minute":0}}`, nil, 400, "invalid_value", "rate_limits.max_requests_per_1_minute"},
		{"file size 513", `{"user":"u","workflow":{"id":"wf_a"},"chatkit_configuration":{"file_upload":{"max_file_size":513}}}`, nil, 400, "invalid_value", "chatkit_configuration.file_upload.max_file_size"},
		{"file size 0", `{"user":"u","workflow":{"id":"wf_a"},"chatkit_configuration":{"file_upload":{"max_file_size":0}}}`, nil, 400, "invalid_value", "chatkit_configuration.file_upload.max_file_size"},
		{"max files 0", `{"user":"u","workflow":{"id":"wf_a"},"chatkit_configuration":{"file_upload":{"max_files":0}}}`, nil, 400, "invalid_value", "chatkit_configuration.file_upload.max_files"},
		{"recent threads 0", `{"user":"u","workflow":{"id":"wf_a"},"chatkit_configuration":{"history":{"recent_threads":0}}}`, nil, 400, "invalid_value", "chatkit_configuration.history.recent_threads"},
		{"config not object", `{"user":"u","workflow":{"id":"wf_a"},"chatkit_configuration":[]}`, nil, 400, "invalid_type", "chatkit_configuration"},
		{"not JSON", `{"user":`, nil, 400, nil, nil},
		{"trailing data", minimalBody + `{}`, nil, 400, nil, nil},
		{"empty body", ``, nil, 400, nil, nil},
		{"array body", `[]`, nil, 400, "invalid_type", nil},
		{"null body", `null`, nil, 400, "invalid_type", nil},
		{"text content type", minimalBody, []reqOpt{withHeader("Content-Type", "text/plain")}, 400, nil, nil},
		{"no content type", minimalBody, []reqOpt{withoutHeader("Content-Type")}, 400, nil, nil},
		{"form content type", minimalBody, []reqOpt{withHeader("Content-Type", "application/x-www-form-urlencoded")}, 400, nil, nil},
		{"too large", `{"user":"` + strings.Repeat("a", MaxBodyBytes) + `","workflow":{"id":"wf_a"}}`, nil, 413, "request_too_large", nil},
	}
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s.Reset()
			r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", tc.body, tc.opts...)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			typ, code, param, _ := r.errorFields(t)
			if typ != "invalid_request_error" {
				t.Errorf("type %q", typ)
			}
			if code != tc.code {
				t.Errorf("code %#v, want %#v", code, tc.code)
			}
			if param != tc.param {
				t.Errorf("param %#v, want %#v", param, tc.param)
			}
			if !requestIDRe.MatchString(r.header.Get("x-request-id")) {
				t.Error("missing x-request-id")
			}
			reqs := s.Requests()
			if len(reqs) != 1 || reqs[0].Create != nil || reqs[0].Status != tc.status {
				t.Errorf("recorded %+v", reqs)
			}
			if len(s.Sessions()) != 0 || s.LastCreate() != nil {
				t.Error("invalid request created a session")
			}
		})
	}
}

func TestCreateAcceptsEdgeValues(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	key64 := strings.Repeat("k", 64)
	for _, body := range []string{
		`{"user":"u","workflow":{"id":"wf_a","version":"latest"}}`,
		`{"user":"u","workflow":{"id":"wf_a","state_variables":{"` + key64 + `":1.5}}}`,
		`{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"anchor":"created_at","seconds":1}}`,
		`{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"anchor":"created_at","seconds":600}}`,
		`{"user":"u","workflow":{"id":"wf_a"},"chatkit_configuration":{"file_upload":{"max_file_size":512,"max_files":1}}}`,
		`{"user":"u","workflow":{"id":"wf_a","version":null},"rate_limits":null}`,
		`{"user":"u","workflow":{"id":"wf_a"},"rate_limits":{"max_requests_per_1_minute":1e2}}`,
	} {
		r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", body)
		if r.status != 200 {
			t.Errorf("%s: status %d: %s", body, r.status, r.body)
		}
	}
}

func TestUnknownWorkflow(t *testing.T) {
	c := newClient(t, 5*time.Second)
	t.Run("explicit list", func(t *testing.T) {
		s := newTestServer(t, Options{Workflows: []string{"wf_known"}})
		r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", `{"user":"u","workflow":{"id":"wf_other"}}`)
		if r.status != 404 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		typ, code, param, msg := r.errorFields(t)
		if typ != "invalid_request_error" || code != "not_found" || param != nil || msg != "Workflow with id 'wf_other' not found." {
			t.Errorf("error %q %v %v %q", typ, code, param, msg)
		}
		if reqs := s.Requests(); reqs[0].Create == nil || reqs[0].Create.Workflow.ID != "wf_other" {
			t.Error("valid body of a 404 request was not recorded")
		}
		if r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", `{"user":"u","workflow":{"id":"wf_known"}}`); r.status != 200 {
			t.Errorf("known workflow: status %d", r.status)
		}
	})
	t.Run("default prefix rule", func(t *testing.T) {
		s := newTestServer(t, Options{})
		if r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", `{"user":"u","workflow":{"id":"workflow_1"}}`); r.status != 404 {
			t.Errorf("status %d", r.status)
		}
	})
}

func TestAuthAndBetaHeader(t *testing.T) {
	s := newTestServer(t, Options{APIKey: "sk-right"})
	c := newClient(t, 5*time.Second)
	auth := func(k string) reqOpt { return withHeader("Authorization", k) }
	url := s.URL() + "/chatkit/sessions"

	for _, key := range []string{"Bearer sk-wrong-secret-value", "sk-right", "bearer sk-right", "Bearer  sk-right", "Bearer sk-right2"} {
		r := mustSend(t, c, "POST", url, minimalBody, auth(key))
		if r.status != 401 {
			t.Errorf("%q: status %d", key, r.status)
			continue
		}
		typ, code, param, msg := r.errorFields(t)
		if typ != "invalid_request_error" || code != "invalid_api_key" || param != nil || msg != "Incorrect API key provided." {
			t.Errorf("%q: error %q %v %v %q", key, typ, code, param, msg)
		}
		if strings.Contains(string(r.body), "sk-wrong") {
			t.Error("401 body echoes the presented key")
		}
	}
	if r := mustSend(t, c, "POST", url, minimalBody, withoutHeader("Authorization")); r.status != 401 {
		t.Errorf("no key: status %d", r.status)
	}

	for _, beta := range []string{"", "assistants=v2", "chatkit_beta=v2"} {
		r := mustSend(t, c, "POST", url, minimalBody, auth("Bearer sk-right"), withHeader("OpenAI-Beta", beta))
		if r.status != 400 {
			t.Errorf("beta %q: status %d", beta, r.status)
			continue
		}
		if _, _, _, msg := r.errorFields(t); !strings.Contains(msg, "OpenAI-Beta") {
			t.Errorf("beta message %q", msg)
		}
	}
	r := mustSend(t, c, "POST", url, minimalBody, auth("Bearer sk-right"), withHeader("OpenAI-Beta", "assistants=v2, chatkit_beta=v1"))
	if r.status != 200 {
		t.Errorf("beta list: status %d: %s", r.status, r.body)
	}

	// Cancel needs the same headers.
	id := r.json(t)["id"].(string)
	curl := url + "/" + id + "/cancel"
	if r := mustSend(t, c, "POST", curl, "", auth("Bearer nope")); r.status != 401 {
		t.Errorf("cancel bad key: %d", r.status)
	}
	if r := mustSend(t, c, "POST", curl, "", auth("Bearer sk-right"), withoutHeader("OpenAI-Beta")); r.status != 400 {
		t.Errorf("cancel no beta: %d", r.status)
	}
	if s.Sessions()[0].Status != "active" {
		t.Error("rejected cancel took effect")
	}
}

func TestRouting(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	base := strings.TrimSuffix(s.URL(), "/v1")
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{"POST", "/v1/chatkit/session", 404},
		{"POST", "/v1/chatkit/sessions/", 404},
		{"POST", "/v1/chatkit/sessions/x/refresh", 404},
		{"POST", "/v1/chatkit/sessions//cancel", 404},
		{"POST", "/chatkit/sessions", 404},
		{"GET", "/v1/chatkit/sessions", 405},
		{"DELETE", "/v1/chatkit/sessions/cksess_1/cancel", 405},
	} {
		r := mustSend(t, c, tc.method, base+tc.path, "")
		if r.status != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, r.status, tc.status)
			continue
		}
		if typ, _, _, _ := r.errorFields(t); typ != "invalid_request_error" {
			t.Errorf("%s %s: type %q", tc.method, tc.path, typ)
		}
		if !requestIDRe.MatchString(r.header.Get("x-request-id")) {
			t.Errorf("%s %s: no x-request-id", tc.method, tc.path)
		}
		if tc.status == 405 && r.header.Get("Allow") != "POST" {
			t.Errorf("%s %s: Allow %q", tc.method, tc.path, r.header.Get("Allow"))
		}
	}
	if n := s.CreateCount(); n != 0 {
		t.Errorf("CreateCount %d after no create POSTs", n)
	}
	if n := len(s.Requests()); n != 7 {
		t.Errorf("recorded %d requests, want 7", n)
	}
}

func TestCancel(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody)
	created := r.json(t)
	id := created["id"].(string)

	r = mustSend(t, c, "POST", s.URL()+"/chatkit/sessions/nope/cancel", "")
	if r.status != 404 {
		t.Fatalf("unknown id: status %d", r.status)
	}
	if _, code, _, _ := r.errorFields(t); code != "not_found" {
		t.Errorf("unknown id: code %v", code)
	}

	// No body and no content type, or a stray body: both fine.
	r = mustSend(t, c, "POST", s.URL()+"/chatkit/sessions/"+id+"/cancel", "", withoutHeader("Content-Type"))
	if r.status != 200 {
		t.Fatalf("cancel: status %d: %s", r.status, r.body)
	}
	m := r.json(t)
	if m["status"] != "cancelled" || m["id"] != id || m["object"] != "chatkit.session" || m["user"] != "u1" {
		t.Errorf("cancel response %s", r.body)
	}
	if _, ok := m["expires_after"]; ok {
		t.Error("cancel response carries expires_after")
	}
	if ss := s.Sessions(); len(ss) != 1 || ss[0].Status != "cancelled" {
		t.Errorf("Sessions() = %+v", ss)
	}
	r = mustSend(t, c, "POST", s.URL()+"/chatkit/sessions/"+id+"/cancel", `{"ignored":true}`)
	if r.status != 200 || r.json(t)["status"] != "cancelled" {
		t.Errorf("second cancel: %d %s", r.status, r.body)
	}
	if s.CreateCount() != 1 {
		t.Errorf("cancels counted as creates: %d", s.CreateCount())
	}
}

func TestExpiredStatusFollowsClock(t *testing.T) {
	var mu sync.Mutex
	now := fixedNow
	s := newTestServer(t, Options{Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }})
	c := newClient(t, 5*time.Second)
	mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", `{"user":"u","workflow":{"id":"wf_a"},"expires_after":{"anchor":"created_at","seconds":30}}`)
	mu.Lock()
	now = now.Add(30 * time.Second)
	mu.Unlock()
	if st := s.Sessions()[0].Status; st != "expired" {
		t.Errorf("status %q after expiry", st)
	}
}

func TestStatusFaults(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	url := s.URL() + "/chatkit/sessions"

	s.Inject(Fault{Status: 429, Times: 2, Header: map[string]string{"Retry-After": "2", "x-should-retry": "false"}})
	s.Inject(Fault{Status: 503})
	s.Inject(Fault{Status: 401})
	s.Inject(Fault{Status: 404})

	for i := range 2 {
		r := mustSend(t, c, "POST", url, minimalBody)
		if r.status != 429 {
			t.Fatalf("request %d: status %d", i, r.status)
		}
		typ, code, _, _ := r.errorFields(t)
		if typ != "requests" || code != "rate_limit_exceeded" {
			t.Errorf("429 error %q %v", typ, code)
		}
		if r.header.Get("Retry-After") != "2" || r.header.Get("X-Should-Retry") != "false" {
			t.Errorf("fault headers missing: %v", r.header)
		}
		if !requestIDRe.MatchString(r.header.Get("x-request-id")) {
			t.Error("fault response lacks x-request-id")
		}
	}
	r := mustSend(t, c, "POST", url, minimalBody)
	if typ, _, _, _ := r.errorFields(t); r.status != 503 || typ != "server_error" {
		t.Errorf("503 fault: %d %q", r.status, typ)
	}
	if r.header.Get("Retry-After") != "" {
		t.Error("headers leaked from an earlier fault")
	}
	r = mustSend(t, c, "POST", url, minimalBody)
	if _, code, _, _ := r.errorFields(t); r.status != 401 || code != "invalid_api_key" {
		t.Errorf("401 fault: %d %v", r.status, code)
	}
	r = mustSend(t, c, "POST", url, minimalBody)
	if _, code, _, msg := r.errorFields(t); r.status != 404 || code != "not_found" || msg != "Workflow with id 'wf_abc' not found." {
		t.Errorf("404 fault: %d %v %q", r.status, code, msg)
	}

	// Queue drained: back to normal.
	if r := mustSend(t, c, "POST", url, minimalBody); r.status != 200 {
		t.Errorf("after faults: status %d", r.status)
	}
	reqs := s.Requests()
	if len(reqs) != 6 || s.CreateCount() != 6 || len(s.Sessions()) != 1 {
		t.Fatalf("requests %d, creates %d, sessions %d", len(reqs), s.CreateCount(), len(s.Sessions()))
	}
	wantStatus := []int{429, 429, 503, 401, 404, 200}
	for i, rq := range reqs {
		if rq.Status != wantStatus[i] {
			t.Errorf("request %d recorded status %d, want %d", i, rq.Status, wantStatus[i])
		}
		if rq.Create == nil || rq.Create.User != "u1" {
			t.Errorf("request %d: body not recorded before the fault", i)
		}
	}
}

func TestFaultsSkipCancelAndOtherRoutes(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody)
	id := r.json(t)["id"].(string)
	s.Inject(Fault{Status: 500})
	if r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions/"+id+"/cancel", ""); r.status != 200 {
		t.Errorf("cancel hit a create fault: %d", r.status)
	}
	if r := mustSend(t, c, "GET", s.URL()+"/chatkit/sessions", ""); r.status != 405 {
		t.Errorf("GET hit a create fault: %d", r.status)
	}
	if r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody); r.status != 500 {
		t.Errorf("fault did not reach the next create: %d", r.status)
	}
}

func TestBodyFaults(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	url := s.URL() + "/chatkit/sessions"

	s.Inject(Fault{Kind: FaultMalformedJSON})
	r := mustSend(t, c, "POST", url, minimalBody)
	var v any
	if r.status != 200 || json.Unmarshal(r.body, &v) == nil {
		t.Errorf("malformed: status %d, body parses as JSON: %s", r.status, r.body)
	}

	s.Inject(Fault{Kind: FaultMissingSecret})
	r = mustSend(t, c, "POST", url, minimalBody)
	m := r.json(t)
	if _, ok := m["client_secret"]; r.status != 200 || ok || m["object"] != "chatkit.session" || m["id"] == nil {
		t.Errorf("missing secret: %d %s", r.status, r.body)
	}

	s.Inject(Fault{Kind: FaultHugeBody})
	r = mustSend(t, c, "POST", url, minimalBody)
	m = r.json(t)
	if r.status != 200 || len(r.body) < 2<<20 || m["client_secret"] == nil {
		t.Errorf("huge: status %d, %d bytes", r.status, len(r.body))
	}

	s.Inject(Fault{Kind: FaultMalformedJSON, Status: 502})
	if r := mustSend(t, c, "POST", url, minimalBody); r.status != 502 {
		t.Errorf("Status with Kind: got %d", r.status)
	}

	if n := len(s.Sessions()); n != 0 {
		t.Errorf("faults created %d sessions", n)
	}
	for i, rq := range s.Requests() {
		if want := []int{200, 200, 200, 502}[i]; rq.Status != want {
			t.Errorf("request %d: status %d, want %d", i, rq.Status, want)
		}
	}
}

func TestLyingLengthFault(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	s.Inject(Fault{Kind: FaultLyingLength})
	_, err := send(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("err = %v, want unexpected EOF", err)
	}
	if st := s.Requests()[0].Status; st != 0 {
		t.Errorf("recorded status %d, want 0", st)
	}
	// The fake keeps working afterwards.
	if r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody); r.status != 200 {
		t.Errorf("after lying length: %d", r.status)
	}
}

func TestResetFault(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	s.Inject(Fault{Kind: FaultReset})
	if _, err := send(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody); err == nil {
		t.Fatal("reset: no error")
	}
	reqs := s.Requests()
	if len(reqs) != 1 || reqs[0].Status != 0 || reqs[0].Create == nil || s.CreateCount() != 1 {
		t.Errorf("recorded %+v, creates %d", reqs, s.CreateCount())
	}
	if r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody); r.status != 200 {
		t.Errorf("after reset: %d", r.status)
	}
}

func TestHangFaultClientTimeoutAndClose(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	c := newClient(t, 200*time.Millisecond)
	s.Inject(Fault{Kind: FaultHangMidBody})
	start := time.Now()
	_, err := send(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody)
	if err == nil {
		t.Fatal("hang: no error")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("client took %v to give up", d)
	}
	if st := s.Requests()[0].Status; st != 0 {
		t.Errorf("recorded status %d, want 0", st)
	}
	closeWithin(t, s, 2*time.Second)
}

func TestCloseReleasesHangingHandler(t *testing.T) {
	s := New(Options{})
	c := newClient(t, 0) // no timeout: only Close can end this request
	s.Inject(Fault{Kind: FaultHangMidBody})
	req, _ := http.NewRequest("POST", s.URL()+"/chatkit/sessions", strings.NewReader(minimalBody))
	req.Header.Set("Authorization", "Bearer "+DefaultAPIKey)
	req.Header.Set("OpenAI-Beta", "chatkit_beta=v1")
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req) // returns once the headers are flushed: the handler is now hanging
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != 4096 {
		t.Errorf("hang headers: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	readDone := make(chan error, 1)
	go func() {
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			err = fmt.Errorf("read %d bytes without error", len(b))
		}
		readDone <- err
	}()
	closeWithin(t, s, 2*time.Second)
	select {
	case err := <-readDone:
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Logf("client read ended with %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Error("client still blocked after Close")
	}
}

// Mounted on another server, only the fake's closing signal can release a
// hanging handler: its own http.Server never saw the connection.
func TestCloseReleasesHangOnMountedHandler(t *testing.T) {
	s := New(Options{})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	c := newClient(t, 0)
	s.Inject(Fault{Kind: FaultHangMidBody})
	req, _ := http.NewRequest("POST", ts.URL+"/v1/chatkit/sessions", strings.NewReader(minimalBody))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	closeWithin(t, s, 2*time.Second)
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("hung body read completed without error")
	}
}

func closeWithin(t *testing.T, s *Server, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("Close did not return within %v", d)
	}
}

func TestDelayFault(t *testing.T) {
	s := newTestServer(t, Options{})
	url := s.URL() + "/chatkit/sessions"

	s.Inject(Fault{Delay: 50 * time.Millisecond})
	start := time.Now()
	r := mustSend(t, newClient(t, 5*time.Second), "POST", url, minimalBody)
	if r.status != 200 {
		t.Errorf("delay-only fault: status %d", r.status)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("answered after %v, before the delay", d)
	}

	// A client that gives up ends the wait; nothing is answered.
	s.Inject(Fault{Delay: time.Minute, Status: 500})
	start = time.Now()
	if _, err := send(t, newClient(t, 100*time.Millisecond), "POST", url, minimalBody); err == nil {
		t.Error("expected a client timeout")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up only after %v", d)
	}
	closeWithin(t, s, 2*time.Second) // the abandoned handler must not linger
	reqs := s.Requests()
	if len(reqs) != 2 || reqs[1].Status != 0 {
		t.Errorf("recorded %+v", reqs)
	}
}

func TestSetDelayHonoursContext(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	s.SetDelay(30 * time.Millisecond)
	start := time.Now()
	if r := mustSend(t, c, "GET", s.URL()+"/nowhere", ""); r.status != 404 {
		t.Errorf("status %d", r.status)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("answered after %v", d)
	}

	s.SetDelay(time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", s.URL()+"/chatkit/sessions", strings.NewReader(minimalBody))
	if _, err := c.Do(req); err == nil {
		t.Error("expected the context to end the request")
	}
	s.SetDelay(0)
	if r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody); r.status != 200 {
		t.Errorf("after SetDelay(0): %d", r.status)
	}
}

func TestRequestsRecordingAndReset(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody, withHeader("OpenAI-Project", "proj_1"))
	id := r.json(t)["id"].(string)
	mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", `{"user":"u","bogus":1}`)
	mustSend(t, c, "POST", s.URL()+"/chatkit/sessions/"+id+"/cancel", "")

	reqs := s.Requests()
	if len(reqs) != 3 {
		t.Fatalf("recorded %d requests", len(reqs))
	}
	first := reqs[0]
	if first.Method != "POST" || first.Path != "/v1/chatkit/sessions" || string(first.Body) != minimalBody ||
		first.Status != 200 || first.Header.Get("OpenAI-Project") != "proj_1" ||
		first.Header.Get("Authorization") != "Bearer "+DefaultAPIKey || first.Create == nil {
		t.Errorf("first request %+v", first)
	}
	if reqs[1].Status != 400 || reqs[1].Create != nil || string(reqs[1].Body) != `{"user":"u","bogus":1}` {
		t.Errorf("second request %+v", reqs[1])
	}
	if reqs[2].Path != "/v1/chatkit/sessions/"+id+"/cancel" || reqs[2].Status != 200 || reqs[2].Create != nil {
		t.Errorf("third request %+v", reqs[2])
	}
	if s.CreateCount() != 2 {
		t.Errorf("CreateCount %d", s.CreateCount())
	}
	if s.LastCreate() != nil {
		t.Error("LastCreate should reflect the latest (invalid) create")
	}

	// Copies are independent of the record.
	reqs[0].Header.Set("Authorization", "changed")
	reqs[0].Body[0] = 'X'
	if again := s.Requests()[0]; again.Header.Get("Authorization") == "changed" || again.Body[0] == 'X' {
		t.Error("Requests() shares memory with the record")
	}

	s.Inject(Fault{Status: 500})
	s.Reset()
	if len(s.Requests()) != 0 || s.CreateCount() != 0 || len(s.Sessions()) != 0 || s.LastCreate() != nil {
		t.Error("Reset left state behind")
	}
	if r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody); r.status != 200 {
		t.Errorf("queued fault survived Reset: %d", r.status)
	}
	if r := mustSend(t, c, "POST", s.URL()+"/chatkit/sessions/"+id+"/cancel", ""); r.status != 404 {
		t.Errorf("session survived Reset: %d", r.status)
	}
}

func TestConcurrentUse(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 10*time.Second)
	const n = 40
	s.Inject(Fault{Status: 500, Times: 5})
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Go(func() {
			body := fmt.Sprintf(`{"user":"user-%d","workflow":{"id":"wf_a"}}`, i)
			r, err := send(t, c, "POST", s.URL()+"/chatkit/sessions", body)
			if err != nil {
				t.Error(err)
				return
			}
			statuses[i] = r.status
			if r.status == 200 {
				id := r.json(t)["id"].(string)
				if r, err := send(t, c, "POST", s.URL()+"/chatkit/sessions/"+id+"/cancel", ""); err != nil || r.status != 200 {
					t.Errorf("cancel: %v %d", err, r.status)
				}
			}
		})
		wg.Go(func() {
			_ = s.Requests()
			_ = s.Sessions()
			_ = s.CreateCount()
			_ = s.LastCreate()
		})
	}
	wg.Wait()
	var ok, failed int
	for _, st := range statuses {
		switch st {
		case 200:
			ok++
		case 500:
			failed++
		}
	}
	if ok != n-5 || failed != 5 {
		t.Errorf("%d ok, %d failed; want %d and 5", ok, failed, n-5)
	}
	if s.CreateCount() != n || len(s.Requests()) != n+ok {
		t.Errorf("CreateCount %d, requests %d", s.CreateCount(), len(s.Requests()))
	}
	ids, secrets := map[string]bool{}, map[string]bool{}
	for _, ss := range s.Sessions() {
		if ss.Status != "cancelled" {
			t.Errorf("session %s status %q", ss.ID, ss.Status)
		}
		ids[ss.ID], secrets[ss.ClientSecret] = true, true
	}
	if len(ids) != ok || len(secrets) != ok {
		t.Errorf("ids or secrets not unique: %d ids, %d secrets, %d sessions", len(ids), len(secrets), ok)
	}
}

func TestHandlerMountsElsewhere(t *testing.T) {
	s := newTestServer(t, Options{})
	if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") || !strings.HasSuffix(s.URL(), "/v1") {
		t.Errorf("URL %q", s.URL())
	}
	req := httptest.NewRequest("POST", "/v1/chatkit/sessions", strings.NewReader(minimalBody))
	req.Header.Set("Authorization", "Bearer "+DefaultAPIKey)
	req.Header.Set("OpenAI-Beta", "chatkit_beta=v1")
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != 200 || len(s.Sessions()) != 1 || s.CreateCount() != 1 {
		t.Errorf("status %d, sessions %d: %s", rec.Code, len(s.Sessions()), rec.Body)
	}
}

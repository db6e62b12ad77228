package chatkit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// fakeChatKitServer stands in for a self-hosted ChatKit server (the Python
// SDK or anything speaking its protocol): it records what reached it and
// streams events for model-running requests.
type fakeChatKitServer struct {
	*httptest.Server
	mu           sync.Mutex
	seen         []seenRequest
	eventsSent   atomic.Int32
	disconnected chan struct{}
}

type seenRequest struct {
	path       string
	identities []string
	bodyHash   [32]byte
	origin     string
}

const streamedEvents = 5

func newFakeChatKitServer(t *testing.T) *fakeChatKitServer {
	t.Helper()
	s := &fakeChatKitServer{disconnected: make(chan struct{}, 1)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.seen = append(s.seen, seenRequest{path: r.URL.Path, identities: r.Header.Values("X-Chatkit-User"), bodyHash: sha256.Sum256(body), origin: r.Header.Get("Origin")})
		s.mu.Unlock()
		// A backend with its own (wrong) CORS answer: the module must win.
		w.Header().Set("Access-Control-Allow-Origin", "*")
		var req struct{ Type string }
		_ = json.Unmarshal(body, &req)
		if req.Type != "threads.create" {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"type":%q,"ok":true}`, req.Type)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for i := 0; i < streamedEvents; i++ {
			if i > 0 {
				select {
				case <-r.Context().Done():
					s.disconnected <- struct{}{}
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
			fmt.Fprintf(w, "data: {\"event\":%d}\n\n", i)
			if err := rc.Flush(); err != nil {
				return
			}
			s.eventsSent.Add(1)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *fakeChatKitServer) requests() []seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seenRequest(nil), s.seen...)
}

func (s *fakeChatKitServer) last(t *testing.T) seenRequest {
	t.Helper()
	seen := s.requests()
	if len(seen) == 0 {
		t.Fatal("the ChatKit server received nothing")
	}
	return seen[len(seen)-1]
}

func startProtectedSite(t *testing.T, fake *fakeopenai.Server, backend *fakeChatKitServer, chatkitExtra string) {
	t.Helper()
	addr := strings.TrimPrefix(backend.URL, "http://")
	startSite(t, fake, "", "protect /chatkit\n\t\tallow_origins https://app.example.com\n\t\t"+chatkitExtra,
		"handle /chatkit* {\n\t\treverse_proxy "+addr+"\n\t}\n\thandle /other* {\n\t\treverse_proxy "+addr+"\n\t}")
}

func TestProtectIdentityMatchesMinting(t *testing.T) {
	fake, backend := newFake(t), newFakeChatKitServer(t)
	startProtectedSite(t, fake, backend, "")
	browser := client(t)
	expectSecret(t, do(t, browser, "POST", "/api/chatkit/start", ""), fake)
	user := lastUser(t, fake)

	r := do(t, browser, "POST", "/chatkit", `{"type":"threads.list","params":{}}`,
		"Content-Type", "application/json", "X-ChatKit-User", "user:admin", "x-chatkit-user", "anon:victim")
	if r.status != 200 || r.json["type"] != "threads.list" {
		t.Fatalf("protected request = %d %s", r.status, r.body)
	}
	got := backend.last(t)
	if len(got.identities) != 1 || got.identities[0] != user {
		t.Fatalf("backend saw identities %v, want exactly [%s]", got.identities, user)
	}
	if want := sha256.Sum256([]byte(`{"type":"threads.list","params":{}}`)); got.bodyHash != want {
		t.Fatal("the backend did not receive the identical body")
	}

	// A new visitor on the protected path gets a cookie, and minting then
	// uses the same identity.
	newcomer := client(t)
	r = do(t, newcomer, "POST", "/chatkit", `{"type":"threads.list"}`, "Content-Type", "application/json")
	if r.status != 200 || r.header.Get("Set-Cookie") == "" {
		t.Fatalf("newcomer on protected path: %d, Set-Cookie %q", r.status, r.header.Get("Set-Cookie"))
	}
	firstID := backend.last(t).identities[0]
	expectSecret(t, do(t, newcomer, "POST", "/api/chatkit/start", ""), fake)
	if lastUser(t, fake) != firstID {
		t.Fatalf("minting user %q differs from protected-path user %q", lastUser(t, fake), firstID)
	}

	// Spoofed identity headers are removed on unprotected paths too.
	do(t, browser, "GET", "/other", "", "X-ChatKit-User", "user:admin")
	if ids := backend.last(t).identities; len(ids) != 0 {
		t.Fatalf("spoofed identity reached the backend on an unprotected path: %v", ids)
	}
}

func TestProtectCostAwareLimiting(t *testing.T) {
	fake, backend := newFake(t), newFakeChatKitServer(t)
	startProtectedSite(t, fake, backend, "rate_limit 2 1m {\n\t\t\tzone protect-cost-test\n\t\t}")
	c := client(t)
	for i := 0; i < 6; i++ {
		r := do(t, c, "POST", "/chatkit", `{"type":"threads.get_by_id","params":{"thread_id":"t"}}`, "Content-Type", "application/json")
		if r.status != 200 || r.header.Get("RateLimit") != "" {
			t.Fatalf("read request %d = %d (RateLimit %q): reads must be free", i, r.status, r.header.Get("RateLimit"))
		}
	}
	// A malformed body costs a token and reaches the backend untouched.
	malformed := `{"type": "threads.add_user_message", "params": {`
	r := do(t, c, "POST", "/chatkit", malformed, "Content-Type", "application/json")
	if r.status != 200 || r.header.Get("RateLimit") == "" {
		t.Fatalf("malformed request = %d, RateLimit %q", r.status, r.header.Get("RateLimit"))
	}
	if backend.last(t).bodyHash != sha256.Sum256([]byte(malformed)) {
		t.Fatal("malformed body was altered")
	}
	r = do(t, c, "POST", "/chatkit", `{"type":"threads.add_user_message","params":{"input":{}}}`, "Content-Type", "application/json")
	if r.status != 200 {
		t.Fatalf("second costly request = %d", r.status)
	}
	before := len(backend.requests())
	r = do(t, c, "POST", "/chatkit", `{"type":"threads.create","params":{}}`, "Content-Type", "application/json")
	expectError(t, r, http.StatusTooManyRequests, "rate_limit_exceeded")
	if len(backend.requests()) != before {
		t.Fatal("a refused request reached the backend")
	}
	// Reads still pass.
	if r := do(t, c, "POST", "/chatkit", `{"type":"items.list"}`, "Content-Type", "application/json"); r.status != 200 {
		t.Fatalf("read after exhaustion = %d", r.status)
	}
}

func TestProtectLimitsOriginsAndCORS(t *testing.T) {
	fake, backend := newFake(t), newFakeChatKitServer(t)
	startProtectedSite(t, fake, backend, "max_body 1KiB\n\t\tmax_upload 64KiB")
	c := client(t)
	r := do(t, c, "POST", "/chatkit", `{"type":"threads.add_user_message","pad":"`+strings.Repeat("x", 2000)+`"}`, "Content-Type", "application/json")
	expectError(t, r, http.StatusRequestEntityTooLarge, "payload_too_large")

	upload := func(size int) reply {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		fw, _ := mw.CreateFormFile("file", "a.bin")
		fw.Write(bytes.Repeat([]byte{'a'}, size))
		mw.Close()
		return do(t, c, "POST", "/chatkit/upload", buf.String(), "Content-Type", mw.FormDataContentType())
	}
	if r := upload(32 << 10); r.status != 200 {
		t.Fatalf("32 KiB upload under a 64 KiB max_upload = %d %s", r.status, r.body)
	}
	expectError(t, upload(100<<10), http.StatusRequestEntityTooLarge, "payload_too_large")

	before := len(backend.requests())
	r = do(t, c, "POST", "/chatkit", `{"type":"threads.list"}`, "Content-Type", "application/json", "Origin", "https://evil.example")
	expectError(t, r, http.StatusForbidden, "origin_not_allowed")
	if len(backend.requests()) != before {
		t.Fatal("a disallowed origin reached the backend")
	}

	r = do(t, c, "OPTIONS", "/chatkit", "", "Origin", "https://app.example.com",
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "content-type, x-custom")
	if r.status != 204 || r.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		r.header.Get("Access-Control-Allow-Headers") != "content-type, x-custom" || len(backend.requests()) != before {
		t.Fatalf("protected preflight = %d %v", r.status, r.header)
	}

	r = do(t, c, "POST", "/chatkit", `{"type":"threads.list"}`, "Content-Type", "application/json", "Origin", "https://app.example.com")
	if acao := r.header.Values("Access-Control-Allow-Origin"); r.status != 200 || len(acao) != 1 || acao[0] != "https://app.example.com" {
		t.Fatalf("CORS on a proxied answer: %d %v", r.status, acao)
	}
}

func TestProtectStreamsEventByEvent(t *testing.T) {
	fake, backend := newFake(t), newFakeChatKitServer(t)
	startProtectedSite(t, fake, backend, "")
	req, _ := http.NewRequest("POST", siteURL+"/chatkit", strings.NewReader(`{"type":"threads.create","params":{}}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := plainClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("Content-Type = %q", resp.Header.Get("Content-Type"))
	}
	lines := bufio.NewReader(resp.Body)
	first, err := lines.ReadString('\n')
	if err != nil || !strings.Contains(first, `"event":0`) {
		t.Fatalf("first line %q, %v", first, err)
	}
	if sent := backend.eventsSent.Load(); sent >= streamedEvents {
		t.Fatalf("the first event arrived only after all %d were written: buffered", sent)
	}
	rest, _ := io.ReadAll(lines)
	if got := strings.Count(first+string(rest), "data: "); got != streamedEvents {
		t.Fatalf("got %d events, want %d", got, streamedEvents)
	}
}

func TestProtectClientDisconnectReachesBackend(t *testing.T) {
	fake, backend := newFake(t), newFakeChatKitServer(t)
	startProtectedSite(t, fake, backend, "")
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", siteURL+"/chatkit", strings.NewReader(`{"type":"threads.create"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := plainClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-backend.disconnected:
	case <-time.After(3 * time.Second):
		t.Fatal("the backend never saw the browser leave")
	}
}

func TestProtectOnlyNeedsNoWorkflowOrKey(t *testing.T) {
	backend := newFakeChatKitServer(t)
	t.Setenv("OPENAI_API_KEY", "")
	addr := strings.TrimPrefix(backend.URL, "http://")
	newTester(t, caddyConfig("", "protect /chatkit\n\t\tuser {http.request.header.X-Test-User}\n\t\trate_limit off",
		"handle /chatkit* {\n\t\treverse_proxy "+addr+"\n\t}"))
	c := client(t)
	expectError(t, do(t, c, "POST", "/chatkit", `{"type":"threads.list"}`, "Content-Type", "application/json"), http.StatusUnauthorized, "unauthorized")
	r := do(t, c, "POST", "/chatkit", `{"type":"threads.list"}`, "Content-Type", "application/json", "X-Test-User", "42")
	if r.status != 200 || backend.last(t).identities[0] != "user:42" {
		t.Fatalf("protect-only with user: %d, identities %v", r.status, backend.last(t).identities)
	}
	// Without a workflow the minting paths are not the module's.
	if r := do(t, c, "POST", "/api/chatkit/start", ""); r.body != "the next handler" {
		t.Fatalf("start without workflow answered %d %s", r.status, r.body)
	}
	if r := do(t, c, "GET", "/api/health", ""); r.json["status"] != "ok" {
		t.Fatalf("health = %s", r.body)
	}
}

func TestProtectCannotBeTricked(t *testing.T) {
	fake, backend := newFake(t), newFakeChatKitServer(t)
	startProtectedSite(t, fake, backend, "rate_limit 1 1m {\n\t\t\tzone protect-tricks-test\n\t\t}")
	c := client(t)
	// A second, differently cased "type" key must not make a model run free:
	// the ChatKit server reads the exact key.
	costly := `{"type":"threads.add_user_message","params":{},"TYPE":"threads.list"}`
	if r := do(t, c, "POST", "/chatkit", costly, "Content-Type", "application/json"); r.status != 200 || r.header.Get("RateLimit") == "" {
		t.Fatalf("first costly request = %d, RateLimit %q", r.status, r.header.Get("RateLimit"))
	}
	// Labelling a JSON body multipart does not make it a free upload.
	r := do(t, c, "POST", "/chatkit", `{"type":"threads.create"}`, "Content-Type", "multipart/form-data; boundary=xyz")
	expectError(t, r, http.StatusTooManyRequests, "rate_limit_exceeded")

	// A read still passes, with our identity only.
	r = do(t, c, "POST", "/chatkit", `{"type":"threads.list"}`, "Content-Type", "application/json", "X-ChatKit-User", "user:admin")
	if ids := backend.last(t).identities; r.status != 200 || len(ids) != 1 || ids[0] == "user:admin" {
		t.Fatalf("read request = %d, backend identities %v", r.status, ids)
	}
}

func TestDropIdentityHeadersEverySpelling(t *testing.T) {
	hdr := http.Header{}
	for _, k := range []string{"X-Chatkit-User", "X_chatkit_user", "x-CHATKIT_user", "X-Chatkit-Users", "Other"} {
		hdr[k] = []string{"user:admin"}
	}
	dropIdentityHeaders(hdr, "X-Chatkit-User")
	if len(hdr) != 2 || hdr["X-Chatkit-Users"] == nil || hdr["Other"] == nil {
		t.Fatalf("left %v: want only X-Chatkit-Users and Other", hdr)
	}
}

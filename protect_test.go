package chatkit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/fcgi"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
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

// shortenBodyBounds sets every live handler's body read timeout and
// pending bounds, so a test needs neither 10 s nor 64 MiB of bodies.
func shortenBodyBounds(t *testing.T, timeout time.Duration, perClient int, maxBytes int64) *pendingBodies {
	t.Helper()
	hs := liveHandlers(t)
	if len(hs) == 0 {
		t.Fatal("no chatkit handler in the running config")
	}
	for _, h := range hs {
		p := h.protected.pending
		p.timeout.Store(int64(timeout))
		p.mu.Lock()
		p.maxPerClient, p.maxBytes = perClient, maxBytes
		p.mu.Unlock()
	}
	return hs[0].protected.pending
}

// stalledBody opens a connection that sends a protected request's headers
// and the start of a body promising much more, then stalls.
func stalledBody(t *testing.T, client string) net.Conn {
	t.Helper()
	return stalledRequest(t, "/chatkit", client, "application/json", `{"type":"threads.create","pad":"xxxxxxxx`)
}

// stalledUpload stalls before even the first multipart delimiter.
func stalledUpload(t *testing.T, client string) net.Conn {
	t.Helper()
	return stalledRequest(t, "/chatkit/upload", client, "multipart/form-data; boundary=xyz", "")
}

func stalledRequest(t *testing.T, path, client, contentType, start string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", "localhost:9080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_, err = fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: localhost:9080\r\nContent-Type: %s\r\n"+
		"Content-Length: 1000000\r\nX-Client: %s\r\n\r\n%s", path, contentType, client, start)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// answerOn reads one answer from a raw connection and reports whether the
// server then closed it.
func answerOn(t *testing.T, c net.Conn, within time.Duration) (resp *http.Response, body map[string]any, closed bool) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer within %s: %v", within, err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("answer %d is not JSON: %q", resp.StatusCode, raw)
	}
	_, err = br.ReadByte()
	return resp, body, errors.Is(err, io.EOF)
}

func waitPending(t *testing.T, p *pendingBodies, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.pending() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d bodies pending, want %d", p.pending(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stalled bodies from one client: past the per-client bound they are
// refused at once and their connections closed; the ones inside it are
// dropped, closed, when the read timeout passes; other clients are served
// meanwhile and nothing reaches the backend.
func TestProtectStalledBodiesAreBounded(t *testing.T) {
	fake, backend := newFake(t), newFakeChatKitServer(t)
	startProtectedSite(t, fake, backend, "rate_limit 100 1s {\n\t\t\tkey {http.request.header.X-Client}\n\t\t\tzone protect-stall-test\n\t\t}")
	const timeout = 1500 * time.Millisecond
	// Room for six of the stalled bodies, which promise 1,000,000 bytes.
	pending := shortenBodyBounds(t, timeout, 4, 6_000_000)
	start := time.Now()

	var held []net.Conn
	for range 4 {
		held = append(held, stalledBody(t, "mallory"))
	}
	waitPending(t, pending, 4)

	for i := range 5 {
		resp, body, closed := answerOn(t, stalledBody(t, "mallory"), 3*time.Second)
		if resp.StatusCode != http.StatusTooManyRequests || body["error"] != "too_many_pending" ||
			resp.Header.Get("Retry-After") == "" || !resp.Close || !closed {
			t.Fatalf("excess stalled body %d: %d %v, Retry-After %q, Connection close %v, closed %v",
				i, resp.StatusCode, body, resp.Header.Get("Retry-After"), resp.Close, closed)
		}
	}
	if n := pending.pending(); n != 4 {
		t.Fatalf("%d bodies pending after the refusals, want the 4 held", n)
	}

	// Another client is served while mallory's bodies stall, and may fill
	// the byte budget; past it everyone waits.
	c := plainClient(t)
	if r := do(t, c, "POST", "/chatkit", `{"type":"threads.list"}`, "Content-Type", "application/json", "X-Client", "alice"); r.status != 200 {
		t.Fatalf("another client during the stall: %d %s", r.status, r.body)
	}
	held = append(held, stalledBody(t, "bob"), stalledUpload(t, "dave"))
	waitPending(t, pending, 6)
	resp, body, closed := answerOn(t, stalledBody(t, "carol"), 3*time.Second)
	if resp.StatusCode != http.StatusServiceUnavailable || body["error"] != "too_many_pending" || resp.Header.Get("Retry-After") == "" || !closed {
		t.Fatalf("past the total: %d %v, closed %v", resp.StatusCode, body, closed)
	}

	for i, conn := range held {
		resp, body, closed := answerOn(t, conn, timeout+3*time.Second)
		if resp.StatusCode != http.StatusRequestTimeout || body["error"] != "body_timeout" || !resp.Close || !closed {
			t.Fatalf("stalled body %d: %d %v, Connection close %v, closed %v", i, resp.StatusCode, body, resp.Close, closed)
		}
	}
	if waited := time.Since(start); waited < timeout {
		t.Fatalf("stalled bodies were dropped after %s, before the %s timeout", waited, timeout)
	}
	waitPending(t, pending, 0)
	for _, seen := range backend.requests() {
		if seen.path != "/chatkit" {
			t.Fatal("a stalled or refused body reached the backend")
		}
	}
	if r := do(t, c, "POST", "/chatkit", `{"type":"threads.create"}`, "Content-Type", "application/json", "X-Client", "mallory"); r.status != 200 {
		t.Fatalf("mallory after the stall: %d %s", r.status, r.body)
	}
}

// The start and refresh paths read their body with the same step: a body
// that does not arrive in time is dropped, and its connection closed.
func TestBodyTimeoutOnMintPaths(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "max_body 2MiB", "")
	shortenBodyBounds(t, 300*time.Millisecond, 4, maxPendingBytes)
	for _, path := range []string{"/api/chatkit/start", "/api/chatkit/refresh"} {
		resp, body, closed := answerOn(t, stalledRequest(t, path, "x", "application/json", `{"currentClientSecret":"`), 5*time.Second)
		if resp.StatusCode != http.StatusRequestTimeout || body["error"] != "body_timeout" || !resp.Close || !closed {
			t.Fatalf("%s: %d %v, Connection close %v, closed %v", path, resp.StatusCode, body, resp.Close, closed)
		}
	}
	if fake.CreateCount() != 0 {
		t.Fatal("a stalled body reached OpenAI")
	}
}

// slowUpload streams a multipart upload whose first 200 bytes come at
// once and the rest after pause, and returns the status and whether the
// backend received the whole body.
func slowUpload(t *testing.T, backend *fakeChatKitServer, pause time.Duration) (int, bool) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, _ := mw.CreateFormFile("file", "a.bin")
	fw.Write(bytes.Repeat([]byte{'a'}, 4096))
	mw.Close()
	whole := buf.Bytes()
	pr, pw := io.Pipe()
	go func() {
		pw.Write(whole[:200])
		time.Sleep(pause)
		pw.Write(whole[200:])
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", siteURL+"/chatkit/upload", pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.ContentLength = int64(len(whole))
	status := 0
	if resp, err := plainClient(t).Do(req); err == nil {
		resp.Body.Close()
		status = resp.StatusCode
	}
	got := false
	for _, seen := range backend.requests() {
		got = got || seen.bodyHash == sha256.Sum256(whole)
	}
	return status, got
}

// The read timeout covers the module's own read only: the backend's reads
// of a slowly streamed upload and a long event stream after an inspected
// body outlive it, while the server's own read_body timeout still holds.
func TestProtectBodyTimeoutSparesTheBackend(t *testing.T) {
	fake, backend := newFake(t), newFakeChatKitServer(t)
	startProtectedSite(t, fake, backend, "")
	const timeout = 300 * time.Millisecond
	shortenBodyBounds(t, timeout, 4, maxPendingBytes)
	events := func() int {
		// threads.create streams 5 events over 800 ms.
		r := do(t, plainClient(t), "POST", "/chatkit", `{"type":"threads.create","params":{}}`, "Content-Type", "application/json")
		return strings.Count(r.body, "data: ")
	}
	if got := events(); got != streamedEvents {
		t.Fatalf("event stream past the body timeout: %d of %d events", got, streamedEvents)
	}
	if status, whole := slowUpload(t, backend, 3*timeout); status != 200 || !whole {
		t.Fatalf("upload slower than the body timeout: %d, the backend got it whole: %v", status, whole)
	}

	// With the server's own read_body timeout, the module's read never
	// outlasts it and the rest of the body stays under it; an event stream
	// after a body read to its end is not cut by it (net/http clears the
	// deadline there, and so must the module).
	addr := strings.TrimPrefix(backend.URL, "http://")
	startSite(t, fake, "servers {\n\t\ttimeouts {\n\t\t\tread_body 600ms\n\t\t}\n\t}", "protect /chatkit",
		"handle /chatkit* {\n\t\treverse_proxy "+addr+"\n\t}")
	shortenBodyBounds(t, timeout, 4, maxPendingBytes)
	if got := events(); got != streamedEvents {
		t.Fatalf("event stream past read_body: %d of %d events", got, streamedEvents)
	}
	if status, whole := slowUpload(t, backend, 1500*time.Millisecond); status == 200 || whole {
		t.Fatalf("an upload slower than the server's read_body went through: %d, whole %v", status, whole)
	}
}

func TestProtectChargesUploads(t *testing.T) {
	fake, backend := newFake(t), newFakeChatKitServer(t)
	startProtectedSite(t, fake, backend, "rate_limit 1 1h {\n\t\t\tzone protect-upload-test\n\t\t}")
	c := client(t)
	upload := func() reply {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		fw, _ := mw.CreateFormFile("file", "a.txt")
		fw.Write([]byte("attachment"))
		mw.Close()
		return do(t, c, "POST", "/chatkit/upload", buf.String(), "Content-Type", mw.FormDataContentType())
	}
	if r := upload(); r.status != 200 || r.header.Get("RateLimit") == "" {
		t.Fatalf("first upload = %d, RateLimit %q", r.status, r.header.Get("RateLimit"))
	}
	before := len(backend.requests())
	expectError(t, upload(), http.StatusTooManyRequests, "rate_limit_exceeded")
	if len(backend.requests()) != before {
		t.Fatal("a refused upload reached the backend")
	}
}

// budget counts model runs on protected paths as it counts sessions: the
// same five types that spend a token, refused with 503 once it is used up.
func TestProtectBudgetCapsModelRuns(t *testing.T) {
	fake, backend := newFake(t), newFakeChatKitServer(t)
	startProtectedSite(t, fake, backend, "budget 2 1h\n\t\trate_limit 1000 1s {\n\t\t\tzone protect-budget-test\n\t\t}")
	c := client(t)
	json := func(body string) reply { return do(t, c, "POST", "/chatkit", body, "Content-Type", "application/json") }
	for i := 0; i < 3; i++ {
		if r := json(`{"type":"threads.list"}`); r.status != 200 {
			t.Fatalf("read %d = %d: reads are not model runs", i, r.status)
		}
	}
	for _, body := range []string{`{"type":"threads.create","params":{}}`, `{"type":"threads.add_user_message","params":{}}`} {
		if r := json(body); r.status != 200 {
			t.Fatalf("model run within the budget: %d %s", r.status, r.body)
		}
	}
	before := len(backend.requests())
	r := json(`{"type":"threads.retry_after_item","params":{}}`)
	expectError(t, r, http.StatusServiceUnavailable, "budget_exhausted")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("budget_exhausted without Retry-After")
	}
	if len(backend.requests()) != before {
		t.Fatal("a model run past the budget reached the backend")
	}
	// One budget for the site: minting is refused too; reads still pass.
	expectError(t, do(t, c, "POST", "/api/chatkit/start", ""), http.StatusServiceUnavailable, "budget_exhausted")
	if r := json(`{"type":"items.list"}`); r.status != 200 {
		t.Fatalf("read after the budget = %d", r.status)
	}
}

// identitySpellings lists, from a header map, every entry a CGI-style
// gateway or a lenient server would read as the identity header.
func identitySpellings(h http.Header) []string {
	var out []string
	for k, vv := range h {
		if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), "X-Chatkit-User") {
			for _, v := range vv {
				out = append(out, k+": "+v)
			}
		}
	}
	sort.Strings(out)
	return out
}

// identityBackends are a plain HTTP backend (for reverse_proxy) and a
// FastCGI one (for php_fastcgi), both recording the identity headers and
// trailers each request brought.
type identityBackends struct {
	mu       sync.Mutex
	headers  [][]string
	trailers [][]string
	httpAddr string
	fcgiAddr string
	root     string
}

func (b *identityBackends) record(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body) // trailers arrive with the end of the body
	b.mu.Lock()
	b.headers = append(b.headers, identitySpellings(r.Header))
	b.trailers = append(b.trailers, identitySpellings(r.Trailer))
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"ok":true}`)
}

func (b *identityBackends) last(t *testing.T) (headers, trailers []string) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.headers) == 0 {
		t.Fatal("no request reached a backend")
	}
	return b.headers[len(b.headers)-1], b.trailers[len(b.trailers)-1]
}

func newIdentityBackends(t *testing.T) *identityBackends {
	t.Helper()
	b := &identityBackends{root: t.TempDir()}
	// php_fastcgi sends what its try_files finds to index.php.
	if err := os.WriteFile(filepath.Join(b.root, "index.php"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(http.HandlerFunc(b.record))
	t.Cleanup(hs.Close)
	b.httpAddr = strings.TrimPrefix(hs.URL, "http://")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go fcgi.Serve(ln, http.HandlerFunc(b.record))
	b.fcgiAddr = ln.Addr().String()
	return b
}

// identityRequest is one way a client may try to remove or double the
// identity header the module sets.
type identityRequest struct {
	name string
	// raw, when set, is written on the connection as it is (with PATH
	// standing for the request path); otherwise build makes the request.
	raw   string
	build func(url string) *http.Request
	h2    bool // possible over HTTP/2 (which has no Connection header)
}

func identityRequests() []identityRequest {
	jsonReq := func(url string, body io.Reader, headers ...string) *http.Request {
		req, _ := http.NewRequest("POST", url, body)
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header[headers[i]] = append(req.Header[headers[i]], headers[i+1])
		}
		return req
	}
	list := `{"type":"threads.list"}`
	chunked := func(url string, trailer string) *http.Request {
		req := jsonReq(url, io.MultiReader(strings.NewReader(list)))
		req.ContentLength = -1
		req.Trailer = http.Header{trailer: {"user:admin"}}
		return req
	}
	return []identityRequest{
		{name: "Connection names the header", build: func(url string) *http.Request {
			return jsonReq(url, strings.NewReader(list), "Connection", "keep-alive, X-ChatKit-User", "X-Chatkit-User", "user:admin")
		}},
		{name: "Connection names another spelling", build: func(url string) *http.Request {
			return jsonReq(url, strings.NewReader(list), "Connection", "x_chatkit_user", "X_chatkit_user", "user:admin")
		}},
		{name: "every spelling sent", h2: true, build: func(url string) *http.Request {
			return jsonReq(url, strings.NewReader(list), "X-Chatkit-User", "user:admin", "X_chatkit_user", "user:root", "x-CHATKIT_user", "user:eve")
		}},
		{name: "trailer on a chunked JSON body", h2: true, build: func(url string) *http.Request { return chunked(url, "X-Chatkit-User") }},
		{name: "underscore trailer on a chunked JSON body", h2: true, build: func(url string) *http.Request { return chunked(url, "X_chatkit_user") }},
		{name: "trailer on a streamed multipart upload", h2: true, build: func(url string) *http.Request {
			var buf bytes.Buffer
			mw := multipart.NewWriter(&buf)
			fw, _ := mw.CreateFormFile("file", "a.txt")
			fw.Write([]byte("attachment"))
			mw.Close()
			req, _ := http.NewRequest("POST", url+"/upload", io.MultiReader(&buf))
			req.Header.Set("Content-Type", mw.FormDataContentType())
			req.ContentLength = -1
			req.Trailer = http.Header{"X-Chatkit-User": {"user:admin"}}
			return req
		}},
		{name: "undeclared trailer on a chunked JSON body", raw: "POST PATH HTTP/1.1\r\nHost: localhost\r\nX-Test-User: alice\r\n" +
			"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\nX-ChatKit-User: user:admin\r\n\r\n", len(list), list)},
		{name: "declared trailer, Connection naming it", raw: "POST PATH HTTP/1.1\r\nHost: localhost\r\nX-Test-User: alice\r\n" +
			"Content-Type: application/json\r\nConnection: X-ChatKit-User\r\nTrailer: X-ChatKit-User\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\nX-ChatKit-User: user:admin\r\n\r\n", len(list), list)},
	}
}

// After the module sets the identity header, nothing the client controls
// removes it or adds a second value: not Connection tokens (which
// reverse_proxy obeys), not other spellings (which CGI gateways merge),
// not trailers (which net/http merges into the request at the end of a
// chunked body and reverse_proxy forwards). Through reverse_proxy and
// php_fastcgi, over HTTP/1.1, TLS and HTTP/2.
func TestProtectIdentityHeaderSurvivesEveryClientTrick(t *testing.T) {
	b := newIdentityBackends(t)
	site := fmt.Sprintf(`
	chatkit {
		protect /chatkit /fcgi
		user {http.request.header.X-Test-User}
		rate_limit off
	}
	handle /chatkit* {
		reverse_proxy %s
	}
	handle /fcgi* {
		root * %s
		php_fastcgi %s
	}`, b.httpAddr, b.root, b.fcgiAddr)
	newTester(t, fmt.Sprintf(`{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
}
http://localhost:9080 {%s
}
https://localhost:9443 {
	tls internal%s
}
`, site, site))

	insecure := &tls.Config{InsecureSkipVerify: true}
	// tls internal issues the site's certificate in the background.
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err := tls.Dial("tcp", "localhost:9443", insecure)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no TLS on 9443: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	transports := []struct {
		name  string
		base  string
		proto int
		rt    *http.Transport
		dial  func() (net.Conn, error)
	}{
		{"HTTP/1.1", "http://localhost:9080", 1, &http.Transport{}, func() (net.Conn, error) { return net.Dial("tcp", "localhost:9080") }},
		{"TLS", "https://localhost:9443", 1, &http.Transport{TLSClientConfig: insecure},
			func() (net.Conn, error) { return tls.Dial("tcp", "localhost:9443", insecure) }},
		{"HTTP/2", "https://localhost:9443", 2, &http.Transport{TLSClientConfig: insecure, ForceAttemptHTTP2: true}, nil},
	}
	for _, tr := range transports {
		t.Cleanup(tr.rt.CloseIdleConnections)
		for _, path := range []string{"/chatkit", "/fcgi"} {
			for _, ir := range identityRequests() {
				name := tr.name + " " + path + ": " + ir.name
				var status, proto int
				switch {
				case ir.raw != "":
					if tr.dial == nil {
						continue
					}
					conn, err := tr.dial()
					if err != nil {
						t.Fatal(err)
					}
					_, _ = io.WriteString(conn, strings.Replace(ir.raw, "PATH", path, 1))
					_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
					resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					resp.Body.Close()
					conn.Close()
					status, proto = resp.StatusCode, resp.ProtoMajor
				case tr.proto == 2 && !ir.h2:
					continue
				default:
					req := ir.build(tr.base + path)
					req.Header.Set("X-Test-User", "alice")
					resp, err := (&http.Client{Transport: tr.rt, Timeout: 10 * time.Second}).Do(req)
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status, proto = resp.StatusCode, resp.ProtoMajor
				}
				if status != 200 || proto != tr.proto {
					t.Fatalf("%s: status %d over HTTP/%d", name, status, proto)
				}
				headers, trailers := b.last(t)
				if want := []string{"X-Chatkit-User: user:alice"}; !slices.Equal(headers, want) || len(trailers) != 0 {
					t.Errorf("%s: the backend saw headers %q and trailers %q, want exactly %q", name, headers, trailers, want)
				}
			}
		}
	}
}

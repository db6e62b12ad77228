package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// demoRun is one run of the demo in this test process.
type demoRun struct {
	site string
	logs *logLines
	stop func()
}

// logLines collects what the demo logs.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// startDemo runs the demo on a free port (admin off, so no fixed ports)
// with the given environment (nothing else from the machine's), and stops
// it when the test ends or stop is called.
func startDemo(t *testing.T, storageDir string, env map[string]string) *demoRun {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	logs := &logLines{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{
			Listen:     addr,
			StorageDir: storageDir,
			Getenv:     func(k string) string { return env[k] },
			Logf: func(format string, args ...any) {
				logs.logf(format, args...)
				t.Logf(format, args...)
			},
			OnReady: func(u string) { ready <- u },
		})
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("the demo did not stop within 30s")
			}
		})
	}
	select {
	case site := <-ready:
		t.Cleanup(stop)
		if want := "http://" + addr + "/"; site != want {
			t.Errorf("site URL %q, want %q", site, want)
		}
		return &demoRun{site: site, logs: logs, stop: stop}
	case err := <-done:
		cancel()
		t.Fatalf("run returned before serving: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("the demo did not start within 30s")
	}
	return nil
}

// newClient is a browser stand-in: it keeps the anonymous cookie.
func newClient(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 20 * time.Second, Jar: jar}
}

func chatkitRequest(t *testing.T, site, typ string, params any) *http.Request {
	t.Helper()
	body, err := json.Marshal(map[string]any{"type": typ, "params": params})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, site+"api/chatkit", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	return req
}

// event is one stream event with the time it arrived.
type event struct {
	at   time.Time
	data map[string]any
}

func (e event) typ() string { s, _ := e.data["type"].(string); return s }

// stream posts a streaming request and reads its events as they arrive.
func stream(t *testing.T, c *http.Client, site, typ string, params any) []event {
	t.Helper()
	res, err := c.Do(chatkitRequest(t, site, typ, params))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); res.StatusCode != http.StatusOK || !strings.HasPrefix(ct, "text/event-stream") {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("%s = %d %q: %s", typ, res.StatusCode, ct, b)
	}
	var out []event
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(data), &m); err != nil {
			t.Fatalf("event %q: %v", data, err)
		}
		out = append(out, event{at: time.Now(), data: m})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func callJSON(t *testing.T, c *http.Client, site, typ string, params any, into any) {
	t.Helper()
	res, err := c.Do(chatkitRequest(t, site, typ, params))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("%s = %d: %s", typ, res.StatusCode, b)
	}
	if err := json.Unmarshal(b, into); err != nil {
		t.Fatalf("%s: %v in %s", typ, err, b)
	}
}

func userInput(text string) map[string]any {
	return map[string]any{"input": map[string]any{
		"content":           []any{map[string]any{"type": "input_text", "text": text}},
		"attachments":       []any{},
		"inference_options": map[string]any{},
	}}
}

type threadList struct {
	Data []struct {
		ID string `json:"id"`
	} `json:"data"`
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, b
}

// TestDemoChatsWithTheFake: with no key the demo is a ChatKit server on the
// built-in fake, says so, serves the chat page, streams an answer word by
// word and keeps the thread in SQLite in its storage directory, across a
// restart of the demo.
func TestDemoChatsWithTheFake(t *testing.T) {
	storage := t.TempDir()
	d := startDemo(t, storage, nil)
	c := newClient(t)

	if logs := d.logs.String(); !strings.Contains(logs, "no OPENAI_API_KEY: the agent answers from the built-in fake OpenAI") ||
		!strings.Contains(logs, fakeEventInterval.String()) {
		t.Errorf("the log does not say the answers come from the fake, every %v:\n%s", fakeEventInterval, logs)
	}

	res, page := get(t, c, d.site)
	if res.StatusCode != http.StatusOK || !bytes.Contains(page, []byte(`id="composer"`)) || !bytes.Contains(page, []byte(`type="module" src="app.js"`)) {
		t.Fatalf("GET / = %d; the page has no chat composer or module script:\n%s", res.StatusCode, page)
	}
	// Browsers run module scripts only with a JavaScript MIME type.
	for _, f := range []string{"app.js", "chat.js", "mint.js"} {
		res, _ := get(t, c, d.site+f)
		if ct := res.Header.Get("Content-Type"); res.StatusCode != http.StatusOK || !strings.HasPrefix(ct, "text/javascript") {
			t.Errorf("GET %s = %d, Content-Type %q", f, res.StatusCode, ct)
		}
	}
	var cfg demoConfig
	_, b := get(t, c, d.site+"demo-config.json")
	if err := json.Unmarshal(b, &cfg); err != nil || cfg != (demoConfig{Backend: "fake", Model: defaultModel}) {
		t.Errorf("demo-config.json = %s (%v), want the fake, %s, no minting", b, err, defaultModel)
	}

	const said = "hello there demo"
	events := stream(t, c, d.site, "threads.create", userInput(said))
	var threadID, final, progress string
	var deltas []event
	var citations []any
	for _, e := range events {
		switch e.typ() {
		case "progress_update":
			if final == "" && len(deltas) == 0 {
				progress, _ = e.data["text"].(string)
			}
		case "thread.created":
			threadID, _ = e.data["thread"].(map[string]any)["id"].(string)
		case "thread.item.updated":
			if u := e.data["update"].(map[string]any); u["type"] == "assistant_message.content_part.text_delta" {
				deltas = append(deltas, e)
			}
		case "thread.item.done":
			if it := e.data["item"].(map[string]any); it["type"] == "assistant_message" {
				final, _ = it["content"].([]any)[0].(map[string]any)["text"].(string)
				citations, _ = it["content"].([]any)[0].(map[string]any)["annotations"].([]any)
			}
		}
	}
	if threadID == "" || final != "You said: "+said {
		t.Fatalf("threads.create: thread %q, answer %q; events %v", threadID, final, events)
	}
	// The fake searched the web first, shown while it ran, and the answer
	// cites what it found.
	if progress != "Searching caddyserver.com…" {
		t.Errorf("progress before the answer %q; events %v", progress, events)
	}
	if len(citations) != 1 || !strings.Contains(fmt.Sprint(citations[0]), "https://caddyserver.com/docs/") {
		t.Errorf("citations %v", citations)
	}
	// Word by word, paced: one delta a word, the fake's interval apart.
	if n := len(strings.Fields(final)); len(deltas) != n {
		t.Errorf("%d text deltas for %d words", len(deltas), n)
	}
	if len(deltas) > 1 {
		if gap := deltas[len(deltas)-1].at.Sub(deltas[0].at); gap < time.Duration(len(deltas)-1)*fakeEventInterval {
			t.Errorf("the deltas arrived within %v: not streamed at %v each", gap, fakeEventInterval)
		}
	}

	var list threadList
	callJSON(t, c, d.site, "threads.list", map[string]any{"limit": 20, "order": "desc"}, &list)
	if len(list.Data) != 1 || list.Data[0].ID != threadID {
		t.Fatalf("threads.list = %+v, want only %s", list, threadID)
	}
	if fi, err := os.Stat(filepath.Join(storage, threadsFile)); err != nil || fi.Size() == 0 {
		t.Fatalf("no threads database in the storage directory: %v", err)
	}

	// Minting is off without CHATKIT_WORKFLOW_ID: start is not the module's.
	res, err := c.Post(d.site+"api/chatkit/start", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if bytes.Contains(b, []byte("client_secret")) {
		t.Errorf("start minted a secret without CHATKIT_WORKFLOW_ID: %d %s", res.StatusCode, b)
	}

	// A restart keeps the thread (and the visitor, whose cookie key is in
	// the same storage).
	d.stop()
	d = startDemo(t, storage, nil)
	list = threadList{}
	callJSON(t, c, d.site, "threads.list", map[string]any{"limit": 20, "order": "desc"}, &list)
	if len(list.Data) != 1 || list.Data[0].ID != threadID {
		t.Fatalf("after a restart threads.list = %+v, want %s", list, threadID)
	}
}

// TestDemoAttachesAFile: the demo takes files the way the web component
// sends them (attachments.create, then the bytes to the signed upload
// link); the fake accepts the image as OpenAI would, and the thread keeps
// the file with the message.
func TestDemoAttachesAFile(t *testing.T) {
	d := startDemo(t, t.TempDir(), nil)
	c := newClient(t)
	png, _ := base64.StdEncoding.DecodeString("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
	var att struct {
		ID     string `json:"id"`
		Upload struct {
			URL    string `json:"url"`
			Method string `json:"method"`
		} `json:"upload_descriptor"`
	}
	callJSON(t, c, d.site, "attachments.create", map[string]any{"name": "dot.png", "size": len(png), "mime_type": "image/png"}, &att)
	if att.ID == "" || !strings.HasPrefix(att.Upload.URL, "http://") {
		t.Fatalf("attachments.create gave %+v", att)
	}
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	fw, _ := mw.CreateFormFile("file", "dot.png")
	_, _ = fw.Write(png)
	_ = mw.Close()
	req, _ := http.NewRequest(att.Upload.Method, att.Upload.URL, &form)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	res, err := http.DefaultClient.Do(req) // no cookie: the link is the credential
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("upload = %d: %s", res.StatusCode, b)
	}

	in := userInput("what is in this picture")
	in["input"].(map[string]any)["attachments"] = []any{att.ID}
	var threadID, answer string
	for _, e := range stream(t, c, d.site, "threads.create", in) {
		switch e.typ() {
		case "thread.created":
			threadID, _ = e.data["thread"].(map[string]any)["id"].(string)
		case "thread.item.done":
			if it := e.data["item"].(map[string]any); it["type"] == "assistant_message" {
				answer, _ = it["content"].([]any)[0].(map[string]any)["text"].(string)
			}
		case "error":
			t.Fatalf("the turn with a file failed: %v", e.data)
		}
	}
	if answer != "You said: what is in this picture" {
		t.Fatalf("answer %q", answer)
	}
	var thread struct {
		Items struct {
			Data []struct {
				Type        string `json:"type"`
				Attachments []struct {
					ID, Name   string
					PreviewURL string `json:"preview_url"`
				} `json:"attachments"`
			} `json:"data"`
		} `json:"items"`
	}
	callJSON(t, c, d.site, "threads.get_by_id", map[string]any{"thread_id": threadID}, &thread)
	if len(thread.Items.Data) == 0 || len(thread.Items.Data[0].Attachments) != 1 ||
		thread.Items.Data[0].Attachments[0].Name != "dot.png" || thread.Items.Data[0].Attachments[0].PreviewURL == "" {
		t.Fatalf("the message does not keep its file: %+v", thread.Items.Data)
	}
}

// TestDemoMintsWithWorkflow: CHATKIT_WORKFLOW_ID adds the token flow to the
// same block (here from the fake): the page is told so, and start mints the
// way the WordPress client calls it (POST, no body, no Content-Type).
func TestDemoMintsWithWorkflow(t *testing.T) {
	t.Setenv("CHATKIT_WORKFLOW_ID", "wf_demo") // Caddy resolves {env.CHATKIT_WORKFLOW_ID} from the process
	d := startDemo(t, t.TempDir(), map[string]string{"CHATKIT_WORKFLOW_ID": "wf_demo"})
	c := newClient(t)

	var cfg demoConfig
	_, b := get(t, c, d.site+"demo-config.json")
	if err := json.Unmarshal(b, &cfg); err != nil || !cfg.Minting || cfg.Backend != "fake" {
		t.Errorf("demo-config.json = %s (%v), want the fake with minting", b, err)
	}
	if !strings.Contains(d.logs.String(), "mints client secrets, from the fake") {
		t.Errorf("the log does not say the block mints fake secrets:\n%s", d.logs)
	}

	req, err := http.NewRequest(http.MethodPost, d.site+"api/chatkit/start", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var minted struct {
		ClientSecret string `json:"client_secret"`
		ExpiresAt    int64  `json:"expires_at"`
	}
	err = json.NewDecoder(res.Body).Decode(&minted)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("POST start = %d (decode: %v)", res.StatusCode, err)
	}
	if minted.ClientSecret == "" || minted.ExpiresAt <= time.Now().Unix() {
		t.Errorf("start answered client_secret %q, expires_at %d", minted.ClientSecret, minted.ExpiresAt)
	}

	// The agent is in the same block: one visitor, one cookie, both paths.
	events := stream(t, c, d.site, "threads.create", userInput("hi"))
	if len(events) == 0 || events[0].typ() != "thread.created" {
		t.Fatalf("threads.create next to minting: %v", events)
	}
}

// TestDemoUsesOpenAIWithKey: with OPENAI_API_KEY the agent is configured for
// OpenAI with the default model, the key as a placeholder (never in the
// log). No model call is made: starting the demo needs no network.
func TestDemoUsesOpenAIWithKey(t *testing.T) {
	const key = "sk-demo-test-not-a-real-key"
	t.Setenv("OPENAI_API_KEY", key) // Caddy resolves {env.OPENAI_API_KEY} from the process
	d := startDemo(t, t.TempDir(), map[string]string{"OPENAI_API_KEY": key})
	c := newClient(t)

	var cfg demoConfig
	_, b := get(t, c, d.site+"demo-config.json")
	if err := json.Unmarshal(b, &cfg); err != nil || cfg != (demoConfig{Backend: "openai", Model: defaultModel}) {
		t.Errorf("demo-config.json = %s (%v), want openai, %s", b, err, defaultModel)
	}
	logs := d.logs.String()
	if !strings.Contains(logs, "talks to OpenAI for real, model "+defaultModel) || strings.Contains(logs, "fake") {
		t.Errorf("the log does not say the agent talks to OpenAI with %s:\n%s", defaultModel, logs)
	}
	if strings.Contains(logs, key) {
		t.Error("the log shows the API key")
	}
}

package chatkit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// The agent over real HTTP: a real Caddy in the test binary, the fake
// OpenAI, a real SQLite file in t.TempDir().

const agentPath = "/api/chatkit"

// agentSite is a running agent configuration.
type agentSite struct {
	fake   *fakeopenai.Server
	db     string
	tester *caddytest.Tester
}

// startAgent loads a site whose chatkit block runs the agent against the
// fake, with its database in dir (a fresh temporary one when "").
// chatkitExtra goes in the chatkit block, agentExtra in the agent block.
func startAgent(t *testing.T, fake *fakeopenai.Server, db, chatkitExtra, agentExtra string) *agentSite {
	t.Helper()
	if db == "" {
		db = filepath.Join(t.TempDir(), "threads.db")
	}
	if !strings.Contains(chatkitExtra, "rate_limit") {
		chatkitExtra += "\n\t\trate_limit off"
	}
	if !regexp.MustCompile(`(?m)^\s*(model|prompt)\s`).MatchString(agentExtra) {
		agentExtra += "\n\t\t\tmodel gpt-5-mini"
	}
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\t%s\n\t\tagent {\n\t\t\tstore sqlite %s\n\t\t\t%s\n\t\t}",
		fake.URL(), fakeopenai.DefaultAPIKey, chatkitExtra, db, agentExtra)
	return &agentSite{fake: fake, db: db, tester: newTester(t, caddyConfig("", block, ""))}
}

// agentFrame is one decoded event of a ChatKit stream.
type agentFrame struct {
	raw        string
	Type       string          `json:"type"`
	Thread     json.RawMessage `json:"thread"`
	Item       json.RawMessage `json:"item"`
	ItemID     string          `json:"item_id"`
	Code       string          `json:"code"`
	Message    string          `json:"message"`
	AllowRetry *bool           `json:"allow_retry"`
	Update     struct {
		Type  string `json:"type"`
		Delta string `json:"delta"`
	} `json:"update"`
}

// agentStream is a streamed answer.
type agentStream struct {
	status int
	header http.Header
	body   string
	frames []agentFrame
}

// agentPost sends a ChatKit request the way the web component does.
func agentPost(t *testing.T, c *http.Client, body string, headers ...string) reply {
	t.Helper()
	return do(t, c, "POST", agentPath, body, append([]string{"Content-Type", "application/json"}, headers...)...)
}

// agentStreamPost sends a streaming request and reads the whole stream.
func agentStreamPost(t *testing.T, c *http.Client, body string) agentStream {
	t.Helper()
	r := agentPost(t, c, body)
	s := agentStream{status: r.status, header: r.header, body: r.body}
	if r.status == http.StatusOK {
		s.frames = agentParseStream(t, r.body)
	}
	return s
}

// agentParseStream splits an event stream into frames, checking the
// framing: `data: <json>\n\n` and nothing else.
func agentParseStream(t *testing.T, body string) []agentFrame {
	t.Helper()
	var frames []agentFrame
	rest := body
	for rest != "" {
		frame, after, ok := strings.Cut(rest, "\n\n")
		if !ok || !strings.HasPrefix(frame, "data: ") || strings.Contains(frame, "\n") {
			t.Fatalf("not an SSE data frame: %q (stream %q)", frame, body)
		}
		var f agentFrame
		f.raw = frame[len("data: "):]
		if err := json.Unmarshal([]byte(f.raw), &f); err != nil {
			t.Fatalf("frame is not JSON: %v: %s", err, f.raw)
		}
		frames = append(frames, f)
		rest = after
	}
	return frames
}

func (s agentStream) types() []string {
	out := make([]string, len(s.frames))
	for i, f := range s.frames {
		out[i] = f.Type
		if f.Type == "thread.item.updated" {
			out[i] += ":" + strings.TrimPrefix(f.Update.Type, "assistant_message.content_part.")
		}
	}
	return out
}

// threadID is the id thread.created announced.
func (s agentStream) threadID(t *testing.T) string {
	t.Helper()
	for _, f := range s.frames {
		if f.Type == "thread.created" {
			var th struct{ ID string }
			if err := json.Unmarshal(f.Thread, &th); err != nil {
				t.Fatal(err)
			}
			return th.ID
		}
	}
	t.Fatalf("no thread.created in %q", s.body)
	return ""
}

// doneItems returns the items of the thread.item.done events.
func (s agentStream) doneItems(t *testing.T) []agentTestItem {
	t.Helper()
	var items []agentTestItem
	for _, f := range s.frames {
		if f.Type == "thread.item.done" {
			items = append(items, agentDecodeItem(t, f.Item))
		}
	}
	return items
}

// errorFrame returns the stream's error event, if any.
func (s agentStream) errorFrame() *agentFrame {
	for i := range s.frames {
		if s.frames[i].Type == "error" {
			return &s.frames[i]
		}
	}
	return nil
}

// expectStreamHeaders checks what every event stream carries.
func expectStreamHeaders(t *testing.T, s agentStream) {
	t.Helper()
	if s.status != http.StatusOK {
		t.Fatalf("status = %d, want 200 (body %s)", s.status, s.body)
	}
	for name, want := range map[string]string{
		"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no",
	} {
		if got := s.header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

// agentTestItem is a thread item as the tests read it.
type agentTestItem struct {
	ID       string `json:"id"`
	ThreadID string `json:"thread_id"`
	Type     string `json:"type"`
	Content  []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
}

func agentDecodeItem(t *testing.T, raw json.RawMessage) agentTestItem {
	t.Helper()
	var it agentTestItem
	if err := json.Unmarshal(raw, &it); err != nil {
		t.Fatalf("item %s: %v", raw, err)
	}
	return it
}

func (it agentTestItem) text() string {
	var b strings.Builder
	for _, c := range it.Content {
		b.WriteString(c.Text)
	}
	return b.String()
}

// Request bodies.

func createBody(text string) string {
	return `{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":` + jsonString(text) + `}],"attachments":[],"inference_options":{}}}}`
}

func addBody(threadID, text string) string {
	return `{"type":"threads.add_user_message","params":{"thread_id":` + jsonString(threadID) + `,"input":{"content":[{"type":"input_text","text":` + jsonString(text) + `}],"attachments":[],"quoted_text":null,"inference_options":{}}}}`
}

func retryBody(threadID, itemID string) string {
	return `{"type":"threads.retry_after_item","params":{"thread_id":` + jsonString(threadID) + `,"item_id":` + jsonString(itemID) + `}}`
}

func threadBody(typ, threadID string) string {
	return `{"type":` + jsonString(typ) + `,"params":{"thread_id":` + jsonString(threadID) + `}}`
}

func listBody(typ, threadID string, limit int, order, after string) string {
	p := map[string]any{"limit": limit, "order": order}
	if threadID != "" {
		p["thread_id"] = threadID
	}
	if after != "" {
		p["after"] = after
	}
	b, _ := json.Marshal(map[string]any{"type": typ, "params": p})
	return string(b)
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// agentPage is a decoded Page.
type agentPage struct {
	Data    []json.RawMessage `json:"data"`
	HasMore bool              `json:"has_more"`
	After   string            `json:"after"`
}

func decodePage(t *testing.T, r reply) agentPage {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status = %d (body %s)", r.status, r.body)
	}
	var p agentPage
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func pageIDs(t *testing.T, p agentPage) []string {
	t.Helper()
	ids := make([]string, len(p.Data))
	for i, d := range p.Data {
		var v struct{ ID string }
		if err := json.Unmarshal(d, &v); err != nil {
			t.Fatal(err)
		}
		ids[i] = v.ID
	}
	return ids
}

// Golden streams over HTTP: ids and timestamps are ours and the clock's, so
// they are numbered in order of appearance and blanked; everything else is
// byte for byte.

var (
	agentIDPattern   = regexp.MustCompile(`\b(thr|msg|shcx|wf)_[0-9a-f]{24}\b`)
	agentTimePattern = regexp.MustCompile(`"created_at":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"`)
)

// agentNormalize numbers our ids (thr_1, msg_1, msg_2, …) in order of
// appearance, sharing the numbering across bodies, and blanks timestamps.
type agentNormalizer struct {
	ids   map[string]string
	count map[string]int
}

func newAgentNormalizer() *agentNormalizer {
	return &agentNormalizer{ids: map[string]string{}, count: map[string]int{}}
}

func (n *agentNormalizer) normalize(s string) string {
	s = agentIDPattern.ReplaceAllStringFunc(s, func(id string) string {
		if v, ok := n.ids[id]; ok {
			return v
		}
		prefix := id[:strings.IndexByte(id, '_')]
		n.count[prefix]++
		v := fmt.Sprintf("%s_%d", prefix, n.count[prefix])
		n.ids[id] = v
		return v
	})
	return agentTimePattern.ReplaceAllString(s, `"created_at":"T"`)
}

// checkAgentGolden compares a normalized stream with testdata/agent/<name>.golden
// (rewritten with -update).
func checkAgentGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "agent", name+".golden")
	if agentUpdateGolden() {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (write it with -update)", err)
	}
	if !bytes.Equal([]byte(got), want) {
		t.Errorf("stream differs from %s (rewrite with -update after checking):\n%s", path, agentLineDiff(want, []byte(got)))
	}
}

// ---------------------------------------------------------------- tests

func TestAgentCreateStreamsThreadAndAnswer(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", `instructions "You are the assistant of example.com. Be brief."`)
	browser := client(t)

	s := agentStreamPost(t, browser, createBody("Hi"))
	expectStreamHeaders(t, s)
	norm := newAgentNormalizer()
	checkAgentGolden(t, "http_create", norm.normalize(s.body))

	// What went to OpenAI: the documented request, our settings, the
	// message, no beta header, and a keyed hash instead of the user id.
	req := fake.LastResponses()
	if req == nil {
		t.Fatal("no Responses request")
	}
	if req.Model != "gpt-5-mini" || !req.Stream || req.Store == nil || *req.Store ||
		req.MaxOutputTokens == nil || *req.MaxOutputTokens != defaultAgentMaxOutputTokens ||
		req.Instructions == nil || *req.Instructions != "You are the assistant of example.com. Be brief." {
		t.Fatalf("Responses request = %+v", req)
	}
	if len(req.Input) != 1 || req.Input[0].Role != "user" || req.Input[0].Text != "Hi" {
		t.Fatalf("input = %+v", req.Input)
	}
	sid := ""
	if req.SafetyIdentifier != nil {
		sid = *req.SafetyIdentifier
	}
	if !regexp.MustCompile(`^sid_[0-9a-f]{60}$`).MatchString(sid) {
		t.Fatalf("safety_identifier = %q, want sid_ and 60 hex digits", sid)
	}
	reqs := fake.Requests()
	last := reqs[len(reqs)-1]
	if last.Path != "/v1/responses" || last.Header.Get("OpenAI-Beta") != "" || last.Header.Get("Authorization") != "Bearer "+fakeopenai.DefaultAPIKey {
		t.Fatalf("upstream %s with headers %v", last.Path, last.Header)
	}
	if bytes.Contains(last.Body, []byte("anon:")) {
		t.Fatal("the raw user id reached OpenAI")
	}

	// The same user gets the same safety identifier; another one another.
	th := s.threadID(t)
	agentStreamPost(t, browser, addBody(th, "again"))
	if got := *fake.LastResponses().SafetyIdentifier; got != sid {
		t.Fatalf("safety_identifier changed for the same user: %q then %q", sid, got)
	}
	agentStreamPost(t, client(t), createBody("Hi"))
	if got := *fake.LastResponses().SafetyIdentifier; got == sid {
		t.Fatal("two users share a safety_identifier")
	}
}

func TestAgentAddUserMessageSendsHistory(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "")
	browser := client(t)
	first := agentStreamPost(t, browser, createBody("What is Caddy?"))
	th := first.threadID(t)

	norm := newAgentNormalizer()
	norm.normalize(first.body)
	s := agentStreamPost(t, browser, addBody(th, "And SQLite?"))
	expectStreamHeaders(t, s)
	checkAgentGolden(t, "http_add_user_message", norm.normalize(s.body))

	// The model saw the conversation so far, oldest first, the new message
	// last.
	var got []string
	for _, it := range fake.LastResponses().Input {
		got = append(got, it.Role+": "+it.Text)
	}
	want := []string{"user: What is Caddy?", "assistant: You said: What is Caddy?", "user: And SQLite?"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("input = %q, want %q", got, want)
	}

	// history 2: only the newest items go.
	startAgent(t, fake, "", "", "history 2")
	browser = client(t)
	th = agentStreamPost(t, browser, createBody("one")).threadID(t)
	agentStreamPost(t, browser, addBody(th, "two"))
	if in := fake.LastResponses().Input; len(in) != 2 || in[0].Role != "assistant" || in[1].Text != "two" {
		t.Fatalf("history 2 sent %+v", in)
	}
}

func TestAgentRetryAfterItem(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "")
	browser := client(t)
	first := agentStreamPost(t, browser, createBody("first"))
	th := first.threadID(t)
	firstUser := first.doneItems(t)[0]
	agentStreamPost(t, browser, addBody(th, "second"))

	norm := newAgentNormalizer()
	norm.normalize(first.body)
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "A better answer."})
	s := agentStreamPost(t, browser, retryBody(th, firstUser.ID))
	expectStreamHeaders(t, s)
	checkAgentGolden(t, "http_retry", norm.normalize(s.body))

	// Everything after the first message went; the model saw only it.
	if in := fake.LastResponses().Input; len(in) != 1 || in[0].Text != "first" {
		t.Fatalf("retry input = %+v", in)
	}
	p := decodePage(t, agentPost(t, browser, listBody("items.list", th, 20, "asc", "")))
	if len(p.Data) != 2 {
		t.Fatalf("after retry the thread holds %d items, want 2: %s", len(p.Data), p.Data)
	}
	if it := agentDecodeItem(t, p.Data[1]); it.Type != "assistant_message" || it.text() != "A better answer." {
		t.Fatalf("second item = %+v", it)
	}

	// Only a user message can be answered again.
	before := fake.ResponsesCount()
	r := agentPost(t, browser, retryBody(th, agentDecodeItem(t, p.Data[1]).ID))
	expectError(t, r, http.StatusBadRequest, "bad_request")
	r = agentPost(t, browser, retryBody(th, "msg_000000000000000000000000"))
	expectError(t, r, http.StatusNotFound, "not_found")
	if fake.ResponsesCount() != before {
		t.Fatal("a refused retry called OpenAI")
	}
}

func TestAgentReadsThreadsAndPagesBothWays(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "")
	browser := client(t)

	var threads []string
	for i := range 3 {
		threads = append(threads, agentStreamPost(t, browser, createBody(fmt.Sprintf("thread %d", i))).threadID(t))
	}
	th := threads[0]
	for i := range 3 {
		agentStreamPost(t, browser, addBody(th, fmt.Sprintf("message %d", i)))
	}

	// threads.get_by_id: the thread, titled after its first message, with
	// its oldest items.
	r := agentPost(t, browser, threadBody("threads.get_by_id", th))
	if r.status != http.StatusOK || r.header.Get("Content-Type") != "application/json" || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("get_by_id = %d %v %s", r.status, r.header, r.body)
	}
	var got struct {
		ID, Title string
		Metadata  map[string]any
		Status    map[string]any
		Items     agentPage
	}
	if err := json.Unmarshal([]byte(r.body), &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != th || got.Title != "thread 0" || got.Status["type"] != "active" || got.Metadata == nil || len(got.Items.Data) != 8 || got.Items.HasMore {
		t.Fatalf("get_by_id = %s", r.body)
	}
	if it := agentDecodeItem(t, got.Items.Data[0]); it.Type != "user_message" || it.text() != "thread 0" {
		t.Fatalf("first item = %+v", it)
	}

	// threads.list, newest first by default, paged by the last id.
	p := decodePage(t, agentPost(t, browser, `{"type":"threads.list","params":{"limit":2}}`))
	ids := pageIDs(t, p)
	if len(ids) != 2 || ids[0] != threads[2] || ids[1] != threads[1] || !p.HasMore || p.After != threads[1] {
		t.Fatalf("first page = %v more=%v after=%q", ids, p.HasMore, p.After)
	}
	p = decodePage(t, agentPost(t, browser, listBody("threads.list", "", 2, "desc", p.After)))
	if ids = pageIDs(t, p); len(ids) != 1 || ids[0] != threads[0] || p.HasMore || p.After != "" {
		t.Fatalf("second page = %v more=%v after=%q (%s)", ids, p.HasMore, p.After, p.Data)
	}
	p = decodePage(t, agentPost(t, browser, listBody("threads.list", "", 9999, "asc", "")))
	if ids = pageIDs(t, p); strings.Join(ids, ",") != strings.Join(threads, ",") {
		t.Fatalf("asc = %v, want %v", ids, threads)
	}
	var listed struct{ Items agentPage }
	if err := json.Unmarshal(p.Data[0], &listed); err != nil || len(listed.Items.Data) != 0 {
		t.Fatalf("threads.list must send threads without items: %s", p.Data[0])
	}

	// items.list both ways, three at a time, adds up to the whole thread.
	for _, order := range []string{"asc", "desc"} {
		var all []string
		after := ""
		for pages := 0; ; pages++ {
			p := decodePage(t, agentPost(t, browser, listBody("items.list", th, 3, order, after)))
			all = append(all, pageIDs(t, p)...)
			if !p.HasMore {
				break
			}
			if pages > 5 || p.After == "" {
				t.Fatalf("%s: paging does not end (%+v)", order, p)
			}
			after = p.After
		}
		if len(all) != 8 {
			t.Fatalf("%s: %d items, want 8", order, len(all))
		}
		first := agentDecodeItem(t, got.Items.Data[0]).ID
		if (order == "asc") != (all[0] == first) {
			t.Fatalf("%s starts with %s", order, all[0])
		}
	}
}

func TestAgentUpdateDeleteAndFeedback(t *testing.T) {
	fake := newFake(t)
	// Users named by a header, so the test knows the owner in the file.
	site := startAgent(t, fake, "", "user {http.request.header.X-Test-User}", "")
	browser := &userClient{t: t, c: client(t), user: "alice"}
	s := browser.stream(createBody("Hi"))
	th := s.threadID(t)
	answer := s.doneItems(t)[1]

	r := browser.post(`{"type":"threads.update","params":{"thread_id":"` + th + `","title":"Renamed <ok> & fine"}}`)
	if r.status != http.StatusOK || r.json["title"] != "Renamed <ok> & fine" || r.json["id"] != th || !strings.Contains(r.body, `"items":{"data":[],"has_more":false}`) {
		t.Fatalf("update = %d %s", r.status, r.body)
	}
	if !strings.Contains(r.body, "<ok> & fine") {
		t.Fatalf("JSON must not escape HTML: %s", r.body)
	}
	if got := browser.post(threadBody("threads.get_by_id", th)); got.json["title"] != "Renamed <ok> & fine" {
		t.Fatalf("title not saved: %s", got.body)
	}

	series := `caddy_chatkit_agent_feedback_total{kind="negative"}`
	before := scrapeCounter(t, series)
	r = browser.post(`{"type":"items.feedback","params":{"thread_id":"` + th + `","item_ids":["` + answer.ID + `"],"kind":"negative"}}`)
	if r.status != http.StatusOK || r.body != "{}" {
		t.Fatalf("feedback = %d %s", r.status, r.body)
	}
	if got := scrapeCounter(t, series); got != before+1 {
		t.Fatalf("%s = %v, want %v", series, got, before+1)
	}
	st := openTestStore(t, site.db)
	fb, err := st.Feedback(context.Background(), "user:alice", th)
	if err != nil || len(fb) != 1 || fb[0].ItemID != answer.ID || fb[0].Kind != threadstore.Negative {
		t.Fatalf("stored feedback = %+v, %v", fb, err)
	}

	r = browser.post(threadBody("threads.delete", th))
	if r.status != http.StatusOK || r.body != "{}" {
		t.Fatalf("delete = %d %s", r.status, r.body)
	}
	expectError(t, browser.post(threadBody("threads.get_by_id", th)), http.StatusNotFound, "not_found")
	if p := decodePage(t, browser.post(`{"type":"threads.list","params":{}}`)); len(p.Data) != 0 {
		t.Fatalf("deleted thread still listed: %s", p.Data)
	}
}

// openTestStore opens the site's database beside Caddy (SQLite allows it).
func openTestStore(t *testing.T, path string) threadstore.Store {
	t.Helper()
	st, err := threadstore.OpenSQLite(context.Background(), path, threadstore.SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// userClient is a browser whose user the site reads from a header.
type userClient struct {
	t    *testing.T
	c    *http.Client
	user string
}

func (u *userClient) post(body string) reply {
	u.t.Helper()
	return agentPost(u.t, u.c, body, "X-Test-User", u.user)
}

func (u *userClient) stream(body string) agentStream {
	u.t.Helper()
	r := u.post(body)
	s := agentStream{status: r.status, header: r.header, body: r.body}
	if r.status == http.StatusOK {
		s.frames = agentParseStream(u.t, r.body)
	}
	return s
}

func TestAgentOwnership(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "")
	alice, mallory := client(t), client(t)
	s := agentStreamPost(t, alice, createBody("my secret plans"))
	th := s.threadID(t)
	items := s.doneItems(t)
	aliceView := agentPost(t, alice, threadBody("threads.get_by_id", th)).body

	// What a thread that does not exist gets.
	missing := agentPost(t, mallory, threadBody("threads.get_by_id", "thr_000000000000000000000000"))
	expectError(t, missing, http.StatusNotFound, "not_found")

	calls := fake.ResponsesCount()
	for name, body := range map[string]string{
		"get_by_id":   threadBody("threads.get_by_id", th),
		"items.list":  listBody("items.list", th, 20, "asc", ""),
		"add":         addBody(th, "hijack"),
		"retry":       retryBody(th, items[0].ID),
		"update":      `{"type":"threads.update","params":{"thread_id":"` + th + `","title":"pwned"}}`,
		"delete":      threadBody("threads.delete", th),
		"feedback":    `{"type":"items.feedback","params":{"thread_id":"` + th + `","item_ids":["` + items[1].ID + `"],"kind":"negative"}}`,
		"list cursor": listBody("threads.list", "", 20, "desc", th),
		"items after": listBody("items.list", th, 20, "asc", items[0].ID),
	} {
		r := agentPost(t, mallory, body)
		expectError(t, r, http.StatusNotFound, "not_found")
		if r.json["message"] != missing.json["message"] || r.header.Get("Content-Type") != missing.header.Get("Content-Type") {
			t.Errorf("%s: answer differs from a missing thread's: %s vs %s", name, r.body, missing.body)
		}
		if strings.Contains(r.body, "secret") {
			t.Errorf("%s leaked the thread: %s", name, r.body)
		}
	}
	if p := decodePage(t, agentPost(t, mallory, `{"type":"threads.list","params":{}}`)); len(p.Data) != 0 {
		t.Fatalf("another user's threads are listed: %s", p.Data)
	}
	if fake.ResponsesCount() != calls {
		t.Fatal("a request on another user's thread called OpenAI")
	}
	if got := agentPost(t, alice, threadBody("threads.get_by_id", th)).body; got != aliceView {
		t.Fatalf("the thread changed:\nbefore %s\nafter  %s", aliceView, got)
	}
}

func TestAgentThreadsSurviveRestart(t *testing.T) {
	fake := newFake(t)
	site := startAgent(t, fake, "", "", "")
	browser := client(t)
	th := agentStreamPost(t, browser, createBody("remember me")).threadID(t)

	// A reload that changes the agent keeps the database (it stays open).
	startAgent(t, fake, site.db, "", "history 5")
	if r := agentPost(t, browser, threadBody("threads.get_by_id", th)); r.status != http.StatusOK || r.json["title"] != "remember me" {
		t.Fatalf("after a reload: %d %s", r.status, r.body)
	}

	// A config without the agent closes the database; loading one again
	// opens the file afresh: the thread is read back from disk.
	newTester(t, caddyConfig("", "api_base "+fake.URL()+"\n\t\tapi_key "+fakeopenai.DefaultAPIKey+"\n\t\tworkflow wf_test\n\t\trate_limit off", ""))
	if r := agentPost(t, browser, threadBody("threads.get_by_id", th)); r.body != "the next handler" {
		t.Fatalf("without the agent the path is the next handler's: %d %s", r.status, r.body)
	}
	startAgent(t, fake, site.db, "", "")
	r := agentPost(t, browser, threadBody("threads.get_by_id", th))
	if r.status != http.StatusOK || r.json["title"] != "remember me" || !strings.Contains(r.body, "You said: remember me") {
		t.Fatalf("after a restart: %d %s", r.status, r.body)
	}
	agentStreamPost(t, browser, addBody(th, "still there?"))
	if in := fake.LastResponses().Input; len(in) != 3 || in[0].Text != "remember me" {
		t.Fatalf("history after restart = %+v", in)
	}
}

func TestAgentStoreUnavailable(t *testing.T) {
	fake := newFake(t)
	blocker := filepath.Join(t.TempDir(), "not-a-directory")
	if err := os.WriteFile(blocker, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Provision does no I/O: the config loads, the first request finds out.
	startAgent(t, fake, filepath.Join(blocker, "threads.db"), "", "")
	browser := client(t)
	for _, body := range []string{createBody("Hi"), `{"type":"threads.list","params":{}}`} {
		r := agentPost(t, browser, body)
		expectError(t, r, http.StatusServiceUnavailable, "store_unavailable")
		if r.header.Get("Retry-After") == "" {
			t.Error("store_unavailable without Retry-After")
		}
		if strings.Contains(r.body, blocker) {
			t.Errorf("the answer names the path: %s", r.body)
		}
	}
	if fake.ResponsesCount() != 0 {
		t.Fatal("OpenAI was called without a store")
	}
}

func TestAgentRefusesBadRequests(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "allow_origins https://shop.example.com", "max_input 10")
	c := client(t)

	for _, m := range []string{"GET", "PUT", "DELETE"} {
		r := do(t, c, m, agentPath, "")
		expectError(t, r, http.StatusMethodNotAllowed, "method_not_allowed")
		if r.header.Get("Allow") != "OPTIONS, POST" {
			t.Fatalf("%s: Allow = %q", m, r.header.Get("Allow"))
		}
	}
	for name, body := range map[string]string{
		"not JSON":       "hello",
		"not an object":  `["threads.list"]`,
		"unknown type":   `{"type":"threads.custom_action","params":{}}`,
		"no params":      `{"type":"threads.get_by_id"}`,
		"folded key":     `{"Type":"threads.list","params":{}}`,
		"too long input": createBody("eleven char"),
		"attachments":    `{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"x"}],"attachments":["atc_1"],"inference_options":{}}}}`,
		"empty message":  createBody("  "),
	} {
		r := agentPost(t, c, body)
		expectError(t, r, http.StatusBadRequest, "bad_request")
		if name == "unknown type" && !strings.Contains(r.json["message"].(string), "threads.custom_action") {
			t.Errorf("unknown type message: %s", r.body)
		}
	}
	r := agentPost(t, c, `{"type":"threads.list","params":{"pad":"`+strings.Repeat("x", 70<<10)+`"}}`)
	expectError(t, r, http.StatusRequestEntityTooLarge, "payload_too_large")
	r = agentPost(t, c, createBody("Hi"), "Origin", "https://evil.example")
	expectError(t, r, http.StatusForbidden, "origin_not_allowed")
	if fake.ResponsesCount() != 0 {
		t.Fatal("a refused request called OpenAI")
	}

	// A preflight from an allowed origin reflects the headers ChatKit sends.
	r = do(t, c, "OPTIONS", agentPath, "", "Origin", "https://shop.example.com",
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "content-type, chatkit-frame-instance-id")
	if r.status != http.StatusNoContent || r.header.Get("Access-Control-Allow-Origin") != "https://shop.example.com" ||
		r.header.Get("Access-Control-Allow-Headers") != "content-type, chatkit-frame-instance-id" ||
		r.header.Get("Access-Control-Allow-Methods") != "POST, OPTIONS" || r.header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Fatalf("preflight = %d %v", r.status, r.header)
	}
	r = do(t, c, "OPTIONS", agentPath, "", "Origin", "https://evil.example", "Access-Control-Request-Method", "POST")
	expectError(t, r, http.StatusForbidden, "origin_not_allowed")
	if r = do(t, c, "OPTIONS", agentPath, ""); r.status != http.StatusNoContent || r.header.Get("Allow") != "OPTIONS, POST" {
		t.Fatalf("plain OPTIONS = %d %v", r.status, r.header)
	}
	// A cross-origin request from an allowed origin works with credentials.
	s := agentPost(t, c, createBody("Hi"), "Origin", "https://shop.example.com")
	if s.status != http.StatusOK || s.header.Get("Access-Control-Allow-Origin") != "https://shop.example.com" {
		t.Fatalf("allowed origin: %d %v", s.status, s.header)
	}
}

func TestAgentReadsHaveTheirOwnBucket(t *testing.T) {
	fake := newFake(t)
	// One model run an hour, and reads bounded on their own. The zone is
	// this run's own: buckets outlive configs, and another test's reads or
	// model run from 127.0.0.1 under the same limits (the config just
	// before, in any order) would otherwise have spent from these buckets.
	startAgent(t, fake, "", "rate_limit 1 1h {\n\t\t\tzone "+agentNewID("reads_test")+"\n\t\t}", "")
	c := client(t)
	// A burst of agentReadBurst, then one more per agentReadInterval: the
	// refusal comes after the burst and what refilled meanwhile, no later.
	start := time.Now()
	var r reply
	n := 0
	for ; n < 10*agentReadBurst; n++ {
		if r = agentPost(t, c, `{"type":"threads.list","params":{}}`); r.status != http.StatusOK {
			break
		}
	}
	refilled := int(time.Since(start)/agentReadInterval) + 1
	if n < agentReadBurst || n > agentReadBurst+refilled {
		t.Fatalf("refused after %d reads, want %d to %d", n, agentReadBurst, agentReadBurst+refilled)
	}
	expectError(t, r, http.StatusTooManyRequests, "rate_limit_exceeded")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	// Reads spent none of the model's token.
	s := agentStreamPost(t, c, createBody("Hi"))
	expectStreamHeaders(t, s)
	if e := s.errorFrame(); e != nil {
		t.Fatalf("the first model run was refused after reads: %s", e.raw)
	}
}

func TestAgentConfigErrors(t *testing.T) {
	for name, tc := range map[string]string{
		"no model":             "agent {\n}|agent needs a model",
		"unknown option":       "agent {\nmodel m\ntemperature 1\n}|unrecognized agent option \"temperature\"",
		"duplicate option":     "agent {\nmodel m\nmodel n\n}|duplicate agent option \"model\"",
		"both instructions":    "agent {\nmodel m\ninstructions x\ninstructions_file /x\n}|instructions or instructions_file, not both",
		"bad store":            "agent {\nmodel m\nstore mysql x\n}|store must be sqlite or postgres",
		"bad effort":           "agent {\nmodel m\nreasoning_effort extreme\n}|reasoning_effort must be",
		"history":              "agent {\nmodel m\nhistory 0\n}|agent history must be 1 to 1000",
		"token scope":          "agent {\nmodel m\ntoken_budget team 10 1h\n}|scope must be user or site",
		"token twice":          "agent {\nmodel m\ntoken_budget user 10 1h\ntoken_budget user 20 1h\n}|duplicate token_budget user",
		"relative path":        "agent api/chatkit {\nmodel m\n}|agent path must start with '/'",
		"minting option":       "session_ttl 5m\nagent {\nmodel m\n}|session_ttl has no effect without a workflow",
		"path taken":           "workflow wf_x\nstart_path /chat\nagent /chat {\nmodel m\n}|already the start, refresh or health path",
		"agent twice":          "agent {\nmodel m\n}\nagent {\nmodel n\n}|duplicate subdirective \"agent\"",
		"output tokens":        "agent {\nmodel m\nmax_output_tokens 8\n}|max_output_tokens must be at least 16",
		"idle":                 "agent {\nmodel m\nidle_timeout 0s\n}|idle_timeout must be positive",
		"short retention":      "agent {\nmodel m\nretention 30m\n}|agent retention must be at least 1h, got 30m0s",
		"retention value":      "agent {\nmodel m\nretention forever\n}|retention",
		"retention twice":      "agent {\nmodel m\nretention 2h\nretention 3h\n}|duplicate agent option \"retention\"",
		"openai_store":         "agent {\nmodel m\nopenai_store maybe\n}|expected on or off",
		"prompt without id":    "agent {\nprompt\n}|wrong argument count",
		"token budget numbers": "agent {\nmodel m\ntoken_budget site 0 1h\n}|tokens must be at least 1",
	} {
		t.Run(name, func(t *testing.T) {
			block, want, _ := strings.Cut(tc, "|")
			cf := "example.com {\n\tchatkit {\n" + block + "\n\t}\n}\n"
			err := cfAdaptErr(t, cf)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error = %v, want %q", err, want)
			}
		})
	}

	// Provision: a missing instructions file is a config error.
	missing := filepath.Join(t.TempDir(), "nope.md")
	h := cfDecode(t, `{"api_key":"k","agent":{"model":"m","instructions_file":`+jsonString(missing)+`,"store":{"path":`+jsonString(filepath.Join(t.TempDir(), "t.db"))+`}}}`)
	if err := cfProvision(t, h); err == nil || !strings.Contains(err.Error(), "instructions_file") || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("provision with a missing instructions file: %v", err)
	}
}

func TestAgentInstructionsFile(t *testing.T) {
	fake := newFake(t)
	file := filepath.Join(t.TempDir(), "assistant.md")
	if err := os.WriteFile(file, []byte("Answer in French.\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	startAgent(t, fake, "", "", "instructions_file "+file+"\n\t\t\tmax_output_tokens 300\n\t\t\treasoning_effort low\n\t\t\topenai_store on")
	agentStreamPost(t, client(t), createBody("Hi"))
	req := fake.LastResponses()
	if req.Instructions == nil || *req.Instructions != "Answer in French.\n" || *req.MaxOutputTokens != 300 ||
		req.Reasoning == nil || *req.Reasoning.Effort != "low" || req.Store == nil || !*req.Store {
		t.Fatalf("request = %+v", req)
	}

	// A dashboard prompt instead of a model.
	startAgent(t, fake, "", "", "prompt pmpt_abc 3")
	agentStreamPost(t, client(t), createBody("Hi"))
	req = fake.LastResponses()
	if req.Model != "" || req.Prompt == nil || req.Prompt.ID != "pmpt_abc" || *req.Prompt.Version != "3" {
		t.Fatalf("prompt request = %+v", req)
	}
}

// readFrames reads frames from a live stream until stop says so.
func readFrames(t *testing.T, rd *bufio.Reader, stop func(agentFrame) bool) []agentFrame {
	t.Helper()
	var frames []agentFrame
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended after %d frames: %v", len(frames), err)
		}
		if line == "\n" {
			continue
		}
		var f agentFrame
		f.raw = strings.TrimSuffix(strings.TrimPrefix(line, "data: "), "\n")
		if err := json.Unmarshal([]byte(f.raw), &f); err != nil {
			t.Fatalf("frame %q: %v", line, err)
		}
		frames = append(frames, f)
		if stop(f) {
			return frames
		}
	}
}

// openStream starts a streaming request and returns the open body.
func openStream(t *testing.T, ctx context.Context, c *http.Client, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "POST", siteURL+agentPath, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return resp
}

// agentWaitUntil polls cond; it guards against a hang, it does not measure.
func agentWaitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ---------------------------------------------------------------- units

func TestAgentTitleCutsAtAWord(t *testing.T) {
	for in, want := range map[string]string{
		"Hi":                        "Hi",
		"  Where   is\tmy order?  ": "Where is my order?",
		"First line\nsecond line":   "First line",
		strings.Repeat("word ", 20): "word word word word word word word word word word word word…",
		strings.Repeat("x", 100):    strings.Repeat("x", 60) + "…",
		"Können Sie mir bitte helfen, eine Reise nach Lissabon zu planen, mit Kindern?": "Können Sie mir bitte helfen, eine Reise nach Lissabon zu…",
	} {
		got := agentTitle(in)
		if got != want {
			t.Errorf("agentTitle(%q) = %q, want %q", in, got, want)
		}
		if n := len([]rune(got)); n > agentTitleLength+1 {
			t.Errorf("title %q is %d characters", got, n)
		}
	}
}

func TestAgentSafetyIdentifier(t *testing.T) {
	mac := func(key string) *agentRuntime { return &agentRuntime{sidKey: agentSafetyKey(key)} }
	one, two := mac("sk-one"), mac("sk-two")
	sid := one.safetyIdentifier("anon:abc")
	if len(sid) != 64 || !strings.HasPrefix(sid, "sid_") || strings.Contains(sid, "abc") {
		t.Fatalf("safety identifier %q", sid)
	}
	if one.safetyIdentifier("anon:abc") != sid || one.safetyIdentifier("anon:abd") == sid {
		t.Fatal("not a function of the user id")
	}
	if two.safetyIdentifier("anon:abc") == sid {
		t.Fatal("the same identifier under another key: it is not keyed")
	}
}

func TestAgentNewIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := agentNewID("thr")
		if !regexp.MustCompile(`^thr_[0-9a-f]{24}$`).MatchString(id) || seen[id] {
			t.Fatalf("id %q (seen before: %v)", id, seen[id])
		}
		seen[id] = true
	}
}

func TestAgentStoreHandleOpensOnceAndOutlivesConfig(t *testing.T) {
	opens := 0
	gate := make(chan struct{})
	st := &closeCounter{}
	h := newAgentStoreHandle("test", func(ctx context.Context) (threadstore.Store, error) {
		opens++
		<-gate
		return st, nil
	})
	// Concurrent first requests share one open: three wait while the
	// first one opens.
	results := make(chan error, 4)
	releases := make(chan func(), 4)
	for range 4 {
		go func() {
			_, release, err := h.acquire(context.Background())
			results <- err
			releases <- release
		}()
	}
	agentWaitUntil(t, "three requests waiting for the open", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.waiting == 3
	})
	close(gate)
	for range 4 {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	if opens != 1 {
		t.Fatalf("%d opens for concurrent first requests, want 1", opens)
	}
	// The last config goes while requests still use the store: it closes
	// only when the last of them is done.
	if err := h.Destruct(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		(<-releases)()
	}
	if st.closed != 0 {
		t.Fatal("closed under a running request")
	}
	(<-releases)()
	if st.closed != 1 {
		t.Fatalf("closed %d times after the last request, want 1", st.closed)
	}
	if _, _, err := h.acquire(context.Background()); !errors.Is(err, threadstore.ErrClosed) {
		t.Fatalf("acquire after Destruct: %v", err)
	}
}

func TestAgentStoreHandleRemembersAFailedOpen(t *testing.T) {
	opens := 0
	h := newAgentStoreHandle("test", func(ctx context.Context) (threadstore.Store, error) {
		opens++
		return nil, errors.New("disk on fire")
	})
	for range 3 {
		if _, _, err := h.acquire(context.Background()); !errors.Is(err, errAgentStoreOpen) || !strings.Contains(err.Error(), "disk on fire") {
			t.Fatalf("acquire = %v", err)
		}
	}
	if opens != 1 {
		t.Fatalf("%d opens within the retry pause, want 1", opens)
	}
}

// closeCounter is a store that only counts Close.
type closeCounter struct {
	threadstore.Store
	closed int
}

func (c *closeCounter) Close() error { c.closed++; return nil }

func TestAgentParseCaddyfile(t *testing.T) {
	h, err := cfParse(`chatkit {
		agent /chat {
			model gpt-5-mini
			instructions "Be brief."
			store sqlite /var/lib/caddy/chat.db
			history 12
			max_output_tokens 512
			reasoning_effort low
			max_input 2000
			title_model gpt-5-nano
			token_budget user 20000 1h
			token_budget site 1000000 24h
			idle_timeout 45s
			openai_store on
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := &Agent{
		Path: "/chat", Model: "gpt-5-mini", Instructions: "Be brief.",
		Store:   &AgentStore{Type: "sqlite", Path: "/var/lib/caddy/chat.db"},
		History: 12, MaxOutputTokens: 512, ReasoningEffort: "low", MaxInput: 2000, TitleModel: "gpt-5-nano",
		TokenBudget: &AgentTokenBudget{
			User: &TokenBudgetLimit{Tokens: 20000, Interval: caddy.Duration(time.Hour)},
			Site: &TokenBudgetLimit{Tokens: 1000000, Interval: caddy.Duration(24 * time.Hour)},
		},
		IdleTimeout: caddy.Duration(45 * time.Second), OpenAIStore: true,
	}
	if got, exp := cfJSON(h.Agent), cfJSON(want); got != exp {
		t.Fatalf("parsed\n%s\nwant\n%s", got, exp)
	}
	if h.Workflow != nil {
		t.Fatal("an agent block needs no workflow")
	}

	// The rest of the forms.
	h, err = cfParse("chatkit {\n\tagent {\n\t\tprompt pmpt_1 2\n\t\tinstructions_file /etc/caddy/a.md\n\t\tstore sqlite\n\t\ttitle_model off\n\t}\n\tprotect /chatkit\n}")
	if err != nil {
		t.Fatal(err)
	}
	if a := h.Agent; a.Prompt == nil || a.Prompt.ID != "pmpt_1" || a.Prompt.Version != "2" || a.InstructionsFile != "/etc/caddy/a.md" ||
		a.Store == nil || a.Store.Type != "sqlite" || a.Store.Path != "" || a.TitleModel != "off" || len(h.Protect) != 1 {
		t.Fatalf("parsed %s", cfJSON(h))
	}
	// Errors point at the line of the option.
	_, err = cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\thistory 5000\n\t}\n}")
	if err == nil || !strings.Contains(err.Error(), "Testfile:4") {
		t.Fatalf("error %v, want it at line 4", err)
	}
}

// TestAgentPathAsItArrived: a WordPress site's try_files runs before
// chatkit and rewrites every path that is not a file to /index.php; the
// agent endpoint is matched on the path the browser asked for.
func TestAgentPathAsItArrived(t *testing.T) {
	fake := newFake(t)
	db := filepath.Join(t.TempDir(), "threads.db")
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\trate_limit off\n\t\tagent {\n\t\t\tmodel gpt-5-mini\n\t\t\tstore sqlite %s\n\t\t}", fake.URL(), fakeopenai.DefaultAPIKey, db)
	newTester(t, caddyConfig("", block, "try_files {path} {path}/ /index.php?{query}"))
	s := agentStreamPost(t, client(t), createBody("Hi"))
	expectStreamHeaders(t, s)
	if s.errorFrame() != nil || len(s.doneItems(t)) != 2 {
		t.Fatalf("the agent did not answer behind try_files: %s", s.body)
	}
}

// TestAgentWithMintingAndProtect: the three modes in one block, one
// visitor, one identity.
func TestAgentWithMintingAndProtect(t *testing.T) {
	fake := newFake(t)
	db := filepath.Join(t.TempDir(), "threads.db")
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\trate_limit off\n\t\tworkflow wf_test\n\t\tprotect /backend\n\t\tagent {\n\t\t\tmodel gpt-5-mini\n\t\t\tstore sqlite %s\n\t\t}", fake.URL(), fakeopenai.DefaultAPIKey, db)
	newTester(t, caddyConfig("", block, "handle /backend* {\n\t\trespond \"{http.request.header.X-ChatKit-User}\"\n\t}"))
	browser := client(t)

	expectSecret(t, do(t, browser, "POST", "/api/chatkit/start", ""), fake)
	minted := lastUser(t, fake)
	if got := do(t, browser, "POST", "/backend/x", `{"type":"threads.list","params":{}}`, "Content-Type", "application/json").body; got != minted {
		t.Fatalf("protect saw %q, minting %q", got, minted)
	}
	th := agentStreamPost(t, browser, createBody("Hi")).threadID(t)
	p, err := openTestStore(t, db).ListThreads(context.Background(), minted, "", 10, threadstore.Desc)
	if err != nil || len(p.Data) != 1 || p.Data[0].ID != th {
		t.Fatalf("the agent's thread is not the minting user's: %+v %v", p, err)
	}
}

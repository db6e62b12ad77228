package chatkit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// Function tools Caddy runs, over real HTTP: a real Caddy, the fake OpenAI
// scripting the model's calls, and real tool backends (httptest servers or
// Caddy routes) that record what reached them.

// toolRequest is what a tool backend received.
type toolRequest struct {
	Method, URI string
	Header      http.Header
	Body        string
}

// toolBackend is a tool's HTTP server, recording every request.
type toolBackend struct {
	*httptest.Server
	mu  sync.Mutex
	got []toolRequest
}

func newToolBackend(t *testing.T, handler http.HandlerFunc) *toolBackend {
	t.Helper()
	b := &toolBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.got = append(b.got, toolRequest{Method: r.Method, URI: r.RequestURI, Header: r.Header.Clone(), Body: string(body)})
		b.mu.Unlock()
		handler(w, r)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *toolBackend) requests() []toolRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]toolRequest(nil), b.got...)
}

// responsesRequests are the Responses requests the fake received, in order.
func responsesRequests(fake *fakeopenai.Server) []*fakeopenai.ResponsesRequest {
	var out []*fakeopenai.ResponsesRequest
	for _, r := range fake.Requests() {
		if r.Path == "/v1/responses" && r.Responses != nil {
			out = append(out, r.Responses)
		}
	}
	return out
}

// callOutputs maps call_id to output in a request's input, checking that
// every function_call_output follows its function_call.
func callOutputs(t *testing.T, req *fakeopenai.ResponsesRequest) (calls map[string]string, outputs map[string]string) {
	t.Helper()
	calls, outputs = map[string]string{}, map[string]string{}
	for _, it := range req.Input {
		switch it.Type {
		case "function_call":
			calls[it.CallID] = it.Text
		case "function_call_output":
			if _, ok := calls[it.CallID]; !ok {
				t.Fatalf("output %s sent before its call", it.CallID)
			}
			outputs[it.CallID] = it.Text
		}
	}
	return calls, outputs
}

// progressTexts are the progress_update texts of a stream.
func progressTexts(t *testing.T, s agentStream) []string {
	t.Helper()
	var out []string
	for _, f := range s.frames {
		if f.Type == "progress_update" {
			var p struct{ Text string }
			if err := json.Unmarshal([]byte(f.raw), &p); err != nil {
				t.Fatal(err)
			}
			out = append(out, p.Text)
		}
	}
	return out
}

// lastAnswer is the text of the stream's last assistant message.
func lastAnswer(t *testing.T, s agentStream) string {
	t.Helper()
	text := ""
	for _, it := range s.doneItems(t) {
		if it.Type == agentItemAssistantMessage {
			text = it.text()
		}
	}
	return text
}

func weatherTool(backendURL, extra string) string {
	return fmt.Sprintf(`http_tool weather %s/weather/{param.city}?units={param.units}&lang=en {
				description "Look up the weather forecast for a city."
				param city "The city"
				param units "metric or imperial"
				%s
			}`, backendURL, extra)
}

func TestAgentHTTPToolCall(t *testing.T) {
	backend := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"forecast":"sunny","temp":21}`)
	})
	t.Setenv("CHATKIT_TEST_WEATHER_KEY", "weather-secret")
	fake := newFake(t)
	startAgent(t, fake, "", "", weatherTool(backend.URL, `header X-Weather-Key {env.CHATKIT_TEST_WEATHER_KEY}`))
	fake.ScriptResponse(fakeopenai.ResponseScript{FunctionCalls: []fakeopenai.FunctionCall{
		{Name: "weather", Arguments: `{"city":"../../admin/x y","units":"metric&debug=1"}`, CallID: "call_one"},
	}})
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "It is sunny."})

	browser := client(t)
	r := agentPost(t, browser, createBody("Weather in Paris?"),
		"Cookie", "wordpress_logged_in=visitor-secret", "Authorization", "Bearer visitor-token")
	s := agentStream{status: r.status, header: r.header, body: r.body, frames: agentParseStream(t, r.body)}
	expectStreamHeaders(t, s)
	if e := s.errorFrame(); e != nil {
		t.Fatalf("error event: %s", e.raw)
	}
	if got := lastAnswer(t, s); got != "It is sunny." {
		t.Fatalf("answer %q (stream %s)", got, s.body)
	}
	if p := progressTexts(t, s); len(p) != 1 || p[0] != "Look up the weather forecast for a city…" {
		t.Fatalf("progress %q", p)
	}

	// The backend got one call: the value with a slash is one path
	// segment, the query value is encoded, the configured header came
	// along, and nothing of the visitor's or OpenAI's did.
	got := backend.requests()
	if len(got) != 1 {
		t.Fatalf("backend got %d requests", len(got))
	}
	if want := "/weather/..%2F..%2Fadmin%2Fx%20y?units=metric%26debug%3D1&lang=en"; got[0].URI != want || got[0].Method != "GET" {
		t.Fatalf("backend got %s %s, want GET %s", got[0].Method, got[0].URI, want)
	}
	h := got[0].Header
	if h.Get("X-Weather-Key") != "weather-secret" {
		t.Fatalf("configured header missing: %v", h)
	}
	for name, vals := range h {
		for _, v := range vals {
			if strings.Contains(v, fakeopenai.DefaultAPIKey) || strings.Contains(v, "visitor") {
				t.Fatalf("header %s: %q reached the tool", name, v)
			}
		}
	}
	if h.Get("Cookie") != "" || h.Get("Authorization") != "" {
		t.Fatalf("the visitor's credentials reached the tool: %v", h)
	}

	// OpenAI got the strict tool definition, then the call and its output.
	reqs := responsesRequests(fake)
	if len(reqs) != 2 {
		t.Fatalf("%d Responses requests, want 2", len(reqs))
	}
	tools, _ := json.Marshal(reqs[0].Raw["tools"])
	wantTools := `[{"description":"Look up the weather forecast for a city.","name":"weather","parameters":{"additionalProperties":false,"properties":{"city":{"description":"The city","type":"string"},"units":{"description":"metric or imperial","type":"string"}},"required":["city","units"],"type":"object"},"strict":true,"type":"function"}]`
	if string(tools) != wantTools {
		t.Fatalf("tools = %s\nwant    %s", tools, wantTools)
	}
	if _, ok := reqs[0].Raw["include"]; ok {
		t.Fatal("include sent without reasoning configured (non-reasoning models refuse it)")
	}
	calls, outputs := callOutputs(t, reqs[1])
	if calls["call_one"] != `{"city":"../../admin/x y","units":"metric&debug=1"}` || outputs["call_one"] != `{"forecast":"sunny","temp":21}` {
		t.Fatalf("second round sent calls %q outputs %q", calls, outputs)
	}
	if in := reqs[1].Input; in[0].Role != "user" || in[0].Text != "Weather in Paris?" {
		t.Fatalf("second round input %+v", in)
	}
	for _, it := range reqs[1].Input {
		if _, hasID := it.Raw["id"]; hasID && it.Type == "function_call" {
			t.Fatalf("a call was resent with its id, which needs its reasoning item: %v", it.Raw)
		}
	}

	// The thread keeps the conversation, not the tool traffic; the next
	// turn sends no call of this one.
	th := s.threadID(t)
	if got := itemSummary(threadItems(t, browser, th)); got != "user=Weather in Paris? | assistant=It is sunny." {
		t.Fatalf("thread items: %s", got)
	}
	agentStreamPost(t, browser, addBody(th, "Thanks"))
	for _, it := range fake.LastResponses().Input {
		if it.Type != "message" {
			t.Fatalf("the next turn resent %s", it.Type)
		}
	}
}

func TestAgentHTTPToolParallelBatchAndDotSegments(t *testing.T) {
	backend := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "forecast for "+r.URL.EscapedPath())
	})
	fake := newFake(t)
	startAgent(t, fake, "", "", weatherTool(backend.URL, "method GET"))
	fake.ScriptResponse(fakeopenai.ResponseScript{FunctionCalls: []fakeopenai.FunctionCall{
		{Name: "weather", Arguments: `{"city":"..","units":"metric"}`, CallID: "call_a"},
		{Name: "weather", Arguments: `{"city":"Paris","units":"metric"}`, CallID: "call_b"},
		{Name: "weather", Arguments: `{"city":"","units":"metric"}`, CallID: "call_c"},
	}})
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "Done."})

	s := agentStreamPost(t, client(t), createBody("Compare"))
	if lastAnswer(t, s) != "Done." {
		t.Fatalf("stream %s", s.body)
	}
	uris := map[string]bool{}
	for _, r := range backend.requests() {
		uris[r.URI] = true
	}
	if len(uris) != 2 || !uris["/weather/%2E%2E?units=metric&lang=en"] || !uris["/weather/Paris?units=metric&lang=en"] {
		t.Fatalf("backend got %v", uris)
	}
	_, outputs := callOutputs(t, responsesRequests(fake)[1])
	if outputs["call_a"] != "forecast for /weather/%2E%2E" || outputs["call_b"] != "forecast for /weather/Paris" ||
		!strings.Contains(outputs["call_c"], `"city" cannot be empty`) {
		t.Fatalf("outputs %q", outputs)
	}
}

func TestAgentMaxToolCallsThenAnswer(t *testing.T) {
	backend := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	fake := newFake(t)
	startAgent(t, fake, "", "", weatherTool(backend.URL, "")+"\n\t\t\tmax_tool_calls 2")
	call := func(id string) fakeopenai.FunctionCall {
		return fakeopenai.FunctionCall{Name: "weather", Arguments: `{"city":"` + id + `","units":"metric"}`, CallID: id}
	}
	fake.ScriptResponse(fakeopenai.ResponseScript{FunctionCalls: []fakeopenai.FunctionCall{call("a")}})
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "Checking two more.", FunctionCalls: []fakeopenai.FunctionCall{call("b"), call("c")}})
	// A model that would go on calling: with tool_choice none it cannot.
	fake.ScriptResponse(fakeopenai.ResponseScript{FunctionCalls: []fakeopenai.FunctionCall{call("d")}, Text: "Here is what I found."})

	s := agentStreamPost(t, client(t), createBody("Weather everywhere"))
	if got := lastAnswer(t, s); got != "Here is what I found." {
		t.Fatalf("answer %q (stream %s)", got, s.body)
	}
	if n := len(backend.requests()); n != 2 {
		t.Fatalf("backend got %d calls, want max_tool_calls 2", n)
	}
	reqs := responsesRequests(fake)
	if len(reqs) != 3 {
		t.Fatalf("%d Responses requests, want 3", len(reqs))
	}
	for i, want := range []any{nil, nil, "none"} {
		if got := reqs[i].Raw["tool_choice"]; got != want {
			t.Fatalf("round %d tool_choice %v, want %v", i+1, got, want)
		}
	}
	calls, outputs := callOutputs(t, reqs[2])
	if len(calls) != 3 || outputs["a"] != "ok" || outputs["b"] != "ok" || !strings.HasPrefix(outputs["c"], "Not run: the limit") {
		t.Fatalf("last round calls %q outputs %q", calls, outputs)
	}
	// The text the model wrote beside its calls went back with them, in
	// order, and the visitor saw it as an answer of its own.
	var order []string
	for _, it := range reqs[2].Input {
		order = append(order, it.Type+":"+it.Role+":"+it.CallID+it.Text)
	}
	want := []string{"message:user:Weather everywhere", `function_call::a{"city":"a","units":"metric"}`, "function_call_output::aok",
		"message:assistant:Checking two more.", `function_call::b{"city":"b","units":"metric"}`, `function_call::c{"city":"c","units":"metric"}`,
		"function_call_output::bok"}
	if len(order) != 8 || strings.Join(order[:7], "|") != strings.Join(want, "|") {
		t.Fatalf("last round input\n%q\nwant (then c's output)\n%q", order, want)
	}
	var answers []string
	for _, it := range s.doneItems(t) {
		if it.Type == agentItemAssistantMessage {
			answers = append(answers, it.text())
		}
	}
	if strings.Join(answers, "|") != "Checking two more.|Here is what I found." {
		t.Fatalf("answers %q", answers)
	}
}

func TestAgentHTTPToolHostileBackends(t *testing.T) {
	huge := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("é", 100<<10)) // 200 KiB, two bytes a rune
	})
	release := make(chan struct{})
	slow := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done(): // Caddy gave up
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) })
	elsewhere := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "secret internal page") })
	redirect := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/internal", http.StatusFound)
	})
	fake := newFake(t)
	startAgent(t, fake, "", "", fmt.Sprintf(`http_tool huge %s/big {
				max_response 1KiB
			}
			http_tool slow %s/slow {
				timeout 200ms
			}
			http_tool moved %s/moved`, huge.URL, slow.URL, redirect.URL))
	fake.ScriptResponse(fakeopenai.ResponseScript{FunctionCalls: []fakeopenai.FunctionCall{
		{Name: "huge", Arguments: `{}`, CallID: "call_huge"},
		{Name: "slow", Arguments: `{}`, CallID: "call_slow"},
		{Name: "moved", Arguments: `{}`, CallID: "call_moved"},
	}})
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "Some tools failed."})

	s := agentStreamPost(t, client(t), createBody("Try them"))
	if s.errorFrame() != nil || lastAnswer(t, s) != "Some tools failed." {
		t.Fatalf("a tool failure failed the turn: %s", s.body)
	}
	if p := progressTexts(t, s); strings.Join(p, "|") != "Calling huge…|Calling slow…|Calling moved…" {
		t.Fatalf("progress %q", p)
	}
	_, outputs := callOutputs(t, responsesRequests(fake)[1])
	big, note, _ := strings.Cut(outputs["call_huge"], "\n[The response was cut at 1024 bytes.]")
	if len(big) != 1024 || note != "" || strings.Trim(big, "é") != "" {
		t.Fatalf("huge output: %d bytes, note %q, tail %q", len(big), note, outputs["call_huge"][max(0, len(outputs["call_huge"])-60):])
	}
	if outputs["call_slow"] != "Error: the tool call failed: it took longer than 200ms." {
		t.Fatalf("slow output %q", outputs["call_slow"])
	}
	if outputs["call_moved"] != "Error: the tool call failed: a redirect to another host was refused." {
		t.Fatalf("redirect output %q", outputs["call_moved"])
	}
	if n := len(elsewhere.requests()); n != 0 {
		t.Fatalf("the redirect reached another host %d times", n)
	}
}

// fakeWordPress serves the two WordPress REST API routes the preset reads.
func fakeWordPress(t *testing.T) *toolBackend {
	var b *toolBackend
	b = newToolBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/wp-json/wp/v2/search":
			fmt.Fprintf(w, `[{"id":7,"title":"Caddy &amp; PHP","url":"%[1]s/caddy-php/","type":"post","subtype":"post","_links":{}},
				{"id":9,"title":"About","url":"%[1]s/about/","type":"post","subtype":"page"},
				{"id":3,"title":"News","url":"%[1]s/category/news/","type":"term","subtype":"category"}]`, b.URL)
		case "/wp-json/wp/v2/posts/7":
			io.WriteString(w, `{"content":{"rendered":"<p>Caddy serves <strong>PHP</strong> &amp; WordPress.</p>\n<script>evil()</script><style>p{}</style>","protected":false}}`)
		case "/wp-json/wp/v2/pages/9":
			io.WriteString(w, `{"content":{"rendered":"<h2>About us</h2><p>We run a blog.</p>"}}`)
		default:
			http.NotFound(w, r)
		}
	})
	return b
}

func TestAgentWordPressSearch(t *testing.T) {
	wp := fakeWordPress(t)
	fake := newFake(t)
	startAgent(t, fake, "", "", "wordpress_search "+wp.URL)
	fake.ScriptResponse(fakeopenai.ResponseScript{FunctionCalls: []fakeopenai.FunctionCall{
		{Name: "wordpress_search", Arguments: `{"query":"caddy php"}`, CallID: "call_wp"},
	}})
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "Caddy serves PHP."})

	s := agentStreamPost(t, client(t), createBody("Does Caddy do PHP?"))
	if lastAnswer(t, s) != "Caddy serves PHP." {
		t.Fatalf("stream %s", s.body)
	}
	host := strings.TrimPrefix(wp.URL, "http://")
	if p := progressTexts(t, s); len(p) != 1 || p[0] != "Searching "+host+"…" {
		t.Fatalf("progress %q", p)
	}
	var paths []string
	for _, r := range wp.requests() {
		paths = append(paths, r.URI)
	}
	if len(paths) != 3 || paths[0] != "/wp-json/wp/v2/search?search=caddy+php&per_page=3" {
		t.Fatalf("WordPress got %q", paths)
	}
	_, outputs := callOutputs(t, responsesRequests(fake)[1])
	out := outputs["call_wp"]
	for _, want := range []string{
		"1. Caddy & PHP\n" + wp.URL + "/caddy-php/\nCaddy serves PHP & WordPress.\n",
		"2. About\n" + wp.URL + "/about/\nAbout us We run a blog.\n",
		"3. News\n" + wp.URL + "/category/news/\n",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "evil") || strings.Contains(out, "<") {
		t.Fatalf("markup reached the model:\n%s", out)
	}
	tools, _ := json.Marshal(responsesRequests(fake)[0].Raw["tools"])
	if !strings.Contains(string(tools), `"name":"wordpress_search"`) || !strings.Contains(string(tools), `"required":["query"],"additionalProperties":false`) &&
		!strings.Contains(string(tools), `"required":["query"]`) {
		t.Fatalf("tools %s", tools)
	}
}

// TestAgentWordPressSearchDefaultSite: without a site, the preset searches
// the site the browser reached, here WordPress's routes answered by Caddy.
func TestAgentWordPressSearchDefaultSite(t *testing.T) {
	fake := newFake(t)
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\trate_limit off\n\t\tagent {\n\t\t\tmodel gpt-5-mini\n\t\t\tstore sqlite %s\n\t\t\twordpress_search\n\t\t}",
		fake.URL(), fakeopenai.DefaultAPIKey, t.TempDir()+"/threads.db")
	site := "handle /wp-json/wp/v2/search {\n\t\trespond `[{\"id\":5,\"title\":\"Hello\",\"url\":\"http://localhost:9080/hello/\",\"type\":\"post\",\"subtype\":\"post\"}]` 200\n\t}\n" +
		"\thandle /wp-json/wp/v2/posts/5 {\n\t\trespond `{\"content\":{\"rendered\":\"<p>Hello from Caddy.</p>\"}}` 200\n\t}"
	newTester(t, caddyConfig("", block, site))
	fake.ScriptResponse(fakeopenai.ResponseScript{FunctionCalls: []fakeopenai.FunctionCall{
		{Name: "wordpress_search", Arguments: `{"query":"hello"}`, CallID: "call_wp"},
	}})
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "Hi."})

	s := agentStreamPost(t, client(t), createBody("hello?"))
	if p := progressTexts(t, s); len(p) != 1 || p[0] != "Searching localhost:9080…" {
		t.Fatalf("progress %q (stream %s)", p, s.body)
	}
	_, outputs := callOutputs(t, responsesRequests(fake)[1])
	if want := "1. Hello\nhttp://localhost:9080/hello/\nHello from Caddy.\n"; !strings.Contains(outputs["call_wp"], want) {
		t.Fatalf("output %q, want it to hold %q", outputs["call_wp"], want)
	}
}

func TestAgentHTTPToolPostBody(t *testing.T) {
	backend := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		io.WriteString(w, "no coffee")
	})
	fake := newFake(t)
	startAgent(t, fake, "", "", fmt.Sprintf(`http_tool order %s/orders/{param.shop} {
				method POST
				param shop
				param item "What to order"
			}`, backend.URL))
	fake.ScriptResponse(fakeopenai.ResponseScript{FunctionCalls: []fakeopenai.FunctionCall{
		{Name: "order", Arguments: `{"shop":"a b","item":"tea \"green\""}`, CallID: "call_o"},
	}})
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "Ordered."})
	agentStreamPost(t, client(t), createBody("Order tea"))
	got := backend.requests()
	if len(got) != 1 || got[0].Method != "POST" || got[0].URI != "/orders/a%20b" ||
		got[0].Header.Get("Content-Type") != "application/json" || got[0].Body != `{"item":"tea \"green\"","shop":"a b"}` {
		t.Fatalf("backend got %+v", got)
	}
	_, outputs := callOutputs(t, responsesRequests(fake)[1])
	if outputs["call_o"] != "The tool answered HTTP 418 I'm a teapot.\nno coffee" {
		t.Fatalf("output %q", outputs["call_o"])
	}
}

func TestAgentFunctionToolConfigErrors(t *testing.T) {
	for name, tc := range map[string]string{
		"bad name":         "http_tool bad.name https://x.test/a|http_tool name must be 1 to 64",
		"host placeholder": "http_tool t https://{param.h}.test/a {\nparam h\n}|the host cannot hold a placeholder",
		"not http":         "http_tool t ftp://x.test/a|must start with http:// or https://",
		"undeclared":       "http_tool t https://x.test/{param.q}|not a declared param",
		"unused get":       "http_tool t https://x.test/a {\nparam q\n}|is not in the URL template",
		"method":           "http_tool t https://x.test/a {\nmethod PUT\n}|method must be GET or POST",
		"header":           "http_tool t https://x.test/a {\nheader Host evil.test\n}|cannot be set",
		"cookie header":    "http_tool t https://x.test/a {\nheader cookie a=b\n}|cannot be set",
		"userinfo":         "http_tool t https://u:p@x.test/a|put credentials in a header",
		"fragment":         "http_tool t https://x.test/a#b|cannot have a fragment",
		"dot segment":      "http_tool t https://x.test/a/../b|has a dot segment",
		"twice":            "http_tool t https://x.test/a\nhttp_tool t https://x.test/b|duplicate http_tool \"t\"",
		"max_response":     "http_tool t https://x.test/a {\nmax_response 2MiB\n}|max_response must be 1 byte to 1 MiB",
		"timeout":          "http_tool t https://x.test/a {\ntimeout 0s\n}|timeout must be positive",
		"unknown":          "http_tool t https://x.test/a {\nretries 3\n}|unrecognized http_tool option \"retries\"",
		"dup param":        "http_tool t https://x.test/{param.q} {\nparam q\nparam q\n}|duplicate http_tool param \"q\"",
		"wp name":          "http_tool wordpress_search https://x.test/a|is the wordpress_search tool's",
		"wp site":          "wordpress_search https://x.test/?p=1|site must be scheme://host[/path]",
		"max calls alone":  "max_tool_calls 3|has no effect without http_tool or wordpress_search",
		"max calls range":  "wordpress_search\nmax_tool_calls 0|max_tool_calls must be 1 to 100",
	} {
		t.Run(name, func(t *testing.T) {
			block, want, _ := strings.Cut(tc, "|")
			cf := "example.com {\n\tchatkit {\nagent {\nmodel m\n" + block + "\n}\n\t}\n}\n"
			err := cfAdaptErr(t, cf)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error = %v, want %q", err, want)
			}
		})
	}
}

func TestAgentParseFunctionTools(t *testing.T) {
	h, err := cfParse(`chatkit {
		agent {
			model gpt-5-mini
			http_tool weather "https://api.weather.test/v1/{param.city}?units={param.units}" {
				description "Weather for a city"
				param city "The city"
				param units
				header X-Key {env.WEATHER_KEY}
				max_response 4KiB
				timeout 3s
			}
			http_tool order https://shop.test/orders {
				method POST
				param item
			}
			wordpress_search https://blog.example.com
			max_tool_calls 3
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(struct {
		T []*AgentHTTPTool      `json:"t"`
		W *AgentWordPressSearch `json:"w"`
		M int                   `json:"m"`
	}{h.Agent.HTTPTools, h.Agent.WordPressSearch, h.Agent.MaxToolCalls})
	want := `{"t":[{"name":"weather","url":"https://api.weather.test/v1/{param.city}?units={param.units}","description":"Weather for a city","params":[{"name":"city","description":"The city"},{"name":"units"}],"headers":{"X-Key":"{env.WEATHER_KEY}"},"max_response":4096,"timeout":3000000000},{"name":"order","url":"https://shop.test/orders","params":[{"name":"item"}],"method":"POST"}],"w":{"site":"https://blog.example.com"},"m":3}`
	if string(got) != want {
		t.Fatalf("parsed\n%s\nwant\n%s", got, want)
	}
}

func TestAgentToolURLBuilding(t *testing.T) {
	origin, rest, err := agentSplitTemplate("http_tool", "https://api.test:8443/v1/{param.a}/x-{param.b}.json?q={param.c}&fixed=1")
	if err != nil {
		t.Fatal(err)
	}
	rt := &agentHTTPToolRuntime{origin: origin, rest: rest}
	for _, tc := range []struct {
		a, b, c, want string
	}{
		{"plain", "y", "a b&c=d", "https://api.test:8443/v1/plain/x-y.json?q=a+b%26c%3Dd&fixed=1"},
		{"..", "..", "", "https://api.test:8443/v1/%2E%2E/x-...json?q=&fixed=1"},
		{"a/b?c#d", "%2F", "ü", "https://api.test:8443/v1/a%2Fb%3Fc%23d/x-%252F.json?q=%C3%BC&fixed=1"},
		{".", "y", "z", "https://api.test:8443/v1/%2E/x-y.json?q=z&fixed=1"},
	} {
		got, err := rt.buildURL(map[string]string{"a": tc.a, "b": tc.b, "c": tc.c})
		if err != nil || got != tc.want {
			t.Errorf("buildURL(%q, %q, %q) = %q, %v; want %q", tc.a, tc.b, tc.c, got, err, tc.want)
			continue
		}
		u, _ := url.Parse(got)
		if u.Host != "api.test:8443" {
			t.Errorf("%q reached host %q", got, u.Host)
		}
	}
	if _, err := rt.buildURL(map[string]string{"a": "x"}); err == nil {
		t.Error("a missing parameter was filled in")
	}
}

func TestAgentHTMLText(t *testing.T) {
	for in, want := range map[string]string{
		"<p>One&nbsp;two</p>\n<p>three &amp; <em>four</em></p>": "One two three & four",
		"a<script>alert('<p>x</p>')</script>b":                  "a b",
		"<STYLE>p{color:red}</STYLE>text":                       "text",
		"unclosed <b":                                           "unclosed",
		"&lt;not a tag&gt;":                                     "<not a tag>",
	} {
		if got := agentHTMLText(in); got != want {
			t.Errorf("agentHTMLText(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestAgentToolLoopReasoning: a reasoning model's calls go back with the
// reasoning that made them. With reasoning configured the reasoning is
// asked for encrypted (store false keeps nothing at OpenAI) and resent
// whole; without, no include is sent (models that do not reason refuse
// it) and the calls go back without the ids that would need it. The fake
// refuses either mistake as OpenAI does.
func TestAgentToolLoopReasoning(t *testing.T) {
	backend := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	for _, tc := range []struct {
		name, extra string
		include     bool
	}{
		{"reasoning configured", "reasoning_effort low", true},
		{"reasoning not configured", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(t)
			startAgent(t, fake, "", "", weatherTool(backend.URL, "")+"\n\t\t\t"+tc.extra)
			fake.ScriptResponse(fakeopenai.ResponseScript{Reasoning: true, FunctionCalls: []fakeopenai.FunctionCall{
				{Name: "weather", Arguments: `{"city":"Oslo","units":"metric"}`, CallID: "call_r"},
			}})
			fake.ScriptResponse(fakeopenai.ResponseScript{Text: "Cold."})
			s := agentStreamPost(t, client(t), createBody("Oslo?"))
			if lastAnswer(t, s) != "Cold." || s.errorFrame() != nil {
				t.Fatalf("stream %s", s.body)
			}
			reqs := responsesRequests(fake)
			if len(reqs) != 2 {
				t.Fatalf("%d Responses requests", len(reqs))
			}
			include, _ := json.Marshal(reqs[0].Raw["include"])
			if got := string(include) == `["reasoning.encrypted_content"]`; got != tc.include {
				t.Fatalf("include %s", include)
			}
			var types []string
			for _, it := range reqs[1].Input {
				types = append(types, it.Type)
				if it.Type == "function_call" {
					if _, hasID := it.Raw["id"]; hasID != tc.include {
						t.Fatalf("call resent as %v", it.Raw)
					}
				}
				if it.Type == "reasoning" && it.Raw["encrypted_content"] == nil {
					t.Fatalf("reasoning resent without its content: %v", it.Raw)
				}
			}
			want := "message function_call function_call_output"
			if tc.include {
				want = "message reasoning function_call function_call_output"
			}
			if strings.Join(types, " ") != want {
				t.Fatalf("second round input %v, want %s", types, want)
			}
		})
	}
}

// TestAgentToolRoundsChargeTheTokenBudget: every round is a model run the
// budget counts: two rounds of 15 tokens spend a budget of 20 that either
// alone would not.
func TestAgentToolRoundsChargeTheTokenBudget(t *testing.T) {
	backend := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	fake := newFake(t)
	startAgent(t, fake, "", "rate_limit 100 1s {\n\t\t\tzone tokens-tools\n\t\t}", weatherTool(backend.URL, "")+"\n\t\t\ttoken_budget user 20 1h")
	cost := &fakeopenai.Usage{InputTokens: 10, OutputTokens: 5}
	fake.ScriptResponse(fakeopenai.ResponseScript{Usage: cost, FunctionCalls: []fakeopenai.FunctionCall{
		{Name: "weather", Arguments: `{"city":"Oslo","units":"metric"}`},
	}})
	fake.ScriptResponse(fakeopenai.ResponseScript{Usage: cost, Text: "Cold."})
	browser := client(t)
	th := agentStreamPost(t, browser, createBody("Oslo?")).threadID(t)
	expectRefusal(t, agentStreamPost(t, browser, addBody(th, "And Bergen?")), "You have used your share of the assistant for now. Try again in ")
}

// TestAgentToolCancelledWithTheTurn: the visitor leaving while a tool runs
// cancels the tool's request, and no further round is asked for.
func TestAgentToolCancelledWithTheTurn(t *testing.T) {
	cancelled := make(chan struct{})
	backend := newToolBackend(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(cancelled)
	})
	fake := newFake(t)
	startAgent(t, fake, "", "", weatherTool(backend.URL, "timeout 1m"))
	fake.ScriptResponse(fakeopenai.ResponseScript{FunctionCalls: []fakeopenai.FunctionCall{
		{Name: "weather", Arguments: `{"city":"Oslo","units":"metric"}`},
	}})
	series := `caddy_chatkit_agent_requests_total{outcome="client_closed",type="threads.create"}`
	before := scrapeCounter(t, series)
	browser := client(t)
	ctx, cancel := context.WithCancel(context.Background())
	resp := openStream(t, ctx, browser, createBody("Oslo?"))
	frames := readFrames(t, bufio.NewReader(resp.Body), func(f agentFrame) bool { return f.Type == "progress_update" })
	th := agentStream{frames: frames}.threadID(t)
	agentWaitUntil(t, "the tool's request", func() bool { return len(backend.requests()) == 1 })
	cancel()
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the tool's request outlived the turn")
	}
	// Once the turn is over the thread takes a new one, whose input holds
	// nothing of the cancelled calls.
	var s agentStream
	agentWaitUntil(t, "the thread to be free", func() bool {
		s = agentStreamPost(t, browser, addBody(th, "again"))
		return s.status == http.StatusOK
	})
	if n := fake.ResponsesCount(); n != 2 {
		t.Fatalf("%d Responses requests, want the first round and the next turn", n)
	}
	if got := scrapeCounter(t, series); got != before+1 {
		t.Fatalf("%s = %v, want %v", series, got, before+1)
	}
	for _, it := range fake.LastResponses().Input {
		if it.Type != "message" {
			t.Fatalf("the next turn sent %s", it.Type)
		}
	}
}

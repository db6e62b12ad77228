package chatkit

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// ---------------------------------------------------------------- config

func TestAgentToolsParseCaddyfile(t *testing.T) {
	h, err := cfParse(`chatkit {
		agent {
			model gpt-5-mini
			reasoning_effort low
			reasoning_summary auto
			web_search example.com docs.example.com
			file_search vs_abc {env.VECTOR_STORE}
			mcp docs https://mcp.example.com/mcp {
				allow search fetch
				allow list
				header Authorization "Bearer {env.MCP_TOKEN}"
			}
			mcp shop https://shop.example.com/mcp {
				allow find_product
			}
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := &Agent{
		Model: "gpt-5-mini", ReasoningEffort: "low", ReasoningSummary: "auto",
		WebSearch:  &AgentWebSearch{AllowedDomains: []string{"example.com", "docs.example.com"}},
		FileSearch: &AgentFileSearch{VectorStoreIDs: []string{"vs_abc", "{env.VECTOR_STORE}"}},
		MCP: []AgentMCP{
			{Label: "docs", URL: "https://mcp.example.com/mcp", Allow: []string{"search", "fetch", "list"},
				Headers: map[string]string{"Authorization": "Bearer {env.MCP_TOKEN}"}},
			{Label: "shop", URL: "https://shop.example.com/mcp", Allow: []string{"find_product"}},
		},
	}
	if got, exp := cfJSON(h.Agent), cfJSON(want); got != exp {
		t.Fatalf("parsed\n%s\nwant\n%s", got, exp)
	}

	// web_search alone searches the whole web.
	h, err = cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\tweb_search\n\t}\n}")
	if err != nil {
		t.Fatal(err)
	}
	if w := h.Agent.WebSearch; w == nil || len(w.AllowedDomains) != 0 {
		t.Fatalf("web_search alone: %s", cfJSON(h.Agent))
	}
	if b, _ := json.Marshal(h.Agent); !strings.Contains(string(b), `"web_search":{}`) {
		t.Fatalf("web_search alone encodes as %s", b)
	}
}

func TestAgentToolsConfigErrors(t *testing.T) {
	mcp := func(body string) string {
		return "agent {\nmodel m\nmcp docs https://mcp.example.com {\n" + body + "\n}\n}"
	}
	for name, tc := range map[string]string{
		"domain with scheme":    "agent {\nmodel m\nweb_search https://example.com\n}|bare host name such as example.com",
		"domain with path":      "agent {\nmodel m\nweb_search example.com/blog\n}|bare host name",
		"domain with port":      "agent {\nmodel m\nweb_search example.com:443\n}|bare host name",
		"web_search twice":      "agent {\nmodel m\nweb_search a.com\nweb_search b.com\n}|duplicate agent option \"web_search\"",
		"file_search empty":     "agent {\nmodel m\nfile_search\n}|file_search needs at least one vector store id",
		"summary value":         "agent {\nmodel m\nreasoning_summary short\n}|reasoning_summary must be auto, concise, detailed",
		"summary twice":         "agent {\nmodel m\nreasoning_summary auto\nreasoning_summary auto\n}|duplicate agent option \"reasoning_summary\"",
		"minimal with search":   "agent {\nmodel m\nreasoning_effort minimal\nweb_search\n}|reasoning_effort minimal cannot be used with web_search, file_search or mcp",
		"minimal with files":    "agent {\nmodel m\nfile_search vs_1\nreasoning_effort minimal\n}|reasoning_effort minimal cannot be used",
		"minimal with mcp":      mcp("allow search") + "|x",
		"mcp label":             "agent {\nmodel m\nmcp my-docs! https://m.example.com {\nallow a\n}\n}|mcp label must start with a letter",
		"mcp label digit":       "agent {\nmodel m\nmcp 2docs https://m.example.com {\nallow a\n}\n}|mcp label must start with a letter",
		"mcp http":              "agent {\nmodel m\nmcp docs http://m.example.com {\nallow a\n}\n}|must be an absolute https URL",
		"mcp relative":          "agent {\nmodel m\nmcp docs /mcp {\nallow a\n}\n}|must be an absolute https URL",
		"mcp credentials":       "agent {\nmodel m\nmcp docs https://u:p@m.example.com {\nallow a\n}\n}|without credentials",
		"mcp without allow":     "agent {\nmodel m\nmcp docs https://m.example.com\n}|needs allow <tool>...",
		"mcp args":              "agent {\nmodel m\nmcp docs\n}|wrong argument count",
		"mcp unknown option":    mcp("allow a\nrequire_approval always") + "|unrecognized mcp option \"require_approval\"",
		"mcp empty allow":       mcp("allow") + "|wrong argument count",
		"mcp duplicate header":  mcp("allow a\nheader X-Key 1\nheader X-Key 2") + "|duplicate header \"X-Key\"",
		"mcp header name":       mcp("allow a\nheader \"X Key\" 1") + "|not a valid header name",
		"mcp duplicate label":   "agent {\nmodel m\nmcp docs https://a.example.com {\nallow a\n}\nmcp docs https://b.example.com {\nallow b\n}\n}|mcp label \"docs\" is used twice",
		"mcp header value":      mcp("allow a\nheader X-Key \"a\x01b\"") + "|not a valid header value",
		"vector store with gap": "agent {\nmodel m\nfile_search \"vs 1\"\n}|vector store id must be a word",
	} {
		t.Run(name, func(t *testing.T) {
			block, want, _ := strings.Cut(tc, "|")
			if name == "minimal with mcp" {
				block = strings.Replace(block, "model m\n", "model m\nreasoning_effort minimal\n", 1)
				want = "reasoning_effort minimal cannot be used"
			}
			cf := "example.com {\n\tchatkit {\n" + block + "\n\t}\n}\n"
			err := cfAdaptErr(t, cf)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error = %v, want %q", err, want)
			}
		})
	}

	// The same rules judge JSON configs.
	for name, a := range map[string]*Agent{
		"json domain":  {Model: "m", WebSearch: &AgentWebSearch{AllowedDomains: []string{"https://example.com/"}}},
		"json no url":  {Model: "m", MCP: []AgentMCP{{Label: "docs", Allow: []string{"a"}}}},
		"json minimal": {Model: "m", ReasoningEffort: "minimal", MCP: []AgentMCP{{Label: "docs", URL: "https://m.example.com", Allow: []string{"a"}}}},
		"json summary": {Model: "m", ReasoningSummary: "verbose"},
		"json stores":  {Model: "m", FileSearch: &AgentFileSearch{}},
	} {
		if err := a.validate(); err == nil {
			t.Errorf("%s: accepted %s", name, cfJSON(a))
		}
	}

	// A header value never appears in an error: it is usually a token.
	err := cfAdaptErr(t, "example.com {\n\tchatkit {\n"+mcp("allow a\nheader Authorization \"Bearer s3cret\x01\"")+"\n\t}\n}\n")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error %v", err)
	}
}

// ---------------------------------------------------------------- request

// The request head carries the tools exactly as OpenAI documents them,
// placeholders resolved, and reasoning only when it is asked for.
func TestAgentToolsRequestHead(t *testing.T) {
	t.Setenv("CHATKIT_TEST_MCP_TOKEN", "tok_123")
	t.Setenv("CHATKIT_TEST_STORE", "vs_env")
	cfg := &Agent{
		Model:      "m",
		WebSearch:  &AgentWebSearch{AllowedDomains: []string{"example.com"}},
		FileSearch: &AgentFileSearch{VectorStoreIDs: []string{"vs_1", "{env.CHATKIT_TEST_STORE}"}},
		MCP: []AgentMCP{{Label: "docs", URL: "https://mcp.example.com/mcp", Allow: []string{"search"},
			Headers: map[string]string{"Authorization": "Bearer {env.CHATKIT_TEST_MCP_TOKEN}"}}},
	}
	tools, err := agentHostedToolsJSON(cfg, caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	head := appendAgentBodyHead(nil, "m", "", nil, 100, false, "low", "detailed")
	body := append(appendAgentRequestTools(append(head, `[]`...), tools, nil, false, false), '}')
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	want := `{"model":"m","reasoning":{"effort":"low","summary":"detailed"},"tools":[` +
		`{"type":"web_search","filters":{"allowed_domains":["example.com"]}},` +
		`{"type":"file_search","vector_store_ids":["vs_1","vs_env"]},` +
		`{"type":"mcp","server_label":"docs","server_url":"https://mcp.example.com/mcp","allowed_tools":["search"],` +
		`"headers":{"Authorization":"Bearer tok_123"},"require_approval":"never"}],` +
		`"max_output_tokens":100,"store":false,"stream":true,"input":[]}`
	var exp map[string]any
	if err := json.Unmarshal([]byte(want), &exp); err != nil {
		t.Fatal(err)
	}
	if cfJSON(got) != cfJSON(exp) {
		t.Fatalf("head\n%s\nwant\n%s", body, want)
	}

	// No effort and no summary: no reasoning object; no tools: no array.
	for _, tc := range []struct{ effort, summary, want string }{
		{"", "", ""},
		{"high", "", `"reasoning":{"effort":"high"},`},
		{"", "concise", `"reasoning":{"summary":"concise"},`},
	} {
		head := string(appendAgentRequestTools(appendAgentBodyHead(nil, "m", "", nil, 100, false, tc.effort, tc.summary), nil, nil, false, false))
		if tc.want == "" && strings.Contains(head, "reasoning") || !strings.Contains(head, tc.want) || strings.Contains(head, "tools") {
			t.Errorf("effort %q summary %q: %s", tc.effort, tc.summary, head)
		}
	}

	// A placeholder that resolves to nothing usable fails the load, and
	// says where without showing the value.
	t.Setenv("CHATKIT_TEST_MCP_URL", "http://plain.example.com")
	bad := &Agent{Model: "m", MCP: []AgentMCP{{Label: "docs", URL: "{env.CHATKIT_TEST_MCP_URL}", Allow: []string{"a"}}}}
	if _, err := agentHostedToolsJSON(bad, caddy.NewReplacer()); err == nil || !strings.Contains(err.Error(), "mcp docs url") ||
		strings.Contains(err.Error(), "plain.example.com") {
		t.Fatalf("unresolved url: %v", err)
	}
	bad = &Agent{Model: "m", MCP: []AgentMCP{{Label: "docs", URL: "https://m.example.com", Allow: []string{"a"},
		Headers: map[string]string{"X-Key": "{env.CHATKIT_TEST_UNSET_VAR}"}}}}
	if _, err := agentHostedToolsJSON(bad, caddy.NewReplacer()); err == nil || !strings.Contains(err.Error(), "header X-Key") {
		t.Fatalf("empty header: %v", err)
	}
}

// ---------------------------------------------------------------- over HTTP

// agentAnnotatedItem is an assistant item with its annotations.
type agentAnnotatedItem struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	Content []struct {
		Text        string `json:"text"`
		Annotations []struct {
			Type   string `json:"type"`
			Index  *int   `json:"index"`
			Source struct {
				Type, Title, URL, Filename string
			} `json:"source"`
		} `json:"annotations"`
	} `json:"content"`
	Workflow *struct {
		Type  string `json:"type"`
		Tasks []struct {
			Type, Content string
		} `json:"tasks"`
		Summary *struct {
			Duration *int `json:"duration"`
		} `json:"summary"`
		Expanded bool `json:"expanded"`
	} `json:"workflow"`
}

// agentThreadItems reads a thread's items back with threads.get_by_id.
func agentThreadItems(t *testing.T, c *http.Client, threadID string) []agentAnnotatedItem {
	t.Helper()
	r := agentPost(t, c, threadBody("threads.get_by_id", threadID))
	var th struct {
		Items struct {
			Data []agentAnnotatedItem `json:"data"`
		} `json:"items"`
	}
	if r.status != http.StatusOK || json.Unmarshal([]byte(r.body), &th) != nil {
		t.Fatalf("threads.get_by_id: %d %s", r.status, r.body)
	}
	return th.Items.Data
}

// agentItemOfType is the first item of that type.
func agentItemOfType(t *testing.T, items []agentAnnotatedItem, typ string) agentAnnotatedItem {
	t.Helper()
	for _, it := range items {
		if it.Type == typ {
			return it
		}
	}
	t.Fatalf("no %s item in %+v", typ, items)
	return agentAnnotatedItem{}
}

// A turn with a web search limited to one domain: the visitor sees the
// search in progress, then a cited answer, and the citation is saved with
// the thread.
func TestAgentWebSearchCitedAnswer(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "web_search caddyserver.com")
	const answer = "Caddy gets certificates by itself [1]."
	fake.ScriptResponse(fakeopenai.ResponseScript{
		Text: answer, Deltas: 2,
		Hosted: []fakeopenai.HostedCall{{Type: fakeopenai.HostedWebSearch, Query: "caddy certificates"}},
		Annotations: []fakeopenai.Annotation{{Type: "url_citation", URL: "https://caddyserver.com/docs/automatic-https",
			Title: "Automatic HTTPS", StartIndex: 34, EndIndex: 37}},
	})
	browser := client(t)
	s := agentStreamPost(t, browser, createBody("How does Caddy get certificates?"))
	checkAgentGolden(t, "http_web_search", newAgentNormalizer().normalize(s.body))

	types := s.types()
	progress, added := slices.Index(types, "progress_update"), slices.Index(types, "thread.item.added")
	if progress < 0 || added < 0 || progress > added {
		t.Fatalf("the search must show before the answer starts: %v", types)
	}
	if !strings.Contains(s.frames[progress].raw, `"text":"Searching caddyserver.com…"`) {
		t.Errorf("progress %s", s.frames[progress].raw)
	}

	// What OpenAI got: the documented tool.
	raw, _ := json.Marshal(fake.LastResponses().Raw["tools"])
	if string(raw) != `[{"filters":{"allowed_domains":["caddyserver.com"]},"type":"web_search"}]` {
		t.Errorf("tools sent: %s", raw)
	}
	if fake.LastResponses().Reasoning != nil {
		t.Errorf("reasoning sent without effort or summary")
	}

	// The citation is in the saved item, once.
	it := agentItemOfType(t, agentThreadItems(t, browser, s.threadID(t)), agentItemAssistantMessage)
	if len(it.Content) != 1 || it.Content[0].Text != answer || len(it.Content[0].Annotations) != 1 {
		t.Fatalf("saved answer %+v", it)
	}
	a := it.Content[0].Annotations[0]
	if a.Type != "annotation" || a.Source.Type != "url" || a.Source.URL != "https://caddyserver.com/docs/automatic-https" ||
		a.Source.Title != "Automatic HTTPS" || a.Index == nil || *a.Index != 37 {
		t.Errorf("saved annotation %+v", a)
	}
}

// A file citation is titled with the file's name, live and saved, and a
// citation OpenAI gives only in the final parts is saved once.
func TestAgentFileSearchCitationTitles(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "file_search vs_docs")
	fake.ScriptResponse(fakeopenai.ResponseScript{
		Text:   "Renewals happen 30 days before expiry.",
		Hosted: []fakeopenai.HostedCall{{Type: fakeopenai.HostedFileSearch}},
		Annotations: []fakeopenai.Annotation{
			{Type: "file_citation", FileID: "file-1", Filename: "ops-guide.pdf", Index: 38},
			{Type: "file_citation", FileID: "file-2", Filename: "faq.md", Index: 38},
		},
	})
	browser := client(t)
	s := agentStreamPost(t, browser, createBody("When are certificates renewed?"))
	if !strings.Contains(s.body, `"text":"Searching files…"`) {
		t.Errorf("no file search progress: %v", s.types())
	}
	raw, _ := json.Marshal(fake.LastResponses().Raw["tools"])
	if string(raw) != `[{"type":"file_search","vector_store_ids":["vs_docs"]}]` {
		t.Errorf("tools sent: %s", raw)
	}
	var live int
	for _, f := range s.frames {
		if f.Update.Type == "assistant_message.content_part.annotation_added" {
			live++
			if !strings.Contains(f.raw, `"source":{"title":"ops-guide.pdf","type":"file","filename":"ops-guide.pdf"}`) &&
				!strings.Contains(f.raw, `"source":{"title":"faq.md","type":"file","filename":"faq.md"}`) {
				t.Errorf("annotation frame %s", f.raw)
			}
		}
	}
	if live != 2 {
		t.Errorf("%d annotation_added frames, want 2", live)
	}
	it := agentItemOfType(t, agentThreadItems(t, browser, s.threadID(t)), agentItemAssistantMessage)
	anns := it.Content[0].Annotations
	if len(anns) != 2 || anns[0].Source.Title != "ops-guide.pdf" || anns[0].Source.Filename != "ops-guide.pdf" ||
		anns[1].Source.Title != "faq.md" || anns[0].Index == nil || *anns[0].Index != 38 {
		t.Fatalf("saved annotations %+v", anns)
	}
}

// Reasoning summaries become a reasoning workflow before the answer,
// saved with the thread and never sent back to the model.
func TestAgentReasoningSummaryWorkflow(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "reasoning_effort low\n\t\t\treasoning_summary auto")
	fake.ScriptResponse(fakeopenai.ResponseScript{
		Text:             "Yes.",
		ReasoningSummary: []string{"Reading the question", "Checking the answer"},
	})
	browser := client(t)
	s := agentStreamPost(t, browser, createBody("Is Caddy written in Go?"))
	req := fake.LastResponses()
	if r := req.Reasoning; r == nil || r.Effort == nil || *r.Effort != "low" || r.Summary == nil || *r.Summary != "auto" {
		t.Fatalf("reasoning sent: %+v", req.Reasoning)
	}
	types := s.types()
	wf := slices.Index(types, "thread.item.added")
	if wf < 0 || !strings.Contains(s.frames[wf].raw, `"type":"workflow"`) ||
		!strings.Contains(s.body, `"type":"workflow.task.added"`) {
		t.Fatalf("no reasoning workflow: %v", types)
	}
	items := agentThreadItems(t, browser, s.threadID(t))
	w := agentItemOfType(t, items, agentItemWorkflow)
	if w.Workflow == nil || w.Workflow.Type != "reasoning" || len(w.Workflow.Tasks) != 2 ||
		w.Workflow.Tasks[0].Type != "thought" || w.Workflow.Tasks[0].Content != "Reading the question" ||
		w.Workflow.Tasks[1].Content != "Checking the answer" || w.Workflow.Summary == nil || w.Workflow.Summary.Duration == nil ||
		w.Workflow.Expanded {
		t.Fatalf("saved workflow %+v", w.Workflow)
	}
	// The workflow comes before the answer it explains.
	if slices.IndexFunc(items, func(it agentAnnotatedItem) bool { return it.Type == agentItemWorkflow }) >
		slices.IndexFunc(items, func(it agentAnnotatedItem) bool { return it.Type == agentItemAssistantMessage }) {
		t.Errorf("items out of order: %+v", items)
	}

	// The next turn's history has the messages only.
	agentStreamPost(t, browser, addBody(s.threadID(t), "Thanks"))
	var texts []string
	for _, in := range fake.LastResponses().Input {
		if in.Type != "message" {
			t.Errorf("history item %+v", in)
		}
		texts = append(texts, in.Role+":"+in.Text)
	}
	if !slices.Equal(texts, []string{"user:Is Caddy written in Go?", "assistant:Yes.", "user:Thanks"}) {
		t.Errorf("history %v", texts)
	}

	// Without reasoning_summary no workflow is shown, even if the model
	// reasons.
	fake2 := newFake(t)
	startAgent(t, fake2, "", "", "reasoning_effort low")
	fake2.ScriptResponse(fakeopenai.ResponseScript{Text: "Yes.", ReasoningSummary: []string{"hidden"}})
	s = agentStreamPost(t, client(t), createBody("Again?"))
	if strings.Contains(s.body, "workflow") || fake2.LastResponses().Reasoning.Summary != nil {
		t.Errorf("a workflow without reasoning_summary: %s", s.body)
	}
}

// An MCP server: the documented tool with the header values resolved,
// require_approval never and only the allowed tools; the call shows while
// it runs, naming the server.
func TestAgentMCPTool(t *testing.T) {
	t.Setenv("CHATKIT_TEST_MCP_TOKEN", "tok_secret")
	fake := newFake(t)
	startAgent(t, fake, "", "", "mcp docs https://mcp.example.com/mcp {\n\t\t\t\tallow search\n\t\t\t\theader Authorization \"Bearer {env.CHATKIT_TEST_MCP_TOKEN}\"\n\t\t\t}")
	fake.ScriptResponse(fakeopenai.ResponseScript{
		Text:   "Found it.",
		Hosted: []fakeopenai.HostedCall{{Type: fakeopenai.HostedMCP, ServerLabel: "docs", Name: "search", Output: "a page"}},
	})
	s := agentStreamPost(t, client(t), createBody("Find the install page"))
	raw, _ := json.Marshal(fake.LastResponses().Raw["tools"])
	want := `[{"allowed_tools":["search"],"headers":{"Authorization":"Bearer tok_secret"},"require_approval":"never","server_label":"docs","server_url":"https://mcp.example.com/mcp","type":"mcp"}]`
	if string(raw) != want {
		t.Errorf("tools sent:\n%s\nwant\n%s", raw, want)
	}
	// The fake ends a response at an approval request: with "never" the
	// answer comes.
	if !strings.Contains(s.body, `"text":"Connecting to docs…"`) || !strings.Contains(s.body, `"text":"Calling docs…"`) ||
		!strings.Contains(s.body, `"text":"Found it."`) {
		t.Errorf("stream %s", s.body)
	}
	if strings.Contains(s.body, "tok_secret") {
		t.Error("the header value reached the browser")
	}
}

// TestAgentRequestToolsOneArray: hosted and function tools share the one
// `tools` array; the tool choice and the include come with function tools
// only (a hosted-only turn has one round and lets the model use them).
func TestAgentRequestToolsOneArray(t *testing.T) {
	hosted := []byte(`{"type":"web_search"}`)
	tb := &agentToolbox{defs: []byte(`{"type":"function","name":"f","parameters":{"type":"object","properties":{},"required":[],"additionalProperties":false},"strict":true}`)}
	for _, tc := range []struct {
		name            string
		hosted          []byte
		tb              *agentToolbox
		final, encrypt  bool
		types           string
		choice, include bool
	}{
		{"hosted only", hosted, nil, true, true, "web_search", false, false},
		{"function only", nil, tb, false, false, "function", false, false},
		{"both, last round", hosted, tb, true, true, "web_search,function", true, true},
		{"none", nil, nil, true, true, "", false, false},
	} {
		body := append(appendAgentRequestTools([]byte(`{"model":"m"`), tc.hosted, tc.tb, tc.final, tc.encrypt), '}')
		var got struct {
			Tools      []struct{ Type string }
			ToolChoice *string  `json:"tool_choice"`
			Include    []string `json:"include"`
		}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("%s: %v: %s", tc.name, err, body)
		}
		var types []string
		for _, tool := range got.Tools {
			types = append(types, tool.Type)
		}
		if strings.Join(types, ",") != tc.types || (got.ToolChoice != nil) != tc.choice || (got.Include != nil) != tc.include ||
			strings.Count(string(body), `"tools"`) > 1 {
			t.Errorf("%s: %s", tc.name, body)
		}
	}
}

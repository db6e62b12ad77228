package fakeopenai

import (
	"slices"
	"strings"
	"testing"
)

// The hosted tools are checked field by field, as OpenAI documents them.
func TestHostedToolValidation(t *testing.T) {
	s := newTestServer(t, Options{})
	tools := func(ts string) string { return `{"model":"m","input":"x","tools":[` + ts + `]}` }
	cases := []struct {
		name, body         string
		code, param, inMsg string
	}{
		{"web_search unknown key", tools(`{"type":"web_search","domains":["a.com"]}`), "unknown_parameter", "tools[0].domains", "Unknown parameter: 'tools[0].domains'."},
		{"web_search filters unknown key", tools(`{"type":"web_search","filters":{"blocked_domains":[]}}`), "unknown_parameter", "tools[0].filters.blocked_domains", ""},
		{"web_search domains not array", tools(`{"type":"web_search","filters":{"allowed_domains":"a.com"}}`), "invalid_type", "tools[0].filters.allowed_domains", "expected an array"},
		{"web_search domain not string", tools(`{"type":"web_search","filters":{"allowed_domains":[1]}}`), "invalid_type", "tools[0].filters.allowed_domains[0]", ""},
		{"web_search too many domains", tools(`{"type":"web_search","filters":{"allowed_domains":[` + strings.Repeat(`"a.com",`, 100) + `"b.com"]}}`), "array_above_max_length", "tools[0].filters.allowed_domains", ""},
		{"web_search context size", tools(`{"type":"web_search","search_context_size":"huge"}`), "invalid_value", "tools[0].search_context_size", ""},
		{"file_search without stores", tools(`{"type":"file_search"}`), "missing_required_parameter", "tools[0].vector_store_ids", ""},
		{"file_search stores string", tools(`{"type":"file_search","vector_store_ids":"vs_1"}`), "invalid_type", "tools[0].vector_store_ids", ""},
		{"file_search unknown key", tools(`{"type":"file_search","vector_store_ids":["vs_1"],"stores":1}`), "unknown_parameter", "tools[0].stores", ""},
		{"file_search max results", tools(`{"type":"file_search","vector_store_ids":["vs_1"],"max_num_results":51}`), "integer_above_max_value", "tools[0].max_num_results", ""},
		{"mcp without label", tools(`{"type":"mcp","server_url":"https://m.test"}`), "missing_required_parameter", "tools[0].server_label", ""},
		{"mcp bad label", tools(`{"type":"mcp","server_label":"my docs","server_url":"https://m.test"}`), "invalid_value", "tools[0].server_label", ""},
		{"mcp label starting with a digit", tools(`{"type":"mcp","server_label":"1docs","server_url":"https://m.test"}`), "invalid_value", "tools[0].server_label", ""},
		{"mcp without url", tools(`{"type":"mcp","server_label":"docs"}`), "missing_required_parameter", "tools[0]", ""},
		{"mcp unknown key", tools(`{"type":"mcp","server_label":"docs","server_url":"https://m.test","approval":"never"}`), "unknown_parameter", "tools[0].approval", ""},
		{"mcp require_approval value", tools(`{"type":"mcp","server_label":"docs","server_url":"https://m.test","require_approval":"sometimes"}`), "invalid_value", "tools[0].require_approval",
			"Invalid value: 'sometimes'. Supported values are: 'always' and 'never'."},
		{"mcp require_approval type", tools(`{"type":"mcp","server_label":"docs","server_url":"https://m.test","require_approval":true}`), "invalid_type", "tools[0].require_approval", ""},
		{"mcp approval filter key", tools(`{"type":"mcp","server_label":"docs","server_url":"https://m.test","require_approval":{"sometimes":{}}}`), "unknown_parameter", "tools[0].require_approval.sometimes", ""},
		{"mcp allowed_tools type", tools(`{"type":"mcp","server_label":"docs","server_url":"https://m.test","allowed_tools":"search"}`), "invalid_type", "tools[0].allowed_tools", ""},
		{"mcp allowed tool not string", tools(`{"type":"mcp","server_label":"docs","server_url":"https://m.test","allowed_tools":[3]}`), "invalid_type", "tools[0].allowed_tools[0]", ""},
		{"mcp header not string", tools(`{"type":"mcp","server_label":"docs","server_url":"https://m.test","headers":{"X-Key":1}}`), "invalid_type", "tools[0].headers.X-Key", ""},
		{"minimal effort with web search", `{"model":"m","input":"x","reasoning":{"effort":"minimal"},"tools":[{"type":"web_search"},{"type":"file_search","vector_store_ids":["vs_1"]}]}`,
			"", "tools", "The following tools cannot be used with reasoning.effort 'minimal': web_search, file_search."},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := postJSON(t, s, tc.body)
			if r.status != 400 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			typ, code, param, message := r.errorFields(t)
			if typ != "invalid_request_error" {
				t.Errorf("type %q", typ)
			}
			if tc.code == "" && code != nil || tc.code != "" && code != tc.code {
				t.Errorf("code %v, want %q", code, tc.code)
			}
			if param != tc.param {
				t.Errorf("param %v, want %q", param, tc.param)
			}
			if !strings.Contains(message, tc.inMsg) {
				t.Errorf("message %q lacks %q", message, tc.inMsg)
			}
		})
	}

	// What the agent sends, and the other documented shapes, pass.
	for _, ok := range []string{
		tools(`{"type":"web_search"},{"type":"web_search","filters":{"allowed_domains":["example.com"]},"search_context_size":"low","user_location":{"type":"approximate","country":"FR"}}`),
		tools(`{"type":"file_search","vector_store_ids":["vs_1","vs_2"],"max_num_results":5}`),
		tools(`{"type":"mcp","server_label":"docs-2","server_url":"https://m.test/mcp","allowed_tools":["search"],"headers":{"Authorization":"Bearer t"},"require_approval":"never"}`),
		tools(`{"type":"mcp","server_label":"gmail","connector_id":"connector_gmail","allowed_tools":{"tool_names":["a"],"read_only":true},"require_approval":{"never":{"tool_names":["a"]}}}`),
		`{"model":"m","input":"x","reasoning":{"effort":"minimal"},"tools":[{"type":"mcp","server_label":"d","server_url":"https://m.test"}]}`,
	} {
		if r := postJSON(t, s, ok); r.status != 200 {
			t.Errorf("%s: status %d: %s", ok, r.status, r.body)
		}
	}
}

// A scripted answer with reasoning, a web search, an MCP call and
// citations streams the documented events in the documented order, with
// output indexes counting the items.
func TestHostedScriptedStream(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{
		Text:             "Caddy serves HTTPS by default.",
		Deltas:           2,
		ReasoningSummary: []string{"Looking up"},
		Hosted: []HostedCall{
			{Type: HostedWebSearch, Query: "caddy https"},
			{Type: HostedMCP, ServerLabel: "docs", Name: "search", Arguments: `{"q":"https"}`, Output: "found"},
		},
		Annotations: []Annotation{
			{Type: "url_citation", URL: "https://caddyserver.com/docs/automatic-https", Title: "Automatic HTTPS", StartIndex: 0, EndIndex: 5},
			{Type: "file_citation", FileID: "file_1", Filename: "guide.pdf", Index: 30},
		},
	})
	frames := streamAll(t, s, `{"model":"m","input":"x","stream":true,"reasoning":{"effort":"low","summary":"auto"},"tools":[`+
		`{"type":"web_search","filters":{"allowed_domains":["caddyserver.com"]}},`+
		`{"type":"mcp","server_label":"docs","server_url":"https://m.test","allowed_tools":["search"],"require_approval":"never"}]}`)
	want := []string{
		"response.created", "response.in_progress",
		"response.output_item.added", "response.reasoning_summary_part.added",
		"response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
		"response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
		"response.output_item.added", "response.web_search_call.in_progress", "response.web_search_call.searching",
		"response.web_search_call.completed", "response.output_item.done",
		"response.output_item.added", "response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed", "response.output_item.done",
		"response.output_item.added", "response.mcp_call_arguments.done", "response.mcp_call.in_progress",
		"response.mcp_call.completed", "response.output_item.done",
		"response.output_item.added", "response.content_part.added",
		"response.output_text.delta", "response.output_text.annotation.added", "response.output_text.delta",
		"response.output_text.annotation.added",
		"response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
	}
	if got := eventNames(frames); !slices.Equal(got, want) {
		t.Fatalf("events\n got %v\nwant %v", got, want)
	}
	// Output indexes: reasoning 0, search 1, list 2, call 3, message 4.
	for i, wantIndex := range map[int]float64{2: 0, 9: 1, 14: 2, 18: 3, 23: 4, 25: 4, 26: 4} {
		if got := frames[i].data["output_index"]; got != wantIndex {
			t.Errorf("%s (frame %d) output_index %v, want %v", frames[i].event, i, got, wantIndex)
		}
	}
	search := obj(t, frames[13].data["item"], "search item")
	if search["type"] != "web_search_call" || search["status"] != "completed" ||
		obj(t, search["action"], "action")["query"] != "caddy https" {
		t.Errorf("web search item %v", search)
	}
	call := obj(t, frames[22].data["item"], "mcp item")
	if call["type"] != "mcp_call" || call["server_label"] != "docs" || call["name"] != "search" ||
		call["arguments"] != `{"q":"https"}` || call["output"] != "found" {
		t.Errorf("mcp item %v", call)
	}
	if d := frames[4].data; d["delta"] != "Looking" || d["summary_index"] != float64(0) {
		t.Errorf("summary delta %v", d)
	}
	ann := frames[26].data
	if ann["annotation_index"] != float64(0) || obj(t, ann["annotation"], "annotation")["url"] != "https://caddyserver.com/docs/automatic-https" {
		t.Errorf("first annotation %v", ann)
	}
	if a := obj(t, frames[28].data["annotation"], "annotation"); a["type"] != "file_citation" || a["filename"] != "guide.pdf" || a["index"] != float64(30) {
		t.Errorf("file annotation %v", a)
	}
	part := obj(t, frames[30].data["part"], "done part")
	if anns, _ := part["annotations"].([]any); len(anns) != 2 {
		t.Errorf("content_part.done annotations %v", part["annotations"])
	}
	final := obj(t, frames[len(frames)-1].data["response"], "response")
	output, _ := final["output"].([]any)
	var types []string
	for _, it := range output {
		types = append(types, obj(t, it, "output item")["type"].(string))
	}
	if !slices.Equal(types, []string{"reasoning", "web_search_call", "mcp_list_tools", "mcp_call", "message"}) {
		t.Errorf("final output %v", types)
	}
	summary, _ := obj(t, output[0], "reasoning")["summary"].([]any)
	if len(summary) != 1 || obj(t, summary[0], "summary")["text"] != "Looking up" {
		t.Errorf("reasoning summary %v", summary)
	}
}

// A model calls only what it was given: no tool, no call; a tool outside
// allowed_tools, no call; no summary unless asked for; and an MCP server
// that needs approval ends the response with an approval request.
func TestHostedScriptFollowsTheRequest(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{
		Times:            2,
		ReasoningSummary: []string{"thinking"},
		Hosted: []HostedCall{
			{Type: HostedWebSearch},
			{Type: HostedFileSearch},
			{Type: HostedMCP, ServerLabel: "docs", Name: "delete_everything"},
		},
	})
	frames := streamAll(t, s, `{"model":"m","input":"x","stream":true,"reasoning":{"effort":"low"},"tools":[`+
		`{"type":"file_search","vector_store_ids":["vs_1"]},`+
		`{"type":"mcp","server_label":"docs","server_url":"https://m.test","allowed_tools":["search"],"require_approval":"never"}]}`)
	names := eventNames(frames)
	for _, absent := range []string{"response.web_search_call.in_progress", "response.mcp_call.in_progress", "response.reasoning_summary_part.added"} {
		if slices.Contains(names, absent) {
			t.Errorf("%s sent: %v", absent, names)
		}
	}
	if !slices.Contains(names, "response.file_search_call.searching") || !slices.Contains(names, "response.output_text.done") {
		t.Errorf("events %v", names)
	}

	s.ScriptResponse(ResponseScript{Hosted: []HostedCall{{Type: HostedMCP, ServerLabel: "docs", Name: "search"}}})
	// Times 2 above: the second request still gets the first script.
	postJSON(t, s, `{"model":"m","input":"x"}`)
	frames = streamAll(t, s, `{"model":"m","input":"x","stream":true,"tools":[`+
		`{"type":"mcp","server_label":"docs","server_url":"https://m.test","allowed_tools":["search"]}]}`)
	names = eventNames(frames)
	if slices.Contains(names, "response.output_text.delta") || names[len(names)-1] != "response.completed" {
		t.Fatalf("an approval request must end the response: %v", names)
	}
	final := obj(t, frames[len(frames)-1].data["response"], "response")
	output, _ := final["output"].([]any)
	if len(output) != 2 || obj(t, output[1], "item")["type"] != "mcp_approval_request" {
		t.Errorf("output %v", output)
	}
}

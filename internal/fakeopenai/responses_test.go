package fakeopenai

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// sseFrame is one event of a Responses stream.
type sseFrame struct {
	event string
	data  map[string]any
}

// sseReader reads a Responses stream frame by frame and checks the framing
// every frame must have: an event line naming the payload's type, one data
// line, and sequence numbers counting up from 0.
type sseReader struct {
	t    *testing.T
	r    *bufio.Reader
	next int
}

func newSSEReader(t *testing.T, body io.Reader) *sseReader {
	return &sseReader{t: t, r: bufio.NewReaderSize(body, 64<<10)}
}

// read returns the next frame, or an error at the end of the body or when it
// breaks off.
func (sr *sseReader) read() (sseFrame, error) {
	sr.t.Helper()
	ev, err := sr.r.ReadString('\n')
	if err != nil {
		return sseFrame{}, err
	}
	data, err := sr.r.ReadString('\n')
	if err != nil {
		return sseFrame{}, err
	}
	blank, err := sr.r.ReadString('\n')
	if err != nil {
		return sseFrame{}, err
	}
	name, ok := strings.CutPrefix(ev, "event: ")
	payload, ok2 := strings.CutPrefix(data, "data: ")
	if !ok || !ok2 || blank != "\n" {
		sr.t.Fatalf("bad frame %.100q %.100q %q", ev, data, blank)
	}
	name = strings.TrimSuffix(name, "\n")
	var m map[string]any
	if err := json.Unmarshal([]byte(payload), &m); err != nil {
		sr.t.Fatalf("data is not a JSON object: %v: %.200s", err, payload)
	}
	if m["type"] != name {
		sr.t.Errorf("event %q carries type %v", name, m["type"])
	}
	if seq, _ := m["sequence_number"].(float64); int(seq) != sr.next {
		sr.t.Errorf("event %q: sequence_number %v, want %d", name, m["sequence_number"], sr.next)
	}
	sr.next++
	return sseFrame{event: name, data: m}, nil
}

// readAll reads frames until the body ends; err is nil at a clean end.
func (sr *sseReader) readAll() ([]sseFrame, error) {
	sr.t.Helper()
	var out []sseFrame
	for {
		f, err := sr.read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, f)
	}
}

func eventNames(fs []sseFrame) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.event
	}
	return out
}

// postResponses starts a POST /v1/responses and returns the open response.
func postResponses(t *testing.T, ctx context.Context, c *http.Client, s *Server, body string, opts ...reqOpt) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "POST", s.URL()+"/responses", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+DefaultAPIKey)
	req.Header.Set("Content-Type", "application/json")
	for _, o := range opts {
		o(req)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST /v1/responses: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// streamAll posts a streaming request and reads the whole stream.
func streamAll(t *testing.T, s *Server, body string) []sseFrame {
	t.Helper()
	resp := postResponses(t, context.Background(), newClient(t, 10*time.Second), s, body)
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	frames, err := newSSEReader(t, resp.Body).readAll()
	if err != nil {
		t.Fatalf("stream broke off: %v", err)
	}
	return frames
}

func postJSON(t *testing.T, s *Server, body string, opts ...reqOpt) result {
	t.Helper()
	return mustSend(t, newClient(t, 10*time.Second), "POST", s.URL()+"/responses", body,
		append([]reqOpt{withoutHeader("OpenAI-Beta")}, opts...)...)
}

func textEvents(n int) []string {
	out := []string{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"}
	for range n {
		out = append(out, "response.output_text.delta")
	}
	return out
}

func doneEvents(final string) []string {
	return []string{"response.output_text.done", "response.content_part.done", "response.output_item.done", final}
}

func obj(t *testing.T, v any, what string) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s is not an object: %#v", what, v)
	}
	return m
}

var (
	respIDRe = regexp.MustCompile(`^resp_[0-9a-f]{48}$`)
	msgIDRe  = regexp.MustCompile(`^msg_[0-9a-f]{48}$`)
)

const streamBody = `{"model":"gpt-5-mini","stream":true,"store":false,"max_output_tokens":2048,
	"instructions":"Be brief.","safety_identifier":"sid_0123",
	"input":[{"role":"user","content":"hi"},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Hello!"}]},
	{"role":"user","content":[{"type":"input_text","text":"hello there"}]}]}`

func TestResponsesStreamEventSequenceAndShapes(t *testing.T) {
	s := newTestServer(t, Options{})
	resp := postResponses(t, context.Background(), newClient(t, 10*time.Second), s, streamBody)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("content type %q", ct)
	}
	frames, err := newSSEReader(t, resp.Body).readAll()
	if err != nil {
		t.Fatal(err)
	}
	wantText := "You said: hello there"
	words := []string{"You", " said:", " hello", " there"}
	want := append(textEvents(len(words)), doneEvents("response.completed")...)
	if got := eventNames(frames); !slices.Equal(got, want) {
		t.Fatalf("events\n got %v\nwant %v", got, want)
	}

	created := obj(t, frames[0].data["response"], "created.response")
	respID, _ := created["id"].(string)
	if !respIDRe.MatchString(respID) {
		t.Errorf("response id %q", respID)
	}
	for k, v := range map[string]any{
		"object": "response", "status": "in_progress", "created_at": float64(fixedNow.Unix()),
		"model": "gpt-5-mini", "output": []any{}, "usage": nil, "error": nil, "incomplete_details": nil,
		"instructions": "Be brief.", "max_output_tokens": float64(2048), "store": false,
		"safety_identifier": "sid_0123", "previous_response_id": nil, "tool_choice": "auto", "tools": []any{},
		"truncation": "disabled", "metadata": map[string]any{}, "background": false, "completed_at": nil,
		"parallel_tool_calls": true, "service_tier": "auto", "reasoning": map[string]any{"effort": nil, "summary": nil},
		"text": map[string]any{"format": map[string]any{"type": "text"}, "verbosity": "medium"},
	} {
		if !jsonEqual(created[k], v) {
			t.Errorf("created.response.%s = %#v, want %#v", k, created[k], v)
		}
	}
	if ip := obj(t, frames[1].data["response"], "in_progress.response"); ip["id"] != respID || ip["status"] != "in_progress" {
		t.Errorf("in_progress response %v", ip)
	}

	added := frames[2].data
	item := obj(t, added["item"], "output_item.added.item")
	msgID, _ := item["id"].(string)
	if !msgIDRe.MatchString(msgID) || added["output_index"] != float64(0) ||
		!jsonEqual(item, map[string]any{"id": msgID, "type": "message", "status": "in_progress", "content": []any{}, "role": "assistant"}) {
		t.Errorf("output_item.added %v", added)
	}
	emptyPart := map[string]any{"type": "output_text", "annotations": []any{}, "logprobs": []any{}, "text": ""}
	if pa := frames[3].data; pa["item_id"] != msgID || pa["output_index"] != float64(0) ||
		pa["content_index"] != float64(0) || !jsonEqual(pa["part"], emptyPart) {
		t.Errorf("content_part.added %v", pa)
	}

	var streamed strings.Builder
	for i, f := range frames[4 : 4+len(words)] {
		d := f.data
		if d["item_id"] != msgID || d["output_index"] != float64(0) || d["content_index"] != float64(0) ||
			d["delta"] != words[i] || !jsonEqual(d["logprobs"], []any{}) {
			t.Errorf("delta %d: %v", i, d)
		}
		obf, _ := d["obfuscation"].(string)
		if obf == "" || (len(words[i])+len(obf))%16 != 0 {
			t.Errorf("delta %d obfuscation %q", i, obf)
		}
		streamed.WriteString(d["delta"].(string))
	}
	if streamed.String() != wantText {
		t.Errorf("deltas join to %q", streamed.String())
	}

	rest := frames[4+len(words):]
	if d := rest[0].data; d["text"] != wantText || d["item_id"] != msgID || !jsonEqual(d["logprobs"], []any{}) {
		t.Errorf("output_text.done %v", d)
	}
	donePart := map[string]any{"type": "output_text", "annotations": []any{}, "logprobs": []any{}, "text": wantText}
	if d := rest[1].data; !jsonEqual(d["part"], donePart) || d["item_id"] != msgID {
		t.Errorf("content_part.done %v", d)
	}
	doneItem := map[string]any{"id": msgID, "type": "message", "status": "completed", "content": []any{donePart}, "role": "assistant"}
	if d := rest[2].data; !jsonEqual(d["item"], doneItem) || d["output_index"] != float64(0) {
		t.Errorf("output_item.done %v", d)
	}
	completed := obj(t, rest[3].data["response"], "completed.response")
	// Rule: ceil(runes/4) of the instructions and every item's text.
	inRunes := utf8.RuneCountInString("Be brief." + "hi" + "Hello!" + "hello there")
	wantUsage := map[string]any{
		"input_tokens": float64((inRunes + 3) / 4), "input_tokens_details": map[string]any{"cached_tokens": float64(0), "cache_write_tokens": float64(0)},
		"output_tokens": float64((len(wantText) + 3) / 4), "output_tokens_details": map[string]any{"reasoning_tokens": float64(0)},
		"total_tokens": float64((inRunes+3)/4 + (len(wantText)+3)/4),
	}
	if completed["id"] != respID || completed["status"] != "completed" || !jsonEqual(completed["output"], []any{doneItem}) ||
		!jsonEqual(completed["usage"], wantUsage) || completed["completed_at"] != float64(fixedNow.Unix()) ||
		completed["service_tier"] != "default" || completed["error"] != nil {
		t.Errorf("completed response %v", completed)
	}

	rec := s.Requests()[0]
	if rec.Status != 200 || !slices.Equal(rec.Events, want) || rec.ClientGone || rec.Responses == nil {
		t.Errorf("record status %d gone %v events %v", rec.Status, rec.ClientGone, rec.Events)
	}
}

func TestResponsesStringInputAndDefaults(t *testing.T) {
	s := newTestServer(t, Options{})
	frames := streamAll(t, s, `{"model":"m","input":"ping","stream":true}`)
	if got := frames[len(frames)-4].data["text"]; got != "You said: ping" {
		t.Errorf("text %v", got)
	}
	last := obj(t, frames[len(frames)-1].data["response"], "response")
	if last["store"] != true || last["instructions"] != nil {
		t.Errorf("defaults: store %v instructions %v", last["store"], last["instructions"])
	}
	lr := s.LastResponses()
	if lr == nil || !lr.InputIsString || len(lr.Input) != 1 || lr.Input[0].Role != "user" || lr.Input[0].Text != "ping" || !lr.Stream {
		t.Errorf("LastResponses %+v", lr)
	}
}

func TestResponsesNonStreaming(t *testing.T) {
	s := newTestServer(t, Options{ResponseText: "Fixed answer here."})
	r := postJSON(t, s, `{"model":"m","input":"abcdefgh","stream":false}`)
	if r.status != 200 || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d ct %q: %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	m := r.json(t)
	out, _ := m["output"].([]any)
	if m["status"] != "completed" || m["object"] != "response" || len(out) != 1 {
		t.Fatalf("response %s", r.body)
	}
	part := obj(t, obj(t, out[0], "output[0]")["content"].([]any)[0], "part")
	if part["text"] != "Fixed answer here." {
		t.Errorf("text %v", part["text"])
	}
	u := obj(t, m["usage"], "usage")
	if u["input_tokens"] != float64(2) || u["output_tokens"] != float64(5) || u["total_tokens"] != float64(7) {
		t.Errorf("usage %v", u)
	}
	if rec := s.Requests()[0]; len(rec.Events) != 0 || rec.Status != 200 {
		t.Errorf("record %+v", rec)
	}
}

func TestResponsesScriptedAnswers(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{Times: 2, Text: "abcdefghij", Deltas: 3,
		Usage: &Usage{InputTokens: 100, CachedTokens: 40, OutputTokens: 7, ReasoningTokens: 3}})
	s.ScriptResponse(ResponseScript{Text: "second script"})
	for i := range 2 {
		frames := streamAll(t, s, `{"model":"m","input":"x","stream":true}`)
		if got := eventNames(frames); !slices.Equal(got, append(textEvents(3), doneEvents("response.completed")...)) {
			t.Fatalf("run %d events %v", i, got)
		}
		var deltas []string
		for _, f := range frames[4:7] {
			deltas = append(deltas, f.data["delta"].(string))
		}
		if !slices.Equal(deltas, []string{"abc", "def", "ghij"}) {
			t.Errorf("run %d deltas %q", i, deltas)
		}
		u := obj(t, obj(t, frames[len(frames)-1].data["response"], "response")["usage"], "usage")
		want := map[string]any{"input_tokens": float64(100), "input_tokens_details": map[string]any{"cached_tokens": float64(40), "cache_write_tokens": float64(0)},
			"output_tokens": float64(7), "output_tokens_details": map[string]any{"reasoning_tokens": float64(3)}, "total_tokens": float64(107)}
		if !jsonEqual(u, want) {
			t.Errorf("run %d usage %v", i, u)
		}
	}
	frames := streamAll(t, s, `{"model":"m","input":"x","stream":true}`)
	if got := frames[len(frames)-4].data["text"]; got != "second script" {
		t.Errorf("third answer %v", got)
	}
	frames = streamAll(t, s, `{"model":"m","input":"x","stream":true}`)
	if got := frames[len(frames)-4].data["text"]; got != "You said: x" {
		t.Errorf("after the scripts %v", got)
	}
}

func TestResponsesObfuscationOff(t *testing.T) {
	s := newTestServer(t, Options{})
	frames := streamAll(t, s, `{"model":"m","input":"a b","stream":true,"stream_options":{"include_obfuscation":false}}`)
	for _, f := range frames {
		if _, ok := f.data["obfuscation"]; ok {
			t.Errorf("%s carries obfuscation", f.event)
		}
	}
	if io := s.LastResponses().IncludeObfuscation; io == nil || *io {
		t.Errorf("IncludeObfuscation recorded as %v", io)
	}
}

func TestResponsesMaxOutputTokensIncomplete(t *testing.T) {
	s := newTestServer(t, Options{})
	long := strings.Repeat("word ", 40) // 200 runes: 50 tokens
	s.ScriptResponse(ResponseScript{Text: long})
	frames := streamAll(t, s, `{"model":"m","input":"x","stream":true,"max_output_tokens":16}`)
	names := eventNames(frames)
	if names[len(names)-1] != "response.incomplete" {
		t.Fatalf("events %v", names)
	}
	text := frames[len(frames)-4].data["text"].(string)
	if text != long[:64] {
		t.Errorf("text %q, want the first 64 runes", text)
	}
	if st := obj(t, frames[len(frames)-2].data["item"], "item")["status"]; st != "incomplete" {
		t.Errorf("item status %v", st)
	}
	r := obj(t, frames[len(frames)-1].data["response"], "response")
	if r["status"] != "incomplete" || !jsonEqual(r["incomplete_details"], map[string]any{"reason": "max_output_tokens"}) ||
		obj(t, r["usage"], "usage")["output_tokens"] != float64(16) {
		t.Errorf("incomplete response %v", r)
	}
}

func TestResponsesPromptWithoutModel(t *testing.T) {
	s := newTestServer(t, Options{})
	r := postJSON(t, s, `{"prompt":{"id":"pmpt_1","version":"3","variables":{"city":"Paris",
		"doc":{"type":"input_file","file_id":"file_1"}}},"input":"x"}`)
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	m := r.json(t)
	if m["model"] != DefaultPromptModel || obj(t, m["prompt"], "prompt")["id"] != "pmpt_1" {
		t.Errorf("model %v prompt %v", m["model"], m["prompt"])
	}
	// Input tokens count the string variables: "x" + "Paris" = 6 runes.
	if u := obj(t, m["usage"], "usage"); u["input_tokens"] != float64(2) {
		t.Errorf("usage %v", u)
	}
	p := s.LastResponses().Prompt
	if p == nil || p.ID != "pmpt_1" || p.Version == nil || *p.Version != "3" || p.Variables["city"] != "Paris" {
		t.Errorf("prompt %+v", p)
	}
}

// Every documented top-level parameter at once, with nested shapes the
// agent and other clients send, is accepted and echoed.
// (Effort low: OpenAI refuses web_search at minimal effort.)
func TestResponsesAcceptsDocumentedParameters(t *testing.T) {
	s := newTestServer(t, Options{})
	first := postJSON(t, s, `{"model":"m","input":"x"}`).json(t)
	body := fmt.Sprintf(`{
		"model": "gpt-5-mini", "stream": true, "store": true, "instructions": "i",
		"input": [
			{"role": "developer", "content": "d"},
			{"role": "system", "content": [{"type": "input_text", "text": "s", "prompt_cache_breakpoint": {"mode": "explicit"}}]},
			{"type": "message", "role": "user", "status": "completed", "content": [
				{"type": "input_text", "text": "look"},
				{"type": "input_image", "image_url": "https://example.test/a.png", "detail": "low"},
				{"type": "input_file", "file_id": "file_1", "filename": "a.pdf", "detail": "auto"}]},
			{"type": "message", "role": "assistant", "id": "msg_1", "status": "completed", "phase": "final_answer",
			 "content": [{"type": "output_text", "text": "t", "annotations": [{"type": "url_citation", "url": "u", "title": "t", "start_index": 0, "end_index": 1}]},
			             {"type": "refusal", "refusal": "no"}]},
			{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "why"}], "encrypted_content": "e"},
			{"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}", "status": "completed"},
			{"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "42"}], "caller": {"type": "direct"}},
			{"type": "function_call", "call_id": "call_2", "name": "f", "arguments": "{}"},
			{"type": "function_call_output", "call_id": "call_2", "output": "43"},
			{"type": "item_reference", "id": "msg_0"},
			{"id": "msg_00"},
			{"type": "shell_call", "call_id": "c", "action": {"commands": ["ls"]}},
			{"type": "compaction_trigger"}
		],
		"max_output_tokens": 512, "safety_identifier": "s1",
		"reasoning": {"effort": "low", "summary": "auto", "context": "auto", "mode": "standard"},
		"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": false}, "strict": true, "description": "d"},
		          {"type": "web_search"}],
		"tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": false,
		"text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}, "verbosity": "low"},
		"temperature": 0.5, "top_p": 0.9, "metadata": {"k": "v"}, "previous_response_id": %q,
		"include": ["reasoning.encrypted_content"], "truncation": "auto", "user": "u", "service_tier": "fast",
		"prompt_cache_key": "pck", "prompt_cache_retention": "24h", "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
		"max_tool_calls": 3, "stream_options": {"include_obfuscation": true}, "background": false,
		"top_logprobs": 2, "context_management": [{"type": "compaction", "compact_threshold": 1000}],
		"moderation": {"model": "omni-moderation-latest", "policy": {"input": {"mode": "score"}, "output": {"mode": "block"}}},
		"prompt": {"id": "pmpt_1"}
	}`, first["id"])
	frames := streamAll(t, s, body)
	r := obj(t, frames[len(frames)-1].data["response"], "response")
	for k, v := range map[string]any{
		"service_tier": "priority", "previous_response_id": first["id"], "temperature": 0.5, "top_p": 0.9,
		"parallel_tool_calls": false, "tool_choice": map[string]any{"type": "function", "name": "f"},
		"truncation": "auto", "user": "u", "metadata": map[string]any{"k": "v"}, "max_tool_calls": float64(3),
		"top_logprobs": float64(2), "prompt_cache_key": "pck", "prompt_cache_retention": "24h",
		"reasoning": map[string]any{"effort": "low", "summary": "auto"},
	} {
		if !jsonEqual(r[k], v) {
			t.Errorf("%s = %#v, want %#v", k, r[k], v)
		}
	}
	if tf := obj(t, r["text"], "text"); tf["verbosity"] != "low" || obj(t, tf["format"], "format")["type"] != "json_schema" {
		t.Errorf("text %v", r["text"])
	}
	lr := s.LastResponses()
	if len(lr.Input) != 13 || lr.Input[2].Text != "look" || len(lr.Input[2].Content) != 3 ||
		lr.Input[3].Text != "t\nno" || lr.Input[5].CallID != "call_1" || lr.Input[6].Text != "42" ||
		lr.Input[9].Type != "item_reference" || lr.Input[10].Type != "item_reference" || lr.Input[4].Text != "why" ||
		*lr.Reasoning.Effort != "low" || lr.Metadata["k"] != "v" || *lr.SafetyIdentifier != "s1" {
		t.Errorf("parsed input %+v", lr.Input)
	}
}

// TestResponsesInlineImageAndFile accepts the inline shapes OpenAI's guides
// document (an image as a data URL, a file as file_data with its filename)
// and records them.
func TestResponsesInlineImageAndFile(t *testing.T) {
	s := newTestServer(t, Options{})
	streamAll(t, s, `{"model":"m","stream":true,"input":[{"role":"user","content":[
		{"type":"input_text","text":"what is this?"},
		{"type":"input_image","image_url":"data:image/png;base64,iVBORw0KGgo=","detail":"auto"},
		{"type":"input_file","filename":"a.pdf","file_data":"data:application/pdf;base64,JVBERi0xLjQ="}]}]}`)
	in := s.LastResponses().Input
	if len(in) != 1 || len(in[0].Content) != 3 {
		t.Fatalf("input %+v", in)
	}
	img, file := in[0].Content[1], in[0].Content[2]
	if img.Type != "input_image" || img.ImageURL != "data:image/png;base64,iVBORw0KGgo=" || img.Detail != "auto" {
		t.Errorf("image part %+v", img)
	}
	if file.Type != "input_file" || file.Filename != "a.pdf" || file.FileData != "data:application/pdf;base64,JVBERi0xLjQ=" {
		t.Errorf("file part %+v", file)
	}
	if in[0].Text != "what is this?" {
		t.Errorf("text %q", in[0].Text)
	}
}

func TestResponsesValidation(t *testing.T) {
	s := newTestServer(t, Options{})
	msg := func(content string) string {
		return `{"model":"m","input":[{"role":"user","content":` + content + `}]}`
	}
	item := func(it string) string { return `{"model":"m","input":[` + it + `]}` }
	cases := []struct {
		name, body         string
		status             int
		code, param, inMsg string
	}{
		{"not json", `{"model":`, 400, "", "", "could not parse the JSON body"},
		{"trailing data", `{"model":"m"} {}`, 400, "", "", "could not parse"},
		{"array body", `[]`, 400, "invalid_type", "", "expected an object"},
		{"unknown top-level", `{"model":"m","input":"x","messages":[]}`, 400, "unknown_parameter", "messages", "Unknown parameter: 'messages'."},
		{"unknown nested", `{"model":"m","reasoning":{"effort":"low","budget":1}}`, 400, "unknown_parameter", "reasoning.budget", "Unknown parameter: 'reasoning.budget'."},
		{"missing model", `{"input":"x"}`, 400, "missing_required_parameter", "model", "Missing required parameter: 'model'."},
		{"model not string", `{"model":5}`, 400, "invalid_type", "model", "expected a string, but got an integer"},
		{"model null", `{"model":null}`, 400, "invalid_type", "model", "got null"},
		{"model empty", `{"model":""}`, 400, "invalid_value", "model", "empty string"},
		{"input object", `{"model":"m","input":{}}`, 400, "invalid_type", "input", "but got an object"},
		{"stream string", `{"model":"m","stream":"yes"}`, 400, "invalid_type", "stream", "expected a boolean"},
		{"store number", `{"model":"m","store":1}`, 400, "invalid_type", "store", "expected a boolean"},
		{"effort", `{"model":"m","reasoning":{"effort":"extreme"}}`, 400, "invalid_value", "reasoning.effort",
			"Invalid value: 'extreme'. Supported values are: 'none', 'minimal', 'low', 'medium', 'high', 'xhigh', and 'max'."},
		{"summary", `{"model":"m","reasoning":{"summary":"short"}}`, 400, "invalid_value", "reasoning.summary",
			"Supported values are: 'auto', 'concise', and 'detailed'."},
		{"bad role", `{"model":"m","input":[{"role":"bot","content":"x"}]}`, 400, "invalid_value", "input[0].role",
			"Invalid value: 'bot'. Supported values are: 'user', 'assistant', 'system', and 'developer'."},
		{"missing role", `{"model":"m","input":[{"content":"x"}]}`, 400, "missing_required_parameter", "input[0].role", ""},
		{"missing content", `{"model":"m","input":[{"role":"user"}]}`, 400, "missing_required_parameter", "input[0].content", ""},
		{"content number", msg(`7`), 400, "invalid_type", "input[0].content", ""},
		{"output_text in user message", msg(`[{"type":"output_text","text":"x"}]`), 400, "invalid_value", "input[0].content[0]",
			"Invalid value: 'output_text'. Supported values are: 'input_text', 'input_image', and 'input_file'."},
		{"input_text in assistant message", `{"model":"m","input":[{"role":"user","content":"a"},{"role":"assistant","content":[{"type":"input_text","text":"x"}]}]}`,
			400, "invalid_value", "input[1].content[0]", "Invalid value: 'input_text'. Supported values are: 'output_text' and 'refusal'."},
		{"part missing text", msg(`[{"type":"input_text"}]`), 400, "missing_required_parameter", "input[0].content[0].text", ""},
		{"part unknown key", msg(`[{"type":"input_text","text":"x","cache":true}]`), 400, "unknown_parameter", "input[0].content[0].cache", ""},
		{"part missing type", msg(`[{"text":"x"}]`), 400, "missing_required_parameter", "input[0].content[0].type", ""},
		{"image detail", msg(`[{"type":"input_image","image_url":"u","detail":"huge"}]`), 400, "invalid_value", "input[0].content[0].detail", ""},
		{"image with no source", msg(`[{"type":"input_image","detail":"auto"}]`), 400, "invalid_value", "input[0].content[0]", "exactly one of"},
		{"image with two sources", msg(`[{"type":"input_image","image_url":"https://x.test/a.png","file_id":"file_1"}]`), 400, "invalid_value", "input[0].content[0]", "exactly one of"},
		{"image url not a url", msg(`[{"type":"input_image","image_url":"a.png"}]`), 400, "invalid_value", "input[0].content[0].image_url", "data URL"},
		{"image data url not base64", msg(`[{"type":"input_image","image_url":"data:image/png,abc"}]`), 400, "invalid_value", "input[0].content[0].image_url", "data URL"},
		{"image data url of a pdf", msg(`[{"type":"input_image","image_url":"data:application/pdf;base64,JVBERi0="}]`), 400, "invalid_value", "input[0].content[0].image_url", "unsupported MIME type 'application/pdf'"},
		{"image data url bad base64", msg(`[{"type":"input_image","image_url":"data:image/png;base64,@@@"}]`), 400, "invalid_value", "input[0].content[0].image_url", "valid base64"},
		{"file with no source", msg(`[{"type":"input_file","filename":"a.pdf"}]`), 400, "invalid_value", "input[0].content[0]", "exactly one of"},
		{"file data without filename", msg(`[{"type":"input_file","file_data":"data:application/pdf;base64,JVBERi0="}]`), 400, "missing_required_parameter", "input[0].content[0].filename", ""},
		{"file data not a data url", msg(`[{"type":"input_file","file_data":"JVBERi0=","filename":"a.pdf"}]`), 400, "invalid_value", "input[0].content[0].file_data", "data URL"},
		{"file data bad base64", msg(`[{"type":"input_file","file_data":"data:application/pdf;base64,%%","filename":"a.pdf"}]`), 400, "invalid_value", "input[0].content[0].file_data", "valid base64"},
		{"breakpoint mode", msg(`[{"type":"input_text","text":"x","prompt_cache_breakpoint":{"mode":"implicit"}}]`), 400,
			"invalid_value", "input[0].content[0].prompt_cache_breakpoint.mode", ""},
		{"user message with id", item(`{"role":"user","id":"m1","content":"x"}`), 400, "unknown_parameter", "input[0].id", ""},
		{"message unknown key", item(`{"role":"user","content":"x","name":"bob"}`), 400, "unknown_parameter", "input[0].name", ""},
		{"message status", item(`{"role":"user","content":"x","status":"done"}`), 400, "invalid_value", "input[0].status", ""},
		{"unknown item type", item(`{"type":"tool_result","id":"x"}`), 400, "invalid_value", "input[0]", "Invalid value: 'tool_result'. Supported values are: 'message', "},
		{"item not object", item(`"hi"`), 400, "invalid_type", "input[0]", ""},
		{"function_call missing call_id", item(`{"type":"function_call","name":"f","arguments":"{}"}`), 400,
			"missing_required_parameter", "input[0].call_id", ""},
		{"function_call arguments object", item(`{"type":"function_call","name":"f","call_id":"c","arguments":{}}`), 400,
			"invalid_type", "input[0].arguments", ""},
		{"function_call_output missing output", item(`{"type":"function_call_output","call_id":"c"}`), 400,
			"missing_required_parameter", "input[0].output", ""},
		{"function_call_output caller", item(`{"type":"function_call_output","call_id":"c","output":"o","caller":{"type":"program"}}`), 400,
			"missing_required_parameter", "input[0].caller.caller_id", ""},
		{"reasoning missing summary", item(`{"type":"reasoning","id":"rs"}`), 400, "missing_required_parameter", "input[0].summary", ""},
		{"reasoning summary type", item(`{"type":"reasoning","id":"rs","summary":[{"type":"text","text":"x"}]}`), 400,
			"invalid_value", "input[0].summary[0].type", ""},
		{"item_reference missing id", item(`{"type":"item_reference"}`), 400, "missing_required_parameter", "input[0].id", ""},
		{"shell_call missing action", item(`{"type":"shell_call","call_id":"c"}`), 400, "missing_required_parameter", "input[0].action", ""},
		{"mcp_call unknown key", item(`{"type":"mcp_call","id":"i","arguments":"{}","name":"n","server_label":"s","extra":1}`), 400,
			"unknown_parameter", "input[0].extra", ""},
		{"max_output_tokens low", `{"model":"m","max_output_tokens":10}`, 400, "integer_below_min_value", "max_output_tokens",
			"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 10 instead."},
		{"max_output_tokens fraction", `{"model":"m","max_output_tokens":20.5}`, 400, "invalid_type", "max_output_tokens", ""},
		{"top_logprobs high", `{"model":"m","top_logprobs":21}`, 400, "integer_above_max_value", "top_logprobs", ""},
		{"temperature high", `{"model":"m","temperature":2.5}`, 400, "decimal_above_max_value", "temperature", "Expected a value <= 2, but got 2.5 instead."},
		{"top_p negative", `{"model":"m","top_p":-0.1}`, 400, "decimal_below_min_value", "top_p", ""},
		{"safety_identifier long", `{"model":"m","safety_identifier":"` + strings.Repeat("a", 65) + `"}`, 400,
			"string_above_max_length", "safety_identifier", "maximum length 64, but got a string with length 65"},
		{"metadata value type", `{"model":"m","metadata":{"k":1}}`, 400, "invalid_type", "metadata.k", ""},
		{"metadata too many", `{"model":"m","metadata":{` + manyPairs(17) + `}}`, 400, "object_above_max_properties", "metadata", ""},
		{"include value", `{"model":"m","include":["usage"]}`, 400, "invalid_value", "include[0]", ""},
		{"truncation", `{"model":"m","truncation":"smart"}`, 400, "invalid_value", "truncation", ""},
		{"service_tier", `{"model":"m","service_tier":"gold"}`, 400, "invalid_value", "service_tier", ""},
		{"stream_options without stream", `{"model":"m","stream_options":{"include_obfuscation":false}}`, 400, "invalid_value", "stream_options", ""},
		{"stream_options unknown", `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, 400, "unknown_parameter", "stream_options.include_usage", ""},
		{"tool missing name", `{"model":"m","tools":[{"type":"function"}]}`, 400, "missing_required_parameter", "tools[0].name", ""},
		{"tool type", `{"model":"m","tools":[{"type":"calculator"}]}`, 400, "invalid_value", "tools[0].type", ""},
		{"tools null", `{"model":"m","tools":null}`, 400, "invalid_type", "tools", ""},
		{"tool_choice string", `{"model":"m","tool_choice":"any"}`, 400, "invalid_value", "tool_choice", ""},
		{"tool_choice function name", `{"model":"m","tool_choice":{"type":"function"}}`, 400, "missing_required_parameter", "tool_choice.name", ""},
		{"text format type", `{"model":"m","text":{"format":{"type":"yaml"}}}`, 400, "invalid_value", "text.format.type", ""},
		{"text verbosity", `{"model":"m","text":{"verbosity":"loud"}}`, 400, "invalid_value", "text.verbosity", ""},
		{"json_schema without schema", `{"model":"m","text":{"format":{"type":"json_schema","name":"n"}}}`, 400,
			"missing_required_parameter", "text.format.schema", ""},
		{"background", `{"model":"m","background":true}`, 400, "unsupported_value", "background", ""},
		{"prompt missing id", `{"prompt":{"version":"1"}}`, 400, "missing_required_parameter", "prompt.id", ""},
		{"prompt variable type", `{"prompt":{"id":"p","variables":{"n":3}}}`, 400, "invalid_type", "prompt.variables.n", ""},
		{"conversation and previous", `{"model":"m","conversation":"conv_1","previous_response_id":"resp_1"}`, 400, "invalid_value", "conversation", ""},
		{"conversation unknown", `{"model":"m","conversation":{"id":"conv_1"}}`, 400, "invalid_value", "conversation", "Conversation with id 'conv_1' not found."},
		{"previous response unknown", `{"model":"m","previous_response_id":"resp_nope"}`, 400, "previous_response_not_found",
			"previous_response_id", "Previous response with id 'resp_nope' not found."},
		{"context_management type", `{"model":"m","context_management":[{"type":"summarize"}]}`, 400, "invalid_value", "context_management[0].type", ""},
		{"moderation model", `{"model":"m","moderation":{}}`, 400, "missing_required_parameter", "moderation.model", ""},
		{"prompt_cache_options ttl", `{"model":"m","prompt_cache_options":{"ttl":"1h"}}`, 400, "invalid_value", "prompt_cache_options.ttl", ""},
		{"reasoning context", `{"model":"m","reasoning":{"context":"all"}}`, 400, "invalid_value", "reasoning.context", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := s.ResponsesCount()
			r := postJSON(t, s, tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			typ, code, param, message := r.errorFields(t)
			if typ != "invalid_request_error" {
				t.Errorf("type %q", typ)
			}
			if tc.code != "" && code != tc.code {
				t.Errorf("code %v, want %q", code, tc.code)
			}
			if tc.param != "" && param != tc.param {
				t.Errorf("param %v, want %q", param, tc.param)
			}
			if tc.param == "" && param != nil {
				t.Errorf("param %v, want null", param)
			}
			if !strings.Contains(message, tc.inMsg) {
				t.Errorf("message %q lacks %q", message, tc.inMsg)
			}
			if s.ResponsesCount() != before+1 {
				t.Error("request not counted")
			}
		})
	}
	for _, r := range s.Requests() {
		if len(r.Events) != 0 {
			t.Errorf("a rejected request streamed %v", r.Events)
		}
	}
}

func manyPairs(n int) string {
	var b []string
	for i := range n {
		b = append(b, fmt.Sprintf(`"k%d":"v"`, i))
	}
	return strings.Join(b, ",")
}

func TestResponsesPreviousResponseID(t *testing.T) {
	s := newTestServer(t, Options{})
	stored := postJSON(t, s, `{"model":"m","input":"a"}`).json(t)["id"].(string)
	unstored := postJSON(t, s, `{"model":"m","input":"a","store":false}`).json(t)["id"].(string)
	if r := postJSON(t, s, `{"model":"m","input":"b","previous_response_id":"`+stored+`"}`); r.status != 200 {
		t.Errorf("stored id: %d %s", r.status, r.body)
	}
	if r := postJSON(t, s, `{"model":"m","input":"b","previous_response_id":"`+unstored+`"}`); r.status != 400 {
		t.Errorf("store:false id: %d %s", r.status, r.body)
	}
	s.Reset()
	if r := postJSON(t, s, `{"model":"m","input":"b","previous_response_id":"`+stored+`"}`); r.status != 400 {
		t.Errorf("after Reset: %d", r.status)
	}
}

func TestResponsesHeadersAndMethod(t *testing.T) {
	s := newTestServer(t, Options{APIKey: "sk-other"})
	body := `{"model":"m","input":"x"}`
	r := postJSON(t, s, body)
	if typ, code, _, msg := r.errorFields(t); r.status != 401 || code != "invalid_api_key" || typ != "invalid_request_error" || strings.Contains(msg, DefaultAPIKey) {
		t.Errorf("wrong key: %d %s", r.status, r.body)
	}
	r = postJSON(t, s, body, withoutHeader("Authorization"))
	if r.status != 401 {
		t.Errorf("no key: %d", r.status)
	}
	auth := withHeader("Authorization", "Bearer sk-other")
	if r := postJSON(t, s, body, auth); r.status != 200 {
		t.Errorf("right key, no beta header: %d %s", r.status, r.body)
	}
	r = postJSON(t, s, body, auth, withHeader("Content-Type", "text/plain"))
	if _, _, _, msg := r.errorFields(t); r.status != 400 || !strings.Contains(msg, "Content-Type") {
		t.Errorf("content type: %d %s", r.status, r.body)
	}
	if r := postJSON(t, s, body, auth, withHeader("Content-Type", "application/json; charset=utf-8")); r.status != 200 {
		t.Errorf("json with charset: %d", r.status)
	}
	big := `{"model":"m","input":"` + strings.Repeat("a", MaxBodyBytes) + `"}`
	if r := postJSON(t, s, big, auth); r.status != 413 {
		t.Errorf("too large: %d", r.status)
	}
	g := mustSend(t, newClient(t, 5*time.Second), "GET", s.URL()+"/responses", "", auth)
	if _, code, _, _ := g.errorFields(t); g.status != 405 || g.header.Get("Allow") != "POST" || code != "method_not_allowed" {
		t.Errorf("GET: %d allow %q %s", g.status, g.header.Get("Allow"), g.body)
	}
	if s.ResponsesCount() != 6 || s.CreateCount() != 0 {
		t.Errorf("counts: responses %d creates %d", s.ResponsesCount(), s.CreateCount())
	}
}

func TestResponsesErrorBeforeStream(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{Status: 429, Header: map[string]string{"Retry-After": "7", "retry-after-ms": "6500"}})
	s.ScriptResponse(ResponseScript{Status: 500, Header: map[string]string{"x-should-retry": "true"}})
	s.ScriptResponse(ResponseScript{Status: 503})
	s.ScriptResponse(ResponseScript{Status: 404})
	s.ScriptResponse(ResponseScript{Status: 400, ErrorCode: "context_length_exceeded", ErrorMessage: "Too long."})

	body := `{"model":"gpt-x","input":"x","stream":true}`
	r := postJSON(t, s, body, withHeader("Authorization", "Bearer wrong")) // faults ignore the key
	typ, code, _, _ := r.errorFields(t)
	if r.status != 429 || r.header.Get("Retry-After") != "7" || r.header.Get("retry-after-ms") != "6500" ||
		code != "rate_limit_exceeded" || typ != "requests" {
		t.Errorf("429: %d %v %s", r.status, r.header, r.body)
	}
	r = postJSON(t, s, body)
	if typ, _, _, _ := r.errorFields(t); r.status != 500 || r.header.Get("x-should-retry") != "true" || typ != "server_error" {
		t.Errorf("500: %d %v %s", r.status, r.header, r.body)
	}
	if r = postJSON(t, s, body); r.status != 503 {
		t.Errorf("503: %d", r.status)
	}
	r = postJSON(t, s, body)
	if _, code, _, msg := r.errorFields(t); r.status != 404 || code != "model_not_found" || !strings.Contains(msg, "'gpt-x'") {
		t.Errorf("404: %d %s", r.status, r.body)
	}
	r = postJSON(t, s, body)
	if _, code, _, msg := r.errorFields(t); r.status != 400 || code != "context_length_exceeded" || msg != "Too long." {
		t.Errorf("override: %d %s", r.status, r.body)
	}
	for _, rec := range s.Requests() {
		if len(rec.Events) != 0 || rec.Responses == nil {
			t.Errorf("record %+v", rec)
		}
	}
	if frames := streamAll(t, s, body); len(frames) != 11 {
		t.Errorf("after the faults: %d events", len(frames))
	}
}

func TestResponsesFailedMidStream(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{Text: "one two three four", Fault: StreamFaultFailed, After: 2,
		ErrorCode: "rate_limit_exceeded", ErrorMessage: "Slow down."})
	frames := streamAll(t, s, `{"model":"m","input":"x","stream":true}`)
	if got, want := eventNames(frames), append(textEvents(2), "response.failed"); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	r := obj(t, frames[len(frames)-1].data["response"], "response")
	if r["status"] != "failed" || !jsonEqual(r["error"], map[string]any{"code": "rate_limit_exceeded", "message": "Slow down."}) ||
		r["usage"] != nil {
		t.Errorf("failed response %v", r)
	}
	out := r["output"].([]any)
	if len(out) != 1 || obj(t, out[0], "item")["status"] != "incomplete" ||
		obj(t, obj(t, out[0], "item")["content"].([]any)[0], "part")["text"] != "one two" {
		t.Errorf("partial output %v", out)
	}

	s.ScriptResponse(ResponseScript{Fault: StreamFaultFailed})
	if r := postJSON(t, s, `{"model":"m","input":"x"}`); r.status != 500 {
		t.Errorf("non-streaming failure: %d %s", r.status, r.body)
	}
}

func TestResponsesErrorEventMidStream(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{Text: "a b c", Fault: StreamFaultErrorEvent, After: 1})
	frames := streamAll(t, s, `{"model":"m","input":"x","stream":true}`)
	if got, want := eventNames(frames), append(textEvents(1), "error"); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	e := frames[len(frames)-1].data
	if e["code"] != "server_error" || e["param"] != nil || !strings.Contains(e["message"].(string), "server had an error") {
		t.Errorf("error event %v", e)
	}
	// After beyond the answer: every delta, then the error instead of the done events.
	s.ScriptResponse(ResponseScript{Text: "a b", Fault: StreamFaultErrorEvent, After: 99})
	frames = streamAll(t, s, `{"model":"m","input":"x","stream":true}`)
	if got, want := eventNames(frames), append(textEvents(2), "error"); !slices.Equal(got, want) {
		t.Errorf("late error: %v", got)
	}
}

// readFrames reads exactly n frames or fails.
func readFrames(t *testing.T, sr *sseReader, n int) []sseFrame {
	t.Helper()
	var out []sseFrame
	for range n {
		f, err := sr.read()
		if err != nil {
			t.Fatalf("after %d frames: %v", len(out), err)
		}
		out = append(out, f)
	}
	return out
}

func TestResponsesStallUntilClientLeaves(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{Text: "a b c", Fault: StreamFaultStall, After: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := postResponses(t, ctx, newClient(t, 0), s, `{"model":"m","input":"x","stream":true}`)
	sr := newSSEReader(t, resp.Body)
	readFrames(t, sr, 5)
	if s.ClientsGone() != 0 {
		t.Fatal("client counted gone while still reading")
	}
	cancel() // the stop button
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	if err := s.WaitClientsGone(wctx, 1); err != nil {
		t.Fatalf("the fake never saw the client leave: %v", err)
	}
	rec := s.Requests()[0]
	if !rec.ClientGone || !slices.Equal(rec.Events, textEvents(1)) {
		t.Errorf("record gone %v events %v", rec.ClientGone, rec.Events)
	}
}

func TestResponsesStallReleasedByClose(t *testing.T) {
	s := New(Options{})
	s.ScriptResponse(ResponseScript{Fault: StreamFaultStall})
	resp := postResponses(t, context.Background(), newClient(t, 0), s, `{"model":"m","input":"x","stream":true}`)
	readFrames(t, newSSEReader(t, resp.Body), 4)
	closeWithin(t, s, 2*time.Second)
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("stalled stream ended cleanly after Close")
	}
	if rec := s.Requests()[0]; rec.ClientGone || s.ClientsGone() != 0 {
		t.Error("the server closing counted as the client leaving")
	}
}

func TestResponsesResetMidStream(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{Text: "a b c d", Fault: StreamFaultReset, After: 2})
	resp := postResponses(t, context.Background(), newClient(t, 10*time.Second), s, `{"model":"m","input":"x","stream":true}`)
	frames, err := newSSEReader(t, resp.Body).readAll()
	if err == nil {
		t.Fatal("reset stream ended cleanly")
	}
	if got := eventNames(frames); !slices.Equal(got, textEvents(2)) {
		t.Errorf("events before the reset %v", got)
	}
	s.ScriptResponse(ResponseScript{Fault: StreamFaultReset})
	if _, err := send(t, newClient(t, 5*time.Second), "POST", s.URL()+"/responses", `{"model":"m","input":"x"}`); err == nil {
		t.Error("non-streaming reset answered")
	}
	if frames := streamAll(t, s, `{"model":"m","input":"x","stream":true}`); len(frames) != 11 {
		t.Errorf("after resets: %d events", len(frames))
	}
}

func TestResponsesHugeDelta(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{Text: "a b", Fault: StreamFaultHugeDelta, After: 1, HugeBytes: 1 << 20})
	frames := streamAll(t, s, `{"model":"m","input":"x","stream":true}`)
	if got, want := eventNames(frames), append(textEvents(3), doneEvents("response.completed")...); !slices.Equal(got, want) {
		t.Fatalf("events %v", got)
	}
	if d := frames[5].data["delta"].(string); len(d) != 1<<20 || strings.Trim(d, "x") != "" {
		t.Errorf("huge delta of %d bytes", len(d))
	}
	if text := frames[len(frames)-4].data["text"].(string); text != "a"+strings.Repeat("x", 1<<20)+" b" {
		t.Errorf("done text of %d bytes", len(text))
	}
}

// The event interval and slow deltas: only lower bounds are checked (a
// loaded machine can only make the stream slower), and long waits are
// shown to end when the client leaves.
func TestResponsesEventIntervalAndSlowDeltas(t *testing.T) {
	const d = 20 * time.Millisecond
	s := newTestServer(t, Options{EventInterval: d})
	start := time.Now()
	frames := streamAll(t, s, `{"model":"m","input":"x","stream":true}`) // "You said: x": 3 deltas, 11 events
	if elapsed := time.Since(start); elapsed < time.Duration(len(frames)-1)*d {
		t.Errorf("%d events in %v, faster than one every %v", len(frames), elapsed, d)
	}

	s.SetEventInterval(0)
	s.ScriptResponse(ResponseScript{DeltaDelay: 30 * time.Millisecond, Deltas: 4, Text: "abcdefgh"})
	start = time.Now()
	frames = streamAll(t, s, `{"model":"m","input":"x","stream":true}`)
	if elapsed := time.Since(start); elapsed < 4*30*time.Millisecond || len(frames) != 12 {
		t.Errorf("4 slow deltas in %v (%d events)", elapsed, len(frames))
	}

	for _, tc := range []struct {
		name  string
		setup func()
		read  int
	}{
		{"interval", func() { s.SetEventInterval(time.Hour) }, 1},
		{"delta delay", func() { s.SetEventInterval(0); s.ScriptResponse(ResponseScript{DeltaDelay: time.Hour}) }, 4},
		{"script delay", func() { s.ScriptResponse(ResponseScript{Delay: time.Hour}) }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			gone := s.ClientsGone()
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			sent := make(chan struct{})
			trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { close(sent) }}
			go func() {
				defer close(done)
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), "POST", s.URL()+"/responses", strings.NewReader(`{"model":"m","input":"x","stream":true}`))
				req.Header.Set("Authorization", "Bearer "+DefaultAPIKey)
				req.Header.Set("Content-Type", "application/json")
				resp, err := newClient(t, 0).Do(req)
				if err != nil {
					return // cancelled before the headers (script delay)
				}
				defer resp.Body.Close()
				sr := newSSEReader(t, resp.Body)
				for range tc.read {
					if _, err := sr.read(); err != nil {
						t.Errorf("read: %v", err)
						return
					}
				}
				cancel()
			}()
			if tc.read == 0 {
				<-sent // the request is on the wire: the server will see it
				cancel()
			}
			wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer wcancel()
			if err := s.WaitClientsGone(wctx, gone+1); err != nil {
				t.Fatalf("wait not ended by the client leaving: %v", err)
			}
			cancel()
			<-done
		})
	}
}

func TestResponsesRequestsRecordingIsACopy(t *testing.T) {
	s := newTestServer(t, Options{})
	streamAll(t, s, streamBody)
	postJSON(t, s, `{"model":"m","input":5}`) // invalid: counted, no parsed body
	reqs := s.Requests()
	if len(reqs) != 2 || s.ResponsesCount() != 2 || reqs[1].Responses != nil || reqs[1].Status != 400 {
		t.Fatalf("records %+v", reqs)
	}
	r := reqs[0].Responses
	if r.Model != "gpt-5-mini" || *r.Store || *r.MaxOutputTokens != 2048 || *r.Instructions != "Be brief." ||
		len(r.Input) != 3 || r.Input[2].Content[0] != (ContentPart{Type: "input_text", Text: "hello there"}) ||
		reqs[0].Header.Get("Authorization") != "Bearer "+DefaultAPIKey || !strings.Contains(string(reqs[0].Body), "hello there") {
		t.Errorf("parsed %+v", r)
	}
	// Mutating what Requests returned leaves the record alone.
	r.Raw["model"] = "changed"
	r.Input[0].Raw["role"] = "changed"
	r.Input[2].Content[0].Text = "changed"
	reqs[0].Events[0] = "changed"
	again := s.Requests()[0]
	if again.Responses.Raw["model"] != "gpt-5-mini" || again.Responses.Input[0].Raw["role"] != "user" ||
		again.Responses.Input[2].Content[0].Text != "hello there" || again.Events[0] != "response.created" {
		t.Error("Requests shares memory with the record")
	}
	if lr := s.LastResponses(); lr != nil {
		t.Errorf("LastResponses after an invalid body: %+v", lr)
	}
	s.ScriptResponse(ResponseScript{Text: "never used"})
	s.Reset()
	if len(s.Requests()) != 0 || s.ResponsesCount() != 0 {
		t.Error("Reset kept records")
	}
	if frames := streamAll(t, s, `{"model":"m","input":"x","stream":true}`); frames[len(frames)-4].data["text"] != "You said: x" {
		t.Error("Reset kept the script")
	}
}

func TestResponsesConcurrentStreamsAndClose(t *testing.T) {
	s := New(Options{EventInterval: time.Millisecond})
	var wg sync.WaitGroup
	ids := make([]string, 16)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			frames := streamAll(t, s, fmt.Sprintf(`{"model":"m","input":"n%d","stream":true}`, i))
			last := obj(t, frames[len(frames)-1].data["response"], "response")
			ids[i], _ = last["id"].(string)
			if got := frames[len(frames)-4].data["text"]; got != fmt.Sprintf("You said: n%d", i) {
				t.Errorf("stream %d text %v", i, got)
			}
		}()
	}
	wg.Wait()
	slices.Sort(ids)
	if len(slices.Compact(ids)) != 16 {
		t.Errorf("response ids not unique: %v", ids)
	}
	// Open streams waiting on a long interval end when the server closes.
	s.SetEventInterval(time.Hour)
	for range 4 {
		resp := postResponses(t, context.Background(), newClient(t, 0), s, `{"model":"m","input":"x","stream":true}`)
		readFrames(t, newSSEReader(t, resp.Body), 1)
	}
	closeWithin(t, s, 2*time.Second)
	if s.ClientsGone() != 0 {
		t.Errorf("Close counted %d clients gone", s.ClientsGone())
	}
}

// The sessions routes keep their own rules next to the Responses route.
func TestResponsesLeaveSessionsAlone(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{Status: 500})
	if r := mustSend(t, newClient(t, 5*time.Second), "POST", s.URL()+"/chatkit/sessions", minimalBody); r.status != 200 {
		t.Errorf("session create with a response script queued: %d", r.status)
	}
	s.Inject(Fault{Status: 500})
	if r := postJSON(t, s, `{"model":"m","input":"x"}`); r.status != 500 {
		t.Errorf("the response script was not kept for /v1/responses: %d", r.status)
	}
	if r := postJSON(t, s, `{"model":"m","input":"x"}`); r.status != 200 {
		t.Errorf("a session fault applied to /v1/responses: %d", r.status)
	}
	if s.CreateCount() != 1 || s.ResponsesCount() != 2 || s.LastCreate() == nil {
		t.Errorf("counts %d %d", s.CreateCount(), s.ResponsesCount())
	}
}

package chatkit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// agentShapeTokens flattens a JSON document into its tokens in order,
// with the values of id, thread_id, item_id and created_at replaced by a
// placeholder (those are ours or the clock's, never the reference's).
func agentShapeTokens(t *testing.T, doc string) []string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.UseNumber()
	var out []string
	type frame struct {
		object bool
		key    bool // the next string is a key
	}
	var stack []frame
	lastKey := ""
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("not JSON: %v: %s", err, doc)
		}
		top := len(stack) - 1
		if d, ok := tok.(json.Delim); ok {
			if d == '{' || d == '[' {
				if top >= 0 && stack[top].object {
					stack[top].key = true
				}
				stack = append(stack, frame{object: d == '{', key: d == '{'})
			} else {
				stack = stack[:top]
				if top-1 >= 0 && stack[top-1].object {
					stack[top-1].key = true
				}
			}
			out = append(out, d.String())
			continue
		}
		if top >= 0 && stack[top].object && stack[top].key {
			lastKey = tok.(string)
			stack[top].key = false
			out = append(out, "key:"+lastKey)
			continue
		}
		v := fmt.Sprintf("%T:%v", tok, tok)
		if top >= 0 && stack[top].object {
			stack[top].key = true
			switch lastKey {
			case "id", "thread_id", "item_id", "created_at":
				v = "ours"
			}
		}
		out = append(out, v)
	}
}

// agentSameShape fails unless got has the reference's fields, in its
// order, with its values (ids and times aside).
func agentSameShape(t *testing.T, what, reference, got string) {
	t.Helper()
	r, g := agentShapeTokens(t, reference), agentShapeTokens(t, got)
	if !reflect.DeepEqual(r, g) {
		t.Errorf("%s differs from the reference:\n ref %s\n got %s", what, reference, got)
	}
}

// agentTestTime is the §1.3 capture's thread time, in UTC.
var agentTestTime = time.Date(2026, 12, 1, 22, 8, 58, 733091000, time.UTC)

// TestAgentEncodingMatchesReference builds each event the agent emits and
// compares it with the reference server's captured bytes (§1.3, §5.2,
// §5.8–5.10, §5.16, A.2, A.4).
func TestAgentEncodingMatchesReference(t *testing.T) {
	thread := &agentThread{ID: "thr_ab0b7480", CreatedAt: agentTestTime}
	titled := &agentThread{ID: "thr_ab0b7480", CreatedAt: agentTestTime, Title: "Greeting"}
	req, err := decodeAgentRequest([]byte(`{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"Hi"}],"attachments":[],"inference_options":{}}}}`), agentRequestLimits{})
	if err != nil {
		t.Fatal(err)
	}
	user := newAgentUserMessage("msg_8c3c9fbf", "thr_ab0b7480", agentTestTime, req.Input)
	req2, err := decodeAgentRequest([]byte(`{"type":"threads.add_user_message","params":{"thread_id":"thr_ab0b7480","input":{"content":[{"type":"input_text","text":"again"}],"attachments":[],"quoted_text":null,"inference_options":{"model":"gpt-x","tool_choice":{"id":"search"}}}}}`), agentRequestLimits{})
	if err != nil {
		t.Fatal(err)
	}
	user2 := newAgentUserMessage("msg_2", "thr_ab0b7480", agentTestTime, req2.Input)
	hello := &agentAssistantMessage{agentItemHeader{"msg_resp01", "thr_ab0b7480", agentTestTime}, []agentAssistantContent{{Text: "Hello"}}}
	wf := &agentWorkflowItem{agentItemHeader: agentItemHeader{"wf_1", "thr_79593b23", agentTestTime}, Kind: "reasoning", Tasks: []agentThought{{"Thinking hard"}}, Duration: 3}

	frame := func(build func(f *agentFrames)) string {
		var f agentFrames
		build(&f)
		b := f.Bytes()
		if !bytes.HasPrefix(b, []byte("data: ")) || !bytes.HasSuffix(b, []byte("\n\n")) || bytes.Count(b, []byte("\n")) != 2 {
			t.Fatalf("not one SSE frame: %q", b)
		}
		return string(b[len("data: ") : len(b)-2])
	}
	cases := []struct {
		name, reference, got string
	}{
		{"thread.created", `{"type":"thread.created","thread":{"id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.733091","status":{"type":"active"},"metadata":{},"items":{"data":[],"has_more":false}}}`,
			frame(func(f *agentFrames) { f.threadCreated(thread) })},
		{"user message done", `{"type":"thread.item.done","item":{"id":"msg_8c3c9fbf","thread_id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.740099","type":"user_message","content":[{"type":"input_text","text":"Hi"}],"attachments":[],"inference_options":{}}}`,
			frame(func(f *agentFrames) { f.itemDone(user) })},
		{"user message with inference options", `{"type":"thread.item.done","item":{"id":"msg_x","thread_id":"thr_ab0b7480","created_at":"x","type":"user_message","content":[{"type":"input_text","text":"again"}],"attachments":[],"inference_options":{"tool_choice":{"id":"search"},"model":"gpt-x"}}}`,
			frame(func(f *agentFrames) { f.itemDone(user2) })},
		{"stream_options", `{"type":"stream_options","stream_options":{"allow_cancel":true}}`,
			frame(func(f *agentFrames) { f.streamOptions(true) })},
		{"assistant added", `{"type":"thread.item.added","item":{"id":"msg_resp01","thread_id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.749357","type":"assistant_message","content":[]}}`,
			frame(func(f *agentFrames) {
				f.itemAdded(&agentAssistantMessage{agentItemHeader{"msg_resp01", "thr_ab0b7480", agentTestTime}, []agentAssistantContent{}})
			})},
		{"part added", `{"type":"thread.item.updated","item_id":"msg_resp01","update":{"type":"assistant_message.content_part.added","content_index":0,"content":{"annotations":[],"text":"","type":"output_text"}}}`,
			frame(func(f *agentFrames) { f.partAdded("msg_resp01", 0, &agentAssistantContent{}) })},
		{"text delta", `{"type":"thread.item.updated","item_id":"msg_resp01","update":{"type":"assistant_message.content_part.text_delta","content_index":0,"delta":"Hel"}}`,
			frame(func(f *agentFrames) { f.textDelta("msg_resp01", 0, "Hel") })},
		{"part done", `{"type":"thread.item.updated","item_id":"msg_resp01","update":{"type":"assistant_message.content_part.done","content_index":0,"content":{"annotations":[],"text":"Hello","type":"output_text"}}}`,
			frame(func(f *agentFrames) { f.partDone("msg_resp01", 0, &agentAssistantContent{Text: "Hello"}) })},
		{"assistant done", `{"type":"thread.item.done","item":{"id":"msg_resp01","thread_id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.765137","type":"assistant_message","content":[{"annotations":[],"text":"Hello","type":"output_text"}]}}`,
			frame(func(f *agentFrames) { f.itemDone(hello) })},
		{"thread.updated", `{"type":"thread.updated","thread":{"title":"Greeting","id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.733091","status":{"type":"active"},"metadata":{},"items":{"data":[],"has_more":false}}}`,
			frame(func(f *agentFrames) { f.threadUpdated(titled) })},
		{"thread.updated locked", `{"type":"thread.updated","thread":{"title":"Renamed","id":"thr_1","created_at":"2026-01-02T03:04:05.678000","status":{"type":"locked","reason":"Escalated"},"metadata":{},"items":{"data":[],"has_more":false}}}`,
			frame(func(f *agentFrames) {
				f.threadUpdated(&agentThread{ID: "thr_1", Title: "Renamed", CreatedAt: agentTestTime, Status: json.RawMessage(`{"type":"locked","reason":"Escalated"}`)})
			})},
		{"custom error", `{"type":"error","code":"custom","message":"Quota exceeded","allow_retry":false}`,
			frame(func(f *agentFrames) { f.errorEvent(agentStreamError{"custom", "Quota exceeded", false}) })},
		{"stream error", `{"type":"error","code":"stream.error","allow_retry":true}`,
			frame(func(f *agentFrames) { f.errorEvent(agentStreamError{Code: "stream.error", AllowRetry: true}) })},
		{"progress", `{"type":"progress_update","icon":"search","text":"Thinking..."}`,
			frame(func(f *agentFrames) { f.progress("search", "Thinking...") })},
		{"removed", `{"type":"thread.item.removed","item_id":"msg_x"}`,
			frame(func(f *agentFrames) { f.itemRemoved("msg_x") })},
		{"task added", `{"type":"thread.item.updated","item_id":"wf_1","update":{"type":"workflow.task.added","task_index":0,"task":{"status_indicator":"none","type":"thought","content":"Thinking"}}}`,
			frame(func(f *agentFrames) { f.taskAdded("wf_1", 0, &agentThought{"Thinking"}) })},
		{"task updated", `{"type":"thread.item.updated","item_id":"wf_1","update":{"type":"workflow.task.updated","task_index":0,"task":{"status_indicator":"none","type":"thought","content":"Thinking hard"}}}`,
			frame(func(f *agentFrames) { f.taskUpdated("wf_1", 0, &agentThought{"Thinking hard"}) })},
		{"workflow done", `{"type":"thread.item.done","item":{"id":"wf_1","thread_id":"thr_79593b23","created_at":"…","type":"workflow","workflow":{"type":"reasoning","tasks":[{"status_indicator":"none","type":"thought","content":"Thinking hard"}],"summary":{"duration":3},"expanded":false}}}`,
			frame(func(f *agentFrames) { f.itemDone(wf) })},
		{"file annotation", `{"type":"thread.item.updated","item_id":"m","update":{"type":"assistant_message.content_part.annotation_added","content_index":0,"annotation_index":1,"annotation":{"type":"annotation","source":{"title":"Q3 report","type":"file","filename":"report.pdf"},"index":42}}}`,
			frame(func(f *agentFrames) {
				f.annotationAdded("m", 0, 1, &agentAnnotation{SourceType: "file", Title: "Q3 report", Filename: "report.pdf", Index: 42})
			})},
		{"url annotation", `{"type":"thread.item.updated","item_id":"m","update":{"type":"assistant_message.content_part.annotation_added","content_index":0,"annotation_index":0,"annotation":{"type":"annotation","source":{"title":"A","type":"url","url":"https://example.test/a"},"index":7}}}`,
			frame(func(f *agentFrames) {
				f.annotationAdded("m", 0, 0, &agentAnnotation{SourceType: "url", Title: "A", URL: "https://example.test/a", Index: 7})
			})},
		{"get_by_id", `{"title":"Greeting","id":"thr_4c7e5a96","created_at":"2026-12-01T22:09:04.334887","status":{"type":"active"},"metadata":{},"items":{"data":[{"id":"msg_8c3c9fbf","thread_id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.740099","type":"user_message","content":[{"type":"input_text","text":"Hi"}],"attachments":[],"inference_options":{}},{"id":"msg_resp01","thread_id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.765137","type":"assistant_message","content":[{"annotations":[],"text":"Hello","type":"output_text"}]}],"has_more":false}}`,
			string(titled.appendJSON(nil, []json.RawMessage{user.appendJSON(nil), hello.appendJSON(nil)}, false, ""))},
		{"threads.list", `{"data":[{"title":"Greeting","id":"thr_4c7e5a96","created_at":"…","status":{"type":"active"},"metadata":{},"items":{"data":[],"has_more":false}}],"has_more":false}`,
			string(appendAgentThreadsPage(nil, []agentThread{*titled}, false, "thr_ignored"))},
		{"items.list with more", `{"data":[{"id":"msg_8c3c9fbf","thread_id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.740099","type":"user_message","content":[{"type":"input_text","text":"Hi"}],"attachments":[],"inference_options":{}},{"id":"msg_resp01","thread_id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.765137","type":"assistant_message","content":[{"annotations":[],"text":"Hello","type":"output_text"}]}],"has_more":true,"after":"msg_resp01"}`,
			string(appendAgentItemsPage(nil, []json.RawMessage{user.appendJSON(nil), hello.appendJSON(nil)}, true, "msg_resp01"))},
	}
	for _, c := range cases {
		agentSameShape(t, c.name, c.reference, c.got)
		if !json.Valid([]byte(c.got)) {
			t.Errorf("%s: not JSON: %s", c.name, c.got)
		}
	}

	// The one value shape that differs on purpose: RFC 3339 in UTC.
	if got := string(appendAgentTime(nil, agentTestTime.In(time.FixedZone("x", 3600)))); got != `"2026-12-01T22:08:58.733091Z"` {
		t.Errorf("time: %s", got)
	}
	// Hidden items never reach the client.
	var f agentFrames
	f.itemDone(&agentHiddenContext{agentItemHeader{"shcx_1", "thr_1", agentTestTime}, "note"})
	if f.Len() != 0 {
		t.Errorf("a hidden item was sent: %s", f.Bytes())
	}
}

// TestAgentStringEncoding: appendAgentString writes what encoding/json
// writes with HTML escaping off, for any string, and valid JSON.
func TestAgentStringEncoding(t *testing.T) {
	strs := []string{"", "plain", `quote " backslash \ slash /`, "<b>&amp;</b>", "tab\tnl\ncr\rbs\bff\f\x00\x01\x1f\x7f",
		"é中😀", "\u2028\u2029", "\xff\xfe", "a\xc3", "\xed\xa0\x80", "\ufffd", strings.Repeat("ab\"", 100)}
	for i := 0; i < 256; i++ {
		strs = append(strs, string([]byte{byte(i)}), "x"+string(rune(i))+"y")
	}
	for _, s := range strs {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		got := appendAgentString(nil, s)
		if string(got)+"\n" != want.String() {
			t.Errorf("%q: got %s, encoding/json %s", s, got, want.String())
		}
	}
}

// agentRequestCase is a request body and what it decodes to.
type agentRequestCase struct {
	name string
	body string
	want agentRequest
}

func agentInput(parts ...agentUserContent) agentUserInput {
	return agentUserInput{Content: parts}
}

func agentText(s string) agentUserContent { return agentUserContent{Type: "input_text", Text: s} }

var agentGoodRequests = []agentRequestCase{
	{"create (captured)", `{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"Hi"}],"attachments":[],"inference_options":{}}}}`,
		agentRequest{Type: agentThreadsCreate, Input: agentInput(agentText("Hi"))}},
	{"add_user_message (captured)", `{"type":"threads.add_user_message","params":{"thread_id":"thr_ab0b7480","input":{"content":[{"type":"input_text","text":"again"}],"attachments":[],"quoted_text":null,"inference_options":{"model":"gpt-x","tool_choice":{"id":"search"}}}}}`,
		agentRequest{Type: agentThreadsAddUserMessage, ThreadID: "thr_ab0b7480", Input: agentUserInput{Content: []agentUserContent{agentText("again")}, InferenceOptions: agentInferenceOptions{ToolChoiceID: "search", Model: "gpt-x"}}}},
	{"tags and quoted text", ` {"metadata":{"x":1},"params":{"input":{"quoted_text":"the second paragraph","inference_options":{"tool_choice":null,"model":null},"attachments":[],"content":[{"type":"input_text","text":"Compare "},{"type":"input_tag","id":"doc_7","text":"Roadmap","data":{ "doc" : "7", "n":[1, 2] },"group":"Docs","interactive":true},{"type":"input_tag","id":"p","text":"Ann","data":{},"group":null}]}},"type":"threads.create"} `,
		agentRequest{Type: agentThreadsCreate, Input: agentUserInput{Content: []agentUserContent{agentText("Compare "),
			{Type: "input_tag", ID: "doc_7", Text: "Roadmap", Data: json.RawMessage(`{"doc":"7","n":[1,2]}`), Group: "Docs", Interactive: true},
			{Type: "input_tag", ID: "p", Text: "Ann", Data: json.RawMessage(`{}`)}}, QuotedText: "the second paragraph"}}},
	{"retry (captured)", `{"type":"threads.retry_after_item","params":{"thread_id":"thr_4c7e5a96","item_id":"msg_05fc48d3"}}`,
		agentRequest{Type: agentThreadsRetryAfterItem, ThreadID: "thr_4c7e5a96", ItemID: "msg_05fc48d3"}},
	{"transcribe (captured)", `{"type":"input.transcribe","params":{"audio_base64":"AAECAw==","mime_type":"audio/webm;codecs=opus"}}`,
		agentRequest{Type: agentInputTranscribe, Audio: agentAudio{Base64: []byte("AAECAw=="), MediaType: "audio/webm", Extension: "webm"}}},
	{"transcribe escaped", `{"params":{"mime_type":"AUDIO/MP4","audio_base64":"AAEC\/w=="},"type":"input.transcribe"}`,
		agentRequest{Type: agentInputTranscribe, Audio: agentAudio{Base64: []byte("AAEC/w=="), MediaType: "audio/mp4", Extension: "mp4"}}},
	{"get_by_id", `{"type":"threads.get_by_id","params":{"thread_id":"thr_1"}}`,
		agentRequest{Type: agentThreadsGetByID, ThreadID: "thr_1"}},
	{"list as the client sends it", `{"type":"threads.list","params":{"limit":9999,"order":"desc"}}`,
		agentRequest{Type: agentThreadsList, Limit: agentMaxPageLimit, Order: "desc"}},
	{"list defaults", `{"type":"threads.list","params":{}}`,
		agentRequest{Type: agentThreadsList, Limit: agentDefaultPageLimit, Order: "desc"}},
	{"list null and zero", `{"type":"threads.list","params":{"limit":0,"after":null}}`,
		agentRequest{Type: agentThreadsList, Limit: agentDefaultPageLimit, Order: "desc"}},
	{"list empty cursor", `{"type":"threads.list","params":{"limit":null,"after":""}}`,
		agentRequest{Type: agentThreadsList, Limit: agentDefaultPageLimit, Order: "desc"}},
	{"list huge limit", `{"type":"threads.list","params":{"limit":1e400,"order":"asc","after":"thr_9"}}`,
		agentRequest{Type: agentThreadsList, Limit: agentMaxPageLimit, Order: "asc", After: "thr_9"}},
	{"list integral float", `{"type":"threads.list","params":{"limit":5.0,"title":5,"thread_id":false}}`,
		agentRequest{Type: agentThreadsList, Limit: 5, Order: "desc"}},
	{"items.list", `{"type":"items.list","params":{"thread_id":"thr_1","limit":2,"order":"asc","after":"msg_2"}}`,
		agentRequest{Type: agentItemsList, ThreadID: "thr_1", Limit: 2, Order: "asc", After: "msg_2"}},
	{"update", `{"type":"threads.update","params":{"thread_id":"thr_1","title":"Trip planning"}}`,
		agentRequest{Type: agentThreadsUpdate, ThreadID: "thr_1", Title: "Trip planning"}},
	{"update clears title", `{"type":"threads.update","params":{"thread_id":"thr_1","title":""}}`,
		agentRequest{Type: agentThreadsUpdate, ThreadID: "thr_1"}},
	{"delete", `{"type":"threads.delete","params":{"thread_id":"thr_1"}}`,
		agentRequest{Type: agentThreadsDelete, ThreadID: "thr_1"}},
	{"feedback", `{"type":"items.feedback","params":{"thread_id":"thr_1","item_ids":["msg_1","msg_2"],"kind":"negative"}}`,
		agentRequest{Type: agentItemsFeedback, ThreadID: "thr_1", ItemIDs: []string{"msg_1", "msg_2"}, Kind: "negative"}},
	{"extra top-level fields (runme's chatkit_state)", `{"type":"threads.get_by_id","chatkit_state":{"a":[1]},"Type":"threads.delete","params":{"thread_id":"thr_1","Thread_ID":"thr_2"},"metadata":null}`,
		agentRequest{Type: agentThreadsGetByID, ThreadID: "thr_1"}},
	{"escaped key and value", `{"t\u0079pe":"threads.get_by_id","params":{"thread_id":"thr_\u00e9\n"}}`,
		agentRequest{Type: agentThreadsGetByID, ThreadID: "thr_é\n"}},
	{"a message at the length limit", `{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"` + strings.Repeat("é", 40) + `"}],"attachments":[],"inference_options":{}}}}`,
		agentRequest{Type: agentThreadsCreate, Input: agentInput(agentText(strings.Repeat("é", 40)))}},
}

// agentTestLimits are the limits the request tests decode under.
var agentTestLimits = agentRequestLimits{MaxInput: 40}

func TestAgentRequestDecode(t *testing.T) {
	for _, c := range agentGoodRequests {
		got, err := decodeAgentRequest([]byte(c.body), agentTestLimits)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, c.want)
		}
		if got.streaming() != (c.want.Type == agentThreadsCreate || c.want.Type == agentThreadsAddUserMessage || c.want.Type == agentThreadsRetryAfterItem) {
			t.Errorf("%s: streaming() = %v", c.name, got.streaming())
		}
		// The canonical encoding reads back the same.
		again, err := decodeAgentRequest(got.appendJSON(nil), agentTestLimits)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Errorf("%s: re-encoded %s reads back as %+v, %v", c.name, got.appendJSON(nil), again, err)
		}
	}
}

func agentCreateWith(input string) string {
	return `{"type":"threads.create","params":{"input":` + input + `}}`
}

func TestAgentRequestErrors(t *testing.T) {
	text := `[{"type":"input_text","text":"Hi"}]`
	cases := []struct {
		name  string
		body  string
		kind  agentRequestErrorKind
		field string
	}{
		{"empty", ``, agentErrMalformed, ""},
		{"array", `[{"type":"threads.list","params":{}}]`, agentErrMalformed, ""},
		{"string", `"threads.list"`, agentErrMalformed, ""},
		{"truncated", `{"type":"threads.list","params":{}`, agentErrMalformed, ""},
		{"two objects", `{"type":"threads.list","params":{}} {}`, agentErrMalformed, ""},
		{"trailing garbage", `{"type":"threads.list","params":{}}x`, agentErrMalformed, ""},
		{"bom", "\xef\xbb\xbf{\"type\":\"threads.list\",\"params\":{}}", agentErrMalformed, ""},
		{"vertical tab", "\v{\"type\":\"threads.list\",\"params\":{}}", agentErrMalformed, ""},
		{"invalid utf-8", "{\"type\":\"threads.get_by_id\",\"params\":{\"thread_id\":\"\xff\"}}", agentErrMalformed, ""},
		{"duplicate type", `{"type":"threads.list","type":"threads.delete","params":{}}`, agentErrMalformed, "type"},
		{"duplicate type, escaped", `{"type":"threads.list","t\u0079pe":"threads.list","params":{}}`, agentErrMalformed, "type"},
		{"duplicate params", `{"type":"threads.list","params":{},"params":{}}`, agentErrMalformed, "params"},
		{"duplicate thread_id", `{"type":"threads.delete","params":{"thread_id":"a","thread_id":"b"}}`, agentErrMalformed, "params.thread_id"},
		{"duplicate part type", agentCreateWith(`{"content":[{"type":"input_text","type":"input_tag","text":"x"}],"attachments":[],"inference_options":{}}`), agentErrMalformed, "params.input.content[0].type"},
		{"no type", `{"params":{}}`, agentErrInvalidParam, "type"},
		{"type folded", `{"Type":"threads.list","params":{}}`, agentErrInvalidParam, "type"},
		{"type not a string", `{"type":1,"params":{}}`, agentErrInvalidParam, "type"},
		{"type null", `{"type":null,"params":{}}`, agentErrInvalidParam, "type"},
		{"type case", `{"type":"Threads.List","params":{}}`, agentErrUnknownType, "type"},
		{"type unknown", `{"type":"threads.explode","params":{}}`, agentErrUnknownType, "type"},
		{"type not answered here", `{"type":"attachments.create","params":{"name":"a","size":1,"mime_type":"x"}}`, agentErrUnknownType, "type"},
		{"no params", `{"type":"threads.list"}`, agentErrInvalidParam, "params"},
		{"params not an object", `{"type":"threads.list","params":[]}`, agentErrInvalidParam, "params"},
		{"params null", `{"type":"threads.list","params":null}`, agentErrInvalidParam, "params"},
		{"no thread_id", `{"type":"threads.get_by_id","params":{}}`, agentErrInvalidParam, "params.thread_id"},
		{"thread_id a number", `{"type":"threads.get_by_id","params":{"thread_id":7}}`, agentErrInvalidParam, "params.thread_id"},
		{"thread_id null", `{"type":"threads.delete","params":{"thread_id":null}}`, agentErrInvalidParam, "params.thread_id"},
		{"thread_id empty", `{"type":"threads.delete","params":{"thread_id":""}}`, agentErrInvalidParam, "params.thread_id"},
		{"item_id empty", `{"type":"threads.retry_after_item","params":{"thread_id":"t","item_id":""}}`, agentErrInvalidParam, "params.item_id"},
		{"item_ids with an empty one", `{"type":"items.feedback","params":{"thread_id":"t","item_ids":["m",""],"kind":"positive"}}`, agentErrInvalidParam, "params.item_ids[1]"},
		{"thread_id too long", `{"type":"threads.delete","params":{"thread_id":"` + strings.Repeat("t", agentMaxIDLength+1) + `"}}`, agentErrInvalidParam, "params.thread_id"},
		{"no item_id", `{"type":"threads.retry_after_item","params":{"thread_id":"t"}}`, agentErrInvalidParam, "params.item_id"},
		{"no input", `{"type":"threads.create","params":{}}`, agentErrInvalidParam, "params.input"},
		{"input not an object", agentCreateWith(`"Hi"`), agentErrInvalidParam, "params.input"},
		{"no content", agentCreateWith(`{"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content"},
		{"content empty", agentCreateWith(`{"content":[],"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content"},
		{"content a string", agentCreateWith(`{"content":"Hi","attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content"},
		{"content blank", agentCreateWith(`{"content":[{"type":"input_text","text":" \n\t"}],"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content"},
		{"part not an object", agentCreateWith(`{"content":["Hi"],"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content[0]"},
		{"part type unknown", agentCreateWith(`{"content":[{"type":"input_text","text":"a"},{"type":"input_image","text":"b"}],"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content[1].type"},
		{"part type missing", agentCreateWith(`{"content":[{"text":"a"}],"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content[0].type"},
		{"part text a number", agentCreateWith(`{"content":[{"type":"input_text","text":5}],"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content[0].text"},
		{"tag without data", agentCreateWith(`{"content":[{"type":"input_tag","id":"d","text":"a"}],"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content[0].data"},
		{"tag data a list", agentCreateWith(`{"content":[{"type":"input_tag","id":"d","text":"a","data":[]}],"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content[0].data"},
		{"tag without id", agentCreateWith(`{"content":[{"type":"input_tag","text":"a","data":{}}],"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content[0].id"},
		{"tag interactive a string", agentCreateWith(`{"content":[{"type":"input_tag","id":"d","text":"a","data":{},"interactive":"yes"}],"attachments":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.content[0].interactive"},
		{"no attachments", agentCreateWith(`{"content":` + text + `,"inference_options":{}}`), agentErrInvalidParam, "params.input.attachments"},
		{"attachments an object", agentCreateWith(`{"content":` + text + `,"attachments":{},"inference_options":{}}`), agentErrInvalidParam, "params.input.attachments"},
		{"attachments given", agentCreateWith(`{"content":` + text + `,"attachments":["atc_1"],"inference_options":{}}`), agentErrInvalidParam, "params.input.attachments"},
		{"no inference_options", agentCreateWith(`{"content":` + text + `,"attachments":[]}`), agentErrInvalidParam, "params.input.inference_options"},
		{"inference_options null", agentCreateWith(`{"content":` + text + `,"attachments":[],"inference_options":null}`), agentErrInvalidParam, "params.input.inference_options"},
		{"model a number", agentCreateWith(`{"content":` + text + `,"attachments":[],"inference_options":{"model":4}}`), agentErrInvalidParam, "params.input.inference_options.model"},
		{"tool_choice without id", agentCreateWith(`{"content":` + text + `,"attachments":[],"inference_options":{"tool_choice":{}}}`), agentErrInvalidParam, "params.input.inference_options.tool_choice.id"},
		{"quoted_text a list", agentCreateWith(`{"content":` + text + `,"attachments":[],"quoted_text":[],"inference_options":{}}`), agentErrInvalidParam, "params.input.quoted_text"},
		{"message too long", agentCreateWith(`{"content":[{"type":"input_text","text":"` + strings.Repeat("é", 30) + `"},{"type":"input_tag","id":"d","text":"` + strings.Repeat("x", 11) + `","data":{}}],"attachments":[],"inference_options":{}}`), agentErrInputTooLong, "params.input.content"},
		{"quote too long", agentCreateWith(`{"content":` + text + `,"attachments":[],"quoted_text":"` + strings.Repeat("q", 41) + `","inference_options":{}}`), agentErrInputTooLong, "params.input.quoted_text"},
		{"limit a string", `{"type":"threads.list","params":{"limit":"10"}}`, agentErrInvalidParam, "params.limit"},
		{"limit a fraction", `{"type":"threads.list","params":{"limit":10.5}}`, agentErrInvalidParam, "params.limit"},
		{"limit negative", `{"type":"items.list","params":{"thread_id":"t","limit":-1}}`, agentErrInvalidParam, "params.limit"},
		{"limit very negative", `{"type":"threads.list","params":{"limit":-1e400}}`, agentErrInvalidParam, "params.limit"},
		{"limit true", `{"type":"threads.list","params":{"limit":true}}`, agentErrInvalidParam, "params.limit"},
		{"order unknown", `{"type":"threads.list","params":{"order":"newest"}}`, agentErrInvalidParam, "params.order"},
		{"order folded", `{"type":"threads.list","params":{"order":"DESC"}}`, agentErrInvalidParam, "params.order"},
		{"order null", `{"type":"threads.list","params":{"order":null}}`, agentErrInvalidParam, "params.order"},
		{"after a number", `{"type":"threads.list","params":{"after":3}}`, agentErrInvalidParam, "params.after"},
		{"no thread_id for items", `{"type":"items.list","params":{"limit":2}}`, agentErrInvalidParam, "params.thread_id"},
		{"title null", `{"type":"threads.update","params":{"thread_id":"t","title":null}}`, agentErrInvalidParam, "params.title"},
		{"no title", `{"type":"threads.update","params":{"thread_id":"t"}}`, agentErrInvalidParam, "params.title"},
		{"title too long", `{"type":"threads.update","params":{"thread_id":"t","title":"` + strings.Repeat("é", agentMaxTitleLength+1) + `"}}`, agentErrInvalidParam, "params.title"},
		{"kind unknown", `{"type":"items.feedback","params":{"thread_id":"t","item_ids":["m"],"kind":"meh"}}`, agentErrInvalidParam, "params.kind"},
		{"no kind", `{"type":"items.feedback","params":{"thread_id":"t","item_ids":["m"]}}`, agentErrInvalidParam, "params.kind"},
		{"item_ids empty", `{"type":"items.feedback","params":{"thread_id":"t","item_ids":[],"kind":"positive"}}`, agentErrInvalidParam, "params.item_ids"},
		{"item_ids a string", `{"type":"items.feedback","params":{"thread_id":"t","item_ids":"m","kind":"positive"}}`, agentErrInvalidParam, "params.item_ids"},
		{"item_ids with a number", `{"type":"items.feedback","params":{"thread_id":"t","item_ids":["m",2],"kind":"positive"}}`, agentErrInvalidParam, "params.item_ids[1]"},
		{"too many item_ids", `{"type":"items.feedback","params":{"thread_id":"t","item_ids":[` + strings.Repeat(`"m",`, agentMaxPageLimit) + `"m"],"kind":"positive"}}`, agentErrInvalidParam, "params.item_ids"},
	}
	for _, c := range cases {
		_, err := decodeAgentRequest([]byte(c.body), agentTestLimits)
		var re *agentRequestError
		if !errors.As(err, &re) {
			t.Errorf("%s: got %v, want an *agentRequestError", c.name, err)
			continue
		}
		if re.Kind != c.kind || re.Field != c.field {
			t.Errorf("%s: got kind %d field %q (%v), want kind %d field %q", c.name, re.Kind, re.Field, err, c.kind, c.field)
		}
		if c.field != "" && !strings.HasPrefix(err.Error(), c.field+": ") {
			t.Errorf("%s: the message %q does not name the field", c.name, err)
		}
	}
	// An unknown type is named, cut short and quoted.
	_, err := decodeAgentRequest([]byte(`{"type":"`+strings.Repeat("ü", 100)+`\n","params":{}}`), agentTestLimits)
	if msg := err.Error(); !strings.Contains(msg, `"üüü`) || !strings.Contains(msg, "…") || len(msg) > 120 || strings.Contains(msg, "\n") {
		t.Errorf("unknown type message: %q", msg)
	}
	// No limit configured: long messages pass.
	long := agentCreateWith(`{"content":[{"type":"input_text","text":"` + strings.Repeat("x", 5000) + `"}],"attachments":[],"inference_options":{}}`)
	if _, err := decodeAgentRequest([]byte(long), agentRequestLimits{}); err != nil {
		t.Errorf("no max_input: %v", err)
	}
}

// ---------------------------------------------------------------- fuzzing

// agentFuzzSeeds are FuzzAgentRequest's seeds: every request test body,
// and a few shapes around the type key.
func agentFuzzSeeds() []fzSeed {
	var seeds []fzSeed
	add := func(name, body string) {
		name = strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
				return r
			}
			return '-'
		}, strings.ToLower(name))
		for strings.Contains(name, "--") {
			name = strings.ReplaceAll(name, "--", "-")
		}
		name = strings.Trim(name, "-")
		seeds = append(seeds, fzSeed{name, []any{[]byte(body)}})
	}
	for _, c := range agentGoodRequests {
		add("good-"+c.name, c.body)
	}
	add("bad-duplicate-type", `{"type":"threads.list","type":"threads.delete","params":{}}`)
	add("bad-folded-type", `{"TYPE":"threads.delete","params":{"thread_id":"t"}}`)
	add("bad-nested-deep", `{"type":"threads.list","params":{"x":`+strings.Repeat("[", 500)+strings.Repeat("]", 500)+`}}`)
	add("bad-limit-string", `{"type":"threads.list","params":{"limit":"10"}}`)
	add("bad-content-empty", agentCreateWith(`{"content":[],"attachments":[],"inference_options":{}}`))
	add("bad-not-object", `[]`)
	add("bad-invalid-utf8", "{\"type\":\"threads.get_by_id\",\"params\":{\"thread_id\":\"\xff\"}}")
	add("bad-escaped-quote-in-key", `{"ty\"pe":"threads.list","params":{}}`)
	add("bad-transcribe-type", `{"type":"input.transcribe","params":{"audio_base64":"AAECAw==","mime_type":"audio/x-flac"}}`)
	return seeds
}

// FuzzAgentRequest: the decoder never panics, refuses only with an
// *agentRequestError, agrees with protect's type reader on the type of
// every request it accepts, and every accepted request re-encodes to a
// body that decodes to the same request.
func FuzzAgentRequest(f *testing.F) {
	for _, s := range agentFuzzSeeds() {
		f.Add(s.args[0].([]byte))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeAgentRequest(body, agentTestLimits)
		if err != nil {
			var re *agentRequestError
			if !errors.As(err, &re) || re.Kind == 0 || re.Msg == "" {
				t.Fatalf("refused with %T %v", err, err)
			}
			return
		}
		if typ, ok := chatKitRequestType(body); !ok || typ != req.Type {
			t.Fatalf("agent reads type %q, protect reads %q (%v)", req.Type, typ, ok)
		}
		if req.Limit < 0 || req.Limit > agentMaxPageLimit {
			t.Fatalf("limit %d out of range", req.Limit)
		}
		hasInput := req.Type == agentThreadsCreate || req.Type == agentThreadsAddUserMessage
		if hasInput && (len(req.Input.Content) == 0 || !utf8.ValidString(req.Input.text())) {
			t.Fatalf("accepted input %+v", req.Input)
		}
		enc := req.appendJSON(nil)
		if !json.Valid(enc) {
			t.Fatalf("re-encoded is not JSON: %s", enc)
		}
		again, err := decodeAgentRequest(enc, agentTestLimits)
		if err != nil {
			t.Fatalf("re-encoded %s is refused: %v", enc, err)
		}
		if !reflect.DeepEqual(again, req) {
			t.Fatalf("re-encoded %s means %+v, not %+v", enc, again, req)
		}
	})
}

// TestAgentFuzzSeedsCommitted checks that FuzzAgentRequest's seeds are
// committed under testdata/fuzz/FuzzAgentRequest (so `go test` replays them
// and `go test -fuzz` starts from them); CHATKIT_WRITE_FUZZ_SEEDS=1 writes
// them.
func TestAgentFuzzSeedsCommitted(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzAgentRequest")
	write := os.Getenv("CHATKIT_WRITE_FUZZ_SEEDS") == "1"
	if write {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	names := map[string]bool{}
	for _, s := range agentFuzzSeeds() {
		if names[s.name] {
			t.Fatalf("duplicate seed name %q", s.name)
		}
		names[s.name] = true
		want := []byte("go test fuzz v1\n[]byte(" + strconv.Quote(string(s.args[0].([]byte))) + ")\n")
		path := filepath.Join(dir, "seed-"+s.name)
		if write {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is missing or stale (%v); rewrite with CHATKIT_WRITE_FUZZ_SEEDS=1 go test -run TestAgentFuzzSeedsCommitted .", path, err)
		}
	}
}

// TestAgentFramesDropItemDone: the done event of an item that could not be
// saved goes, and only it: not another item's, not an update naming it.
func TestAgentFramesDropItemDone(t *testing.T) {
	var f agentFrames
	f.itemDoneJSON([]byte(`{"id":"msg_a","type":"user_message"}`))
	f.textDelta("msg_b", 0, "Hi")
	f.itemDoneJSON([]byte(`{"id":"msg_b","type":"assistant_message"}`))
	f.itemDoneJSON([]byte(`{"id":"msg_bc","type":"assistant_message"}`))
	before := string(f.Bytes())
	f.dropItemDone("msg_x")
	if string(f.Bytes()) != before {
		t.Fatalf("dropping an item not there changed the frames: %s", f.Bytes())
	}
	f.dropItemDone("msg_b")
	want := strings.Replace(before, `data: {"type":"thread.item.done","item":{"id":"msg_b","type":"assistant_message"}}`+"\n\n", "", 1)
	if got := string(f.Bytes()); got != want || got == before {
		t.Fatalf("after dropping msg_b:\n%s\nwant\n%s", got, want)
	}
}

package chatkit

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// Golden streams: testdata/agent/<input>.sse is an upstream Responses
// stream as OpenAI sends it; <case>.golden is what the converter makes of
// it, as the client would receive it: the ChatKit frames in order, each
// batch preceded by `: saved <item JSON>` comment lines for the items the
// handler persists before sending that batch, the error event the outcome
// calls for, and a `: outcome …` line. Ids and times come from a counter
// and a stepping clock. Rewrite with the package's shared -update flag:
//
//	go test -run 'TestConverterGolden' -update .

// agentGoldenCase is one scripted run.
type agentGoldenCase struct {
	name      string
	input     string
	reasoning bool
	// stopAfter > 0 cuts the run after that many events with cut.
	stopAfter int
	cut       agentCut
	// tools words hosted tool progress (nil: the converter's defaults).
	tools *agentToolProgress
}

var agentGoldenCases = []agentGoldenCase{
	{name: "text", input: "text"},
	{name: "two_messages", input: "two_messages"},
	{name: "refusal", input: "refusal"},
	{name: "annotations", input: "annotations"},
	{name: "reasoning", input: "reasoning", reasoning: true},
	{name: "reasoning_off", input: "reasoning"},
	{name: "incomplete", input: "incomplete"},
	{name: "failed", input: "failed"},
	{name: "error_event", input: "error_event"},
	{name: "dropped", input: "dropped"},
	{name: "sloppy", input: "sloppy"},
	// The stop button after "Hel": the partial answer and the note are saved.
	{name: "cancel_mid_answer", input: "text", stopAfter: 5, cut: agentCutCancelled},
	// The stop button before any text: only the note.
	{name: "cancel_before_answer", input: "text", stopAfter: 2, cut: agentCutCancelled},
	// idle_timeout in the middle of the reasoning, with summaries shown.
	{name: "timeout_in_reasoning", input: "reasoning", reasoning: true, stopAfter: 6, cut: agentCutFailed},
	// Reasoning, a web search limited to one domain, a file search and an
	// MCP call, then an answer citing a page (streamed, untitled) and a
	// file (only in the final parts).
	{name: "hosted_tools", input: "hosted_tools", reasoning: true,
		tools: &agentToolProgress{webSearch: "Searching caddyserver.com…", mcpLabels: []string{"docs"}}},
	// The same without summaries and with an MCP server we did not name.
	{name: "hosted_tools_plain", input: "hosted_tools"},
	// Reasoning that brought no summary: its workflow is removed, not kept.
	{name: "reasoning_empty", input: "reasoning_empty", reasoning: true},
}

// agentUpdateGolden reports whether -update (defined once for the package,
// in adapt_test.go) was given.
func agentUpdateGolden() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// agentTestIDs returns deterministic item ids: msg_1, msg_2, wf_1, ….
func agentTestIDs() func(prefix string) string {
	n := map[string]int{}
	return func(prefix string) string {
		n[prefix]++
		return fmt.Sprintf("%s_%d", prefix, n[prefix])
	}
}

// agentTestClock returns a clock that starts at the §1.3 capture's time
// and moves 400 ms per reading.
func agentTestClock() func() time.Time {
	t := time.Date(2026, 12, 1, 22, 8, 58, 733091000, time.UTC)
	return func() time.Time {
		now := t
		t = t.Add(400 * time.Millisecond)
		return now
	}
}

// agentRunGolden converts one scripted stream and renders the golden text.
func agentRunGolden(t *testing.T, gc agentGoldenCase) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "agent", gc.input+".sse"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	frames := &agentFrames{}
	conv := newAgentConverter(agentConverterConfig{
		ThreadID: "thr_ab0b7480", NewID: agentTestIDs(), Now: agentTestClock(), Reasoning: gc.reasoning,
		Tools: gc.tools,
	}, frames)
	flush := func() {
		for _, d := range conv.Done() {
			fmt.Fprintf(&out, ": saved %s\n", d.JSON)
		}
		out.Write(frames.Bytes())
		frames.Reset()
	}
	rd := newSSEReader(f, 1<<20)
	var ev responsesEvent
	for n := 0; !conv.Finished(); n++ {
		if gc.stopAfter > 0 && n == gc.stopAfter {
			conv.Interrupt(gc.cut)
			flush()
			break
		}
		name, data, err := rd.Next()
		if err == io.EOF {
			conv.Interrupt(agentCutFailed) // the stream broke off
			flush()
			break
		}
		if err != nil {
			t.Fatalf("%s: event %d: %v", gc.input, n, err)
		}
		if err := ev.decode(data); err != nil {
			t.Fatalf("%s: event %d: %v", gc.input, n, err)
		}
		if ev.Type != string(name) {
			t.Fatalf("%s: event %d: named %q but typed %q", gc.input, n, name, ev.Type)
		}
		conv.Feed(&ev)
		flush()
	}
	o := conv.Outcome()
	if e, ok := o.streamError(); ok {
		frames.errorEvent(e)
		out.Write(frames.Bytes())
	}
	u, hasUsage := conv.Usage()
	fmt.Fprintf(&out, ": outcome kind=%v cut=%v reason=%q code=%q response=%q usage=%v/%d/%d/%d\n",
		o.Kind, o.Cut, o.Reason, o.Code, conv.ResponseID(), hasUsage, u.InputTokens, u.OutputTokens, u.TotalTokens)
	return out.Bytes()
}

func TestConverterGolden(t *testing.T) {
	for _, gc := range agentGoldenCases {
		t.Run(gc.name, func(t *testing.T) {
			got := agentRunGolden(t, gc)
			path := filepath.Join("testdata", "agent", gc.name+".golden")
			if agentUpdateGolden() {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (write it with -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("converter output differs from %s (rewrite with -update after checking):\n%s", path, agentLineDiff(want, got))
			}
		})
	}
}

// agentLineDiff shows the first differing line.
func agentLineDiff(want, got []byte) string {
	w, g := strings.Split(string(want), "\n"), strings.Split(string(got), "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d\nwant: %s\ngot:  %s", i+1, wl, gl)
		}
	}
	return "(same lines)"
}

// agentGoldenFrame is one ChatKit event decoded from a golden stream.
type agentGoldenFrame struct {
	Type   string          `json:"type"`
	ItemID string          `json:"item_id"`
	Item   json.RawMessage `json:"item"`
	Update struct {
		Type         string `json:"type"`
		ContentIndex int    `json:"content_index"`
		Delta        string `json:"delta"`
		Content      struct {
			Text string `json:"text"`
		} `json:"content"`
	} `json:"update"`
}

// agentParseFrames reads the frames and saved items of a golden stream.
func agentParseFrames(t *testing.T, b []byte) (frames []agentGoldenFrame, saved []json.RawMessage) {
	t.Helper()
	for _, block := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(block, "data: "):
			var f agentGoldenFrame
			if err := json.Unmarshal([]byte(block[len("data: "):]), &f); err != nil {
				t.Fatalf("frame is not JSON: %v: %s", err, block)
			}
			frames = append(frames, f)
		case strings.HasPrefix(block, ": saved "):
			saved = append(saved, json.RawMessage(block[len(": saved "):]))
		}
	}
	return frames, saved
}

// TestConverterEventOrder checks, on every golden stream, the rules the
// client depends on: each assistant item is added, then its parts are
// added before their deltas and done before the item is done; deltas add
// up to the final text; each item is done (and saved) once, with our id,
// never OpenAI's; saved items are exactly the done ones plus hidden notes.
func TestConverterEventOrder(t *testing.T) {
	for _, gc := range agentGoldenCases {
		t.Run(gc.name, func(t *testing.T) {
			upstream, err := os.ReadFile(filepath.Join("testdata", "agent", gc.input+".sse"))
			if err != nil {
				t.Fatal(err)
			}
			frames, saved := agentParseFrames(t, agentRunGolden(t, gc))
			type state struct {
				added, done, removed bool
				parts                map[int]string // "added" | "done"
				text                 map[int]*strings.Builder
			}
			items := map[string]*state{}
			doneIDs := map[string]bool{}
			for i, f := range frames {
				switch f.Type {
				case "thread.item.added", "thread.item.done":
					var it struct{ ID, Type string }
					if err := json.Unmarshal(f.Item, &it); err != nil {
						t.Fatal(err)
					}
					if bytes.Contains(upstream, []byte(`"`+it.ID+`"`)) {
						t.Errorf("frame %d: item id %q comes from OpenAI", i, it.ID)
					}
					s := items[it.ID]
					if f.Type == "thread.item.added" {
						if s != nil {
							t.Errorf("frame %d: %s added twice", i, it.ID)
						}
						items[it.ID] = &state{added: true, parts: map[int]string{}, text: map[int]*strings.Builder{}}
						continue
					}
					if s == nil || !s.added || s.done || s.removed {
						t.Errorf("frame %d: %s done without being open", i, it.ID)
						continue
					}
					s.done = true
					doneIDs[it.ID] = true
					if it.Type != agentItemAssistantMessage {
						continue
					}
					var final struct {
						Content []struct{ Text string } `json:"content"`
					}
					_ = json.Unmarshal(f.Item, &final)
					for idx, st := range s.parts {
						if st != "done" {
							t.Errorf("frame %d: %s done with part %d still open", i, it.ID, idx)
						}
						if idx < len(final.Content) && s.text[idx].String() != final.Content[idx].Text {
							t.Errorf("frame %d: %s part %d: deltas %q, final %q", i, it.ID, idx, s.text[idx].String(), final.Content[idx].Text)
						}
					}
				case "thread.item.removed":
					if s := items[f.ItemID]; s == nil || s.done {
						t.Errorf("frame %d: %s removed but not open", i, f.ItemID)
					} else {
						s.removed = true
					}
				case "thread.item.updated":
					s := items[f.ItemID]
					if s == nil || s.done || s.removed {
						t.Errorf("frame %d: update to %s, which is not open", i, f.ItemID)
						continue
					}
					idx := f.Update.ContentIndex
					switch f.Update.Type {
					case "assistant_message.content_part.added":
						s.parts[idx] = "added"
						s.text[idx] = &strings.Builder{}
						s.text[idx].WriteString(f.Update.Content.Text)
					case "assistant_message.content_part.text_delta", "assistant_message.content_part.annotation_added":
						if s.parts[idx] != "added" {
							t.Errorf("frame %d: %s on part %d before it was added", i, f.Update.Type, idx)
							continue
						}
						s.text[idx].WriteString(f.Update.Delta)
					case "assistant_message.content_part.done":
						if s.parts[idx] != "added" {
							t.Errorf("frame %d: part %d done before it was added", i, idx)
						}
						s.parts[idx] = "done"
						if s.text[idx] != nil && s.text[idx].String() != f.Update.Content.Text {
							t.Errorf("frame %d: part %d deltas %q, done %q", i, idx, s.text[idx].String(), f.Update.Content.Text)
						}
					}
				}
			}
			for id, s := range items {
				if !s.done && !s.removed {
					t.Errorf("%s was added but never done or removed", id)
				}
			}
			for _, raw := range saved {
				var it struct{ ID, Type string }
				if err := json.Unmarshal(raw, &it); err != nil {
					t.Fatal(err)
				}
				if agentItemHidden(it.Type) {
					continue
				}
				if !doneIDs[it.ID] {
					t.Errorf("saved %s, which the client never got as done", it.ID)
				}
				delete(doneIDs, it.ID)
			}
			for id := range doneIDs {
				t.Errorf("%s done but not saved", id)
			}
		})
	}
}

// TestConverterMatchesCapture compares the text answer with the reference
// server's captured frames (§1.3): same events, fields, field order and
// values, apart from ids and times.
func TestConverterMatchesCapture(t *testing.T) {
	captured := []string{
		`{"type":"thread.item.added","item":{"id":"msg_resp01","thread_id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.749357","type":"assistant_message","content":[]}}`,
		`{"type":"thread.item.updated","item_id":"msg_resp01","update":{"type":"assistant_message.content_part.added","content_index":0,"content":{"annotations":[],"text":"","type":"output_text"}}}`,
		`{"type":"thread.item.updated","item_id":"msg_resp01","update":{"type":"assistant_message.content_part.text_delta","content_index":0,"delta":"Hel"}}`,
		`{"type":"thread.item.updated","item_id":"msg_resp01","update":{"type":"assistant_message.content_part.text_delta","content_index":0,"delta":"lo"}}`,
		`{"type":"thread.item.updated","item_id":"msg_resp01","update":{"type":"assistant_message.content_part.done","content_index":0,"content":{"annotations":[],"text":"Hello","type":"output_text"}}}`,
		`{"type":"thread.item.done","item":{"id":"msg_resp01","thread_id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.765137","type":"assistant_message","content":[{"annotations":[],"text":"Hello","type":"output_text"}]}}`,
	}
	var got []string
	for _, line := range strings.Split(string(agentRunGolden(t, agentGoldenCases[0])), "\n") {
		if strings.HasPrefix(line, "data: ") {
			got = append(got, line[len("data: "):])
		}
	}
	if len(got) != len(captured) {
		t.Fatalf("got %d frames, the reference sends %d:\n%s", len(got), len(captured), strings.Join(got, "\n"))
	}
	for i := range captured {
		agentSameShape(t, fmt.Sprintf("frame %d", i), captured[i], got[i])
	}
}

func TestSSEReader(t *testing.T) {
	type event struct{ name, data string }
	long := strings.Repeat("y", 3*sseReadBuffer)
	cases := []struct {
		name   string
		stream string
		want   []event
		err    error // after the events; nil means io.EOF
	}{
		{"openai", "event: response.created\ndata: {\"a\":1}\n\nevent: x\ndata: {}\n\n", []event{{"response.created", `{"a":1}`}, {"x", "{}"}}, nil},
		{"crlf", "event: a\r\ndata: 1\r\n\r\n", []event{{"a", "1"}}, nil},
		{"no event name", "data: 1\n\n", []event{{"message", "1"}}, nil},
		{"no space", "event:a\ndata:1\n\n", []event{{"a", "1"}}, nil},
		{"only one space stripped", "data:  1\n\n", []event{{"message", " 1"}}, nil},
		{"multi-line data", "data: a\ndata: b\ndata\n\n", []event{{"message", "a\nb\n"}}, nil},
		{"comments, id, retry and unknown fields ignored", ": hi\nid: 7\nretry: 10\nfoo: bar\ndata: 1\n\n", []event{{"message", "1"}}, nil},
		{"blank lines between events", "\n\n\ndata: 1\n\n\n\ndata: 2\n\n", []event{{"message", "1"}, {"message", "2"}}, nil},
		{"event without data is not dispatched and its name is forgotten", "event: a\n\ndata: 1\n\n", []event{{"message", "1"}}, nil},
		{"bom", "\xef\xbb\xbfdata: 1\n\n", []event{{"message", "1"}}, nil},
		{"unfinished event dropped at the end", "data: 1\n\ndata: 2\n", []event{{"message", "1"}}, nil},
		{"unfinished line dropped at the end", "data: 1\n\ndata: 2", []event{{"message", "1"}}, nil},
		{"long data line", "data: " + long + "\n\ndata: 2\n\n", []event{{"message", long}, {"message", "2"}}, nil},
		{"long crlf data line", "data: " + long + "\r\n\r\n", []event{{"message", long}}, nil},
		{"long data line joined", "data: a\ndata: " + long + "\n\n", []event{{"message", "a\n" + long}}, nil},
		{"long comment", ": " + long + "\ndata: 1\n\n", []event{{"message", "1"}}, nil},
		{"long event name", "event: " + long + "\ndata: 1\n\n", []event{{long, "1"}}, nil},
		{"event too large", "data: 1\n\ndata: " + strings.Repeat("z", 10000) + "\n\n", []event{{"message", "1"}}, errSSEEventTooLarge},
		{"data lines too large together", "data: " + strings.Repeat("z", 6000) + "\ndata: " + strings.Repeat("z", 6000) + "\n\n", nil, errSSEEventTooLarge},
		{"non-data line too large", ": " + strings.Repeat("z", 10000) + "\n\n", nil, errSSEEventTooLarge},
	}
	for _, c := range cases {
		for _, mode := range []string{"whole", "one byte at a time"} {
			t.Run(c.name+"/"+mode, func(t *testing.T) {
				var r io.Reader = strings.NewReader(c.stream)
				if mode != "whole" {
					r = iotest.OneByteReader(r)
				}
				rd := newSSEReader(r, 8000)
				for i, w := range c.want {
					name, data, err := rd.Next()
					if err != nil {
						t.Fatalf("event %d: %v", i, err)
					}
					if string(name) != w.name || string(data) != w.data {
						t.Fatalf("event %d: got (%.40q, %.40q), want (%.40q, %.40q)", i, name, data, w.name, w.data)
					}
				}
				wantErr := c.err
				if wantErr == nil {
					wantErr = io.EOF
				}
				if _, _, err := rd.Next(); !errors.Is(err, wantErr) {
					t.Fatalf("after the events: got %v, want %v", err, wantErr)
				}
			})
		}
	}
}

func TestSSEReaderReadError(t *testing.T) {
	boom := errors.New("connection reset")
	rd := newSSEReader(io.MultiReader(strings.NewReader("data: 1\n\ndata: 2"), iotest.ErrReader(boom)), 1<<10)
	if _, data, err := rd.Next(); err != nil || string(data) != "1" {
		t.Fatalf("first event: %q, %v", data, err)
	}
	if _, _, err := rd.Next(); !errors.Is(err, boom) {
		t.Fatalf("got %v, want the read error", err)
	}
}

// TestSSEReaderAllocations: once its buffers have grown, reading an event
// allocates nothing (the stream's memory stays what it was).
func TestSSEReaderAllocations(t *testing.T) {
	frame := "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hel\"}\n\n"
	stream := strings.NewReader(strings.Repeat(frame, 200))
	rd := newSSEReader(stream, 1<<20)
	if _, _, err := rd.Next(); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, _, err := rd.Next(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Next allocates %.1f times per event, want 0", allocs)
	}
}

// TestConverterAllocations: converting a text delta, frames included,
// allocates nothing once the buffers have grown (the decoded event's own
// strings aside, which belong to the decoder).
func TestConverterAllocations(t *testing.T) {
	frames := &agentFrames{}
	conv := newAgentConverter(agentConverterConfig{ThreadID: "thr_1", NewID: agentTestIDs(), Now: agentTestClock()}, frames)
	conv.Feed(&responsesEvent{Type: "response.output_item.added", Item: responsesItem{ID: "m", Type: "message"}})
	conv.Feed(&responsesEvent{Type: "response.content_part.added", ItemID: "m", Part: responsesPart{Type: "output_text"}})
	delta := &responsesEvent{Type: "response.output_text.delta", ItemID: "m", Delta: "word "}
	for i := 0; i < 1000; i++ { // grow the text and frame buffers
		conv.Feed(delta)
	}
	frames.Reset()
	allocs := testing.AllocsPerRun(200, func() {
		conv.Feed(delta)
		frames.Reset()
	})
	if allocs > 0.1 { // the text buffer's rare doubling
		t.Errorf("a delta allocates %.2f times, want 0", allocs)
	}
}

func TestConverterIgnoresAfterEnd(t *testing.T) {
	frames := &agentFrames{}
	conv := newAgentConverter(agentConverterConfig{ThreadID: "thr_1", NewID: agentTestIDs(), Now: agentTestClock()}, frames)
	conv.Feed(&responsesEvent{Type: "response.completed", Response: responsesResponse{ID: "resp_1", Usage: &agentUsage{1, 2, 3}}})
	if !conv.Finished() || conv.Outcome().Kind != agentCompleted {
		t.Fatalf("outcome %+v", conv.Outcome())
	}
	frames.Reset()
	conv.Feed(&responsesEvent{Type: "response.output_text.delta", ItemID: "m", Delta: "late"})
	conv.Interrupt(agentCutCancelled)
	if frames.Len() != 0 || len(conv.Done()) != 0 {
		t.Fatalf("events after the end produced %q and %d items", frames.Bytes(), len(conv.Done()))
	}
	if u, ok := conv.Usage(); !ok || u != (agentUsage{1, 2, 3}) {
		t.Fatalf("usage %v %v", u, ok)
	}
}

func TestConverterDecodesResponsesEvents(t *testing.T) {
	var ev responsesEvent
	// A delta after a done event: nothing of the earlier event remains.
	if err := ev.decode([]byte(`{"type":"response.output_text.done","item_id":"m","text":"full"}`)); err != nil {
		t.Fatal(err)
	}
	if err := ev.decode([]byte(`{"type":"response.output_text.delta","item_id":"m","content_index":1,"delta":"d"}`)); err != nil {
		t.Fatal(err)
	}
	if ev.Text != "" || ev.Delta != "d" || ev.ContentIndex != 1 {
		t.Fatalf("decoded %+v", ev)
	}
	// An event the agent does not read may have any shape.
	if err := ev.decode([]byte(`{"type":"response.audio.delta","delta":{"pcm":[1]},"text":7}`)); err != nil || ev.Type != "response.audio.delta" || ev.Delta != "" {
		t.Fatalf("unknown event: %+v, %v", ev, err)
	}
	// One it reads must have the documented shape.
	for _, bad := range []string{`{"type":"response.output_text.delta","delta":5}`, `[1]`, `{"type":`, `{"sequence_number":1}`} {
		if err := ev.decode([]byte(bad)); err == nil {
			t.Errorf("%s: decoded without an error", bad)
		}
	}
	// The error event, flat (as documented) and nested (as seen).
	for _, data := range []string{
		`{"type":"error","code":"rate_limit_exceeded","message":"slow down","param":null,"sequence_number":3}`,
		`{"type":"error","sequence_number":3,"error":{"type":"requests","code":"rate_limit_exceeded","message":"slow down","param":null}}`,
	} {
		if err := ev.decode([]byte(data)); err != nil {
			t.Fatal(err)
		}
		conv := newAgentConverter(agentConverterConfig{ThreadID: "t", NewID: agentTestIDs(), Now: agentTestClock()}, &agentFrames{})
		conv.Feed(&ev)
		if o := conv.Outcome(); o.Kind != agentStreamErrored || o.Code != "rate_limit_exceeded" || o.Message != "slow down" {
			t.Errorf("%s: outcome %+v", data, o)
		}
	}
}

func TestAgentOutcomeStreamError(t *testing.T) {
	cases := []struct {
		o     agentOutcome
		send  bool
		code  string
		retry bool
	}{
		{agentOutcome{Kind: agentRunning}, false, "", false},
		{agentOutcome{Kind: agentCompleted}, false, "", false},
		{agentOutcome{Kind: agentInterrupted, Cut: agentCutCancelled}, false, "", false},
		{agentOutcome{Kind: agentInterrupted, Cut: agentCutFailed}, true, agentErrorCodeStream, true},
		{agentOutcome{Kind: agentIncomplete, Cut: agentCutLength, Reason: "max_output_tokens"}, true, agentErrorCodeCustom, true},
		{agentOutcome{Kind: agentIncomplete, Cut: agentCutFiltered, Reason: "content_filter"}, true, agentErrorCodeCustom, false},
		{agentOutcome{Kind: agentFailed, Code: "server_error"}, true, agentErrorCodeStream, true},
		{agentOutcome{Kind: agentFailed, Code: ""}, true, agentErrorCodeStream, true},
		{agentOutcome{Kind: agentFailed, Code: "rate_limit_exceeded"}, true, agentErrorCodeCustom, true},
		{agentOutcome{Kind: agentStreamErrored, Code: "too_many_requests"}, true, agentErrorCodeCustom, true},
		{agentOutcome{Kind: agentFailed, Code: "invalid_prompt"}, true, agentErrorCodeCustom, false},
		{agentOutcome{Kind: agentStreamErrored, Code: "context_length_exceeded"}, true, agentErrorCodeCustom, false},
		{agentOutcome{Kind: agentStreamErrored, Code: "insufficient_quota"}, true, agentErrorCodeCustom, false},
		{agentOutcome{Kind: agentFailed, Code: "invalid_image_url"}, true, agentErrorCodeStream, false},
		{agentOutcome{Kind: agentFailed, Code: "image_too_large"}, true, agentErrorCodeStream, false},
	}
	for _, c := range cases {
		e, send := c.o.streamError()
		if send != c.send || e.Code != c.code || e.AllowRetry != c.retry {
			t.Errorf("%+v: got %+v (send %v), want code %q retry %v send %v", c.o, e, send, c.code, c.retry, c.send)
		}
		if e.Code == agentErrorCodeCustom && e.Message == "" {
			t.Errorf("%+v: a custom error without words", c.o)
		}
		if strings.Contains(e.Message, c.o.Message) && c.o.Message != "" {
			t.Errorf("%+v: OpenAI's message reaches the client", c.o)
		}
	}
}

// TestHistoryFromStoredItems builds the model input from items as the
// converter and the request decoder store them.
func TestHistoryFromStoredItems(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 678000000, time.UTC)
	user := func(id, body string) json.RawMessage {
		req, err := decodeAgentRequest([]byte(body), agentRequestLimits{})
		if err != nil {
			t.Fatal(err)
		}
		return newAgentUserMessage(id, "thr_1", at, req.Input).appendJSON(nil)
	}
	assistant := func(id string, texts ...string) json.RawMessage {
		m := &agentAssistantMessage{agentItemHeader: agentItemHeader{id, "thr_1", at}}
		for _, s := range texts {
			m.Content = append(m.Content, agentAssistantContent{Text: s, Annotations: []agentAnnotation{{SourceType: "url", Title: "t", URL: "https://x.test", Index: 1}}})
		}
		return m.appendJSON(nil)
	}
	note := (&agentHiddenContext{agentItemHeader{"shcx_1", "thr_1", at}, agentCutNotes[agentCutCancelled]}).appendJSON(nil)
	workflow := (&agentWorkflowItem{agentItemHeader: agentItemHeader{"wf_1", "thr_1", at}, Kind: "reasoning", Tasks: []agentThought{{"thinking"}}, Duration: 2}).appendJSON(nil)
	items := []json.RawMessage{
		user("msg_1", `{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"Old"}],"attachments":[],"inference_options":{}}}}`),
		assistant("msg_2", "Dropped by the window"),
		user("msg_3", `{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"Compare "},{"type":"input_tag","id":"doc_7","text":"Roadmap","data":{"doc":"7"},"group":"Docs","interactive":true},{"type":"input_text","text":" <now>"}],"attachments":[],"quoted_text":"not the last: ignored","inference_options":{}}}}`),
		workflow,
		assistant("msg_4", "Part one", "", "Part \"two\""),
		assistant("msg_5", ""),
		note,
		json.RawMessage(`{"id":"x","type":"end_of_turn"}`),
		json.RawMessage(`not json`),
		json.RawMessage(`{"id":"h","type":"hidden_context_item","content":{"not":"text"}}`),
		user("msg_6", `{"type":"threads.add_user_message","params":{"thread_id":"thr_1","input":{"content":[{"type":"input_text","text":"And now?"}],"attachments":[],"quoted_text":"the second paragraph","inference_options":{"model":"gpt-x"}}}}`),
	}
	got, skipped := appendAgentHistory(nil, items, len(items)-2)
	want := `[` +
		`{"role":"user","content":[{"type":"input_text","text":"Compare @Roadmap <now>"}]},` +
		`{"role":"assistant","content":[{"type":"output_text","text":"Part one","annotations":[]},{"type":"output_text","text":"Part \"two\"","annotations":[]}]},` +
		`{"role":"user","content":[{"type":"input_text","text":"Hidden context for the agent (not shown to the user):\n<HiddenContext>\n` + agentCutNotes[agentCutCancelled] + `\n</HiddenContext>"}]},` +
		`{"role":"user","content":[{"type":"input_text","text":"And now?"}]},` +
		`{"role":"user","content":[{"type":"input_text","text":"The user is referring to this in particular: \nthe second paragraph"}]}` +
		`]`
	if string(got) != want {
		t.Errorf("history:\n got %s\nwant %s", got, want)
	}
	if skipped != 2 {
		t.Errorf("skipped %d unreadable items, want 2", skipped)
	}
	if !json.Valid(got) {
		t.Error("history is not JSON")
	}
	if all, _ := appendAgentHistory(nil, items, 0); !bytes.Contains(all, []byte(`"Old"`)) || !bytes.Contains(all, []byte("Dropped by the window")) {
		t.Errorf("n=0 must keep every item: %s", all)
	}
	if empty, _ := appendAgentHistory(nil, nil, 30); string(empty) != "[]" {
		t.Errorf("no items: %s", empty)
	}
}

// TestHistoryAfterCancel: what a cancelled turn saves makes the next
// turn's history carry the partial answer and the note that it was cut.
func TestHistoryAfterCancel(t *testing.T) {
	var saved []json.RawMessage
	saved = append(saved, json.RawMessage(`{"id":"msg_u","thread_id":"thr_ab0b7480","created_at":"2026-12-01T22:08:58.740099Z","type":"user_message","content":[{"type":"input_text","text":"Hi"}],"attachments":[],"inference_options":{}}`))
	for _, line := range strings.Split(string(agentRunGolden(t, agentGoldenCase{name: "x", input: "text", stopAfter: 5, cut: agentCutCancelled})), "\n") {
		if strings.HasPrefix(line, ": saved ") {
			saved = append(saved, json.RawMessage(line[len(": saved "):]))
		}
	}
	got, _ := appendAgentHistory(nil, saved, 30)
	want := `[{"role":"user","content":[{"type":"input_text","text":"Hi"}]},` +
		`{"role":"assistant","content":[{"type":"output_text","text":"Hel","annotations":[]}]},` +
		`{"role":"user","content":[{"type":"input_text","text":"Hidden context for the agent (not shown to the user):\n<HiddenContext>\n` + agentCutNotes[agentCutCancelled] + `\n</HiddenContext>"}]}]`
	if string(got) != want {
		t.Errorf("history after a cancel:\n got %s\nwant %s", got, want)
	}
}

// TestConverterLateEvents: events for an answer already done (a repeated
// done, a stray delta) change nothing: no second item, nothing re-sent.
func TestConverterLateEvents(t *testing.T) {
	frames := &agentFrames{}
	conv := newAgentConverter(agentConverterConfig{ThreadID: "thr_1", NewID: agentTestIDs(), Now: agentTestClock()}, frames)
	done := &responsesEvent{Type: "response.output_item.done", Item: responsesItem{ID: "m", Type: "message", Content: []responsesPart{{Type: "output_text", Text: "Hi"}}}}
	conv.Feed(&responsesEvent{Type: "response.output_item.added", Item: responsesItem{ID: "m", Type: "message"}})
	conv.Feed(done)
	if len(conv.Done()) != 1 {
		t.Fatalf("done items: %d", len(conv.Done()))
	}
	frames.Reset()
	for _, ev := range []*responsesEvent{
		done,
		{Type: "response.output_text.delta", ItemID: "m", Delta: "late"},
		{Type: "response.content_part.added", ItemID: "m", Part: responsesPart{Type: "output_text"}},
		{Type: "response.output_text.annotation.added", ItemID: "m", Annotation: responsesAnnotation{Type: "url_citation", URL: "https://x.test"}},
	} {
		conv.Feed(ev)
		if frames.Len() != 0 || len(conv.Done()) != 0 {
			t.Fatalf("%s after the item was done: %s, %d items", ev.Type, frames.Bytes(), len(conv.Done()))
		}
	}
}

// responsesDeltaSeeds are delta events as OpenAI sends them and in shapes it
// might: escapes, an obfuscation pad, logprobs, odd spacing, escaped keys,
// numbers the fast path must hand to encoding/json.
var responsesDeltaSeeds = []string{
	`{"type":"response.output_text.delta","sequence_number":7,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" world","logprobs":[],"obfuscation":"Xk3"}`,
	`{"type":"response.output_text.delta","delta":"tab\there \"q\" \u00e9 \ud83d\ude00 <b>","item_id":"m","content_index":2}`,
	`{"type":"response.output_text.delta","delta":"x","text":7}`,
	`{"type":"response.output_text.delta","Delta":"case"}`,
	` { "type" : "response.refusal.delta" , "delta" : "no" , "output_index" : 1 } `,
	`{"type":"response.reasoning_summary_text.delta","summary_index":3,"delta":"hm","logprobs":[{"token":"a","logprob":-0.1,"top_logprobs":[]}]}`,
	`{"typ\u0065":"response.output_text.delta","delta":"escaped key"}`,
	`{"type":"response.output_text.delta","sequence_number":1e3,"delta":"x"}`,
	`{"type":"response.output_text.delta","content_index":-0,"delta":"x","delta":"last wins"}`,
	`{"type":"response.output_text.delta","delta":null}`,
	`{"type":"response.output_text.delta","delta":"x"`,
	`{"type":"response.output_text.done","text":"not a delta"}`,
}

// TestResponsesDeltaFastPath: the hand-written reader of delta events
// decodes exactly what encoding/json does, and leaves everything else to it.
func TestResponsesDeltaFastPath(t *testing.T) {
	fast := 0
	for _, data := range responsesDeltaSeeds {
		if checkResponsesDeltaFastPath(t, []byte(data)) {
			fast++
		}
	}
	if fast != 5 {
		t.Fatalf("%d of the seeds took the fast path, want the 5 plain deltas", fast)
	}
}

func FuzzResponsesDeltaFastPath(f *testing.F) {
	for _, s := range responsesDeltaSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkResponsesDeltaFastPath(t, data) })
}

// checkResponsesDeltaFastPath reports whether data took the fast path, and
// fails t if that decoded anything other than encoding/json would.
func checkResponsesDeltaFastPath(t *testing.T, data []byte) bool {
	t.Helper()
	var ev responsesEvent
	if !ev.decodeDelta(data) {
		return false
	}
	var want responsesEvent
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatalf("%s: the fast path read an event encoding/json refuses: %v", data, err)
	}
	if fmt.Sprintf("%#v", ev) != fmt.Sprintf("%#v", want) {
		t.Fatalf("%s:\nfast path    %#v\nencoding/json %#v", data, ev, want)
	}
	return true
}

// TestFlushBeforeReadBatchesArrivedEvents: the stream's frames go out just
// before the reader waits for more of the model's stream, so events that
// arrived in one read share one flush and none waits for a later one.
func TestFlushBeforeReadBatchesArrivedEvents(t *testing.T) {
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte("data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: {\"n\":3}\n\n"))
		_, _ = pw.Write([]byte("data: {\"n\":4}\n\n"))
		_ = pw.Close()
	}()
	events := 0
	var flushedAfter []int // events handled at each flush
	rd := newSSEReader(flushBeforeRead{pr, func() { flushedAfter = append(flushedAfter, events) }}, 1<<10)
	for {
		if _, _, err := rd.Next(); err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			break
		}
		events++
	}
	if fmt.Sprint(flushedAfter) != "[0 3 4]" {
		t.Fatalf("flushes after %v events, want [0 3 4]: one before each read, none per event", flushedAfter)
	}
}

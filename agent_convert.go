package chatkit

// From OpenAI's Responses API to ChatKit and back: a reader for the
// Responses event stream, a decoder for the events the agent needs, the
// converter that turns them into ChatKit events (reference §10.2), and the
// conversion of stored thread items into the next turn's input (§10.5).
// Nothing here does I/O beyond reading the io.Reader it is given, starts a
// goroutine or knows Caddy; one stream's state is a few small structs and
// reused buffers.

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ---------------------------------------------------------------- SSE reader

// errSSEEventTooLarge is returned for an event longer than the reader's bound.
var errSSEEventTooLarge = errors.New("server-sent event exceeds the size limit")

// sseReadBuffer is the reader's line buffer. Responses delta events are a
// few hundred bytes; longer lines are assembled in the event buffer.
const sseReadBuffer = 1024

// sseReader reads a server-sent event stream (the WHATWG format OpenAI
// uses: `event: x\ndata: {...}\n\n`). Lines end in LF or CRLF; comments,
// `id` and `retry` are ignored; several data lines are joined with LF. It
// allocates nothing per line once its buffers have grown to the usual event
// size, and drops a buffer an unusually large event grew.
type sseReader struct {
	r       *bufio.Reader
	max     int
	event   []byte
	data    []byte
	hasData bool
	started bool
}

// newSSEReader reads events from r; maxEvent bounds one event's data (and
// any one line) in bytes.
func newSSEReader(r io.Reader, maxEvent int) *sseReader {
	return &sseReader{r: bufio.NewReaderSize(r, sseReadBuffer), max: maxEvent}
}

// Next returns the next event's type ("message" when the stream names
// none) and data, both valid until the next call. At the end of the stream
// it returns io.EOF; an event the stream did not finish with a blank line
// is dropped, as the format says.
func (s *sseReader) Next() (event, data []byte, err error) {
	if cap(s.data) > agentKeepBuffer {
		s.data = nil
	}
	if cap(s.event) > agentKeepBuffer {
		s.event = nil
	}
	s.event, s.data, s.hasData = s.event[:0], s.data[:0], false
	for {
		line, err := s.r.ReadSlice('\n')
		first := !s.started
		s.started = true
		if err == bufio.ErrBufferFull {
			var inData bool
			if line, inData, err = s.readLongLine(line); err != nil {
				return nil, nil, err
			}
			if inData {
				continue
			}
		} else if err != nil {
			return nil, nil, err // io.EOF at the end
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if first {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		if len(line) == 0 {
			if !s.hasData {
				s.event = s.event[:0]
				continue
			}
			if len(s.event) == 0 {
				s.event = append(s.event, "message"...)
			}
			return s.event, s.data, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "event":
			s.event = append(s.event[:0], value...)
		case "data":
			if err := s.appendData(value); err != nil {
				return nil, nil, err
			}
		}
	}
}

func (s *sseReader) appendData(value []byte) error {
	if s.hasData {
		s.data = append(s.data, '\n')
	}
	s.hasData = true
	if len(s.data)+len(value) > s.max {
		return errSSEEventTooLarge
	}
	s.data = append(s.data, value...)
	return nil
}

// readLongLine finishes a line longer than the read buffer. A data line is
// appended to the event's data as it arrives (inData); any other line is
// returned whole (bounded like data, and rare).
func (s *sseReader) readLongLine(head []byte) (line []byte, inData bool, err error) {
	isData := bytes.HasPrefix(head, []byte("data:"))
	if !isData {
		// Not worth streaming: event names and comments are short. Keep
		// reading into a copy, bounded.
		line = append([]byte(nil), head...)
		for {
			more, err := s.r.ReadSlice('\n')
			if len(line)+len(more) > s.max {
				return nil, false, errSSEEventTooLarge
			}
			line = append(line, more...)
			if err != bufio.ErrBufferFull {
				return line, false, err
			}
		}
	}
	value := head[len("data:"):]
	if len(value) > 0 && value[0] == ' ' {
		value = value[1:]
	}
	if err := s.appendData(value); err != nil {
		return nil, true, err
	}
	for {
		more, err := s.r.ReadSlice('\n')
		last := err != bufio.ErrBufferFull
		if last && err != nil {
			return nil, true, err
		}
		if last {
			more = bytes.TrimSuffix(bytes.TrimSuffix(more, []byte("\n")), []byte("\r"))
		}
		if len(s.data)+len(more) > s.max {
			return nil, true, errSSEEventTooLarge
		}
		s.data = append(s.data, more...)
		if last {
			return nil, true, nil
		}
	}
}

// ---------------------------------------------------------------- Responses events

// responsesEvent is one Responses stream event, flattened: only the fields
// the agent reads, named as in OpenAI's streaming-events reference (and
// openai-go v3's responses package). Decode reuses it.
type responsesEvent struct {
	Type           string `json:"type"`
	SequenceNumber int64  `json:"sequence_number"`
	ItemID         string `json:"item_id"`
	OutputIndex    int    `json:"output_index"`
	ContentIndex   int    `json:"content_index"`
	SummaryIndex   int    `json:"summary_index"`
	// Delta is the new text of output_text.delta, refusal.delta and
	// reasoning_summary_text.delta.
	Delta string `json:"delta"`
	// Text is the full text of output_text.done and reasoning_summary_text.done.
	Text string `json:"text"`
	// Refusal is the full text of refusal.done.
	Refusal string `json:"refusal"`
	// Item is the output item of output_item.added and .done.
	Item responsesItem `json:"item"`
	// Part is the content part of content_part.added and .done.
	Part responsesPart `json:"part"`
	// Annotation is output_text.annotation.added's citation.
	Annotation responsesAnnotation `json:"annotation"`
	// Response is the response of the lifecycle events.
	Response responsesResponse `json:"response"`
	// Code and Message are the `error` event's, as documented; the API has
	// also been seen nesting them in Error.
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Error   *responsesError `json:"error"`
}

// responsesItem is an output item: message, reasoning, function_call, ….
type responsesItem struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Status  string          `json:"status"`
	Content []responsesPart `json:"content"`
	Summary []responsesPart `json:"summary"`
	// ServerLabel names the MCP server of mcp_call and mcp_list_tools.
	ServerLabel string `json:"server_label"`
}

// responsesPart is a content part (output_text, refusal, reasoning_text) or
// a reasoning summary part (summary_text).
type responsesPart struct {
	Type        string                `json:"type"`
	Text        string                `json:"text"`
	Refusal     string                `json:"refusal"`
	Annotations []responsesAnnotation `json:"annotations"`
}

// responsesAnnotation is a citation: url_citation, file_citation,
// container_file_citation or file_path.
type responsesAnnotation struct {
	Type       string `json:"type"`
	URL        string `json:"url"`
	Title      string `json:"title"`
	Filename   string `json:"filename"`
	Index      int    `json:"index"`
	StartIndex int    `json:"start_index"`
	EndIndex   int    `json:"end_index"`
}

// responsesResponse is the response object of the lifecycle events.
type responsesResponse struct {
	ID                string          `json:"id"`
	Status            string          `json:"status"`
	Usage             *agentUsage     `json:"usage"`
	Error             *responsesError `json:"error"`
	IncompleteDetails *struct {
		Reason string `json:"reason"`
	} `json:"incomplete_details"`
}

// responsesError is a response's error, or a nested `error` event's.
type responsesError struct {
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// agentUsage is what a response cost, in tokens.
type agentUsage struct {
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
	TotalTokens  int64 `json:"total_tokens"`
}

// responsesEventRead reports whether the agent reads events of this type;
// every other type is skipped unread.
func responsesEventRead(t string) bool {
	switch t {
	case "response.created", "response.queued", "response.in_progress",
		"response.output_item.added", "response.output_item.done",
		"response.content_part.added", "response.content_part.done",
		"response.output_text.delta", "response.output_text.done",
		"response.output_text.annotation.added",
		"response.refusal.delta", "response.refusal.done",
		"response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
		"response.completed", "response.incomplete", "response.failed", "error":
		return true
	}
	return agentHostedToolEvent(t) != ""
}

// agentHostedToolEvent is the output item type a hosted tool's progress
// event is about, "" for other events. Names from OpenAI's streaming
// events reference (openai-python types/responses:
// response_web_search_call_*_event.py, response_file_search_call_*,
// response_mcp_call_in_progress_event.py, response_mcp_list_tools_*).
func agentHostedToolEvent(t string) string {
	switch t {
	case "response.web_search_call.in_progress", "response.web_search_call.searching":
		return "web_search_call"
	case "response.file_search_call.in_progress", "response.file_search_call.searching":
		return "file_search_call"
	case "response.mcp_call.in_progress":
		return "mcp_call"
	case "response.mcp_list_tools.in_progress":
		return "mcp_list_tools"
	}
	return ""
}

// decode reads one event's data. An event of a type the agent does not
// read keeps only its Type, whatever its shape; a malformed event the agent
// needs is an error.
func (ev *responsesEvent) decode(data []byte) error {
	*ev = responsesEvent{}
	if ev.decodeDelta(data) {
		return nil
	}
	*ev = responsesEvent{}
	err := json.Unmarshal(data, ev)
	if err == nil && responsesEventRead(ev.Type) {
		return nil
	}
	var head struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(data, &head) != nil || head.Type == "" {
		return errors.New("the Responses stream sent an event that is not a JSON object with a type")
	}
	if responsesEventRead(head.Type) {
		return errors.New("the Responses stream sent a malformed " + head.Type + " event")
	}
	*ev = responsesEvent{Type: head.Type}
	return nil
}

var errAgentSlowPath = errors.New("not a plain delta event")

// decodeDelta reads a text delta event, most of a stream's events, without
// reflection: their members are strings and numbers (and `logprobs`, not
// read). It reports false for any other event, or one it cannot read this
// way, which then goes through encoding/json.
func (ev *responsesEvent) decodeDelta(data []byte) bool {
	if !json.Valid(data) || !agentIsObject(data[agentSkipSpace(data, 0):]) {
		return false
	}
	ok := true
	_ = agentEachRawMember(data, func(key, val []byte) error {
		var err error
		switch string(key) {
		case `"type"`:
			ev.Type, err = agentString(val, "type")
		case `"delta"`:
			ev.Delta, err = agentString(val, "delta")
		case `"item_id"`:
			ev.ItemID, err = agentString(val, "item_id")
		case `"sequence_number"`:
			ev.SequenceNumber, err = strconv.ParseInt(string(val), 10, 64)
		case `"output_index"`:
			ev.OutputIndex, err = strconv.Atoi(string(val))
		case `"content_index"`:
			ev.ContentIndex, err = strconv.Atoi(string(val))
		case `"summary_index"`:
			ev.SummaryIndex, err = strconv.Atoi(string(val))
		case `"logprobs"`, `"obfuscation"`:
			// Not read.
		default:
			// Anything else, a field of another event or a key
			// encoding/json would match case-insensitively: its way.
			err = errAgentSlowPath
		}
		if err != nil {
			ok = false
		}
		return err
	})
	switch ev.Type {
	case "response.output_text.delta", "response.refusal.delta", "response.reasoning_summary_text.delta":
		return ok
	}
	return false
}

// ---------------------------------------------------------------- outcome

// agentOutcomeKind is how a model run ended.
type agentOutcomeKind uint8

const (
	agentRunning       agentOutcomeKind = iota // no terminal event yet
	agentCompleted                             // response.completed
	agentIncomplete                            // response.incomplete (Reason)
	agentFailed                                // response.failed (Code)
	agentStreamErrored                         // an `error` event (Code)
	agentInterrupted                           // Interrupt: cancelled, timed out or cut off
)

// String names the kind for logs.
func (k agentOutcomeKind) String() string {
	switch k {
	case agentRunning:
		return "running"
	case agentCompleted:
		return "completed"
	case agentIncomplete:
		return "incomplete"
	case agentFailed:
		return "failed"
	case agentStreamErrored:
		return "error"
	case agentInterrupted:
		return "interrupted"
	}
	return "unknown"
}

// agentCut says why an answer was cut short; it picks the note the next
// turn's history carries.
type agentCut uint8

const (
	agentCutNone      agentCut = iota
	agentCutCancelled          // the user stopped it (the browser went away)
	agentCutFailed             // an upstream error, a timeout, a dropped connection
	agentCutLength             // max_output_tokens
	agentCutFiltered           // the content filter
)

// String names the cut for logs.
func (c agentCut) String() string {
	switch c {
	case agentCutNone:
		return "none"
	case agentCutCancelled:
		return "cancelled"
	case agentCutFailed:
		return "failed"
	case agentCutLength:
		return "length"
	case agentCutFiltered:
		return "filtered"
	}
	return "unknown"
}

// agentCutNotes are what the model is told, in the next turn, about an
// answer that was cut short.
var agentCutNotes = [...]string{
	agentCutCancelled: "The user stopped the previous answer before it was finished, so it was cut off. Do not continue it unless the user asks.",
	agentCutFailed:    "The previous answer was cut off by an error before it was finished.",
	agentCutLength:    "The previous answer was cut off because it reached the maximum length.",
	agentCutFiltered:  "The previous answer was stopped by the content filter before it was finished.",
}

// agentOutcome is how the run ended.
type agentOutcome struct {
	Kind agentOutcomeKind
	Cut  agentCut
	// Reason is response.incomplete's reason (max_output_tokens, content_filter).
	Reason string
	// Code is OpenAI's error code (response.failed, `error`), for logs and
	// metrics. Message is OpenAI's text: never send it to the client.
	Code    string
	Message string
}

// streamError is the ChatKit error event the client gets for this outcome,
// and whether it gets one: the one table from a run's end to what the
// person sees and whether retrying can help.
func (o *agentOutcome) streamError() (agentStreamError, bool) {
	switch o.Kind {
	case agentIncomplete:
		if o.Cut == agentCutFiltered {
			return agentStreamError{agentErrorCodeCustom, "The answer was stopped by the content filter.", false}, true
		}
		return agentStreamError{agentErrorCodeCustom, "The answer was cut off because it reached the length limit.", true}, true
	case agentFailed, agentStreamErrored:
		return agentUpstreamError(o.Code), true
	case agentInterrupted:
		if o.Cut == agentCutCancelled {
			return agentStreamError{}, false // nobody is listening
		}
		return agentStreamError{Code: agentErrorCodeStream, AllowRetry: true}, true
	}
	return agentStreamError{}, false
}

// agentUpstreamError maps an OpenAI error code from inside a stream to the
// error event. Unknown codes are treated as transient, as chatkit-python
// treats every failure.
func agentUpstreamError(code string) agentStreamError {
	switch {
	case code == "rate_limit_exceeded" || code == "too_many_requests" || code == "slow_down":
		return agentStreamError{agentErrorCodeCustom, "The assistant is busy right now. Try again in a moment.", true}
	case code == "context_length_exceeded":
		return agentStreamError{agentErrorCodeCustom, "This conversation is too long for the assistant. Start a new chat.", false}
	case code == "insufficient_quota" || code == "credit_balance_exhausted":
		return agentStreamError{agentErrorCodeCustom, "The assistant is unavailable right now.", false}
	case code == "invalid_prompt" || code == "bio_policy" || code == "cyber_policy":
		return agentStreamError{agentErrorCodeCustom, "The assistant cannot answer this message.", false}
	case code == "data_residency_mismatch" || strings.HasPrefix(code, "invalid_") ||
		strings.HasPrefix(code, "image_") || strings.HasPrefix(code, "unsupported_") ||
		code == "empty_image_file" || code == "failed_to_download_image":
		// Something in the request itself: the same request fails again.
		return agentStreamError{Code: agentErrorCodeStream, AllowRetry: false}
	}
	return agentStreamError{Code: agentErrorCodeStream, AllowRetry: true}
}

// ---------------------------------------------------------------- converter

// agentConverterConfig is what a converter needs from the turn.
type agentConverterConfig struct {
	// ThreadID is the thread the items belong to.
	ThreadID string
	// NewID returns a fresh item id with the prefix ("msg", "wf", "shcx"),
	// unique in the thread. OpenAI's ids are never reused as ours.
	NewID func(prefix string) string
	// Now is the clock for created_at and workflow durations.
	Now func() time.Time
	// Reasoning turns reasoning summaries into a workflow item of thought
	// tasks; off, reasoning items are skipped.
	Reasoning bool
	// Tools words the progress shown while a hosted tool runs; nil says
	// only "Searching the web…" and the like, naming no MCP server.
	Tools *agentToolProgress
}

// agentDoneItem is an item the converter finished: the handler persists it
// (add, not upsert) before sending the frames of the same call.
type agentDoneItem struct {
	ID        string
	Type      string
	CreatedAt time.Time
	// JSON is the item as stored and sent; it is valid until the next call
	// on the converter.
	JSON []byte
}

// agentConverter turns one model run's Responses events into ChatKit
// events, following chatkit-python's stream_agent_response for text
// answers: for each message output item an assistant_message item, added,
// its content parts added, text deltas, parts done, item done. Refusals
// become text. Feed it events in order; after each call, persist Done(),
// then write out the frames. It is not safe for concurrent use.
type agentConverter struct {
	cfg agentConverterConfig
	out *agentFrames

	messages []agentOpenMessage // open assistant items, in the order added
	finished []string           // upstream ids of the items already done

	workflow      *agentWorkflowItem // the open reasoning workflow
	workflowStart time.Time
	thought       int // index of the streaming thought task; -1 for none
	thoughtItem   string
	thoughtPart   int

	toolCalls []string // upstream ids of the hosted tool calls announced

	outcome    agentOutcome
	usage      agentUsage
	hasUsage   bool
	responseID string
	answering  bool
	answered   bool // an answer with text was saved in this run

	done    []agentDoneItem
	doneBuf []byte
}

// agentOpenMessage is an assistant item being streamed.
type agentOpenMessage struct {
	upstreamID string
	item       agentAssistantMessage
	parts      []agentOpenPart
}

// agentOpenPart is a content part being streamed.
type agentOpenPart struct {
	text        []byte
	annotations []agentAnnotation
	done        bool
}

// newAgentConverter makes a converter that writes its frames into out.
func newAgentConverter(cfg agentConverterConfig, out *agentFrames) *agentConverter {
	return &agentConverter{cfg: cfg, out: out, thought: -1}
}

// Done returns the items finished by the last Feed or Interrupt call, to
// persist in order; the slice and the JSON are reused by the next call.
func (c *agentConverter) Done() []agentDoneItem { return c.done }

// Outcome is how the run ended; Kind is agentRunning until it has.
func (c *agentConverter) Outcome() agentOutcome { return c.outcome }

// Finished reports whether the run has ended (no more events are read).
func (c *agentConverter) Finished() bool { return c.outcome.Kind != agentRunning }

// Usage is the tokens the run reported with its terminal event, if it did.
func (c *agentConverter) Usage() (agentUsage, bool) { return c.usage, c.hasUsage }

// ResponseID is OpenAI's id of the response (for logs), once known.
func (c *agentConverter) ResponseID() string { return c.responseID }

// Answering reports whether the model has started its answer (an item has
// been sent to the client).
func (c *agentConverter) Answering() bool { return c.answering }

func (c *agentConverter) begin() {
	c.done = c.done[:0]
	if cap(c.doneBuf) > agentKeepBuffer {
		c.doneBuf = nil
	}
	c.doneBuf = c.doneBuf[:0]
}

// Feed converts one event. Events after the run's end are ignored, as are
// types the agent does not read.
func (c *agentConverter) Feed(ev *responsesEvent) {
	c.begin()
	if c.Finished() {
		return
	}
	switch ev.Type {
	case "response.created", "response.queued", "response.in_progress":
		if ev.Response.ID != "" {
			c.responseID = ev.Response.ID
		}
	case "response.output_item.added":
		switch ev.Item.Type {
		case "message":
			c.openMessage(ev.Item.ID, ev.Item.Content)
		case "reasoning":
			if c.cfg.Reasoning && c.workflow == nil {
				c.openWorkflow()
			}
		default:
			c.hostedToolStarted(ev.Item.Type, ev.Item.ID, ev.Item.ServerLabel)
		}
	case "response.content_part.added":
		if ev.Part.Type == "reasoning_text" || !agentPartIndexOK(ev.ContentIndex) {
			return
		}
		m := c.message(ev.ItemID)
		if m == nil {
			return
		}
		if ev.ContentIndex > 0 {
			c.ensurePart(m, ev.ContentIndex-1)
		}
		if len(m.parts) == ev.ContentIndex {
			m.parts = append(m.parts, agentOpenPart{})
		}
		p := &m.parts[ev.ContentIndex]
		content := agentConvertPart(&ev.Part)
		p.text = append(p.text[:0], content.Text...)
		p.annotations = content.Annotations
		p.done = false
		c.out.partAdded(m.item.ID, ev.ContentIndex, &content)
	case "response.output_text.delta", "response.refusal.delta":
		if ev.Delta == "" {
			return
		}
		if m, p := c.part(ev); p != nil {
			p.text = append(p.text, ev.Delta...)
			c.out.textDelta(m.item.ID, ev.ContentIndex, ev.Delta)
		}
	case "response.output_text.done", "response.refusal.done":
		text := ev.Text
		if ev.Type == "response.refusal.done" {
			text = ev.Refusal
		}
		if m, p := c.part(ev); p != nil {
			p.text = append(p.text[:0], text...)
			p.done = true
			c.out.partDone(m.item.ID, ev.ContentIndex, &agentAssistantContent{Text: text, Annotations: p.annotations})
		}
	case "response.content_part.done":
		if ev.Part.Type == "reasoning_text" {
			return
		}
		if m, p := c.part(ev); p != nil {
			c.mergeAnnotations(m, ev.ContentIndex, &ev.Part)
		}
	case "response.output_text.annotation.added":
		a, ok := agentConvertAnnotation(&ev.Annotation)
		if !ok {
			return
		}
		if m, p := c.part(ev); p != nil {
			// ChatKit's index counts the annotations kept, not OpenAI's.
			p.annotations = append(p.annotations, a)
			c.out.annotationAdded(m.item.ID, ev.ContentIndex, len(p.annotations)-1, &a)
		}
	case "response.output_item.done":
		if ev.Item.Type == "message" {
			m := c.message(ev.Item.ID)
			if m == nil {
				return
			}
			if len(ev.Item.Content) > 0 {
				m.item.Content = m.item.Content[:0]
				for i := range ev.Item.Content {
					part := agentConvertPart(&ev.Item.Content[i])
					if i < len(m.parts) {
						part.Annotations = c.mergeAnnotations(m, i, &ev.Item.Content[i])
					}
					m.item.Content = append(m.item.Content, part)
				}
			} else {
				m.item.Content = m.partsContent()
			}
			c.finishMessage(m)
		}
	case "response.reasoning_summary_text.delta":
		c.thoughtDelta(ev)
	case "response.reasoning_summary_text.done":
		c.thoughtDone(ev)
	case "response.completed":
		c.end(ev, agentOutcome{Kind: agentCompleted})
	case "response.incomplete":
		o := agentOutcome{Kind: agentIncomplete, Cut: agentCutLength}
		if d := ev.Response.IncompleteDetails; d != nil {
			o.Reason = d.Reason
		}
		if o.Reason == "content_filter" {
			o.Cut = agentCutFiltered
		}
		c.end(ev, o)
	case "response.failed":
		o := agentOutcome{Kind: agentFailed, Cut: agentCutFailed}
		if e := ev.Response.Error; e != nil {
			o.Code, o.Message = e.Code, e.Message
		}
		c.end(ev, o)
	case "error":
		o := agentOutcome{Kind: agentStreamErrored, Cut: agentCutFailed, Code: ev.Code, Message: ev.Message}
		if e := ev.Error; e != nil {
			if o.Code == "" {
				o.Code = e.Code
			}
			if o.Code == "" {
				o.Code = e.Type
			}
			if o.Message == "" {
				o.Message = e.Message
			}
		}
		c.end(ev, o)
	default:
		if itemType := agentHostedToolEvent(ev.Type); itemType != "" {
			c.hostedToolStarted(itemType, ev.ItemID, "")
		}
	}
}

// Interrupt ends a run that stopped without a terminal event: the user
// cancelled, the model fell silent past idle_timeout, or the stream broke.
// Assistant items with text are finished with the text so far (frames and
// Done), empty ones are removed, and a hidden note tells the next turn the
// answer was cut off. A run that has already ended is left as it is.
func (c *agentConverter) Interrupt(cut agentCut) {
	c.begin()
	if c.Finished() {
		return
	}
	c.outcome = agentOutcome{Kind: agentInterrupted, Cut: cut}
	c.closeAll(cut)
}

func (c *agentConverter) end(ev *responsesEvent, o agentOutcome) {
	if ev.Response.ID != "" {
		c.responseID = ev.Response.ID
	}
	if u := ev.Response.Usage; u != nil {
		c.usage, c.hasUsage = *u, true
	}
	c.outcome = o
	c.closeAll(o.Cut)
}

// closeAll finishes whatever is still open when the run ends, and leaves
// the cut-off note.
func (c *agentConverter) closeAll(cut agentCut) {
	for len(c.messages) > 0 {
		m := &c.messages[0]
		m.item.Content = m.partsContent()
		if agentContentBlank(m.item.Content) {
			c.out.itemRemoved(m.item.ID) // never saved: the client drops it too
			c.messages = append(c.messages[:0], c.messages[1:]...)
			continue
		}
		c.finishMessage(m)
	}
	if c.workflow != nil && len(c.workflow.Tasks) == 0 && cut != agentCutNone {
		c.out.itemRemoved(c.workflow.ID)
		c.workflow = nil
	}
	c.endWorkflow()
	if cut == agentCutCancelled || (cut != agentCutNone && c.answered) {
		note := &agentHiddenContext{
			agentItemHeader: agentItemHeader{c.cfg.NewID("shcx"), c.cfg.ThreadID, c.cfg.Now()},
			Content:         agentCutNotes[cut],
		}
		c.finish(note)
	}
}

// message returns the open assistant item for an upstream item id, opening
// one if the stream never announced it (so the client still sees added
// before anything else); nil for an item already done.
func (c *agentConverter) message(upstreamID string) *agentOpenMessage {
	for i := range c.messages {
		if c.messages[i].upstreamID == upstreamID {
			return &c.messages[i]
		}
	}
	for _, id := range c.finished {
		if id == upstreamID {
			return nil
		}
	}
	return c.openMessage(upstreamID, nil)
}

func (c *agentConverter) openMessage(upstreamID string, content []responsesPart) *agentOpenMessage {
	c.endWorkflow() // the answer starts: the thinking is over
	c.messages = append(c.messages, agentOpenMessage{
		upstreamID: upstreamID,
		item: agentAssistantMessage{
			agentItemHeader: agentItemHeader{c.cfg.NewID("msg"), c.cfg.ThreadID, c.cfg.Now()},
			Content:         []agentAssistantContent{},
		},
	})
	m := &c.messages[len(c.messages)-1]
	for i := range content {
		part := agentConvertPart(&content[i])
		m.item.Content = append(m.item.Content, part)
		m.parts = append(m.parts, agentOpenPart{text: []byte(part.Text), annotations: part.Annotations})
	}
	c.answering = true
	c.out.itemAdded(&m.item)
	return m
}

// agentMaxContentParts bounds the content parts of one answer: an index
// past it names nothing (and must not make the converter allocate).
const agentMaxContentParts = 32

func agentPartIndexOK(i int) bool { return i >= 0 && i < agentMaxContentParts }

// part returns the open item and content part an event names, announcing
// them to the client first if the stream skipped that; nil for an index no
// answer has.
func (c *agentConverter) part(ev *responsesEvent) (*agentOpenMessage, *agentOpenPart) {
	if !agentPartIndexOK(ev.ContentIndex) {
		return nil, nil
	}
	m := c.message(ev.ItemID)
	if m == nil {
		return nil, nil
	}
	return m, c.ensurePart(m, ev.ContentIndex)
}

// ensurePart returns part i of m, announcing it (and any before it) first
// if the stream skipped content_part.added.
func (c *agentConverter) ensurePart(m *agentOpenMessage, i int) *agentOpenPart {
	for len(m.parts) <= i {
		m.parts = append(m.parts, agentOpenPart{})
		c.out.partAdded(m.item.ID, len(m.parts)-1, &agentAssistantContent{})
	}
	return &m.parts[i]
}

func (m *agentOpenMessage) partsContent() []agentAssistantContent {
	content := m.item.Content[:0]
	for i := range m.parts {
		content = append(content, agentAssistantContent{Text: string(m.parts[i].text), Annotations: m.parts[i].annotations})
	}
	return content
}

// finishMessage sends and saves m with its final content, closing parts
// the stream left open, and forgets it.
func (c *agentConverter) finishMessage(m *agentOpenMessage) {
	for i := range m.parts {
		if !m.parts[i].done && i < len(m.item.Content) {
			m.parts[i].done = true
			c.out.partDone(m.item.ID, i, &m.item.Content[i])
		}
	}
	if !agentContentBlank(m.item.Content) {
		c.answered = true
	}
	c.finish(&m.item)
	c.finished = append(c.finished, m.upstreamID)
	for i := range c.messages {
		if &c.messages[i] == m {
			c.messages = append(c.messages[:i], c.messages[i+1:]...)
			break
		}
	}
}

// finish records a finished item for the store and sends its done event
// (hidden items are not sent).
func (c *agentConverter) finish(it agentItem) {
	start := len(c.doneBuf)
	c.doneBuf = it.appendJSON(c.doneBuf)
	blob := c.doneBuf[start:len(c.doneBuf):len(c.doneBuf)]
	h := it.header()
	c.done = append(c.done, agentDoneItem{ID: h.ID, Type: it.itemType(), CreatedAt: h.CreatedAt, JSON: blob})
	if !agentItemHidden(it.itemType()) {
		c.out.itemDoneJSON(blob)
	}
}

func (c *agentConverter) openWorkflow() {
	now := c.cfg.Now()
	c.workflow = &agentWorkflowItem{
		agentItemHeader: agentItemHeader{c.cfg.NewID("wf"), c.cfg.ThreadID, now},
		Kind:            "reasoning",
		Tasks:           []agentThought{},
		Duration:        -1,
	}
	c.workflowStart = now
	c.thought = -1
	c.answering = true
	c.out.itemAdded(c.workflow)
}

// endWorkflow closes the open workflow with its duration (collapsed), as
// chatkit-python does when the answer starts.
func (c *agentConverter) endWorkflow() {
	w := c.workflow
	if w == nil {
		return
	}
	if len(w.Tasks) == 0 {
		// Reasoning without a summary: nothing to show or keep.
		c.out.itemRemoved(w.ID)
		c.workflow, c.thought = nil, -1
		return
	}
	w.Duration = int(c.cfg.Now().Sub(c.workflowStart) / time.Second)
	w.Expanded = false
	c.workflow, c.thought = nil, -1
	c.finish(w)
}

// thoughtDelta streams the first reasoning summary as a thought task; later
// summaries arrive whole with their done event (as chatkit-python does).
func (c *agentConverter) thoughtDelta(ev *responsesEvent) {
	w := c.workflow
	if w == nil || ev.Delta == "" {
		return
	}
	switch {
	case len(w.Tasks) == 0:
		w.Tasks = append(w.Tasks, agentThought{Content: ev.Delta})
		c.thought, c.thoughtItem, c.thoughtPart = 0, ev.ItemID, ev.SummaryIndex
		c.out.taskAdded(w.ID, 0, &w.Tasks[0])
	case c.thought >= 0 && ev.ItemID == c.thoughtItem && ev.SummaryIndex == c.thoughtPart:
		t := &w.Tasks[c.thought]
		t.Content += ev.Delta
		c.out.taskUpdated(w.ID, c.thought, t)
	}
}

func (c *agentConverter) thoughtDone(ev *responsesEvent) {
	w := c.workflow
	if w == nil {
		return
	}
	if c.thought >= 0 && ev.ItemID == c.thoughtItem && ev.SummaryIndex == c.thoughtPart {
		t := &w.Tasks[c.thought]
		if t.Content != ev.Text { // usually the deltas already said it all
			t.Content = ev.Text
			c.out.taskUpdated(w.ID, c.thought, t)
		}
		c.thought = -1
		return
	}
	if ev.Text == "" {
		return
	}
	w.Tasks = append(w.Tasks, agentThought{Content: ev.Text})
	c.out.taskAdded(w.ID, len(w.Tasks)-1, &w.Tasks[len(w.Tasks)-1])
}

// agentConvertPart maps an output_text or refusal part to ChatKit content.
func agentConvertPart(p *responsesPart) agentAssistantContent {
	if p.Type == "refusal" {
		return agentAssistantContent{Text: p.Refusal}
	}
	c := agentAssistantContent{Text: p.Text}
	for i := range p.Annotations {
		if a, ok := agentConvertAnnotation(&p.Annotations[i]); ok {
			c.Annotations = append(c.Annotations, a)
		}
	}
	return c
}

// agentConvertAnnotation maps a citation as chatkit-python does: URL
// citations at their end, file citations at their index (dropped without a
// file name), container file citations at their end; anything else dropped.
func agentConvertAnnotation(a *responsesAnnotation) (agentAnnotation, bool) {
	switch a.Type {
	case "url_citation":
		if a.URL == "" {
			return agentAnnotation{}, false
		}
		// ChatKit shows the title as the link's text: never leave it blank.
		return agentAnnotation{SourceType: "url", Title: cmp.Or(strings.TrimSpace(a.Title), a.URL), URL: a.URL, Index: a.EndIndex}, true
	case "file_citation":
		if a.Filename != "" {
			return agentAnnotation{SourceType: "file", Title: a.Filename, Filename: a.Filename, Index: a.Index}, true
		}
	case "container_file_citation":
		if a.Filename != "" {
			return agentAnnotation{SourceType: "file", Title: a.Filename, Filename: a.Filename, Index: a.EndIndex}, true
		}
	}
	return agentAnnotation{}, false
}

// hostedToolStarted tells the visitor a hosted tool is running, once per
// call: OpenAI announces it with output_item.added and again with its
// in_progress and searching events. Other item types are not tools.
func (c *agentConverter) hostedToolStarted(itemType, upstreamID, serverLabel string) {
	p := c.cfg.Tools
	if p == nil {
		p = &agentToolProgress{}
	}
	icon, text, ok := p.text(itemType, serverLabel)
	if !ok || (upstreamID != "" && slices.Contains(c.toolCalls, upstreamID)) {
		return
	}
	if upstreamID != "" && len(c.toolCalls) < agentMaxToolCallsTracked {
		c.toolCalls = append(c.toolCalls, upstreamID)
	}
	c.out.progress(icon, text)
}

// agentMaxToolCallsTracked bounds the tool calls remembered for one run;
// past it a call may be announced twice, which is harmless.
const agentMaxToolCallsTracked = 64

// mergeAnnotations adds to part i of m the annotations of the final part
// (content_part.done, output_item.done) that annotation.added events did
// not bring, and returns the part's annotations; one already there is
// never added twice. Each is announced while the part is open; once the
// part is done the client gets them with the item's done event.
func (c *agentConverter) mergeAnnotations(m *agentOpenMessage, i int, final *responsesPart) []agentAnnotation {
	p := &m.parts[i]
	for j := range final.Annotations {
		a, ok := agentConvertAnnotation(&final.Annotations[j])
		if !ok || slices.Contains(p.annotations, a) {
			continue
		}
		p.annotations = append(p.annotations, a)
		if !p.done {
			c.out.annotationAdded(m.item.ID, i, len(p.annotations)-1, &a)
		}
	}
	return p.annotations
}

func agentContentBlank(content []agentAssistantContent) bool {
	for i := range content {
		if strings.TrimSpace(content[i].Text) != "" {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------- history

// agentStoredItem is the part of a stored item the history reads.
type agentStoredItem struct {
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
	// QuotedText is a user message's quoted passage.
	QuotedText string `json:"quoted_text"`
	// Attachments are a user message's files.
	Attachments []agentAttachment `json:"attachments"`
}

// appendAgentHistory appends the Responses `input` array for a turn, built
// from stored items oldest first with the new message last (RecentItems'
// order); only the newest n are used (n ≤ 0: all). User messages become
// user input_text (tags as @<text>), assistant messages assistant
// output_text, hidden context a user message in <HiddenContext> tags (so
// the model learns an answer was cut off); workflows and other items are
// left out, as chatkit-python's converter leaves reasoning out. skipped
// counts items that could not be read.
func appendAgentHistory(buf []byte, items []json.RawMessage, n int) (out []byte, skipped int) {
	return appendAgentHistoryFiles(buf, items, n, nil)
}

// appendAgentHistoryFiles is appendAgentHistory with the files that user
// messages carry sent inline after their text (see appendAgentUserParts).
func appendAgentHistoryFiles(buf []byte, items []json.RawMessage, n int, files agentFiles) (out []byte, skipped int) {
	if n > 0 && len(items) > n {
		items = items[len(items)-n:]
	}
	buf = append(buf, '[')
	first := true
	message := func(role string) {
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = append(buf, `{"role":"`...)
		buf = append(buf, role...)
		buf = append(buf, `","content":[`...)
	}
	inputText := func(text string) {
		buf = append(buf, `{"type":"input_text","text":`...)
		buf = appendAgentString(buf, text)
		buf = append(buf, "}]}"...)
	}
	var it agentStoredItem
	for i, raw := range items {
		it = agentStoredItem{}
		if json.Unmarshal(raw, &it) != nil {
			skipped++
			continue
		}
		switch it.Type {
		case agentItemUserMessage:
			var parts []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			}
			if json.Unmarshal(it.Content, &parts) != nil {
				skipped++
				continue
			}
			var text strings.Builder
			for _, p := range parts {
				if p.Type == "input_tag" {
					text.WriteByte('@')
				}
				text.WriteString(p.Text)
			}
			message("user")
			buf = appendAgentUserParts(buf, text.String(), it.Attachments, files)
			buf = append(buf, "]}"...)
			if it.QuotedText != "" && i == len(items)-1 {
				message("user")
				inputText("The user is referring to this in particular: \n" + it.QuotedText)
			}
		case agentItemAssistantMessage:
			var parts []struct {
				Text string `json:"text"`
			}
			if json.Unmarshal(it.Content, &parts) != nil {
				skipped++
				continue
			}
			wrote := false
			for _, p := range parts {
				if p.Text == "" {
					continue
				}
				if !wrote {
					message("assistant")
				} else {
					buf = append(buf, ',')
				}
				wrote = true
				buf = append(buf, `{"type":"output_text","text":`...)
				buf = appendAgentString(buf, p.Text)
				buf = append(buf, `,"annotations":[]}`...)
			}
			if wrote {
				buf = append(buf, "]}"...)
			}
		case agentItemHiddenContext, agentItemHiddenContextApp:
			var content string
			if json.Unmarshal(it.Content, &content) != nil {
				skipped++ // app hidden context that is not text: nothing to say
				continue
			}
			message("user")
			inputText("Hidden context for the agent (not shown to the user):\n<HiddenContext>\n" + content + "\n</HiddenContext>")
		}
	}
	return append(buf, ']'), skipped
}

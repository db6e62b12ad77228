package fakeopenai

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"maps"
	"math"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// DefaultPromptModel is the model a response reports when the request named
// only a prompt (a dashboard prompt carries its own model).
const DefaultPromptModel = "gpt-5-mini"

// HugeDeltaBytes is the default size of a StreamFaultHugeDelta delta (2 MiB).
const HugeDeltaBytes = 2 << 20

// StreamFault selects a misbehaviour of a Responses answer once it started.
type StreamFault int

const (
	// StreamFaultNone answers normally.
	StreamFaultNone StreamFault = iota
	// StreamFaultFailed sends response.failed after ResponseScript.After
	// deltas (status "failed", error {code, message}, the partial message as
	// an incomplete output item, usage null) and ends the stream. Without
	// streaming: a 500 error.
	StreamFaultFailed
	// StreamFaultErrorEvent sends an error event after After deltas and ends
	// the stream. Without streaming: a 500 error.
	StreamFaultErrorEvent
	// StreamFaultStall sends After deltas, then nothing more until the
	// client goes away or the server closes. Without streaming: no answer.
	StreamFaultStall
	// StreamFaultReset resets the connection after After deltas.
	StreamFaultReset
	// StreamFaultHugeDelta sends, after After deltas, one extra delta of
	// HugeBytes characters, then carries on normally.
	StreamFaultHugeDelta
)

// Usage is the token count a response reports. Without a script the fake
// computes it: input tokens are ceil(R/4), R being the runes of the
// instructions, of every input item's Text (see InputItem.Text) and of the
// prompt's string variables; output tokens are ceil(runes of the answer/4);
// cached and reasoning tokens are 0. total_tokens is input + output.
type Usage struct {
	InputTokens, CachedTokens, OutputTokens, ReasoningTokens int
}

// ResponseScript scripts the answer to POST /v1/responses requests.
type ResponseScript struct {
	// Times is how many consecutive requests it applies to (default 1).
	Times int
	// Text is the answer; empty keeps the default (Options.ResponseText or
	// the echo of the last user message).
	Text string
	// Deltas splits the answer into this many output_text.delta events of
	// nearly equal length (at most one per rune); 0 sends one per word.
	Deltas int
	// Usage replaces the computed usage.
	Usage *Usage
	// Delay is waited before answering; the wait ends early, without an
	// answer, if the client goes away or the server closes.
	Delay time.Duration
	// DeltaDelay is waited before every delta instead of the event interval.
	DeltaDelay time.Duration
	// Status, when not 0, answers before any stream with this status and an
	// OpenAI-style error body (ErrorCode and ErrorMessage override its code
	// and message). Like session faults, it applies whatever the request
	// holds, even a bad key.
	Status int
	// Header holds extra response headers, e.g. "Retry-After",
	// "retry-after-ms" or "x-should-retry".
	Header map[string]string
	// Fault misbehaves once the answer started.
	Fault StreamFault
	// After is how many deltas go out before Fault; beyond the answer's
	// deltas it means after the last one, before output_text.done.
	After int
	// ErrorCode and ErrorMessage are the error of StreamFaultFailed and
	// StreamFaultErrorEvent; defaults "server_error" and OpenAI's generic
	// server error message.
	ErrorCode, ErrorMessage string
	// HugeBytes is the size of the StreamFaultHugeDelta delta; default
	// HugeDeltaBytes.
	HugeBytes int
	// FunctionCalls are function_call output items the response makes,
	// after the message; without Text there is no message. Calls the
	// request does not allow (see FunctionCall) are left out.
	FunctionCalls []FunctionCall
	// Reasoning puts a reasoning item (rs_…, empty summary) before the
	// calls of a response with FunctionCalls and no Text, as reasoning
	// models answer; its encrypted_content is set when the request's
	// include asks for reasoning.encrypted_content.
	Reasoning bool

	// ReasoningSummary, when not nil, makes the answer start with a
	// reasoning item, with one summary part per text when the request
	// asked for summaries (reasoning.summary) and none otherwise.
	ReasoningSummary []string
	// Hosted are hosted tool calls made before the message (see
	// HostedCall for the ones left out).
	Hosted []HostedCall
	// Annotations are the message's citations.
	Annotations []Annotation
}

type queuedScript struct {
	rs   ResponseScript
	left int
}

// ScriptResponse queues a script. Queued scripts apply to the following
// POST /v1/responses requests in FIFO order, each to rs.Times requests
// (default 1), valid or not; apart from Status, a script only shapes the
// answer of a request that passes every check.
func (s *Server) ScriptResponse(rs ResponseScript) {
	n := rs.Times
	if n <= 0 {
		n = 1
	}
	rs.Header = maps.Clone(rs.Header)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts = append(s.scripts, &queuedScript{rs: rs, left: n})
}

// SetEventInterval changes the wait before every streamed event but the
// first (0 = none). Streams already running keep the interval they started
// with.
func (s *Server) SetEventInterval(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eventInterval = d
}

// ResponsesCount returns how many POST /v1/responses requests arrived,
// whatever their outcome.
func (s *Server) ResponsesCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.responsesCount
}

// LastResponses returns the parsed body of the most recent POST
// /v1/responses, or nil if there was none or its body was not valid.
func (s *Server) LastResponses() *ResponsesRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.requests) - 1; i >= 0; i-- {
		if r := s.requests[i]; r.Method == http.MethodPost && r.Path == responsesPath {
			return r.Responses.clone()
		}
	}
	return nil
}

// ClientsGone returns how many Responses requests saw their client go away
// before the answer was complete.
func (s *Server) ClientsGone() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clientsGone
}

// WaitClientsGone blocks until ClientsGone reaches n or ctx ends.
func (s *Server) WaitClientsGone(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		got, changed := s.clientsGone, s.goneChanged
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// markGone records that rec's client went away. A connection the server
// itself is closing is not the client leaving.
func (s *Server) markGone(rec *Request) {
	select {
	case <-s.closing:
		return
	default:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec.ClientGone {
		return
	}
	rec.ClientGone = true
	s.clientsGone++
	close(s.goneChanged)
	s.goneChanged = make(chan struct{})
}

// waitFor is wait that also records a client going away.
func (s *Server) waitFor(ctx context.Context, rec *Request, d time.Duration) bool {
	if s.wait(ctx, d) {
		return true
	}
	if ctx.Err() != nil {
		s.markGone(rec)
	}
	return false
}

// hang blocks until the client goes away or the server closes.
func (s *Server) hang(ctx context.Context, rec *Request) {
	select {
	case <-ctx.Done():
		s.markGone(rec)
	case <-s.closing:
	}
}

// abortIfClosing breaks the connection of a stream cut short by Close, so
// the client sees a stream that broke off rather than one that ended.
func (s *Server) abortIfClosing() {
	select {
	case <-s.closing:
		panic(http.ErrAbortHandler) // net/http drops the connection without logging
	default:
	}
}

func (s *Server) serveResponses(w http.ResponseWriter, r *http.Request, body []byte, readErr error) {
	isPost := r.Method == http.MethodPost
	var req *ResponsesRequest
	var bodyErr *apiError
	if isPost {
		if bodyErr = checkJSONBody(r, body); bodyErr == nil {
			req, bodyErr = parseResponses(body)
		}
	}
	rec := &Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body, Responses: req}

	var script *ResponseScript
	s.mu.Lock()
	s.requests = append(s.requests, rec)
	if isPost {
		s.responsesCount++
		if len(s.scripts) > 0 {
			q := s.scripts[0]
			rs := q.rs
			script = &rs
			if q.left--; q.left <= 0 {
				s.scripts = s.scripts[1:]
			}
		}
	}
	delay, interval, defaultText := s.delay, s.eventInterval, s.responseText
	s.mu.Unlock()

	if readErr != nil {
		return // the client broke off mid-body; nobody is left to answer
	}
	ctx := r.Context()
	resp := &responder{s: s, w: w, rec: rec}
	if !s.waitFor(ctx, rec, delay) {
		return
	}
	if script == nil {
		script = &ResponseScript{}
	}
	if !s.waitFor(ctx, rec, script.Delay) {
		return
	}
	for k, v := range script.Header {
		w.Header().Set(k, v)
	}
	if script.Status != 0 {
		resp.error(scriptError(script, req))
		return
	}
	if !isPost {
		resp.error(methodNotAllowed(w, r))
		return
	}
	if err := s.checkKey(r); err != nil {
		resp.error(err)
		return
	}
	if bodyErr != nil {
		resp.error(bodyErr)
		return
	}
	if err := s.checkReferences(req); err != nil {
		resp.error(err)
		return
	}
	if err := checkToolCallPairs(req); err != nil {
		resp.error(err)
		return
	}
	if err := s.checkReasoningItems(req); err != nil {
		resp.error(err)
		return
	}

	a := s.plan(req, script, defaultText)
	if req.Stream {
		s.stream(ctx, w, rec, a, interval)
	} else {
		s.answerJSON(ctx, resp, a)
	}
}

// scriptError is the error body of a script's Status.
func scriptError(rs *ResponseScript, req *ResponsesRequest) *apiError {
	var e *apiError
	if rs.Status == 404 {
		model := DefaultPromptModel
		if req != nil && req.Model != "" {
			model = req.Model
		}
		e = invalidRequest("", "model_not_found", "The model '%s' does not exist or you do not have access to it.", model)
		e.status = 404
	} else {
		e = faultError(rs.Status, nil)
	}
	if rs.ErrorCode != "" {
		e.code = rs.ErrorCode
	}
	if rs.ErrorMessage != "" {
		e.message = rs.ErrorMessage
	}
	return e
}

// checkReferences answers for the ids a request names: a previous response
// must be one the fake stored, and the fake keeps no conversations.
func (s *Server) checkReferences(req *ResponsesRequest) *apiError {
	if id := req.PreviousResponseID; id != nil {
		s.mu.Lock()
		known := s.storedResponses[*id]
		s.mu.Unlock()
		if !known {
			return invalidRequest("previous_response_id", "previous_response_not_found",
				"Previous response with id '%s' not found.", *id)
		}
	}
	switch c := req.Raw["conversation"].(type) {
	case string:
		return conversationNotFound(c)
	case map[string]any:
		id, _ := c["id"].(string)
		return conversationNotFound(id)
	}
	return nil
}

func conversationNotFound(id string) *apiError {
	return invalidRequest("conversation", "invalid_value", "Conversation with id '%s' not found.", id)
}

// answer is everything one response will say, decided before it starts.
type answer struct {
	req        *ResponsesRequest
	respID     string
	msgID      string
	createdAt  int64
	now        func() time.Time
	deltas     []string
	text       string // the deltas joined
	incomplete bool   // cut at max_output_tokens
	usage      Usage
	deltaDelay time.Duration
	fault      StreamFault
	after      int
	errCode    string
	errMessage string
	calls      []functionCallItem
	noMessage  bool // only function calls
	reasoning  *reasoningItem

	hosted          hostedPlan
	reasoningID     string
	msgIndex        int // the message's output_index
	annotationsSent int
}

func tokens(runes int) int { return (runes + 3) / 4 }

func (s *Server) plan(req *ResponsesRequest, rs *ResponseScript, defaultText string) *answer {
	a := &answer{
		req:        req,
		respID:     "resp_" + randHex(24),
		msgID:      "msg_" + randHex(24),
		createdAt:  s.now().Unix(),
		now:        s.now,
		deltaDelay: rs.DeltaDelay,
		fault:      rs.Fault,
		after:      max(rs.After, 0),
		errCode:    rs.ErrorCode,
		errMessage: rs.ErrorMessage,
	}
	a.hosted = planHosted(req, rs)
	a.reasoningID = "rs_" + randHex(24)
	a.msgIndex = len(a.outputBefore())
	if a.errCode == "" {
		a.errCode = "server_error"
	}
	if a.errMessage == "" {
		a.errMessage = "The server had an error while processing your request. Sorry about that!"
	}

	a.calls = planCalls(req, rs.FunctionCalls)
	a.noMessage = len(a.calls) > 0 && rs.Text == ""
	if a.noMessage && rs.Reasoning {
		a.reasoning = newReasoningItem(req)
	}
	text := rs.Text
	if text == "" {
		text = defaultText
	}
	if text == "" {
		text = "You said: " + lastUserText(req)
	}
	if a.noMessage {
		text = ""
	}
	outTokens := tokens(utf8.RuneCountInString(text) + callsRunes(a.calls))
	if m := req.MaxOutputTokens; m != nil && outTokens > *m {
		text = string([]rune(text)[:*m*4])
		outTokens = *m
		a.incomplete = true
		a.calls = nil // cut before the calls
	}
	if rs.Deltas > 0 {
		a.deltas = splitEven(text, rs.Deltas)
	} else {
		a.deltas = splitWords(text)
	}
	if a.fault == StreamFaultHugeDelta {
		n := rs.HugeBytes
		if n <= 0 {
			n = HugeDeltaBytes
		}
		at := min(a.after, len(a.deltas))
		a.deltas = append(a.deltas[:at:at], append([]string{strings.Repeat("x", n)}, a.deltas[at:]...)...)
		outTokens += tokens(n)
		a.fault = StreamFaultNone // the huge delta is part of the answer from here on
	}
	a.text = strings.Join(a.deltas, "")

	if rs.Usage != nil {
		a.usage = *rs.Usage
	} else {
		a.usage = Usage{InputTokens: tokens(inputRunes(req)), OutputTokens: outTokens}
	}
	return a
}

func lastUserText(req *ResponsesRequest) string {
	for i := len(req.Input) - 1; i >= 0; i-- {
		if it := req.Input[i]; it.Type == "message" && it.Role == "user" {
			return it.Text
		}
	}
	return ""
}

func inputRunes(req *ResponsesRequest) int {
	n := 0
	if req.Instructions != nil {
		n += utf8.RuneCountInString(*req.Instructions)
	}
	for _, it := range req.Input {
		n += utf8.RuneCountInString(it.Text)
	}
	if req.Prompt != nil {
		for _, v := range req.Prompt.Variables {
			if s, ok := v.(string); ok {
				n += utf8.RuneCountInString(s)
			}
		}
	}
	return n
}

// splitWords cuts text before every run of white space, the way models
// stream words: "You said: hi" → "You", " said:", " hi".
func splitWords(text string) []string {
	var out []string
	start := 0
	prevSpace := true
	for i, r := range text {
		space := unicode.IsSpace(r)
		if space && !prevSpace && i > start {
			out = append(out, text[start:i])
			start = i
		}
		prevSpace = space
	}
	if start < len(text) {
		out = append(out, text[start:])
	}
	return out
}

// splitEven cuts text into n pieces of nearly equal rune counts (fewer if
// the text has fewer runes).
func splitEven(text string, n int) []string {
	r := []rune(text)
	n = min(n, len(r))
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, string(r[i*len(r)/n:(i+1)*len(r)/n]))
	}
	return out
}

// Wire shapes, as in openai-python's types/responses (Response,
// ResponseOutputMessage, ResponseOutputText, ResponseUsage and the stream
// event models).

type responseObject struct {
	ID                   string             `json:"id"`
	Object               string             `json:"object"`
	CreatedAt            int64              `json:"created_at"`
	Status               string             `json:"status"`
	Background           bool               `json:"background"`
	CompletedAt          *int64             `json:"completed_at"`
	Error                *responseError     `json:"error"`
	IncompleteDetails    *incompleteDetails `json:"incomplete_details"`
	Instructions         *string            `json:"instructions"`
	MaxOutputTokens      *int               `json:"max_output_tokens"`
	MaxToolCalls         any                `json:"max_tool_calls"`
	Model                string             `json:"model"`
	Output               []any              `json:"output"`
	ParallelToolCalls    any                `json:"parallel_tool_calls"`
	PreviousResponseID   *string            `json:"previous_response_id"`
	Prompt               *promptObject      `json:"prompt,omitempty"`
	PromptCacheKey       any                `json:"prompt_cache_key"`
	PromptCacheRetention any                `json:"prompt_cache_retention"`
	Reasoning            reasoningObject    `json:"reasoning"`
	SafetyIdentifier     *string            `json:"safety_identifier"`
	ServiceTier          string             `json:"service_tier"`
	Store                bool               `json:"store"`
	Temperature          any                `json:"temperature"`
	Text                 map[string]any     `json:"text"`
	ToolChoice           any                `json:"tool_choice"`
	Tools                any                `json:"tools"`
	TopLogprobs          any                `json:"top_logprobs"`
	TopP                 any                `json:"top_p"`
	Truncation           any                `json:"truncation"`
	Usage                *usageObject       `json:"usage"`
	User                 any                `json:"user"`
	Metadata             any                `json:"metadata"`
}

type responseError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type incompleteDetails struct {
	Reason string `json:"reason"`
}

type promptObject struct {
	ID        string         `json:"id"`
	Variables map[string]any `json:"variables"`
	Version   *string        `json:"version"`
}

type reasoningObject struct {
	Effort  *string `json:"effort"`
	Summary *string `json:"summary"`
}

type usageObject struct {
	InputTokens        int `json:"input_tokens"`
	InputTokensDetails struct {
		CachedTokens     int `json:"cached_tokens"`
		CacheWriteTokens int `json:"cache_write_tokens"`
	} `json:"input_tokens_details"`
	OutputTokens        int `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int `json:"total_tokens"`
}

type messageItem struct {
	ID      string       `json:"id"`
	Type    string       `json:"type"`
	Status  string       `json:"status"`
	Content []outputText `json:"content"`
	Role    string       `json:"role"`
}

type outputText struct {
	Type        string `json:"type"`
	Annotations []any  `json:"annotations"`
	Logprobs    []any  `json:"logprobs"`
	Text        string `json:"text"`
}

func newOutputText(text string) outputText {
	return outputText{Type: "output_text", Annotations: []any{}, Logprobs: []any{}, Text: text}
}

// doneText is the finished output_text part, with the citations the
// stream has announced (all of them once the text is complete).
func (a *answer) doneText(text string) outputText {
	t := newOutputText(text)
	t.Annotations = a.annotationsWire()
	return t
}

func rawOr(m map[string]any, key string, def any) any {
	if v, ok := m[key]; ok && v != nil {
		return v
	}
	return def
}

// response builds the response object in the given status, with output.
func (a *answer) response(status string, output []any) *responseObject {
	req := a.req
	ro := &responseObject{
		ID:                   a.respID,
		Object:               "response",
		CreatedAt:            a.createdAt,
		Status:               status,
		Instructions:         req.Instructions,
		MaxOutputTokens:      req.MaxOutputTokens,
		MaxToolCalls:         rawOr(req.Raw, "max_tool_calls", nil),
		Model:                req.Model,
		Output:               []any{},
		ParallelToolCalls:    rawOr(req.Raw, "parallel_tool_calls", true),
		PreviousResponseID:   req.PreviousResponseID,
		PromptCacheKey:       rawOr(req.Raw, "prompt_cache_key", nil),
		PromptCacheRetention: rawOr(req.Raw, "prompt_cache_retention", nil),
		SafetyIdentifier:     req.SafetyIdentifier,
		ServiceTier:          "auto",
		Store:                req.Store == nil || *req.Store,
		Temperature:          rawOr(req.Raw, "temperature", 1),
		Text:                 map[string]any{"format": map[string]any{"type": "text"}, "verbosity": "medium"},
		ToolChoice:           rawOr(req.Raw, "tool_choice", "auto"),
		Tools:                rawOr(req.Raw, "tools", []any{}),
		TopLogprobs:          rawOr(req.Raw, "top_logprobs", 0),
		TopP:                 rawOr(req.Raw, "top_p", 1),
		Truncation:           rawOr(req.Raw, "truncation", "disabled"),
		User:                 rawOr(req.Raw, "user", nil),
		Metadata:             rawOr(req.Raw, "metadata", map[string]any{}),
	}
	if ro.Model == "" {
		ro.Model = DefaultPromptModel
	}
	if t, ok := req.Raw["text"].(map[string]any); ok {
		for k, v := range t {
			if v != nil {
				ro.Text[k] = v
			}
		}
	}
	if tier, ok := req.Raw["service_tier"].(string); ok {
		ro.ServiceTier = tier
	}
	if p := req.Prompt; p != nil {
		ro.Prompt = &promptObject{ID: p.ID, Variables: p.Variables, Version: p.Version}
	}
	if r := req.Reasoning; r != nil {
		ro.Reasoning = reasoningObject{Effort: r.Effort, Summary: r.Summary}
	}
	if status != "in_progress" {
		// The items before the message are done once the message is out.
		ro.Output = append(a.outputBefore(), output...)
	}
	if ro.Output == nil {
		ro.Output = []any{}
	}
	switch status {
	case "completed", "incomplete":
		// The tier that actually served the request: fast is billed as priority.
		switch ro.ServiceTier {
		case "auto", "default":
			ro.ServiceTier = "default"
		case "fast":
			ro.ServiceTier = "priority"
		}
		done := a.now().Unix()
		ro.CompletedAt = &done
		u := &usageObject{InputTokens: a.usage.InputTokens, OutputTokens: a.usage.OutputTokens}
		u.InputTokensDetails.CachedTokens = a.usage.CachedTokens
		u.OutputTokensDetails.ReasoningTokens = a.usage.ReasoningTokens
		u.TotalTokens = a.usage.InputTokens + a.usage.OutputTokens
		ro.Usage = u
		if status == "incomplete" {
			ro.IncompleteDetails = &incompleteDetails{Reason: "max_output_tokens"}
		}
	case "failed":
		ro.Error = &responseError{Code: a.errCode, Message: a.errMessage}
	}
	return ro
}

func (a *answer) finalStatus() string {
	if a.incomplete {
		return "incomplete"
	}
	return "completed"
}

func (a *answer) message(status, text string) messageItem {
	content := []outputText{}
	if status != "in_progress" {
		content = []outputText{a.doneText(text)}
	}
	return messageItem{ID: a.msgID, Type: "message", Status: status, Content: content, Role: "assistant"}
}

// remember makes a finished response available to previous_response_id,
// unless the request asked not to store it.
func (s *Server) remember(a *answer) {
	if a.req.Store != nil && !*a.req.Store {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.storedResponses[a.respID] = true
}

func (s *Server) answerJSON(ctx context.Context, resp *responder, a *answer) {
	switch a.fault {
	case StreamFaultFailed, StreamFaultErrorEvent:
		e := faultError(500, nil)
		e.message, e.code = a.errMessage, a.errCode
		resp.error(e)
		return
	case StreamFaultStall:
		s.hang(ctx, resp.rec)
		return
	case StreamFaultReset:
		resetConnection(resp.w)
		return
	}
	status := a.finalStatus()
	s.remember(a)
	if a.hosted.stopped {
		resp.json(200, a.response(status, nil))
		return
	}
	resp.json(200, a.response(status, a.output(a.message(status, a.text))))
}

// Stream events. Every payload starts with type and sequence_number.

type eventHead struct {
	Type           string `json:"type"`
	SequenceNumber int    `json:"sequence_number"`
}

func (h *eventHead) head() *eventHead { return h }

type event interface{ head() *eventHead }

type responseEvent struct {
	eventHead
	Response *responseObject `json:"response"`
}

type outputItemEvent struct {
	eventHead
	OutputIndex int         `json:"output_index"`
	Item        messageItem `json:"item"`
}

type contentPartEvent struct {
	eventHead
	ItemID       string     `json:"item_id"`
	OutputIndex  int        `json:"output_index"`
	ContentIndex int        `json:"content_index"`
	Part         outputText `json:"part"`
}

type textDeltaEvent struct {
	eventHead
	ItemID       string `json:"item_id"`
	OutputIndex  int    `json:"output_index"`
	ContentIndex int    `json:"content_index"`
	Delta        string `json:"delta"`
	Logprobs     []any  `json:"logprobs"`
	Obfuscation  string `json:"obfuscation,omitempty"`
}

type textDoneEvent struct {
	eventHead
	ItemID       string `json:"item_id"`
	OutputIndex  int    `json:"output_index"`
	ContentIndex int    `json:"content_index"`
	Text         string `json:"text"`
	Logprobs     []any  `json:"logprobs"`
}

type errorEvent struct {
	eventHead
	Code    *string `json:"code"`
	Message string  `json:"message"`
	Param   *string `json:"param"`
}

// sseStream writes one Responses stream.
type sseStream struct {
	s        *Server
	ctx      context.Context
	w        http.ResponseWriter
	rc       *http.ResponseController
	rec      *Request
	interval time.Duration
	seq      int
	buf      []byte
}

// send waits d (except before the first event), then writes and flushes one
// event. It reports whether the stream may go on.
func (e *sseStream) send(typ string, ev event, d time.Duration) bool {
	if e.seq > 0 && !e.s.waitFor(e.ctx, e.rec, d) {
		e.s.abortIfClosing()
		return false
	}
	h := ev.head()
	h.Type, h.SequenceNumber = typ, e.seq
	b, err := json.Marshal(ev)
	if err != nil {
		panic(err) // our own types only: cannot happen
	}
	e.buf = append(append(append(append(e.buf[:0], "event: "...), typ...), "\ndata: "...), b...)
	e.buf = append(e.buf, "\n\n"...)
	_, werr := e.w.Write(e.buf)
	if werr == nil {
		werr = e.rc.Flush()
	}
	e.seq++
	e.s.mu.Lock()
	e.rec.Events = append(e.rec.Events, typ)
	e.s.mu.Unlock()
	if werr != nil || e.ctx.Err() != nil {
		e.s.markGone(e.rec)
		return false
	}
	return true
}

const obfuscationAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// obfuscation pads a delta event with random characters so delta sizes
// come in multiples of 16, as the documented stream obfuscation does.
func obfuscation(delta string) string {
	b := make([]byte, 16-len(delta)%16)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = obfuscationAlphabet[int(b[i])%len(obfuscationAlphabet)]
	}
	return string(b)
}

func (s *Server) stream(ctx context.Context, w http.ResponseWriter, rec *Request, a *answer, interval time.Duration) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	s.mu.Lock()
	rec.Status = http.StatusOK
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
	e := &sseStream{s: s, ctx: ctx, w: w, rc: http.NewResponseController(w), rec: rec, interval: interval}

	if !e.send("response.created", &responseEvent{Response: a.response("in_progress", nil)}, interval) ||
		!e.send("response.in_progress", &responseEvent{Response: a.response("in_progress", nil)}, interval) ||
		!s.streamHosted(e, a) {
		return
	}
	if a.hosted.stopped {
		// An approval request ends the response: no message.
		s.remember(a)
		e.send("response.completed", &responseEvent{Response: a.response("completed", nil)}, interval)
		return
	}
	obfuscate := a.req.IncludeObfuscation == nil || *a.req.IncludeObfuscation
	if a.noMessage {
		first := a.msgIndex
		if a.reasoning != nil {
			if !e.streamReasoning(a.reasoning, first) {
				return
			}
			first++
		}
		if !e.streamCalls(a, first, obfuscate) {
			return
		}
		s.remember(a)
		s.rememberReasoning(a)
		e.send("response.completed", &responseEvent{Response: a.response("completed", a.output())}, interval)
		return
	}
	if !e.send("response.output_item.added", &outputItemEvent{OutputIndex: a.msgIndex, Item: a.message("in_progress", "")}, interval) ||
		!e.send("response.content_part.added", &contentPartEvent{ItemID: a.msgID, OutputIndex: a.msgIndex, Part: newOutputText("")}, interval) {
		return
	}
	deltaWait := interval
	if a.deltaDelay > 0 {
		deltaWait = a.deltaDelay
	}
	var sent strings.Builder
	for i := 0; ; i++ {
		if a.fault != StreamFaultNone && i == min(a.after, len(a.deltas)) {
			s.streamFault(e, a, sent.String())
			return
		}
		if i == len(a.deltas) {
			break
		}
		ev := &textDeltaEvent{ItemID: a.msgID, OutputIndex: a.msgIndex, Delta: a.deltas[i], Logprobs: []any{}}
		if obfuscate {
			ev.Obfuscation = obfuscation(ev.Delta)
		}
		if !e.send("response.output_text.delta", ev, deltaWait) {
			return
		}
		sent.WriteString(a.deltas[i])
		if !a.sendAnnotations(e, runes(sent.String())) {
			return
		}
	}
	if !a.sendAnnotations(e, math.MaxInt) { // citations past the text's end
		return
	}

	status := a.finalStatus()
	item := a.message(status, a.text)
	if !e.send("response.output_text.done", &textDoneEvent{ItemID: a.msgID, OutputIndex: a.msgIndex, Text: a.text, Logprobs: []any{}}, interval) ||
		!e.send("response.content_part.done", &contentPartEvent{ItemID: a.msgID, OutputIndex: a.msgIndex, Part: a.doneText(a.text)}, interval) ||
		!e.send("response.output_item.done", &outputItemEvent{OutputIndex: a.msgIndex, Item: item}, interval) {
		return
	}
	if status == "completed" && !e.streamCalls(a, a.msgIndex+1, obfuscate) {
		return
	}
	s.remember(a)
	e.send("response."+status, &responseEvent{Response: a.response(status, a.output(item))}, interval)
}

// streamFault ends a stream the way a.fault says, sent being the text
// streamed so far.
func (s *Server) streamFault(e *sseStream, a *answer, sent string) {
	switch a.fault {
	case StreamFaultFailed:
		partial := []any{a.message("incomplete", sent)}
		e.send("response.failed", &responseEvent{Response: a.response("failed", partial)}, e.interval)
	case StreamFaultErrorEvent:
		code := a.errCode
		e.send("error", &errorEvent{Code: &code, Message: a.errMessage}, e.interval)
	case StreamFaultStall:
		s.hang(e.ctx, e.rec)
		s.abortIfClosing()
	case StreamFaultReset:
		resetConnection(e.w)
	}
}

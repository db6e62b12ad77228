package chatkit

// The ChatKit protocol as the agent mode speaks it: the requests it answers,
// decoded strictly, and the threads, items and stream events it sends,
// encoded the way the reference server (chatkit-python) puts them on the
// wire (see ../shared/reference/chatkit-server-protocol.md §3–§5). Nothing
// here does I/O or knows Caddy.
//
// Encoding is hand-written append-style JSON into caller-owned buffers: a
// stream emits hundreds of small events, and a per-event encoder, map or
// reflection walk would be garbage the 1,000-stream target cannot afford.
// The encoders follow chatkit-python's serialisation rules: null fields
// omitted, default-valued fields present, field order as pydantic declares
// it, compact, no HTML escaping.

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// The request types the agent answers. The first three stream.
const (
	agentThreadsCreate         = "threads.create"
	agentThreadsAddUserMessage = "threads.add_user_message"
	agentThreadsRetryAfterItem = "threads.retry_after_item"
	agentThreadsGetByID        = "threads.get_by_id"
	agentThreadsList           = "threads.list"
	agentItemsList             = "items.list"
	agentThreadsUpdate         = "threads.update"
	agentThreadsDelete         = "threads.delete"
	agentItemsFeedback         = "items.feedback"
	agentAttachmentsCreate     = "attachments.create"
	agentAttachmentsDelete     = "attachments.delete"
)

// Request bounds. Pages default to chatkit-python's DEFAULT_PAGE_SIZE and
// are clamped to what the store returns at most (the web component asks
// threads.list for 9999).
const (
	agentDefaultPageLimit = 20
	agentMaxPageLimit     = threadstore.MaxPageLimit
	agentMaxIDLength      = 128 // bytes; our ids are far shorter, so a longer one names nothing
	agentMaxTitleLength   = 256 // characters
)

// agentRequest is one decoded ChatKit request. Only the fields its Type uses
// are set; the rest are zero.
type agentRequest struct {
	// Type is the request type, one of the agent* constants above.
	Type string
	// ThreadID names the thread (every type but threads.create and threads.list).
	ThreadID string
	// ItemID is the user message to answer again (threads.retry_after_item).
	ItemID string
	// Input is the user's message (threads.create, threads.add_user_message).
	Input agentUserInput
	// Limit is the page size, 1..agentMaxPageLimit (threads.list, items.list).
	Limit int
	// Order is "asc" or "desc" (threads.list, items.list).
	Order string
	// After is the page cursor, an id; "" (or null, or absent) starts at the
	// beginning (threads.list, items.list).
	After string
	// Title is the new title; "" removes it (threads.update).
	Title string
	// ItemIDs are the items the feedback is about (items.feedback).
	ItemIDs []string
	// Kind is "positive" or "negative" (items.feedback).
	Kind string
	// Audio is the recording to transcribe (input.transcribe, see
	// agent_dictation.go).
	Audio agentAudio
	// File is what attachments.create declares.
	File agentFileParams
	// AttachmentID names the attachment (attachments.delete).
	AttachmentID string
}

// streaming reports whether the request is answered with an event stream;
// these are the requests that run the model.
func (r *agentRequest) streaming() bool {
	switch r.Type {
	case agentThreadsCreate, agentThreadsAddUserMessage, agentThreadsRetryAfterItem:
		return true
	}
	return false
}

// agentUserInput is the `input` of threads.create and threads.add_user_message.
type agentUserInput struct {
	// Content is the message: at least one part, some of it not blank.
	Content []agentUserContent
	// QuotedText is the passage the user replies to; "" means none.
	QuotedText string
	// Attachments are the ids of the files the message carries, each once.
	Attachments []string
	// InferenceOptions are echoed on the saved item; the configured model and
	// tools are what the agent uses.
	InferenceOptions agentInferenceOptions
}

// agentUserContent is one part of a user message: input_text, or input_tag
// (an @-mention the client inserted).
type agentUserContent struct {
	Type string // "input_text" or "input_tag"
	Text string
	// input_tag only:
	ID          string
	Data        json.RawMessage // a compact JSON object
	Group       string          // "" means none
	Interactive bool
}

// agentInferenceOptions is the client's model and tool choice; "" means none.
type agentInferenceOptions struct {
	ToolChoiceID string
	Model        string
}

// agentRequestLimits are the configured bounds the decoder enforces.
type agentRequestLimits struct {
	// MaxInput is the longest user message, in Unicode characters (its text
	// and tag parts together; a quoted passage separately); 0 means no limit.
	MaxInput int
	// MaxAttachments is how many files a message may carry; 0 means
	// attachments are off (attachments.create and .delete are refused too).
	MaxAttachments int
}

// agentRequestErrorKind says why a request was refused.
type agentRequestErrorKind uint8

const (
	// agentErrMalformed: not one JSON object in UTF-8, or a key given twice.
	agentErrMalformed agentRequestErrorKind = iota + 1
	// agentErrUnknownType: a `type` the agent does not answer.
	agentErrUnknownType
	// agentErrInvalidParam: a field missing, of the wrong JSON type or out of range.
	agentErrInvalidParam
	// agentErrInputTooLong: the message is longer than max_input.
	agentErrInputTooLong
)

// agentRequestError is why decodeAgentRequest refused a body. Every kind is
// the client's fault (400); the message is safe to send back.
type agentRequestError struct {
	Kind agentRequestErrorKind
	// Field is the JSON path of the offending value, such as
	// "params.input.content[0].text"; "" when the body as a whole is wrong.
	Field string
	Msg   string
}

func (e *agentRequestError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

func agentMalformed(field, msg string) *agentRequestError {
	return &agentRequestError{Kind: agentErrMalformed, Field: field, Msg: msg}
}

func agentInvalid(field, msg string) *agentRequestError {
	return &agentRequestError{Kind: agentErrInvalidParam, Field: field, Msg: msg}
}

// decodeAgentRequest decodes and validates a ChatKit request body. Keys are
// matched exactly (encoding/json would fold case and read another key than
// the ChatKit server does); a known key given twice is refused, since two
// readers may disagree on which one counts; unknown keys are ignored, as
// pydantic does. The error is always an *agentRequestError.
func decodeAgentRequest(body []byte, lim agentRequestLimits) (agentRequest, error) {
	var req agentRequest
	if !utf8.Valid(body) {
		return req, agentMalformed("", "the body is not valid UTF-8")
	}
	b := trimJSONSpace(body)
	if len(b) == 0 || b[0] != '{' {
		return req, agentMalformed("", "the body must be a JSON object")
	}
	if !json.Valid(b) {
		return req, agentMalformed("", "the body is not valid JSON")
	}
	var typeRaw, params []byte
	err := agentEachMember(b, func(key string, val []byte) error {
		switch key {
		case "type":
			if typeRaw != nil {
				return agentMalformed("type", "is given twice")
			}
			typeRaw = val
		case "params":
			if params != nil {
				return agentMalformed("params", "is given twice")
			}
			params = val
		}
		return nil
	})
	if err != nil {
		return req, err
	}
	if typeRaw == nil {
		return req, agentInvalid("type", "is required")
	}
	if req.Type, err = agentString(typeRaw, "type"); err != nil {
		return req, err
	}
	keys, required := agentParamKeys(req.Type)
	if keys == 0 && req.Type != agentInputTranscribe {
		return req, &agentRequestError{Kind: agentErrUnknownType, Field: "type", Msg: "unknown request type " + agentQuoteShort(req.Type)}
	}
	if lim.MaxAttachments == 0 && (req.Type == agentAttachmentsCreate || req.Type == agentAttachmentsDelete) {
		return req, &agentRequestError{Kind: agentErrUnknownType, Field: "type", Msg: "attachments are not enabled on this site"}
	}
	if params == nil {
		return req, agentInvalid("params", "is required")
	}
	if req.Type == agentInputTranscribe {
		err := req.Audio.decode(params)
		return req, err
	}
	if err := req.decodeParams(params, keys, required, lim); err != nil {
		return req, err
	}
	return req, nil
}

// The params keys, as bits.
const (
	agentKeyThreadID uint16 = 1 << iota
	agentKeyItemID
	agentKeyInput
	agentKeyLimit
	agentKeyOrder
	agentKeyAfter
	agentKeyTitle
	agentKeyItemIDs
	agentKeyKind
	agentKeyName
	agentKeySize
	agentKeyMimeType
	agentKeyAttachmentID
)

// agentParamKeys returns the params keys a request type reads and which of
// them are required; keys is 0 for a type the agent does not answer.
func agentParamKeys(t string) (keys, required uint16) {
	switch t {
	case agentThreadsCreate:
		return agentKeyInput, agentKeyInput
	case agentThreadsAddUserMessage:
		k := agentKeyThreadID | agentKeyInput
		return k, k
	case agentThreadsRetryAfterItem:
		k := agentKeyThreadID | agentKeyItemID
		return k, k
	case agentThreadsGetByID, agentThreadsDelete:
		return agentKeyThreadID, agentKeyThreadID
	case agentThreadsList:
		return agentKeyLimit | agentKeyOrder | agentKeyAfter, 0
	case agentItemsList:
		return agentKeyThreadID | agentKeyLimit | agentKeyOrder | agentKeyAfter, agentKeyThreadID
	case agentThreadsUpdate:
		k := agentKeyThreadID | agentKeyTitle
		return k, k
	case agentItemsFeedback:
		k := agentKeyThreadID | agentKeyItemIDs | agentKeyKind
		return k, k
	case agentAttachmentsCreate:
		k := agentKeyName | agentKeySize | agentKeyMimeType
		return k, k
	case agentAttachmentsDelete:
		return agentKeyAttachmentID, agentKeyAttachmentID
	}
	return 0, 0
}

// agentParamKey maps a params key to its bit (0: not a params key).
func agentParamKey(key string) uint16 {
	switch key {
	case "thread_id":
		return agentKeyThreadID
	case "item_id":
		return agentKeyItemID
	case "input":
		return agentKeyInput
	case "limit":
		return agentKeyLimit
	case "order":
		return agentKeyOrder
	case "after":
		return agentKeyAfter
	case "title":
		return agentKeyTitle
	case "item_ids":
		return agentKeyItemIDs
	case "kind":
		return agentKeyKind
	case "name":
		return agentKeyName
	case "size":
		return agentKeySize
	case "mime_type":
		return agentKeyMimeType
	case "attachment_id":
		return agentKeyAttachmentID
	}
	return 0
}

func (r *agentRequest) decodeParams(params []byte, keys, required uint16, lim agentRequestLimits) error {
	if !agentIsObject(params) {
		return agentInvalid("params", "must be an object")
	}
	var seen uint16
	err := agentEachMember(params, func(key string, val []byte) error {
		bit := agentParamKey(key)
		if bit&keys == 0 {
			return nil // not read by this type: ignored, like any unknown key
		}
		field := "params." + key
		if seen&bit != 0 {
			return agentMalformed(field, "is given twice")
		}
		seen |= bit
		var err error
		switch bit {
		case agentKeyThreadID:
			r.ThreadID, err = agentID(val, field)
		case agentKeyItemID:
			r.ItemID, err = agentID(val, field)
		case agentKeyAfter:
			if !agentIsNull(val) && string(val) != `""` {
				r.After, err = agentID(val, field)
			}
		case agentKeyInput:
			err = r.Input.decode(val, field, lim)
		case agentKeyLimit:
			r.Limit, err = agentPageLimit(val, field)
		case agentKeyOrder:
			r.Order, err = agentString(val, field)
			if err == nil && r.Order != "asc" && r.Order != "desc" {
				err = agentInvalid(field, `must be "asc" or "desc"`)
			}
		case agentKeyTitle:
			r.Title, err = agentString(val, field)
			if err == nil && utf8.RuneCountInString(r.Title) > agentMaxTitleLength {
				err = agentInvalid(field, "is longer than "+strconv.Itoa(agentMaxTitleLength)+" characters")
			}
		case agentKeyItemIDs:
			r.ItemIDs, err = agentIDList(val, field)
		case agentKeyKind:
			r.Kind, err = agentString(val, field)
			if err == nil && r.Kind != "positive" && r.Kind != "negative" {
				err = agentInvalid(field, `must be "positive" or "negative"`)
			}
		case agentKeyName, agentKeySize, agentKeyMimeType:
			err = r.File.decodeParam(bit, val, field)
		case agentKeyAttachmentID:
			r.AttachmentID, err = agentID(val, field)
		}
		return err
	})
	if err != nil {
		return err
	}
	if missing := required &^ seen; missing != 0 {
		for _, k := range []string{"thread_id", "item_id", "input", "title", "item_ids", "kind", "name", "size", "mime_type", "attachment_id"} {
			if missing&agentParamKey(k) != 0 {
				return agentInvalid("params."+k, "is required")
			}
		}
	}
	if keys&agentKeyLimit != 0 {
		if r.Limit == 0 {
			r.Limit = agentDefaultPageLimit
		}
		if r.Order == "" {
			r.Order = "desc"
		}
	}
	return nil
}

// agentPageLimit reads a page size: null or 0 is the default (as
// chatkit-python's `limit or DEFAULT_PAGE_SIZE`), larger ones are clamped.
func agentPageLimit(val []byte, field string) (int, error) {
	if agentIsNull(val) {
		return 0, nil
	}
	if val[0] != '-' && (val[0] < '0' || val[0] > '9') {
		return 0, agentInvalid(field, "must be an integer")
	}
	f, err := strconv.ParseFloat(string(val), 64)
	switch {
	case err != nil && !math.IsInf(f, 0): // ±Inf: out of range, still an integer
		return 0, agentInvalid(field, "must be an integer")
	case f != math.Trunc(f):
		return 0, agentInvalid(field, "must be an integer")
	case f < 0:
		return 0, agentInvalid(field, "must not be negative")
	case f > agentMaxPageLimit:
		return agentMaxPageLimit, nil
	}
	return int(f), nil
}

func (in *agentUserInput) decode(val []byte, field string, lim agentRequestLimits) error {
	if !agentIsObject(val) {
		return agentInvalid(field, "must be an object")
	}
	const (
		kContent = 1 << iota
		kAttachments
		kQuoted
		kOptions
	)
	var seen int
	err := agentEachMember(val, func(key string, v []byte) error {
		var bit int
		switch key {
		case "content":
			bit = kContent
		case "attachments":
			bit = kAttachments
		case "quoted_text":
			bit = kQuoted
		case "inference_options":
			bit = kOptions
		default:
			return nil
		}
		f := field + "." + key
		if seen&bit != 0 {
			return agentMalformed(f, "is given twice")
		}
		seen |= bit
		switch bit {
		case kContent:
			return in.decodeContent(v, f)
		case kAttachments:
			return in.decodeAttachments(v, f, lim.MaxAttachments)
		case kQuoted:
			if !agentIsNull(v) {
				var err error
				in.QuotedText, err = agentString(v, f)
				return err
			}
		case kOptions:
			return in.InferenceOptions.decode(v, f)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range []struct {
		bit  int
		name string
	}{{kContent, "content"}, {kAttachments, "attachments"}, {kOptions, "inference_options"}} {
		if seen&k.bit == 0 {
			return agentInvalid(field+"."+k.name, "is required")
		}
	}
	if strings.TrimSpace(in.text()) == "" && len(in.Attachments) == 0 {
		return agentInvalid(field+".content", "has no text")
	}
	return in.checkLength(lim.MaxInput)
}

func (in *agentUserInput) decodeContent(v []byte, field string) error {
	if !agentIsArray(v) {
		return agentInvalid(field, "must be a list")
	}
	in.Content = make([]agentUserContent, 0, agentArrayLen(v))
	err := agentEachElement(v, func(i int, el []byte) error {
		var part agentUserContent
		if err := part.decode(el, agentElementField(field, i)); err != nil {
			return err
		}
		in.Content = append(in.Content, part)
		return nil
	})
	if err != nil {
		return err
	}
	if len(in.Content) == 0 {
		return agentInvalid(field, "must not be empty")
	}
	return nil
}

func (p *agentUserContent) decode(el []byte, field string) error {
	if !agentIsObject(el) {
		return agentInvalid(field, "must be an object")
	}
	var raw [6][]byte // type, text, id, data, group, interactive
	names := [6]string{"type", "text", "id", "data", "group", "interactive"}
	err := agentEachMember(el, func(key string, v []byte) error {
		for i, n := range names {
			if key == n {
				if raw[i] != nil {
					return agentMalformed(field+"."+key, "is given twice")
				}
				raw[i] = v
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	str := func(i int) (string, error) {
		if raw[i] == nil {
			return "", agentInvalid(field+"."+names[i], "is required")
		}
		return agentString(raw[i], field+"."+names[i])
	}
	if p.Type, err = str(0); err != nil {
		return err
	}
	if p.Text, err = str(1); err != nil {
		return err
	}
	switch p.Type {
	case "input_text":
		return nil
	case "input_tag":
	default:
		return agentInvalid(field+".type", `must be "input_text" or "input_tag"`)
	}
	if p.ID, err = str(2); err != nil {
		return err
	}
	if raw[3] == nil {
		return agentInvalid(field+".data", "is required")
	}
	if !agentIsObject(raw[3]) {
		return agentInvalid(field+".data", "must be an object")
	}
	var data bytes.Buffer
	_ = json.Compact(&data, raw[3]) // valid: the whole body was checked
	p.Data = data.Bytes()
	if raw[4] != nil && !agentIsNull(raw[4]) {
		if p.Group, err = agentString(raw[4], field+".group"); err != nil {
			return err
		}
	}
	if raw[5] != nil {
		switch string(raw[5]) {
		case "true":
			p.Interactive = true
		case "false":
		default:
			return agentInvalid(field+".interactive", "must be true or false")
		}
	}
	return nil
}

func (o *agentInferenceOptions) decode(v []byte, field string) error {
	if !agentIsObject(v) {
		return agentInvalid(field, "must be an object")
	}
	var seenTool, seenModel bool
	return agentEachMember(v, func(key string, val []byte) error {
		f := field + "." + key
		switch key {
		case "tool_choice":
			if seenTool {
				return agentMalformed(f, "is given twice")
			}
			seenTool = true
			if agentIsNull(val) {
				return nil
			}
			if !agentIsObject(val) {
				return agentInvalid(f, "must be an object")
			}
			var id []byte
			err := agentEachMember(val, func(k string, x []byte) error {
				if k == "id" {
					if id != nil {
						return agentMalformed(f+".id", "is given twice")
					}
					id = x
				}
				return nil
			})
			if err != nil {
				return err
			}
			if id == nil {
				return agentInvalid(f+".id", "is required")
			}
			o.ToolChoiceID, err = agentString(id, f+".id")
			return err
		case "model":
			if seenModel {
				return agentMalformed(f, "is given twice")
			}
			seenModel = true
			if agentIsNull(val) {
				return nil
			}
			var err error
			o.Model, err = agentString(val, f)
			return err
		}
		return nil
	})
}

// text is the message as the model reads it: text parts as typed, tags as
// @<text>.
func (in *agentUserInput) text() string {
	if len(in.Content) == 1 && in.Content[0].Type == "input_text" {
		return in.Content[0].Text
	}
	var b strings.Builder
	for i := range in.Content {
		if in.Content[i].Type == "input_tag" {
			b.WriteByte('@')
		}
		b.WriteString(in.Content[i].Text)
	}
	return b.String()
}

// checkLength refuses a message longer than max Unicode characters (max 0:
// no limit). Tags count with their text; a quoted passage is checked on its
// own, so replying to a long answer stays possible.
func (in *agentUserInput) checkLength(max int) error {
	if max <= 0 {
		return nil
	}
	n := 0
	for i := range in.Content {
		n += utf8.RuneCountInString(in.Content[i].Text)
	}
	if n > max {
		return &agentRequestError{Kind: agentErrInputTooLong, Field: "params.input.content",
			Msg: "the message is " + strconv.Itoa(n) + " characters long; the limit is " + strconv.Itoa(max)}
	}
	if n := utf8.RuneCountInString(in.QuotedText); n > max {
		return &agentRequestError{Kind: agentErrInputTooLong, Field: "params.input.quoted_text",
			Msg: "the quoted text is " + strconv.Itoa(n) + " characters long; the limit is " + strconv.Itoa(max)}
	}
	return nil
}

// appendJSON encodes the request in its canonical form, which
// decodeAgentRequest reads back to the same agentRequest.
func (r *agentRequest) appendJSON(buf []byte) []byte {
	buf = append(buf, `{"type":`...)
	buf = appendAgentString(buf, r.Type)
	buf = append(buf, `,"params":{`...)
	keys, _ := agentParamKeys(r.Type)
	first := true
	key := func(k string) {
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = appendAgentString(buf, k)
		buf = append(buf, ':')
	}
	if keys&agentKeyThreadID != 0 {
		key("thread_id")
		buf = appendAgentString(buf, r.ThreadID)
	}
	if keys&agentKeyItemID != 0 {
		key("item_id")
		buf = appendAgentString(buf, r.ItemID)
	}
	if keys&agentKeyInput != 0 {
		key("input")
		buf = r.Input.appendJSON(buf)
	}
	if keys&agentKeyLimit != 0 {
		key("limit")
		buf = strconv.AppendInt(buf, int64(r.Limit), 10)
		key("order")
		buf = appendAgentString(buf, r.Order)
		if r.After != "" {
			key("after")
			buf = appendAgentString(buf, r.After)
		}
	}
	if keys&agentKeyTitle != 0 {
		key("title")
		buf = appendAgentString(buf, r.Title)
	}
	if keys&agentKeyItemIDs != 0 {
		key("item_ids")
		buf = append(buf, '[')
		for i, id := range r.ItemIDs {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendAgentString(buf, id)
		}
		buf = append(buf, ']')
		key("kind")
		buf = appendAgentString(buf, r.Kind)
	}
	if r.Type == agentInputTranscribe {
		buf = r.Audio.appendJSON(buf)
	}
	if keys&agentKeyName != 0 {
		key("name")
		buf = appendAgentString(buf, r.File.Name)
		key("size")
		buf = strconv.AppendInt(buf, r.File.Size, 10)
		key("mime_type")
		buf = appendAgentString(buf, r.File.MimeType)
	}
	if keys&agentKeyAttachmentID != 0 {
		key("attachment_id")
		buf = appendAgentString(buf, r.AttachmentID)
	}
	return append(buf, "}}"...)
}

func (in *agentUserInput) appendJSON(buf []byte) []byte {
	buf = append(buf, `{"content":`...)
	buf = appendAgentUserContent(buf, in.Content)
	buf = append(buf, `,"attachments":[`...)
	for i, id := range in.Attachments {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendAgentString(buf, id)
	}
	buf = append(buf, ']')
	if in.QuotedText != "" {
		buf = append(buf, `,"quoted_text":`...)
		buf = appendAgentString(buf, in.QuotedText)
	}
	buf = append(buf, `,"inference_options":`...)
	buf = in.InferenceOptions.appendJSON(buf)
	return append(buf, '}')
}

func appendAgentUserContent(buf []byte, parts []agentUserContent) []byte {
	buf = append(buf, '[')
	for i := range parts {
		p := &parts[i]
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"type":`...)
		buf = appendAgentString(buf, p.Type)
		if p.Type == "input_tag" {
			buf = append(buf, `,"id":`...)
			buf = appendAgentString(buf, p.ID)
		}
		buf = append(buf, `,"text":`...)
		buf = appendAgentString(buf, p.Text)
		if p.Type == "input_tag" {
			buf = append(buf, `,"data":`...)
			if len(p.Data) == 0 {
				buf = append(buf, "{}"...)
			} else {
				buf = append(buf, p.Data...)
			}
			if p.Group != "" {
				buf = append(buf, `,"group":`...)
				buf = appendAgentString(buf, p.Group)
			}
			buf = append(buf, `,"interactive":`...)
			buf = strconv.AppendBool(buf, p.Interactive)
		}
		buf = append(buf, '}')
	}
	return append(buf, ']')
}

func (o *agentInferenceOptions) appendJSON(buf []byte) []byte {
	buf = append(buf, '{')
	if o.ToolChoiceID != "" {
		buf = append(buf, `"tool_choice":{"id":`...)
		buf = appendAgentString(buf, o.ToolChoiceID)
		buf = append(buf, '}')
	}
	if o.Model != "" {
		if o.ToolChoiceID != "" {
			buf = append(buf, ',')
		}
		buf = append(buf, `"model":`...)
		buf = appendAgentString(buf, o.Model)
	}
	return append(buf, '}')
}

// ---------------------------------------------------------------- JSON reading

// The readers below walk a document json.Valid has accepted, so they only
// find boundaries; they never decide validity.

func agentSkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// agentValueEnd returns the index just past the value that starts at b[i].
func agentValueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return agentStringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = agentStringEnd(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	// A number, true, false or null.
	for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r' {
		i++
	}
	return i
}

// agentStringEnd returns the index just past the string that starts at b[i].
func agentStringEnd(b []byte, i int) int {
	for i++; i < len(b); {
		switch b[i] {
		case '\\':
			i += 2
		case '"':
			return i + 1
		default:
			i++
		}
	}
	return i
}

// agentEachMember calls fn with each member of the JSON object obj, keys
// unescaped. An error from fn stops the walk and is returned.
func agentEachMember(obj []byte, fn func(key string, val []byte) error) error {
	return agentEachRawMember(obj, func(key, val []byte) error { return fn(agentUnquote(key), val) })
}

// agentEachRawMember is agentEachMember with each key as its JSON token,
// quotes and escapes included, so a hot path can match keys without
// allocating.
func agentEachRawMember(obj []byte, fn func(key, val []byte) error) error {
	i := agentSkipSpace(obj, 0) + 1 // past '{'
	for {
		i = agentSkipSpace(obj, i)
		if i >= len(obj) || obj[i] == '}' {
			return nil
		}
		if obj[i] == ',' {
			i = agentSkipSpace(obj, i+1)
		}
		end := agentValueEnd(obj, i)
		key := obj[i:end]
		i = agentSkipSpace(obj, end) + 1 // past ':'
		i = agentSkipSpace(obj, i)
		end = agentValueEnd(obj, i)
		if err := fn(key, obj[i:end]); err != nil {
			return err
		}
		i = end
	}
}

// agentEachElement calls fn with each element of the JSON array arr and its
// index.
func agentEachElement(arr []byte, fn func(i int, val []byte) error) error {
	i := agentSkipSpace(arr, 0) + 1 // past '['
	for n := 0; ; n++ {
		i = agentSkipSpace(arr, i)
		if i >= len(arr) || arr[i] == ']' {
			return nil
		}
		if arr[i] == ',' {
			i = agentSkipSpace(arr, i+1)
		}
		end := agentValueEnd(arr, i)
		if err := fn(n, arr[i:end]); err != nil {
			return err
		}
		i = end
	}
}

// agentElementField is the path of element i, such as "params.item_ids[2]".
func agentElementField(field string, i int) string {
	return field + "[" + strconv.Itoa(i) + "]"
}

func agentArrayLen(arr []byte) int {
	n := 0
	_ = agentEachElement(arr, func(int, []byte) error { n++; return nil })
	return n
}

// agentUnquote decodes a JSON string token.
func agentUnquote(tok []byte) string {
	if bytes.IndexByte(tok, '\\') < 0 {
		return string(tok[1 : len(tok)-1])
	}
	var s string
	_ = json.Unmarshal(tok, &s)
	return s
}

func agentIsNull(v []byte) bool   { return string(v) == "null" }
func agentIsObject(v []byte) bool { return len(v) > 0 && v[0] == '{' }
func agentIsArray(v []byte) bool  { return len(v) > 0 && v[0] == '[' }

func agentString(v []byte, field string) (string, error) {
	if len(v) == 0 || v[0] != '"' {
		return "", agentInvalid(field, "must be a string")
	}
	return agentUnquote(v), nil
}

// agentID reads an id: a non-empty string no longer than any id the agent
// makes.
func agentID(v []byte, field string) (string, error) {
	s, err := agentString(v, field)
	switch {
	case err != nil:
	case s == "":
		err = agentInvalid(field, "must not be empty")
	case len(s) > agentMaxIDLength:
		err = agentInvalid(field, "is longer than "+strconv.Itoa(agentMaxIDLength)+" bytes")
	}
	return s, err
}

func agentIDList(v []byte, field string) ([]string, error) {
	if !agentIsArray(v) {
		return nil, agentInvalid(field, "must be a list")
	}
	n := agentArrayLen(v)
	if n == 0 {
		return nil, agentInvalid(field, "must not be empty")
	}
	if n > agentMaxPageLimit {
		return nil, agentInvalid(field, "has more than "+strconv.Itoa(agentMaxPageLimit)+" ids")
	}
	ids := make([]string, 0, n)
	err := agentEachElement(v, func(i int, el []byte) error {
		id, err := agentID(el, agentElementField(field, i))
		ids = append(ids, id)
		return err
	})
	return ids, err
}

// agentQuoteShort quotes a client-sent value for an error message, cut to
// a readable length.
func agentQuoteShort(s string) string {
	const max = 64
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return strconv.Quote(s)
}

// ---------------------------------------------------------------- JSON writing

// appendAgentString appends s as a JSON string the way encoding/json does
// with SetEscapeHTML(false), as the reference server writes its events.
func appendAgentString(buf []byte, s string) []byte { return appendJSONText(buf, s, false) }

// agentTimeLayout is RFC 3339 in UTC with microseconds, the precision the
// thread store keeps; fixed width, so the strings sort as the times do.
const agentTimeLayout = "2006-01-02T15:04:05.000000Z07:00"

func appendAgentTime(buf []byte, t time.Time) []byte {
	buf = append(buf, '"')
	buf = t.UTC().AppendFormat(buf, agentTimeLayout)
	return append(buf, '"')
}

// ---------------------------------------------------------------- threads

// agentThread is a thread as the client sees it (chatkit-python's Thread
// with `metadata` always {}: server-side metadata is never echoed).
type agentThread struct {
	ID        string
	Title     string // "" means untitled (the field is omitted)
	CreatedAt time.Time
	// Status is the status object as stored; nil means {"type":"active"}.
	Status json.RawMessage
}

// appendJSON encodes the thread with a page of its items: the stored item
// JSON, which must not include hidden items. after is the cursor, sent only
// with hasMore.
func (t *agentThread) appendJSON(buf []byte, items []json.RawMessage, hasMore bool, after string) []byte {
	buf = append(buf, '{')
	if t.Title != "" {
		buf = append(buf, `"title":`...)
		buf = appendAgentString(buf, t.Title)
		buf = append(buf, ',')
	}
	buf = append(buf, `"id":`...)
	buf = appendAgentString(buf, t.ID)
	buf = append(buf, `,"created_at":`...)
	buf = appendAgentTime(buf, t.CreatedAt)
	buf = append(buf, `,"status":`...)
	if len(t.Status) == 0 {
		buf = append(buf, `{"type":"active"}`...)
	} else {
		buf = append(buf, t.Status...)
	}
	buf = append(buf, `,"metadata":{},"items":`...)
	buf = appendAgentItemsPage(buf, items, hasMore, after)
	return append(buf, '}')
}

// appendAgentItemsPage encodes a Page of stored items (items.list, and a
// thread's items).
func appendAgentItemsPage(buf []byte, items []json.RawMessage, hasMore bool, after string) []byte {
	buf = append(buf, `{"data":[`...)
	for i, it := range items {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, it...)
	}
	buf = append(buf, ']')
	return appendAgentPageEnd(buf, hasMore, after)
}

// appendAgentThreadsPage encodes threads.list's answer: each thread with
// no items, as chatkit-python sends them.
func appendAgentThreadsPage(buf []byte, threads []agentThread, hasMore bool, after string) []byte {
	buf = append(buf, `{"data":[`...)
	for i := range threads {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = threads[i].appendJSON(buf, nil, false, "")
	}
	buf = append(buf, ']')
	return appendAgentPageEnd(buf, hasMore, after)
}

func appendAgentPageEnd(buf []byte, hasMore bool, after string) []byte {
	buf = append(buf, `,"has_more":`...)
	buf = strconv.AppendBool(buf, hasMore)
	if hasMore && after != "" {
		buf = append(buf, `,"after":`...)
		buf = appendAgentString(buf, after)
	}
	return append(buf, '}')
}

// agentEmptyObject is the answer to threads.delete and items.feedback.
const agentEmptyObject = "{}"

// ---------------------------------------------------------------- items

// The item types the agent stores. The hidden ones are sent to the model
// but never to the client.
const (
	agentItemUserMessage      = "user_message"
	agentItemAssistantMessage = "assistant_message"
	agentItemWorkflow         = "workflow"
	agentItemHiddenContext    = "sdk_hidden_context"
	agentItemHiddenContextApp = "hidden_context_item"
)

// agentItemHidden reports whether items of this type stay out of every
// list, thread and event sent to the client.
func agentItemHidden(itemType string) bool {
	return itemType == agentItemHiddenContext || itemType == agentItemHiddenContextApp
}

// agentItemHeader is what every item has.
type agentItemHeader struct {
	ID        string
	ThreadID  string
	CreatedAt time.Time
}

func (h *agentItemHeader) appendJSON(buf []byte, itemType string) []byte {
	buf = append(buf, `{"id":`...)
	buf = appendAgentString(buf, h.ID)
	buf = append(buf, `,"thread_id":`...)
	buf = appendAgentString(buf, h.ThreadID)
	buf = append(buf, `,"created_at":`...)
	buf = appendAgentTime(buf, h.CreatedAt)
	buf = append(buf, `,"type":`...)
	return appendAgentString(buf, itemType)
}

// agentItem is a thread item the agent builds.
type agentItem interface {
	header() *agentItemHeader
	itemType() string
	// appendJSON appends the item as the client (and the store) sees it.
	appendJSON(buf []byte) []byte
}

// agentUserMessage is a user_message item.
type agentUserMessage struct {
	agentItemHeader
	Input agentUserInput
	// Attachments are the files the message carries, as saved with it.
	Attachments []agentAttachment
}

// newAgentUserMessage is the item a request's input becomes.
func newAgentUserMessage(id, threadID string, at time.Time, in agentUserInput) *agentUserMessage {
	return &agentUserMessage{agentItemHeader: agentItemHeader{id, threadID, at}, Input: in}
}

func (m *agentUserMessage) header() *agentItemHeader { return &m.agentItemHeader }
func (m *agentUserMessage) itemType() string         { return agentItemUserMessage }

func (m *agentUserMessage) appendJSON(buf []byte) []byte {
	buf = m.agentItemHeader.appendJSON(buf, agentItemUserMessage)
	buf = append(buf, `,"content":`...)
	buf = appendAgentUserContent(buf, m.Input.Content)
	buf = append(buf, `,"attachments":[`...)
	for i := range m.Attachments {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = m.Attachments[i].appendJSON(buf, "", "")
	}
	buf = append(buf, ']')
	if m.Input.QuotedText != "" {
		buf = append(buf, `,"quoted_text":`...)
		buf = appendAgentString(buf, m.Input.QuotedText)
	}
	buf = append(buf, `,"inference_options":`...)
	buf = m.Input.InferenceOptions.appendJSON(buf)
	return append(buf, '}')
}

// agentAssistantMessage is an assistant_message item.
type agentAssistantMessage struct {
	agentItemHeader
	Content []agentAssistantContent
}

func (m *agentAssistantMessage) header() *agentItemHeader { return &m.agentItemHeader }
func (m *agentAssistantMessage) itemType() string         { return agentItemAssistantMessage }

func (m *agentAssistantMessage) appendJSON(buf []byte) []byte {
	buf = m.agentItemHeader.appendJSON(buf, agentItemAssistantMessage)
	buf = append(buf, `,"content":[`...)
	for i := range m.Content {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = m.Content[i].appendJSON(buf)
	}
	return append(buf, "]}"...)
}

// agentAssistantContent is one output_text part.
type agentAssistantContent struct {
	Text        string
	Annotations []agentAnnotation
}

func (c *agentAssistantContent) appendJSON(buf []byte) []byte {
	buf = append(buf, `{"annotations":[`...)
	for i := range c.Annotations {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = c.Annotations[i].appendJSON(buf)
	}
	buf = append(buf, `],"text":`...)
	buf = appendAgentString(buf, c.Text)
	return append(buf, `,"type":"output_text"}`...)
}

// agentAnnotation is a citation in an answer: a url or a file source.
type agentAnnotation struct {
	SourceType string // "url" or "file"
	Title      string
	URL        string // url sources
	Filename   string // file sources
	Index      int    // character offset in the text; -1 for none
}

func (a *agentAnnotation) appendJSON(buf []byte) []byte {
	buf = append(buf, `{"type":"annotation","source":{"title":`...)
	buf = appendAgentString(buf, a.Title)
	buf = append(buf, `,"type":`...)
	buf = appendAgentString(buf, a.SourceType)
	if a.SourceType == "url" {
		buf = append(buf, `,"url":`...)
		buf = appendAgentString(buf, a.URL)
	} else {
		buf = append(buf, `,"filename":`...)
		buf = appendAgentString(buf, a.Filename)
	}
	buf = append(buf, '}')
	if a.Index >= 0 {
		buf = append(buf, `,"index":`...)
		buf = strconv.AppendInt(buf, int64(a.Index), 10)
	}
	return append(buf, '}')
}

// agentWorkflowItem is a workflow item; the agent makes the reasoning kind,
// whose tasks are thoughts.
type agentWorkflowItem struct {
	agentItemHeader
	Kind  string // "reasoning"
	Tasks []agentThought
	// Duration is the summary in whole seconds; -1 while the workflow runs
	// (no summary).
	Duration int
	Expanded bool
}

func (w *agentWorkflowItem) header() *agentItemHeader { return &w.agentItemHeader }
func (w *agentWorkflowItem) itemType() string         { return agentItemWorkflow }

func (w *agentWorkflowItem) appendJSON(buf []byte) []byte {
	buf = w.agentItemHeader.appendJSON(buf, agentItemWorkflow)
	buf = append(buf, `,"workflow":{"type":`...)
	buf = appendAgentString(buf, w.Kind)
	buf = append(buf, `,"tasks":[`...)
	for i := range w.Tasks {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = w.Tasks[i].appendJSON(buf)
	}
	buf = append(buf, ']')
	if w.Duration >= 0 {
		buf = append(buf, `,"summary":{"duration":`...)
		buf = strconv.AppendInt(buf, int64(w.Duration), 10)
		buf = append(buf, '}')
	}
	buf = append(buf, `,"expanded":`...)
	buf = strconv.AppendBool(buf, w.Expanded)
	return append(buf, "}}"...)
}

// agentThought is a workflow task of type thought.
type agentThought struct {
	Content string
}

func (t *agentThought) appendJSON(buf []byte) []byte {
	buf = append(buf, `{"status_indicator":"none","type":"thought","content":`...)
	buf = appendAgentString(buf, t.Content)
	return append(buf, '}')
}

// agentHiddenContext is an sdk_hidden_context item: text for the model
// that the client never sees.
type agentHiddenContext struct {
	agentItemHeader
	Content string
}

func (h *agentHiddenContext) header() *agentItemHeader { return &h.agentItemHeader }
func (h *agentHiddenContext) itemType() string         { return agentItemHiddenContext }

func (h *agentHiddenContext) appendJSON(buf []byte) []byte {
	buf = h.agentItemHeader.appendJSON(buf, agentItemHiddenContext)
	buf = append(buf, `,"content":`...)
	buf = appendAgentString(buf, h.Content)
	return append(buf, '}')
}

// ---------------------------------------------------------------- stream events

// agentFrames builds SSE frames, `data: <json>\n\n`, one per ChatKit event,
// into a buffer the caller writes out, flushes and Resets; the buffer is
// reused, so a stream allocates nothing per event once it has grown.
type agentFrames struct {
	buf []byte
}

// Bytes returns the frames built since the last Reset.
func (f *agentFrames) Bytes() []byte { return f.buf }

// Len is the size of the frames built since the last Reset.
func (f *agentFrames) Len() int { return len(f.buf) }

// truncate removes the frames built since the length n.
func (f *agentFrames) truncate(n int) { f.buf = f.buf[:n] }

// agentKeepBuffer is the largest buffer a stream keeps between events:
// enough for the small events that make up a stream, so that one large
// event (the user's message, an echo of the instructions, the final item)
// does not stay allocated for the rest of the stream.
const agentKeepBuffer = 1 << 10

// Reset empties the buffer, keeping its memory unless an unusually large
// event grew it.
func (f *agentFrames) Reset() {
	if cap(f.buf) > agentKeepBuffer {
		f.buf = nil
		return
	}
	f.buf = f.buf[:0]
}

func (f *agentFrames) open(eventType string) {
	f.buf = append(f.buf, `data: {"type":"`...)
	f.buf = append(f.buf, eventType...) // our constants: nothing to escape
	f.buf = append(f.buf, '"')
}

func (f *agentFrames) close() { f.buf = append(f.buf, "}\n\n"...) }

// threadCreated emits thread.created (the thread with no items).
func (f *agentFrames) threadCreated(t *agentThread) { f.thread("thread.created", t) }

// threadUpdated emits thread.updated, after a title or status change.
func (f *agentFrames) threadUpdated(t *agentThread) { f.thread("thread.updated", t) }

func (f *agentFrames) thread(eventType string, t *agentThread) {
	f.open(eventType)
	f.buf = append(f.buf, `,"thread":`...)
	f.buf = t.appendJSON(f.buf, nil, false, "")
	f.close()
}

// itemAdded emits thread.item.added (an item that will stream).
func (f *agentFrames) itemAdded(it agentItem) { f.item("thread.item.added", it) }

// itemDone emits thread.item.done (an item complete and saved).
func (f *agentFrames) itemDone(it agentItem) { f.item("thread.item.done", it) }

// itemDoneJSON emits thread.item.done for an item already encoded (the
// JSON the store keeps).
func (f *agentFrames) itemDoneJSON(itemJSON []byte) {
	f.open("thread.item.done")
	f.buf = append(f.buf, `,"item":`...)
	f.buf = append(f.buf, itemJSON...)
	f.close()
}

// dropItemDone removes the unsent thread.item.done of an item that could
// not be saved: the event tells the client the item is kept.
func (f *agentFrames) dropItemDone(itemID string) {
	head := `data: {"type":"thread.item.done","item":{"id":"` + itemID + `"` // our ids: nothing to escape
	for at := 0; at < len(f.buf); {
		n := bytes.Index(f.buf[at:], []byte("\n\n"))
		if n < 0 {
			return
		}
		end := at + n + 2
		if bytes.HasPrefix(f.buf[at:end], []byte(head)) {
			f.buf = append(f.buf[:at], f.buf[end:]...)
			return
		}
		at = end
	}
}

func (f *agentFrames) item(eventType string, it agentItem) {
	if agentItemHidden(it.itemType()) {
		return // never to the client
	}
	f.open(eventType)
	f.buf = append(f.buf, `,"item":`...)
	f.buf = it.appendJSON(f.buf)
	f.close()
}

// itemRemoved emits thread.item.removed.
func (f *agentFrames) itemRemoved(itemID string) {
	f.open("thread.item.removed")
	f.buf = append(f.buf, `,"item_id":`...)
	f.buf = appendAgentString(f.buf, itemID)
	f.close()
}

// streamOptions emits stream_options; allow_cancel shows the stop button.
func (f *agentFrames) streamOptions(allowCancel bool) {
	f.open("stream_options")
	f.buf = append(f.buf, `,"stream_options":{"allow_cancel":`...)
	f.buf = strconv.AppendBool(f.buf, allowCancel)
	f.buf = append(f.buf, '}')
	f.close()
}

// progress emits progress_update, transient status text; icon "" is none.
func (f *agentFrames) progress(icon, text string) {
	f.open("progress_update")
	if icon != "" {
		f.buf = append(f.buf, `,"icon":`...)
		f.buf = appendAgentString(f.buf, icon)
	}
	f.buf = append(f.buf, `,"text":`...)
	f.buf = appendAgentString(f.buf, text)
	f.close()
}

// agentStreamError is an error event. Code is "stream.error" (the client
// shows its own words) or "custom" (it shows Message).
type agentStreamError struct {
	Code       string
	Message    string // "" for none
	AllowRetry bool
}

// Error codes of the ChatKit error event.
const (
	agentErrorCodeStream = "stream.error"
	agentErrorCodeCustom = "custom"
)

// errorEvent emits error; the stream should end after it.
func (f *agentFrames) errorEvent(e agentStreamError) {
	f.open("error")
	f.buf = append(f.buf, `,"code":`...)
	f.buf = appendAgentString(f.buf, e.Code)
	if e.Message != "" {
		f.buf = append(f.buf, `,"message":`...)
		f.buf = appendAgentString(f.buf, e.Message)
	}
	f.buf = append(f.buf, `,"allow_retry":`...)
	f.buf = strconv.AppendBool(f.buf, e.AllowRetry)
	f.close()
}

func (f *agentFrames) update(itemID, updateType string) {
	f.open("thread.item.updated")
	f.buf = append(f.buf, `,"item_id":`...)
	f.buf = appendAgentString(f.buf, itemID)
	f.buf = append(f.buf, `,"update":{"type":"`...)
	f.buf = append(f.buf, updateType...)
	f.buf = append(f.buf, '"')
}

func (f *agentFrames) closeUpdate() { f.buf = append(f.buf, "}}\n\n"...) }

func (f *agentFrames) index(name string, i int) {
	f.buf = append(f.buf, ',', '"')
	f.buf = append(f.buf, name...)
	f.buf = append(f.buf, '"', ':')
	f.buf = strconv.AppendInt(f.buf, int64(i), 10)
}

// partAdded emits assistant_message.content_part.added.
func (f *agentFrames) partAdded(itemID string, index int, c *agentAssistantContent) {
	f.part("assistant_message.content_part.added", itemID, index, c)
}

// partDone emits assistant_message.content_part.done with the part's final text.
func (f *agentFrames) partDone(itemID string, index int, c *agentAssistantContent) {
	f.part("assistant_message.content_part.done", itemID, index, c)
}

func (f *agentFrames) part(updateType, itemID string, index int, c *agentAssistantContent) {
	f.update(itemID, updateType)
	f.index("content_index", index)
	f.buf = append(f.buf, `,"content":`...)
	f.buf = c.appendJSON(f.buf)
	f.closeUpdate()
}

// textDelta emits assistant_message.content_part.text_delta.
func (f *agentFrames) textDelta(itemID string, index int, delta string) {
	f.update(itemID, "assistant_message.content_part.text_delta")
	f.index("content_index", index)
	f.buf = append(f.buf, `,"delta":`...)
	f.buf = appendAgentString(f.buf, delta)
	f.closeUpdate()
}

// annotationAdded emits assistant_message.content_part.annotation_added.
func (f *agentFrames) annotationAdded(itemID string, index, annotationIndex int, a *agentAnnotation) {
	f.update(itemID, "assistant_message.content_part.annotation_added")
	f.index("content_index", index)
	f.index("annotation_index", annotationIndex)
	f.buf = append(f.buf, `,"annotation":`...)
	f.buf = a.appendJSON(f.buf)
	f.closeUpdate()
}

// taskAdded emits workflow.task.added.
func (f *agentFrames) taskAdded(itemID string, index int, t *agentThought) {
	f.task("workflow.task.added", itemID, index, t)
}

// taskUpdated emits workflow.task.updated with the task as it is now.
func (f *agentFrames) taskUpdated(itemID string, index int, t *agentThought) {
	f.task("workflow.task.updated", itemID, index, t)
}

func (f *agentFrames) task(updateType, itemID string, index int, t *agentThought) {
	f.update(itemID, updateType)
	f.index("task_index", index)
	f.buf = append(f.buf, `,"task":`...)
	f.buf = t.appendJSON(f.buf)
	f.closeUpdate()
}

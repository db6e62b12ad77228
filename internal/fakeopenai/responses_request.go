package fakeopenai

import (
	"encoding/base64"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The request rules below follow OpenAI's reference for "Create a model
// response" as generated into openai-python's
// types/responses/response_create_params.py and openai-go's
// ResponseNewParams (both August 2026). Where the reference marks a field
// required that the live API is known to default (input_image.detail,
// output_text.annotations, a function tool's parameters and strict), the
// fake accepts it absent too, so it never rejects what OpenAI accepts.

// ResponsesRequest is the parsed body of a POST /v1/responses. Pointer
// fields are nil when the field was absent or JSON null.
type ResponsesRequest struct {
	Model              string // empty only when Prompt is set
	Instructions       *string
	Stream             bool
	Store              *bool
	MaxOutputTokens    *int
	SafetyIdentifier   *string
	PreviousResponseID *string
	Reasoning          *Reasoning
	Prompt             *Prompt
	Metadata           map[string]string
	// IncludeObfuscation is stream_options.include_obfuscation.
	IncludeObfuscation *bool
	// InputIsString reports that input was a plain string; Input then holds
	// it as one user message.
	InputIsString bool
	Input         []InputItem
	// Raw is the whole decoded body (numbers as json.Number), for the
	// fields that have no typed copy here.
	Raw map[string]any
}

// Reasoning is the "reasoning" object.
type Reasoning struct {
	Effort, Summary *string
}

// Prompt is the "prompt" object; Variables values are strings or input
// content objects.
type Prompt struct {
	ID        string
	Version   *string
	Variables map[string]any
}

// InputItem is one item of "input".
type InputItem struct {
	// Type is the item type; "message" also for messages sent without one.
	Type string
	// Role is set for messages.
	Role string
	// Text is the model-visible text the item carries: a message's string
	// content or its text parts joined with "\n" (input_text, output_text,
	// refusal), a function call's arguments, a function call output's
	// string output, a reasoning item's summary texts.
	Text string
	// Content holds a message's parts; nil when the content was a string.
	Content []ContentPart
	// CallID is set for function calls and function call outputs.
	CallID string
	// Raw is the item as sent.
	Raw map[string]any
}

// ContentPart is one part of a message's content.
type ContentPart struct {
	Type string
	// Text is the text of input_text and output_text parts and the refusal
	// of refusal parts.
	Text string
	// ImageURL and Detail are an input_image's (a URL or a data URL).
	ImageURL, Detail string
	// FileData (a data URL) and Filename are an input_file's.
	FileData, Filename string
}

func (r *ResponsesRequest) clone() *ResponsesRequest {
	if r == nil {
		return nil
	}
	out := *r
	out.Instructions = clonePtr(r.Instructions)
	out.Store = clonePtr(r.Store)
	out.MaxOutputTokens = clonePtr(r.MaxOutputTokens)
	out.SafetyIdentifier = clonePtr(r.SafetyIdentifier)
	out.PreviousResponseID = clonePtr(r.PreviousResponseID)
	out.IncludeObfuscation = clonePtr(r.IncludeObfuscation)
	if r.Reasoning != nil {
		out.Reasoning = &Reasoning{Effort: clonePtr(r.Reasoning.Effort), Summary: clonePtr(r.Reasoning.Summary)}
	}
	if r.Prompt != nil {
		p := *r.Prompt
		p.Version = clonePtr(r.Prompt.Version)
		if r.Prompt.Variables != nil {
			p.Variables, _ = cloneJSON(r.Prompt.Variables).(map[string]any)
		}
		out.Prompt = &p
	}
	out.Metadata = maps.Clone(r.Metadata)
	out.Input = make([]InputItem, len(r.Input))
	for i, it := range r.Input {
		it.Content = slices.Clone(it.Content)
		it.Raw, _ = cloneJSON(it.Raw).(map[string]any)
		out.Input[i] = it
	}
	out.Raw, _ = cloneJSON(r.Raw).(map[string]any)
	return &out
}

// cloneJSON deep-copies a decoded JSON value.
func cloneJSON(v any) any {
	switch v := v.(type) {
	case map[string]any:
		if v == nil {
			return v
		}
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = cloneJSON(e)
		}
		return m
	case []any:
		if v == nil {
			return v
		}
		a := make([]any, len(v))
		for i, e := range v {
			a[i] = cloneJSON(e)
		}
		return a
	default:
		return v // strings, numbers, booleans and nil are immutable
	}
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// supported renders allowed values the way OpenAI's enum errors do:
// 'a', 'b', and 'c'.
func supported(allowed []string) string {
	q := make([]string, len(allowed))
	for i, a := range allowed {
		q[i] = "'" + a + "'"
	}
	switch len(q) {
	case 1:
		return q[0]
	case 2:
		return q[0] + " and " + q[1]
	}
	return strings.Join(q[:len(q)-1], ", ") + ", and " + q[len(q)-1]
}

func invalidValue(path, got string, allowed ...string) *apiError {
	return invalidRequest(path, "invalid_value", "Invalid value: '%s'. Supported values are: %s.", got, supported(allowed))
}

// enumValue checks that v is one of allowed.
func enumValue(v any, path string, allowed ...string) (string, *apiError) {
	s, ok := v.(string)
	if !ok {
		return "", wrongType(path, "a string", v)
	}
	if !slices.Contains(allowed, s) {
		return "", invalidValue(path, s, allowed...)
	}
	return s, nil
}

// optEnum is enumValue for an optional, nullable field.
func optEnum(m map[string]any, key, path string, allowed ...string) (*string, *apiError) {
	v, ok := m[key]
	if !ok || v == nil {
		return nil, nil
	}
	s, err := enumValue(v, join(path, key), allowed...)
	if err != nil {
		return nil, err
	}
	return &s, nil
}

// notNull rejects an explicit null for a field the reference does not mark
// nullable.
func notNull(m map[string]any, key, path, want string) *apiError {
	if v, ok := m[key]; ok && v == nil {
		return wrongType(join(path, key), want, v)
	}
	return nil
}

// reqString returns the string at key, which must be present.
func reqString(m map[string]any, key, path string) (string, *apiError) {
	v, ok := m[key]
	if !ok {
		return "", missingParam(join(path, key))
	}
	s, ok := v.(string)
	if !ok {
		return "", wrongType(join(path, key), "a string", v)
	}
	return s, nil
}

// maxLen rejects a string longer than n characters.
func maxLen(s *string, path string, n int) *apiError {
	if s == nil {
		return nil
	}
	if l := utf8.RuneCountInString(*s); l > n {
		return invalidRequest(path, "string_above_max_length",
			"Invalid '%s': string too long. Expected a string with maximum length %d, but got a string with length %d instead.", path, n, l)
	}
	return nil
}

// rangedInt returns the optional, nullable integer at key within [lo, hi]
// (hi < lo: no upper bound), with the Responses API's range error codes.
func rangedInt(m map[string]any, key, path string, lo, hi int64) (*int, *apiError) {
	v, ok := m[key]
	if !ok || v == nil {
		return nil, nil
	}
	p := join(path, key)
	i, err := integerValue(v, p)
	if err != nil {
		return nil, err
	}
	if i < lo {
		return nil, invalidRequest(p, "integer_below_min_value",
			"Invalid '%s': integer below minimum value. Expected a value >= %d, but got %d instead.", p, lo, i)
	}
	if hi >= lo && i > hi {
		return nil, invalidRequest(p, "integer_above_max_value",
			"Invalid '%s': integer above maximum value. Expected a value <= %d, but got %d instead.", p, hi, i)
	}
	n := int(i)
	return &n, nil
}

// rangedNumber checks the optional, nullable number at key within [lo, hi].
func rangedNumber(m map[string]any, key, path string, lo, hi float64) *apiError {
	v, ok := m[key]
	if !ok || v == nil {
		return nil
	}
	p := join(path, key)
	n, ok := v.(json.Number)
	if !ok {
		return wrongType(p, "a number", v)
	}
	f, err := n.Float64()
	if err != nil {
		return invalidRequest(p, "invalid_value", "Invalid '%s': number out of range.", p)
	}
	if f < lo {
		return invalidRequest(p, "decimal_below_min_value",
			"Invalid '%s': decimal below minimum value. Expected a value >= %g, but got %s instead.", p, lo, n)
	}
	if f > hi {
		return invalidRequest(p, "decimal_above_max_value",
			"Invalid '%s': decimal above maximum value. Expected a value <= %g, but got %s instead.", p, hi, n)
	}
	return nil
}

// optArray returns the array at key, or nil when absent or null.
func optArray(m map[string]any, key, path string) ([]any, *apiError) {
	v, ok := m[key]
	if !ok || v == nil {
		return nil, nil
	}
	a, ok := v.([]any)
	if !ok {
		return nil, wrongType(join(path, key), "an array", v)
	}
	return a, nil
}

func asObject(v any, path string) (map[string]any, *apiError) {
	o, ok := v.(map[string]any)
	if !ok {
		return nil, wrongType(path, "an object", v)
	}
	return o, nil
}

// requireKeys reports the first absent key of required, in the given order.
func requireKeys(m map[string]any, path string, required ...string) *apiError {
	for _, k := range required {
		if _, ok := m[k]; !ok {
			return missingParam(join(path, k))
		}
	}
	return nil
}

// checkStrings type-checks optional, nullable string fields.
func checkStrings(m map[string]any, path string, keys ...string) *apiError {
	for _, k := range keys {
		if _, err := optString(m, k, path); err != nil {
			return err
		}
	}
	return nil
}

// parseResponses validates a create-response body strictly: unknown keys
// anywhere the fake models, wrong types and invalid values are 400s
// naming the offending parameter.
func parseResponses(body []byte) (*ResponsesRequest, *apiError) {
	root, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	if err := checkKeys(root, "",
		"background", "context_management", "conversation", "include", "input", "instructions",
		"max_output_tokens", "max_tool_calls", "metadata", "model", "moderation", "parallel_tool_calls",
		"previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_options",
		"prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream",
		"stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p",
		"truncation", "user"); err != nil {
		return nil, err
	}
	// Fields the reference does not mark nullable.
	for _, kw := range [][2]string{
		{"model", "a string"}, {"input", "one of a string or an array of input items"}, {"text", "an object"},
		{"tool_choice", "one of a string or an object"}, {"tools", "an array"}, {"user", "a string"},
		{"prompt_cache_options", "an object"},
	} {
		if err := notNull(root, kw[0], "", kw[1]); err != nil {
			return nil, err
		}
	}
	req := &ResponsesRequest{Raw: root}

	if err := parsePrompt(root, req); err != nil {
		return nil, err
	}
	if v, ok := root["model"]; ok {
		m, ok := v.(string)
		if !ok {
			return nil, wrongType("model", "a string", v)
		}
		if m == "" {
			return nil, invalidRequest("model", "invalid_value",
				"Invalid 'model': empty string. Expected a string with minimum length 1, but got an empty string instead.")
		}
		req.Model = m
	} else if req.Prompt == nil {
		return nil, missingParam("model")
	}

	if v, ok := root["input"]; ok {
		switch in := v.(type) {
		case string:
			req.InputIsString = true
			req.Input = []InputItem{{Type: "message", Role: "user", Text: in,
				Raw: map[string]any{"role": "user", "content": in}}}
		case []any:
			for i, it := range in {
				item, err := parseInputItem(it, index("input", i))
				if err != nil {
					return nil, err
				}
				req.Input = append(req.Input, item)
			}
		default:
			return nil, wrongType("input", "one of a string or an array of input items", v)
		}
	}

	if req.Instructions, err = optString(root, "instructions", ""); err != nil {
		return nil, err
	}
	stream, err := optBool(root, "stream", "")
	if err != nil {
		return nil, err
	}
	req.Stream = stream != nil && *stream
	if req.Store, err = optBool(root, "store", ""); err != nil {
		return nil, err
	}
	if _, err := optBool(root, "parallel_tool_calls", ""); err != nil {
		return nil, err
	}
	background, err := optBool(root, "background", "")
	if err != nil {
		return nil, err
	}
	if background != nil && *background {
		// Documented, but it needs retrieval and polling the fake does not serve.
		return nil, invalidRequest("background", "unsupported_value",
			"The fake OpenAI server does not model background responses; send background false or omit it.")
	}
	if req.MaxOutputTokens, err = rangedInt(root, "max_output_tokens", "", 16, -1); err != nil {
		return nil, err
	}
	if _, err := rangedInt(root, "max_tool_calls", "", 0, -1); err != nil {
		return nil, err
	}
	if _, err := rangedInt(root, "top_logprobs", "", 0, 20); err != nil {
		return nil, err
	}
	if err := rangedNumber(root, "temperature", "", 0, 2); err != nil {
		return nil, err
	}
	if err := rangedNumber(root, "top_p", "", 0, 1); err != nil {
		return nil, err
	}
	if req.SafetyIdentifier, err = optString(root, "safety_identifier", ""); err != nil {
		return nil, err
	}
	if err := maxLen(req.SafetyIdentifier, "safety_identifier", 64); err != nil {
		return nil, err
	}
	if req.PreviousResponseID, err = optString(root, "previous_response_id", ""); err != nil {
		return nil, err
	}
	if err := checkStrings(root, "", "user", "prompt_cache_key"); err != nil {
		return nil, err
	}
	if _, err := optEnum(root, "truncation", "", "auto", "disabled"); err != nil {
		return nil, err
	}
	if _, err := optEnum(root, "service_tier", "", "auto", "default", "flex", "scale", "priority", "fast", "ultrafast"); err != nil {
		return nil, err
	}
	if _, err := optEnum(root, "prompt_cache_retention", "", "in_memory", "24h"); err != nil {
		return nil, err
	}
	include, err := optArray(root, "include", "")
	if err != nil {
		return nil, err
	}
	for i, v := range include {
		if _, err := enumValue(v, index("include", i),
			"file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
			"message.input_image.image_url", "computer_call_output.output.image_url",
			"code_interpreter_call.outputs", "reasoning.encrypted_content", "message.output_text.logprobs"); err != nil {
			return nil, err
		}
	}

	for _, parse := range []func(map[string]any, *ResponsesRequest) *apiError{
		parseReasoning, parseMetadata, parseText, parseTools, parseToolChoice, parseStreamOptions,
		parseConversation, parseContextManagement, parseModeration, parsePromptCacheOptions,
		parseHostedToolRules,
	} {
		if err := parse(root, req); err != nil {
			return nil, err
		}
	}
	return req, nil
}

func parsePrompt(root map[string]any, req *ResponsesRequest) *apiError {
	po, err := optObject(root, "prompt", "")
	if err != nil || po == nil {
		return err
	}
	if err := checkKeys(po, "prompt", "id", "version", "variables"); err != nil {
		return err
	}
	id, err := reqString(po, "id", "prompt")
	if err != nil {
		return err
	}
	p := &Prompt{ID: id}
	if p.Version, err = optString(po, "version", "prompt"); err != nil {
		return err
	}
	vars, err := optObject(po, "variables", "prompt")
	if err != nil {
		return err
	}
	if vars != nil {
		for _, k := range slices.Sorted(maps.Keys(vars)) {
			path := "prompt.variables." + k
			if _, ok := vars[k].(string); ok {
				continue
			}
			obj, err := asObject(vars[k], path)
			if err != nil {
				return wrongType(path, "one of a string or an input content object", vars[k])
			}
			if _, err := parsePart(obj, path, inputPartTypes()); err != nil {
				return err
			}
		}
		p.Variables = vars
	}
	req.Prompt = p
	return nil
}

func parseReasoning(root map[string]any, req *ResponsesRequest) *apiError {
	ro, err := optObject(root, "reasoning", "")
	if err != nil || ro == nil {
		return err
	}
	if err := checkKeys(ro, "reasoning", "context", "effort", "generate_summary", "mode", "summary"); err != nil {
		return err
	}
	r := &Reasoning{}
	if r.Effort, err = optEnum(ro, "effort", "reasoning", "none", "minimal", "low", "medium", "high", "xhigh", "max"); err != nil {
		return err
	}
	if r.Summary, err = optEnum(ro, "summary", "reasoning", "auto", "concise", "detailed"); err != nil {
		return err
	}
	if _, err := optEnum(ro, "generate_summary", "reasoning", "auto", "concise", "detailed"); err != nil {
		return err
	}
	if _, err := optEnum(ro, "context", "reasoning", "auto", "current_turn", "all_turns"); err != nil {
		return err
	}
	if err := notNull(ro, "mode", "reasoning", "a string"); err != nil {
		return err
	}
	if _, err := optString(ro, "mode", "reasoning"); err != nil {
		return err
	}
	req.Reasoning = r
	return nil
}

// Metadata limits, as documented: 16 pairs, keys up to 64 characters,
// values up to 512.
const (
	maxMetadataPairs    = 16
	maxMetadataKeyLen   = 64
	maxMetadataValueLen = 512
)

func parseMetadata(root map[string]any, req *ResponsesRequest) *apiError {
	mo, err := optObject(root, "metadata", "")
	if err != nil || mo == nil {
		return err
	}
	if len(mo) > maxMetadataPairs {
		return invalidRequest("metadata", "object_above_max_properties",
			"Invalid 'metadata': too many properties. Expected an object with at most %d properties, but got an object with %d properties instead.",
			maxMetadataPairs, len(mo))
	}
	md := make(map[string]string, len(mo))
	for _, k := range slices.Sorted(maps.Keys(mo)) {
		p := "metadata." + k
		if utf8.RuneCountInString(k) > maxMetadataKeyLen {
			return invalidRequest("metadata", "invalid_value",
				"Invalid 'metadata': key '%s' is longer than %d characters.", k, maxMetadataKeyLen)
		}
		v, ok := mo[k].(string)
		if !ok {
			return wrongType(p, "a string", mo[k])
		}
		if err := maxLen(&v, p, maxMetadataValueLen); err != nil {
			return err
		}
		md[k] = v
	}
	req.Metadata = md
	return nil
}

func parseText(root map[string]any, _ *ResponsesRequest) *apiError {
	to, err := optObject(root, "text", "")
	if err != nil || to == nil {
		return err
	}
	if err := checkKeys(to, "text", "format", "verbosity"); err != nil {
		return err
	}
	if _, err := optEnum(to, "verbosity", "text", "low", "medium", "high"); err != nil {
		return err
	}
	if err := notNull(to, "format", "text", "an object"); err != nil {
		return err
	}
	fo, err := optObject(to, "format", "text")
	if err != nil || fo == nil {
		return err
	}
	const p = "text.format"
	typ, err := reqString(fo, "type", p)
	if err != nil {
		return err
	}
	switch typ {
	case "text", "json_object":
		return checkKeys(fo, p, "type")
	case "json_schema":
		if err := checkKeys(fo, p, "type", "name", "schema", "description", "strict"); err != nil {
			return err
		}
		if _, err := reqString(fo, "name", p); err != nil {
			return err
		}
		if err := requireKeys(fo, p, "schema"); err != nil {
			return err
		}
		if _, err := asObject(fo["schema"], p+".schema"); err != nil {
			return err
		}
		if _, err := optString(fo, "description", p); err != nil {
			return err
		}
		_, err := optBool(fo, "strict", p)
		return err
	}
	return invalidValue(p+".type", typ, "text", "json_schema", "json_object")
}

func toolTypes() []string {
	return []string{"function", "file_search", "computer", "computer_use_preview", "web_search",
		"web_search_2025_08_26", "mcp", "code_interpreter", "programmatic_tool_calling", "image_generation",
		"local_shell", "shell", "custom", "namespace", "tool_search", "web_search_preview",
		"web_search_preview_2025_03_11", "apply_patch"}
}

// parseTools checks every tool's type; function tools, the kind an agent
// defines itself, are checked field by field.
func parseTools(root map[string]any, _ *ResponsesRequest) *apiError {
	tools, err := optArray(root, "tools", "")
	if err != nil {
		return err
	}
	for i, tv := range tools {
		p := index("tools", i)
		to, err := asObject(tv, p)
		if err != nil {
			return err
		}
		typ, err := reqString(to, "type", p)
		if err != nil {
			return err
		}
		if !slices.Contains(toolTypes(), typ) {
			return invalidValue(p+".type", typ, toolTypes()...)
		}
		if typ != "function" {
			if err := parseHostedTool(to, p, typ); err != nil {
				return err
			}
			continue
		}
		if err := checkKeys(to, p, "type", "name", "parameters", "strict", "description",
			"allowed_callers", "defer_loading", "output_schema"); err != nil {
			return err
		}
		if _, err := reqString(to, "name", p); err != nil {
			return err
		}
		if _, err := optObject(to, "parameters", p); err != nil {
			return err
		}
		if _, err := optObject(to, "output_schema", p); err != nil {
			return err
		}
		if _, err := optBool(to, "strict", p); err != nil {
			return err
		}
		if _, err := optBool(to, "defer_loading", p); err != nil {
			return err
		}
		if _, err := optString(to, "description", p); err != nil {
			return err
		}
		callers, err := optArray(to, "allowed_callers", p)
		if err != nil {
			return err
		}
		for j, c := range callers {
			if _, err := enumValue(c, index(p+".allowed_callers", j), "direct", "programmatic"); err != nil {
				return err
			}
		}
		if err := checkFunctionTool(to, p); err != nil {
			return err
		}
	}
	return nil
}

func parseToolChoice(root map[string]any, _ *ResponsesRequest) *apiError {
	v, ok := root["tool_choice"]
	if !ok {
		return nil
	}
	const p = "tool_choice"
	if s, ok := v.(string); ok {
		_, err := enumValue(s, p, "none", "auto", "required")
		return err
	}
	to, ok := v.(map[string]any)
	if !ok {
		return wrongType(p, "one of a string or an object", v)
	}
	typ, err := reqString(to, "type", p)
	if err != nil {
		return err
	}
	switch typ {
	case "function", "custom":
		if err := checkKeys(to, p, "type", "name"); err != nil {
			return err
		}
		_, err := reqString(to, "name", p)
		return err
	case "mcp":
		if err := checkKeys(to, p, "type", "server_label", "name"); err != nil {
			return err
		}
		if _, err := reqString(to, "server_label", p); err != nil {
			return err
		}
		_, err := optString(to, "name", p)
		return err
	case "allowed_tools":
		if err := checkKeys(to, p, "type", "mode", "tools"); err != nil {
			return err
		}
		if err := requireKeys(to, p, "mode", "tools"); err != nil {
			return err
		}
		if _, err := enumValue(to["mode"], p+".mode", "auto", "required"); err != nil {
			return err
		}
		tools, ok := to["tools"].([]any)
		if !ok {
			return wrongType(p+".tools", "an array", to["tools"])
		}
		for i, t := range tools {
			if _, err := asObject(t, index(p+".tools", i)); err != nil {
				return err
			}
		}
		return nil
	case "apply_patch", "shell", "programmatic_tool_calling", "file_search", "web_search_preview",
		"computer", "computer_use_preview", "computer_use", "web_search_preview_2025_03_11",
		"image_generation", "code_interpreter":
		return checkKeys(to, p, "type")
	}
	return invalidValue(p+".type", typ, "allowed_tools", "function", "mcp", "custom", "apply_patch", "shell",
		"programmatic_tool_calling", "file_search", "web_search_preview", "computer", "computer_use_preview",
		"computer_use", "web_search_preview_2025_03_11", "image_generation", "code_interpreter")
}

func parseStreamOptions(root map[string]any, req *ResponsesRequest) *apiError {
	so, err := optObject(root, "stream_options", "")
	if err != nil || so == nil {
		return err
	}
	if !req.Stream {
		return invalidRequest("stream_options", "invalid_value",
			"Invalid 'stream_options': only allowed when 'stream' is true.")
	}
	if err := checkKeys(so, "stream_options", "include_obfuscation"); err != nil {
		return err
	}
	if err := notNull(so, "include_obfuscation", "stream_options", "a boolean"); err != nil {
		return err
	}
	req.IncludeObfuscation, err = optBool(so, "include_obfuscation", "stream_options")
	return err
}

func parseConversation(root map[string]any, req *ResponsesRequest) *apiError {
	v, ok := root["conversation"]
	if !ok || v == nil {
		return nil
	}
	if _, ok := v.(string); !ok {
		co, ok := v.(map[string]any)
		if !ok {
			return wrongType("conversation", "one of a string or an object", v)
		}
		if err := checkKeys(co, "conversation", "id"); err != nil {
			return err
		}
		if _, err := reqString(co, "id", "conversation"); err != nil {
			return err
		}
	}
	if req.PreviousResponseID != nil {
		return invalidRequest("conversation", "invalid_value",
			"Invalid 'conversation': cannot be used together with 'previous_response_id'.")
	}
	return nil
}

func parseContextManagement(root map[string]any, _ *ResponsesRequest) *apiError {
	entries, err := optArray(root, "context_management", "")
	if err != nil {
		return err
	}
	for i, e := range entries {
		p := index("context_management", i)
		eo, err := asObject(e, p)
		if err != nil {
			return err
		}
		if err := checkKeys(eo, p, "type", "compact_threshold"); err != nil {
			return err
		}
		if err := requireKeys(eo, p, "type"); err != nil {
			return err
		}
		if _, err := enumValue(eo["type"], p+".type", "compaction"); err != nil {
			return err
		}
		if _, err := rangedInt(eo, "compact_threshold", p, 0, -1); err != nil {
			return err
		}
	}
	return nil
}

func parseModeration(root map[string]any, _ *ResponsesRequest) *apiError {
	mo, err := optObject(root, "moderation", "")
	if err != nil || mo == nil {
		return err
	}
	if err := checkKeys(mo, "moderation", "model", "policy"); err != nil {
		return err
	}
	if _, err := reqString(mo, "model", "moderation"); err != nil {
		return err
	}
	po, err := optObject(mo, "policy", "moderation")
	if err != nil || po == nil {
		return err
	}
	if err := checkKeys(po, "moderation.policy", "input", "output"); err != nil {
		return err
	}
	for _, k := range []string{"input", "output"} {
		p := "moderation.policy." + k
		o, err := optObject(po, k, "moderation.policy")
		if err != nil {
			return err
		}
		if o == nil {
			continue
		}
		if err := checkKeys(o, p, "mode"); err != nil {
			return err
		}
		if err := requireKeys(o, p, "mode"); err != nil {
			return err
		}
		if _, err := enumValue(o["mode"], p+".mode", "score", "block"); err != nil {
			return err
		}
	}
	return nil
}

func parsePromptCacheOptions(root map[string]any, _ *ResponsesRequest) *apiError {
	const p = "prompt_cache_options"
	o, err := optObject(root, p, "")
	if err != nil || o == nil {
		return err
	}
	if err := checkKeys(o, p, "mode", "ttl"); err != nil {
		return err
	}
	if err := notNull(o, "mode", p, "a string"); err != nil {
		return err
	}
	if err := notNull(o, "ttl", p, "a string"); err != nil {
		return err
	}
	if _, err := optEnum(o, "mode", p, "implicit", "explicit"); err != nil {
		return err
	}
	_, err = optEnum(o, "ttl", p, "30m")
	return err
}

func inputItemTypes() []string {
	return []string{"message", "file_search_call", "computer_call", "computer_call_output", "web_search_call",
		"function_call", "function_call_output", "tool_search_call", "tool_search_output", "additional_tools",
		"reasoning", "compaction", "image_generation_call", "code_interpreter_call", "local_shell_call",
		"local_shell_call_output", "shell_call", "shell_call_output", "apply_patch_call",
		"apply_patch_call_output", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response",
		"mcp_call", "custom_tool_call_output", "custom_tool_call", "compaction_trigger", "item_reference",
		"program", "program_output"}
}

// itemFields lists the top-level fields of the input item types the fake
// checks only shallowly: required ones first, then the optional ones.
func itemFields(typ string) (required, optional []string) {
	switch typ {
	case "file_search_call":
		return []string{"id", "queries", "status"}, []string{"results"}
	case "computer_call":
		return []string{"id", "call_id", "pending_safety_checks", "status"}, []string{"action", "actions"}
	case "computer_call_output":
		return []string{"call_id", "output"}, []string{"id", "acknowledged_safety_checks", "status"}
	case "web_search_call":
		return []string{"id", "action", "status"}, nil
	case "tool_search_call":
		return []string{"arguments"}, []string{"id", "call_id", "execution", "status"}
	case "tool_search_output":
		return []string{"tools"}, []string{"id", "call_id", "execution", "status"}
	case "additional_tools":
		return []string{"role", "tools"}, []string{"id"}
	case "compaction":
		return []string{"encrypted_content"}, []string{"id"}
	case "image_generation_call":
		return []string{"id", "result", "status"}, nil
	case "code_interpreter_call":
		return []string{"id", "code", "container_id", "outputs", "status"}, nil
	case "local_shell_call":
		return []string{"id", "action", "call_id", "status"}, nil
	case "local_shell_call_output":
		return []string{"id", "output"}, []string{"status"}
	case "shell_call":
		return []string{"action", "call_id"}, []string{"id", "caller", "environment", "status"}
	case "shell_call_output":
		return []string{"call_id", "output"}, []string{"id", "caller", "max_output_length", "status"}
	case "apply_patch_call":
		return []string{"call_id", "operation", "status"}, []string{"id", "caller"}
	case "apply_patch_call_output":
		return []string{"call_id", "status"}, []string{"id", "caller", "output"}
	case "mcp_list_tools":
		return []string{"id", "server_label", "tools"}, []string{"error"}
	case "mcp_approval_request":
		return []string{"id", "arguments", "name", "server_label"}, nil
	case "mcp_approval_response":
		return []string{"approval_request_id", "approve"}, []string{"id", "reason"}
	case "mcp_call":
		return []string{"id", "arguments", "name", "server_label"}, []string{"approval_request_id", "error", "output", "status"}
	case "custom_tool_call_output":
		return []string{"call_id", "output"}, []string{"id", "caller"}
	case "custom_tool_call":
		return []string{"call_id", "input", "name"}, []string{"id", "caller", "namespace"}
	case "compaction_trigger":
		return nil, nil
	case "program":
		return []string{"id", "call_id", "code", "fingerprint"}, nil
	case "program_output":
		return []string{"id", "call_id", "result", "status"}, nil
	}
	return nil, nil
}

func itemStatuses() []string { return []string{"in_progress", "completed", "incomplete"} }

func parseInputItem(v any, p string) (InputItem, *apiError) {
	obj, err := asObject(v, p)
	if err != nil {
		return InputItem{}, err
	}
	item := InputItem{Raw: obj}
	typ := "message"
	if tv, ok := obj["type"]; ok {
		s, ok := tv.(string)
		if !ok {
			return item, wrongType(p+".type", "a string", tv)
		}
		typ = s
	} else if _, hasRole := obj["role"]; !hasRole {
		if _, hasID := obj["id"]; hasID {
			typ = "item_reference" // the only item whose type may be left out besides messages
		}
	}
	item.Type = typ

	switch typ {
	case "message":
		return parseMessage(obj, p, item)
	case "function_call":
		if err := checkKeys(obj, p, "type", "arguments", "call_id", "name", "id", "caller", "namespace", "status"); err != nil {
			return item, err
		}
		args, err := reqString(obj, "arguments", p)
		if err != nil {
			return item, err
		}
		if item.CallID, err = reqString(obj, "call_id", p); err != nil {
			return item, err
		}
		if _, err := reqString(obj, "name", p); err != nil {
			return item, err
		}
		item.Text = args
		return item, checkItemTail(obj, p, "id", "namespace")
	case "function_call_output":
		if err := checkKeys(obj, p, "type", "call_id", "output", "id", "caller", "name", "namespace", "status"); err != nil {
			return item, err
		}
		if item.CallID, err = reqString(obj, "call_id", p); err != nil {
			return item, err
		}
		if err := requireKeys(obj, p, "output"); err != nil {
			return item, err
		}
		switch out := obj["output"].(type) {
		case string:
			item.Text = out
		case []any:
			texts, err := parseParts(out, p+".output", inputPartTypes())
			if err != nil {
				return item, err
			}
			item.Text = strings.Join(texts, "\n")
		default:
			return item, wrongType(p+".output", "one of a string or an array of content parts", obj["output"])
		}
		return item, checkItemTail(obj, p, "id", "name", "namespace")
	case "reasoning":
		if err := checkKeys(obj, p, "type", "id", "summary", "content", "encrypted_content", "status"); err != nil {
			return item, err
		}
		if _, err := reqString(obj, "id", p); err != nil {
			return item, err
		}
		if err := requireKeys(obj, p, "summary"); err != nil {
			return item, err
		}
		summary, ok := obj["summary"].([]any)
		if !ok {
			return item, wrongType(p+".summary", "an array", obj["summary"])
		}
		texts, err := parseTypedTexts(summary, p+".summary", "summary_text")
		if err != nil {
			return item, err
		}
		item.Text = strings.Join(texts, "\n")
		content, err := optArray(obj, "content", p)
		if err != nil {
			return item, err
		}
		if _, err := parseTypedTexts(content, p+".content", "reasoning_text"); err != nil {
			return item, err
		}
		return item, checkItemTail(obj, p, "encrypted_content")
	case "item_reference":
		if err := checkKeys(obj, p, "type", "id"); err != nil {
			return item, err
		}
		_, err := reqString(obj, "id", p)
		return item, err
	}
	if !slices.Contains(inputItemTypes(), typ) {
		return item, invalidValue(p, typ, inputItemTypes()...)
	}
	required, optional := itemFields(typ)
	if err := checkKeys(obj, p, slices.Concat([]string{"type"}, required, optional)...); err != nil {
		return item, err
	}
	return item, requireKeys(obj, p, required...)
}

// checkItemTail checks the optional status, caller and string fields shared
// by the tool call items.
func checkItemTail(obj map[string]any, p string, strs ...string) *apiError {
	if err := checkStrings(obj, p, strs...); err != nil {
		return err
	}
	if _, err := optEnum(obj, "status", p, itemStatuses()...); err != nil {
		return err
	}
	co, err := optObject(obj, "caller", p)
	if err != nil || co == nil {
		return err
	}
	cp := p + ".caller"
	if err := checkKeys(co, cp, "type", "caller_id"); err != nil {
		return err
	}
	if err := requireKeys(co, cp, "type"); err != nil {
		return err
	}
	typ, err := enumValue(co["type"], cp+".type", "direct", "program")
	if err != nil {
		return err
	}
	if typ == "program" {
		_, err := reqString(co, "caller_id", cp)
		return err
	}
	return checkKeys(co, cp, "type")
}

// parseTypedTexts checks an array of {type: want, text} objects.
func parseTypedTexts(a []any, p, want string) ([]string, *apiError) {
	var texts []string
	for i, v := range a {
		ip := index(p, i)
		o, err := asObject(v, ip)
		if err != nil {
			return nil, err
		}
		if err := checkKeys(o, ip, "type", "text"); err != nil {
			return nil, err
		}
		if err := requireKeys(o, ip, "type"); err != nil {
			return nil, err
		}
		if _, err := enumValue(o["type"], ip+".type", want); err != nil {
			return nil, err
		}
		t, err := reqString(o, "text", ip)
		if err != nil {
			return nil, err
		}
		texts = append(texts, t)
	}
	return texts, nil
}

func inputPartTypes() []string  { return []string{"input_text", "input_image", "input_file"} }
func outputPartTypes() []string { return []string{"output_text", "refusal"} }

func parseMessage(obj map[string]any, p string, item InputItem) (InputItem, *apiError) {
	if err := checkKeys(obj, p, "type", "role", "content", "status", "phase", "id"); err != nil {
		return item, err
	}
	if err := requireKeys(obj, p, "role"); err != nil {
		return item, err
	}
	role, err := enumValue(obj["role"], p+".role", "user", "assistant", "system", "developer")
	if err != nil {
		return item, err
	}
	item.Role = role
	if role != "assistant" {
		// Only an output message (the assistant's, sent back) carries an id.
		if _, ok := obj["id"]; ok {
			return item, unknownParam(p + ".id")
		}
	} else if _, err := optString(obj, "id", p); err != nil {
		return item, err
	}
	if _, err := optEnum(obj, "status", p, itemStatuses()...); err != nil {
		return item, err
	}
	if _, err := optEnum(obj, "phase", p, "commentary", "final_answer"); err != nil {
		return item, err
	}
	if err := requireKeys(obj, p, "content"); err != nil {
		return item, err
	}
	allowed := inputPartTypes()
	if role == "assistant" {
		allowed = outputPartTypes()
	}
	switch c := obj["content"].(type) {
	case string:
		item.Text = c
	case []any:
		item.Content = []ContentPart{}
		for i, pv := range c {
			pp := index(p+".content", i)
			po, err := asObject(pv, pp)
			if err != nil {
				return item, err
			}
			part, err := parsePart(po, pp, allowed)
			if err != nil {
				return item, err
			}
			item.Content = append(item.Content, part)
		}
		var texts []string
		for _, part := range item.Content {
			if part.Type != "input_image" && part.Type != "input_file" {
				texts = append(texts, part.Text)
			}
		}
		item.Text = strings.Join(texts, "\n")
	default:
		return item, wrongType(p+".content", "one of a string or an array of content parts", obj["content"])
	}
	return item, nil
}

// parseParts checks an array of content parts and returns their texts.
func parseParts(a []any, p string, allowed []string) ([]string, *apiError) {
	var texts []string
	for i, v := range a {
		pp := index(p, i)
		po, err := asObject(v, pp)
		if err != nil {
			return nil, err
		}
		part, err := parsePart(po, pp, allowed)
		if err != nil {
			return nil, err
		}
		if part.Type == "input_text" {
			texts = append(texts, part.Text)
		}
	}
	return texts, nil
}

// parsePart checks one content part whose type must be in allowed. A part
// of the wrong family (input_text in an assistant message) names the part
// itself as the param, as the real API does.
func parsePart(po map[string]any, pp string, allowed []string) (ContentPart, *apiError) {
	typ, err := reqString(po, "type", pp)
	if err != nil {
		return ContentPart{}, err
	}
	if !slices.Contains(allowed, typ) {
		return ContentPart{}, invalidValue(pp, typ, allowed...)
	}
	part := ContentPart{Type: typ}
	switch typ {
	case "input_text":
		if err := checkKeys(po, pp, "type", "text", "prompt_cache_breakpoint"); err != nil {
			return part, err
		}
		if part.Text, err = reqString(po, "text", pp); err != nil {
			return part, err
		}
	case "input_image":
		if err := checkKeys(po, pp, "type", "detail", "file_id", "image_url", "prompt_cache_breakpoint"); err != nil {
			return part, err
		}
		if _, err := optEnum(po, "detail", pp, "low", "high", "auto", "original"); err != nil {
			return part, err
		}
		if err := checkStrings(po, pp, "file_id", "image_url"); err != nil {
			return part, err
		}
		if err := checkInputImage(po, pp, &part); err != nil {
			return part, err
		}
	case "input_file":
		if err := checkKeys(po, pp, "type", "detail", "file_data", "file_id", "file_url", "filename", "prompt_cache_breakpoint"); err != nil {
			return part, err
		}
		if _, err := optEnum(po, "detail", pp, "auto", "low", "high"); err != nil {
			return part, err
		}
		if err := checkStrings(po, pp, "file_data", "file_id", "file_url", "filename"); err != nil {
			return part, err
		}
		if err := checkInputFile(po, pp, &part); err != nil {
			return part, err
		}
	case "output_text":
		if err := checkKeys(po, pp, "type", "text", "annotations", "logprobs"); err != nil {
			return part, err
		}
		if part.Text, err = reqString(po, "text", pp); err != nil {
			return part, err
		}
		anns, err := optArray(po, "annotations", pp)
		if err != nil {
			return part, err
		}
		for i, a := range anns {
			ap := index(pp+".annotations", i)
			ao, err := asObject(a, ap)
			if err != nil {
				return part, err
			}
			if err := requireKeys(ao, ap, "type"); err != nil {
				return part, err
			}
			if _, err := enumValue(ao["type"], ap+".type", "file_citation", "url_citation", "container_file_citation", "file_path"); err != nil {
				return part, err
			}
		}
		if _, err := optArray(po, "logprobs", pp); err != nil {
			return part, err
		}
	case "refusal":
		if err := checkKeys(po, pp, "type", "refusal"); err != nil {
			return part, err
		}
		if part.Text, err = reqString(po, "refusal", pp); err != nil {
			return part, err
		}
	}
	if err := checkBreakpoint(po, pp); err != nil {
		return part, err
	}
	return part, nil
}

func checkBreakpoint(po map[string]any, pp string) *apiError {
	bo, err := optObject(po, "prompt_cache_breakpoint", pp)
	if err != nil || bo == nil {
		return err
	}
	bp := pp + ".prompt_cache_breakpoint"
	if err := checkKeys(bo, bp, "mode"); err != nil {
		return err
	}
	if err := requireKeys(bo, bp, "mode"); err != nil {
		return err
	}
	_, err = enumValue(bo["mode"], bp+".mode", "explicit")
	return err
}

// The image types OpenAI's images guide lists for input_image
// (developers.openai.com/api/docs/guides/images-vision: PNG, JPEG, WEBP and
// non-animated GIF).
func inputImageTypes() []string {
	return []string{"image/png", "image/jpeg", "image/webp", "image/gif"}
}

// checkInputImage applies the rules of an input_image beyond its fields'
// types: exactly one source (file_id or image_url), and an image_url that is
// an http(s) URL or a base64 data URL of an image type. The reference types
// these as plain strings; the live API refuses the rest when it fetches or
// decodes them, which the fake does at once.
func checkInputImage(po map[string]any, pp string, part *ContentPart) *apiError {
	url, hasURL := po["image_url"].(string)
	_, hasID := po["file_id"].(string)
	switch {
	case hasURL == hasID:
		return invalidRequest(pp, "invalid_value", "An input_image needs exactly one of 'image_url' or 'file_id'.")
	case hasURL:
		if err := checkDataURL(url, join(pp, "image_url"), inputImageTypes(), true); err != nil {
			return err
		}
		part.ImageURL = url
	}
	part.Detail, _ = po["detail"].(string)
	return nil
}

// checkInputFile applies the rules of an input_file beyond its fields'
// types: exactly one source (file_data, file_id or file_url), file_data a
// base64 data URL, and a filename with it (OpenAI's file inputs guide sends
// `{"type":"input_file","filename":"document.pdf","file_data":"data:application/pdf;base64,..."}`).
func checkInputFile(po map[string]any, pp string, part *ContentPart) *apiError {
	sources := 0
	for _, k := range []string{"file_data", "file_id", "file_url"} {
		if _, ok := po[k].(string); ok {
			sources++
		}
	}
	if sources != 1 {
		return invalidRequest(pp, "invalid_value", "An input_file needs exactly one of 'file_data', 'file_id' or 'file_url'.")
	}
	data, ok := po["file_data"].(string)
	if !ok {
		return nil
	}
	if err := checkDataURL(data, join(pp, "file_data"), nil, false); err != nil {
		return err
	}
	name, _ := po["filename"].(string)
	if name == "" {
		return missingParam(join(pp, "filename"))
	}
	part.FileData, part.Filename = data, name
	return nil
}

// checkDataURL checks `data:<type>;base64,<data>` with valid standard
// base64; types, when given, are the MIME types allowed. With web set, an
// http(s) URL is accepted instead.
func checkDataURL(v, p string, types []string, web bool) *apiError {
	if web && (strings.HasPrefix(v, "https://") || strings.HasPrefix(v, "http://")) {
		return nil
	}
	head, payload, ok := strings.Cut(v, ",")
	mime, isBase64 := strings.CutSuffix(strings.TrimPrefix(head, "data:"), ";base64")
	if !ok || !strings.HasPrefix(head, "data:") || !isBase64 || mime == "" {
		return invalidRequest(p, "invalid_value", "Invalid '%s'. Expected a base64-encoded data URL (e.g. 'data:image/png;base64,aW1n').", p)
	}
	if types != nil && !slices.Contains(types, mime) {
		return invalidRequest(p, "invalid_value", "Invalid '%s'. Expected a base64-encoded data URL with an image MIME type, but got unsupported MIME type '%s'.", p, mime)
	}
	if _, err := base64.StdEncoding.DecodeString(payload); err != nil || payload == "" {
		return invalidRequest(p, "invalid_value", "Invalid '%s'. The data URL does not hold valid base64 data.", p)
	}
	return nil
}

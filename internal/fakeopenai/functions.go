package fakeopenai

import (
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"
)

// Function calling, as OpenAI's function-calling guide and the Responses
// reference describe it: function tools in the request (strict schemas
// checked), function_call output items streamed with
// response.output_item.added, response.function_call_arguments.delta and
// .done, and response.output_item.done; function_call and
// function_call_output input items paired by call_id.

// FunctionCall is a call a scripted response makes.
type FunctionCall struct {
	// Name is the function called; a name the request does not declare as
	// a function tool is never called (the model cannot), nor is any with
	// tool_choice "none".
	Name string
	// Arguments is the JSON arguments string.
	Arguments string
	// CallID is the call's id; default a fresh call_….
	CallID string
}

// functionNamePattern is the reference's rule for function names.
var functionNamePattern = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// checkFunctionTool checks a function tool's name and, when strict, its
// schema the way strict mode requires (every object closed with
// additionalProperties false and listing every property in required).
func checkFunctionTool(to map[string]any, p string) *apiError {
	name, _ := to["name"].(string)
	if !functionNamePattern.MatchString(name) || utf8.RuneCountInString(name) > 64 {
		return invalidRequest(p+".name", "invalid_value",
			"Invalid '%s.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.", p)
	}
	strict, _ := to["strict"].(bool)
	params, _ := to["parameters"].(map[string]any)
	if !strict || params == nil {
		return nil
	}
	return checkStrictSchema(params, name, p+".parameters", "()")
}

func checkStrictSchema(schema map[string]any, fn, param, context string) *apiError {
	if typ, _ := schema["type"].(string); typ != "object" {
		return nil
	}
	if ap, ok := schema["additionalProperties"].(bool); !ok || ap {
		return invalidRequest(param, "invalid_function_parameters",
			"Invalid schema for function '%s': In context=%s, 'additionalProperties' is required to be supplied and to be false.", fn, context)
	}
	props, _ := schema["properties"].(map[string]any)
	var required []string
	if rv, ok := schema["required"].([]any); ok {
		for _, r := range rv {
			if s, ok := r.(string); ok {
				required = append(required, s)
			}
		}
	}
	var names []string
	for k := range props {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if !slices.Contains(required, k) {
			return invalidRequest(param, "invalid_function_parameters",
				"Invalid schema for function '%s': In context=%s, 'required' is required to be supplied and to be an array including every key in properties. Missing '%s'.", fn, context, k)
		}
	}
	for _, k := range names {
		if sub, ok := props[k].(map[string]any); ok {
			if err := checkStrictSchema(sub, fn, param, "('properties', '"+k+"')"); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkToolCallPairs refuses input whose function_call_output answers no
// function_call before it, or whose function_call has no output, as the
// API does (param "input").
func checkToolCallPairs(req *ResponsesRequest) *apiError {
	calls := map[string]bool{}
	answered := map[string]bool{}
	for _, it := range req.Input {
		switch it.Type {
		case "function_call":
			calls[it.CallID] = true
		case "function_call_output":
			if !calls[it.CallID] {
				return invalidRequest("input", "",
					"No tool call found for function call output with call_id %s.", it.CallID)
			}
			answered[it.CallID] = true
		}
	}
	for _, it := range req.Input {
		if it.Type == "function_call" && !answered[it.CallID] {
			return invalidRequest("input", "", "No tool output found for function call %s.", it.CallID)
		}
	}
	return nil
}

// declaredFunctions lists the function tools a request declares, or none
// when tool_choice is "none".
func declaredFunctions(req *ResponsesRequest) []string {
	if tc, _ := req.Raw["tool_choice"].(string); tc == "none" {
		return nil
	}
	tools, _ := req.Raw["tools"].([]any)
	var names []string
	for _, tv := range tools {
		if to, ok := tv.(map[string]any); ok && to["type"] == "function" {
			if n, ok := to["name"].(string); ok {
				names = append(names, n)
			}
		}
	}
	return names
}

// functionCallItem is a function_call output item.
type functionCallItem struct {
	ID        string `json:"id"`
	Type      string `json:"type"`
	Status    string `json:"status"`
	Arguments string `json:"arguments"`
	CallID    string `json:"call_id"`
	Name      string `json:"name"`
}

type functionCallItemEvent struct {
	eventHead
	OutputIndex int              `json:"output_index"`
	Item        functionCallItem `json:"item"`
}

// The argument events as openai-python's types/responses define them
// (ResponseFunctionCallArgumentsDeltaEvent, ...DoneEvent); the done
// event's name is what the API sends besides.
type functionArgsDeltaEvent struct {
	eventHead
	ItemID      string `json:"item_id"`
	OutputIndex int    `json:"output_index"`
	Delta       string `json:"delta"`
	Obfuscation string `json:"obfuscation,omitempty"`
}

type functionArgsDoneEvent struct {
	eventHead
	ItemID      string `json:"item_id"`
	OutputIndex int    `json:"output_index"`
	Name        string `json:"name"`
	Arguments   string `json:"arguments"`
}

// planCalls keeps the script's calls the request lets the model make
// (one at most with parallel_tool_calls false).
func planCalls(req *ResponsesRequest, calls []FunctionCall) []functionCallItem {
	declared := declaredFunctions(req)
	serial := req.Raw["parallel_tool_calls"] == false
	var out []functionCallItem
	for _, c := range calls {
		if !slices.Contains(declared, c.Name) || (serial && len(out) == 1) {
			continue
		}
		id := c.CallID
		if id == "" {
			id = "call_" + randHex(12)
		}
		out = append(out, functionCallItem{
			ID: "fc_" + randHex(24), Type: "function_call", Status: "completed",
			Arguments: c.Arguments, CallID: id, Name: c.Name,
		})
	}
	return out
}

// streamCalls streams the planned calls from output index first; false
// when the client went away.
func (e *sseStream) streamCalls(a *answer, first int, obfuscate bool) bool {
	for i, c := range a.calls {
		idx := first + i
		open := c
		open.Status, open.Arguments = "in_progress", ""
		if !e.send("response.output_item.added", &functionCallItemEvent{OutputIndex: idx, Item: open}, e.interval) {
			return false
		}
		for _, d := range splitArguments(c.Arguments) {
			ev := &functionArgsDeltaEvent{ItemID: c.ID, OutputIndex: idx, Delta: d}
			if obfuscate {
				ev.Obfuscation = obfuscation(d)
			}
			if !e.send("response.function_call_arguments.delta", ev, e.interval) {
				return false
			}
		}
		if !e.send("response.function_call_arguments.done", &functionArgsDoneEvent{ItemID: c.ID, OutputIndex: idx, Name: c.Name, Arguments: c.Arguments}, e.interval) ||
			!e.send("response.output_item.done", &functionCallItemEvent{OutputIndex: idx, Item: c}, e.interval) {
			return false
		}
	}
	return true
}

// splitArguments cuts the arguments into a few deltas, as the API streams
// them.
func splitArguments(args string) []string {
	if args == "" {
		return nil
	}
	return splitEven(args, min(4, utf8.RuneCountInString(args)))
}

func callsRunes(calls []functionCallItem) int {
	n := 0
	for _, c := range calls {
		n += utf8.RuneCountInString(c.Arguments) + len(strings.TrimSpace(c.Name))
	}
	return n
}

// output is the response's output: the message (unless there is none),
// then the calls.
func (a *answer) output(msg ...messageItem) []any {
	var out []any
	if !a.noMessage {
		for _, m := range msg {
			out = append(out, m)
		}
	}
	for _, c := range a.calls {
		out = append(out, c)
	}
	return out
}

// reasoningItem is a reasoning output item.
type reasoningItem struct {
	ID               string  `json:"id"`
	Type             string  `json:"type"`
	Summary          []any   `json:"summary"`
	EncryptedContent *string `json:"encrypted_content,omitempty"`
	Status           string  `json:"status,omitempty"`
}

type reasoningItemEvent struct {
	eventHead
	OutputIndex int           `json:"output_index"`
	Item        reasoningItem `json:"item"`
}

func newReasoningItem(req *ResponsesRequest) *reasoningItem {
	r := &reasoningItem{ID: "rs_" + randHex(24), Type: "reasoning", Summary: []any{}}
	include, _ := req.Raw["include"].([]any)
	if slices.Contains(include, any("reasoning.encrypted_content")) {
		enc := "gAAAA" + randHex(32)
		r.EncryptedContent = &enc
	}
	return r
}

// streamReasoning streams the reasoning item at output index idx.
func (e *sseStream) streamReasoning(r *reasoningItem, idx int) bool {
	open := *r
	open.EncryptedContent = nil
	return e.send("response.output_item.added", &reasoningItemEvent{OutputIndex: idx, Item: open}, e.interval) &&
		e.send("response.output_item.done", &reasoningItemEvent{OutputIndex: idx, Item: *r}, e.interval)
}

// rememberReasoning records which reasoning item an unstored response's
// calls need beside them when they are sent back.
func (s *Server) rememberReasoning(a *answer) {
	if a.reasoning == nil || a.req.Store == nil || *a.req.Store {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reasoningOf == nil {
		s.reasoningOf = map[string]string{}
	}
	for _, c := range a.calls {
		s.reasoningOf[c.ID] = a.reasoning.ID
	}
}

// checkReasoningItems refuses, for a request that stores nothing, a
// reasoning item without its encrypted content (the API cannot find it),
// and a call sent back with its id but without the reasoning item that
// made it.
func (s *Server) checkReasoningItems(req *ResponsesRequest) *apiError {
	if req.Store == nil || *req.Store {
		return nil
	}
	sent := map[string]bool{}
	for _, it := range req.Input {
		if it.Type != "reasoning" {
			continue
		}
		id, _ := it.Raw["id"].(string)
		if enc, _ := it.Raw["encrypted_content"].(string); enc == "" {
			return invalidRequest("input", "",
				"Item with id '%s' not found. Items are not persisted when `store` is set to false. Try again with `store` set to true, or remove this item from your input.", id)
		}
		sent[id] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range req.Input {
		id, _ := it.Raw["id"].(string)
		if rs, ok := s.reasoningOf[id]; ok && it.Type == "function_call" && !sent[rs] {
			return invalidRequest("input", "",
				"Item '%s' of type 'function_call' was provided without its required 'reasoning' item: '%s'.", id, rs)
		}
	}
	return nil
}

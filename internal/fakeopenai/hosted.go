package fakeopenai

import (
	"slices"
	"strings"
	"unicode/utf8"
)

// OpenAI's hosted tools (web search, file search, remote MCP), reasoning
// summaries and citations: the request rules and the scripted stream.
// Shapes and event names follow openai-python's types/responses (August
// 2026): web_search_tool_param.py, file_search_tool_param.py, tool_param.py
// (Mcp), response_function_web_search.py, response_file_search_tool_call.py,
// response_output_item.py (McpCall, McpListTools), response_reasoning_item.py,
// response_output_text.py and the *_event.py stream events.

// ---------------------------------------------------------------- request

// parseHostedTool checks a web_search, file_search or mcp tool field by
// field; other hosted tool types are accepted by type only.
func parseHostedTool(to map[string]any, p, typ string) *apiError {
	switch typ {
	case "web_search", "web_search_2025_08_26":
		return parseWebSearchTool(to, p)
	case "file_search":
		return parseFileSearchTool(to, p)
	case "mcp":
		return parseMCPTool(to, p)
	}
	return nil
}

func parseWebSearchTool(to map[string]any, p string) *apiError {
	if err := checkKeys(to, p, "type", "external_web_access", "filters", "search_context_size", "user_location"); err != nil {
		return err
	}
	if _, err := optBool(to, "external_web_access", p); err != nil {
		return err
	}
	if _, err := optEnum(to, "search_context_size", p, "low", "medium", "high"); err != nil {
		return err
	}
	fo, err := optObject(to, "filters", p)
	if err != nil {
		return err
	}
	if fo != nil {
		fp := p + ".filters"
		if err := checkKeys(fo, fp, "allowed_domains"); err != nil {
			return err
		}
		domains, err := optArray(fo, "allowed_domains", fp)
		if err != nil {
			return err
		}
		// The web search guide: "up to 100 domains".
		if len(domains) > 100 {
			return invalidRequest(fp+".allowed_domains", "array_above_max_length",
				"Invalid '%s.allowed_domains': array too long. Expected an array with maximum length 100, but got an array with length %d instead.", fp, len(domains))
		}
		for i, d := range domains {
			if _, ok := d.(string); !ok {
				return wrongType(index(fp+".allowed_domains", i), "a string", d)
			}
		}
	}
	lo, err := optObject(to, "user_location", p)
	if err != nil || lo == nil {
		return err
	}
	lp := p + ".user_location"
	if err := checkKeys(lo, lp, "type", "city", "country", "region", "timezone"); err != nil {
		return err
	}
	if _, err := optEnum(lo, "type", lp, "approximate"); err != nil {
		return err
	}
	return checkStrings(lo, lp, "city", "country", "region", "timezone")
}

func parseFileSearchTool(to map[string]any, p string) *apiError {
	if err := checkKeys(to, p, "type", "vector_store_ids", "filters", "max_num_results", "ranking_options"); err != nil {
		return err
	}
	if err := requireKeys(to, p, "vector_store_ids"); err != nil {
		return err
	}
	ids, ok := to["vector_store_ids"].([]any)
	if !ok {
		return wrongType(p+".vector_store_ids", "an array", to["vector_store_ids"])
	}
	for i, id := range ids {
		if _, ok := id.(string); !ok {
			return wrongType(index(p+".vector_store_ids", i), "a string", id)
		}
	}
	if _, err := rangedInt(to, "max_num_results", p, 1, 50); err != nil {
		return err
	}
	if _, err := optObject(to, "filters", p); err != nil {
		return err
	}
	_, err := optObject(to, "ranking_options", p)
	return err
}

// mcpLabelOK is the server_label rule: a letter, then letters, digits,
// '-' and '_'.
func mcpLabelOK(label string) bool {
	for i, r := range label {
		letter := (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		if !letter && (i == 0 || !(r == '-' || r == '_' || (r >= '0' && r <= '9'))) {
			return false
		}
	}
	return label != ""
}

func parseMCPTool(to map[string]any, p string) *apiError {
	if err := checkKeys(to, p, "type", "server_label", "allowed_callers", "allowed_tools", "authorization",
		"connector_id", "defer_loading", "headers", "require_approval", "server_description", "server_url", "tunnel_id"); err != nil {
		return err
	}
	label, err := reqString(to, "server_label", p)
	if err != nil {
		return err
	}
	if !mcpLabelOK(label) {
		return invalidRequest(p+".server_label", "invalid_value",
			"Invalid '%s.server_label': '%s'. Expected a label that starts with a letter and holds only letters, digits, '-' and '_'.", p, label)
	}
	if err := checkStrings(to, p, "server_url", "authorization", "server_description", "tunnel_id"); err != nil {
		return err
	}
	if _, err := optEnum(to, "connector_id", p, "connector_dropbox", "connector_gmail", "connector_googlecalendar",
		"connector_googledrive", "connector_microsoftteams", "connector_outlookcalendar", "connector_outlookemail",
		"connector_sharepoint"); err != nil {
		return err
	}
	if to["server_url"] == nil && to["connector_id"] == nil && to["tunnel_id"] == nil {
		return invalidRequest(p, "missing_required_parameter",
			"Missing required parameter: one of '%s.server_url', '%s.connector_id' or '%s.tunnel_id' must be provided.", p, p, p)
	}
	if u, ok := to["server_url"].(string); ok && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
		return invalidRequest(p+".server_url", "invalid_value", "Invalid '%s.server_url': '%s'. Expected a URL.", p, u)
	}
	if _, err := optBool(to, "defer_loading", p); err != nil {
		return err
	}
	headers, err := optObject(to, "headers", p)
	if err != nil {
		return err
	}
	for _, k := range mapKeys(headers) {
		if _, ok := headers[k].(string); !ok {
			return wrongType(p+".headers."+k, "a string", headers[k])
		}
	}
	if err := parseMCPToolFilter(to, "allowed_tools", p, true); err != nil {
		return err
	}
	switch v := to["require_approval"].(type) {
	case nil:
	case string:
		if _, err := enumValue(v, p+".require_approval", "always", "never"); err != nil {
			return err
		}
	case map[string]any:
		rp := p + ".require_approval"
		if err := checkKeys(v, rp, "always", "never"); err != nil {
			return err
		}
		for _, k := range []string{"always", "never"} {
			if err := parseMCPToolFilter(v, k, rp, false); err != nil {
				return err
			}
		}
	default:
		return wrongType(p+".require_approval", "one of an object or a string", v)
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
	return nil
}

// parseMCPToolFilter checks an allowed_tools value (an array of names or
// a {tool_names, read_only} filter; arrays only where orArray) or an
// approval filter.
func parseMCPToolFilter(m map[string]any, key, p string, orArray bool) *apiError {
	fp := join(p, key)
	switch v := m[key].(type) {
	case nil:
		return nil
	case []any:
		if !orArray {
			return wrongType(fp, "an object", v)
		}
		for i, n := range v {
			if _, ok := n.(string); !ok {
				return wrongType(index(fp, i), "a string", n)
			}
		}
		return nil
	case map[string]any:
		if err := checkKeys(v, fp, "read_only", "tool_names"); err != nil {
			return err
		}
		if _, err := optBool(v, "read_only", fp); err != nil {
			return err
		}
		names, err := optArray(v, "tool_names", fp)
		if err != nil {
			return err
		}
		for i, n := range names {
			if _, ok := n.(string); !ok {
				return wrongType(index(fp+".tool_names", i), "a string", n)
			}
		}
		return nil
	default:
		if orArray {
			return wrongType(fp, "one of an array of strings or an object", v)
		}
		return wrongType(fp, "an object", v)
	}
}

func mustObject(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func mapKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// minimalEffortTools are the hosted tools OpenAI refuses at
// reasoning.effort minimal ("The following tools cannot be used with
// reasoning.effort 'minimal': web_search." — openai/codex issue 3559; the
// Agents SDK avoids minimal with file search too).
var minimalEffortTools = []string{"web_search", "web_search_2025_08_26", "file_search"}

// parseHostedToolRules applies the rules joining tools and reasoning.
func parseHostedToolRules(root map[string]any, req *ResponsesRequest) *apiError {
	if req.Reasoning == nil || req.Reasoning.Effort == nil || *req.Reasoning.Effort != "minimal" {
		return nil
	}
	var refused []string
	tools, _ := root["tools"].([]any)
	for _, t := range tools {
		typ, _ := mustObject(t)["type"].(string)
		if slices.Contains(minimalEffortTools, typ) && !slices.Contains(refused, typ) {
			refused = append(refused, typ)
		}
	}
	if len(refused) == 0 {
		return nil
	}
	return invalidRequest("tools", "", "The following tools cannot be used with reasoning.effort 'minimal': %s.", strings.Join(refused, ", "))
}

// declaredTool returns the request's tool of one of these types, nil if
// it has none.
func declaredTool(req *ResponsesRequest, types ...string) map[string]any {
	tools, _ := req.Raw["tools"].([]any)
	for _, t := range tools {
		to := mustObject(t)
		if typ, _ := to["type"].(string); slices.Contains(types, typ) {
			return to
		}
	}
	return nil
}

// declaredMCP returns the request's mcp tool with this server label.
func declaredMCP(req *ResponsesRequest, label string) map[string]any {
	tools, _ := req.Raw["tools"].([]any)
	for _, t := range tools {
		to := mustObject(t)
		if to["type"] == "mcp" && to["server_label"] == label {
			return to
		}
	}
	return nil
}

// ---------------------------------------------------------------- script

// HostedCallType names a hosted tool call of a script.
type HostedCallType string

// The hosted tool calls a script can make.
const (
	HostedWebSearch  HostedCallType = "web_search"
	HostedFileSearch HostedCallType = "file_search"
	HostedMCP        HostedCallType = "mcp"
)

// HostedCall is one hosted tool call the scripted model makes before its
// message. A model calls only the tools it was given: a call whose tool
// the request did not declare (for MCP: no server with that label, or a
// tool outside its allowed_tools) is left out. An MCP call to a server
// whose require_approval is not "never" becomes an mcp_approval_request
// item, and the response ends there without a message, as OpenAI's does.
type HostedCall struct {
	Type HostedCallType
	// Query is the search's query; default the last user message.
	Query string
	// ServerLabel and Name are the MCP server and tool; Arguments (JSON
	// text, default "{}") and Output are the call's.
	ServerLabel, Name, Arguments, Output string
}

// Annotation is a citation in the scripted answer: Type "url_citation"
// (URL, Title, StartIndex, EndIndex) or "file_citation" (FileID, Filename,
// Index). Each is streamed as response.output_text.annotation.added after
// the delta that reaches its end (EndIndex, or Index for files), and is in
// the part and item of content_part.done, output_item.done and the final
// response.
type Annotation struct {
	Type                 string
	URL, Title           string
	StartIndex, EndIndex int
	FileID, Filename     string
	Index                int
}

func (an Annotation) wire() map[string]any {
	if an.Type == "file_citation" {
		return map[string]any{"type": "file_citation", "file_id": an.FileID, "filename": an.Filename, "index": an.Index}
	}
	return map[string]any{"type": "url_citation", "url": an.URL, "title": an.Title,
		"start_index": an.StartIndex, "end_index": an.EndIndex}
}

// end is where the citation ends in the text, in characters.
func (an Annotation) end() int {
	if an.Type == "file_citation" {
		return an.Index
	}
	return an.EndIndex
}

// hostedPlan is what a script adds around the message.
type hostedPlan struct {
	summaries   []string // reasoning summary texts; nil: no reasoning item
	reasoning   bool     // a reasoning item is sent
	calls       []plannedCall
	annotations []Annotation
	stopped     bool // an approval request ends the response before the message
}

type plannedCall struct {
	HostedCall
	id       string
	approval bool // an mcp_approval_request instead of the call
	listID   string
}

// planHosted decides the hosted part of an answer from the script and
// what the request allows.
func planHosted(req *ResponsesRequest, rs *ResponseScript) hostedPlan {
	var hp hostedPlan
	if rs.ReasoningSummary != nil {
		hp.reasoning = true
		// Summaries come only when the request asks for them.
		if r := req.Reasoning; r != nil && r.Summary != nil {
			hp.summaries = rs.ReasoningSummary
		}
	}
	listed := map[string]bool{}
	for _, c := range rs.Hosted {
		pc := plannedCall{HostedCall: c}
		switch c.Type {
		case HostedWebSearch:
			if declaredTool(req, "web_search", "web_search_2025_08_26") == nil {
				continue
			}
			pc.id = "ws_" + randHex(24)
		case HostedFileSearch:
			if declaredTool(req, "file_search") == nil {
				continue
			}
			pc.id = "fs_" + randHex(24)
		case HostedMCP:
			tool := declaredMCP(req, c.ServerLabel)
			if tool == nil || !mcpToolAllowed(tool, c.Name) {
				continue
			}
			if !listed[c.ServerLabel] {
				listed[c.ServerLabel] = true
				pc.listID = "mcpl_" + randHex(24)
			}
			pc.id = "mcp_" + randHex(24)
			pc.approval = tool["require_approval"] != "never"
		default:
			continue
		}
		hp.calls = append(hp.calls, pc)
		if pc.approval {
			hp.stopped = true
			break
		}
	}
	hp.annotations = rs.Annotations
	return hp
}

// mcpToolAllowed reports whether allowed_tools lets the model call name.
func mcpToolAllowed(tool map[string]any, name string) bool {
	switch v := tool["allowed_tools"].(type) {
	case nil:
		return true
	case []any:
		return slices.Contains(v, any(name))
	case map[string]any:
		names, ok := v["tool_names"].([]any)
		return !ok || slices.Contains(names, any(name))
	}
	return false
}

// ---------------------------------------------------------------- items

func (a *answer) reasoningItem(done bool) map[string]any {
	summary := []any{}
	if done {
		for _, s := range a.hosted.summaries {
			summary = append(summary, map[string]any{"type": "summary_text", "text": s})
		}
	}
	return map[string]any{"id": a.reasoningID, "type": "reasoning", "summary": summary}
}

func (a *answer) callItems(c *plannedCall, done bool) (list, call map[string]any) {
	status := "in_progress"
	if done {
		status = "completed"
	}
	switch c.Type {
	case HostedWebSearch:
		action := map[string]any{"type": "search"}
		if done {
			action["query"] = a.query(c)
		}
		return nil, map[string]any{"id": c.id, "type": "web_search_call", "status": status, "action": action}
	case HostedFileSearch:
		queries := []any{}
		if done {
			queries = append(queries, a.query(c))
		}
		return nil, map[string]any{"id": c.id, "type": "file_search_call", "status": status, "queries": queries, "results": nil}
	}
	if c.listID != "" {
		tools := []any{}
		if done {
			tools = append(tools, map[string]any{"name": c.Name, "input_schema": map[string]any{"type": "object"}})
		}
		list = map[string]any{"id": c.listID, "type": "mcp_list_tools", "server_label": c.ServerLabel, "tools": tools}
	}
	args := c.Arguments
	if args == "" {
		args = "{}"
	}
	if c.approval {
		return list, map[string]any{"id": c.id, "type": "mcp_approval_request", "server_label": c.ServerLabel,
			"name": c.Name, "arguments": args}
	}
	item := map[string]any{"id": c.id, "type": "mcp_call", "server_label": c.ServerLabel, "name": c.Name,
		"arguments": "", "status": status}
	if done {
		item["arguments"] = args
		item["output"] = c.Output
	}
	return list, item
}

func (a *answer) query(c *plannedCall) string {
	if c.Query != "" {
		return c.Query
	}
	return lastUserText(a.req)
}

// outputBefore is the output items before the message, done.
func (a *answer) outputBefore() []any {
	var out []any
	if a.hosted.reasoning {
		out = append(out, a.reasoningItem(true))
	}
	for i := range a.hosted.calls {
		list, call := a.callItems(&a.hosted.calls[i], true)
		if list != nil {
			out = append(out, list)
		}
		out = append(out, call)
	}
	return out
}

func (a *answer) annotationsWire() []any {
	out := []any{}
	for _, an := range a.hosted.annotations {
		out = append(out, an.wire())
	}
	return out
}

// ---------------------------------------------------------------- events

type anyItemEvent struct {
	eventHead
	OutputIndex int            `json:"output_index"`
	Item        map[string]any `json:"item"`
}

type itemProgressEvent struct {
	eventHead
	ItemID      string `json:"item_id"`
	OutputIndex int    `json:"output_index"`
}

type summaryPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type summaryPartEvent struct {
	eventHead
	ItemID       string      `json:"item_id"`
	OutputIndex  int         `json:"output_index"`
	SummaryIndex int         `json:"summary_index"`
	Part         summaryPart `json:"part"`
}

type summaryDeltaEvent struct {
	eventHead
	ItemID       string `json:"item_id"`
	OutputIndex  int    `json:"output_index"`
	SummaryIndex int    `json:"summary_index"`
	Delta        string `json:"delta"`
}

type summaryDoneEvent struct {
	eventHead
	ItemID       string `json:"item_id"`
	OutputIndex  int    `json:"output_index"`
	SummaryIndex int    `json:"summary_index"`
	Text         string `json:"text"`
}

type mcpArgumentsDoneEvent struct {
	eventHead
	ItemID      string `json:"item_id"`
	OutputIndex int    `json:"output_index"`
	Arguments   string `json:"arguments"`
}

type annotationAddedEvent struct {
	eventHead
	ItemID          string         `json:"item_id"`
	OutputIndex     int            `json:"output_index"`
	ContentIndex    int            `json:"content_index"`
	AnnotationIndex int            `json:"annotation_index"`
	Annotation      map[string]any `json:"annotation"`
}

// streamHosted sends the reasoning item and the hosted tool calls, each
// with its documented events, before the message; it reports whether the
// stream may go on.
func (s *Server) streamHosted(e *sseStream, a *answer) bool {
	d := e.interval
	idx := 0
	if a.hosted.reasoning {
		if !e.send("response.output_item.added", &anyItemEvent{OutputIndex: idx, Item: a.reasoningItem(false)}, d) {
			return false
		}
		for i, text := range a.hosted.summaries {
			head := summaryPartEvent{ItemID: a.reasoningID, OutputIndex: idx, SummaryIndex: i, Part: summaryPart{"summary_text", ""}}
			if !e.send("response.reasoning_summary_part.added", &head, d) {
				return false
			}
			for _, w := range splitWords(text) {
				if !e.send("response.reasoning_summary_text.delta", &summaryDeltaEvent{ItemID: a.reasoningID, OutputIndex: idx, SummaryIndex: i, Delta: w}, d) {
					return false
				}
			}
			if !e.send("response.reasoning_summary_text.done", &summaryDoneEvent{ItemID: a.reasoningID, OutputIndex: idx, SummaryIndex: i, Text: text}, d) {
				return false
			}
			done := summaryPartEvent{ItemID: a.reasoningID, OutputIndex: idx, SummaryIndex: i, Part: summaryPart{"summary_text", text}}
			if !e.send("response.reasoning_summary_part.done", &done, d) {
				return false
			}
		}
		if !e.send("response.output_item.done", &anyItemEvent{OutputIndex: idx, Item: a.reasoningItem(true)}, d) {
			return false
		}
		idx++
	}
	for i := range a.hosted.calls {
		c := &a.hosted.calls[i]
		list, _ := a.callItems(c, false)
		listDone, _ := a.callItems(c, true)
		if list != nil {
			if !e.send("response.output_item.added", &anyItemEvent{OutputIndex: idx, Item: list}, d) ||
				!e.send("response.mcp_list_tools.in_progress", &itemProgressEvent{ItemID: c.listID, OutputIndex: idx}, d) ||
				!e.send("response.mcp_list_tools.completed", &itemProgressEvent{ItemID: c.listID, OutputIndex: idx}, d) ||
				!e.send("response.output_item.done", &anyItemEvent{OutputIndex: idx, Item: listDone}, d) {
				return false
			}
			idx++
		}
		_, call := a.callItems(c, false)
		_, callDone := a.callItems(c, true)
		if !e.send("response.output_item.added", &anyItemEvent{OutputIndex: idx, Item: call}, d) {
			return false
		}
		var steps []string
		switch {
		case c.approval:
		case c.Type == HostedWebSearch:
			steps = []string{"response.web_search_call.in_progress", "response.web_search_call.searching", "response.web_search_call.completed"}
		case c.Type == HostedFileSearch:
			steps = []string{"response.file_search_call.in_progress", "response.file_search_call.searching", "response.file_search_call.completed"}
		default:
			if !e.send("response.mcp_call_arguments.done", &mcpArgumentsDoneEvent{ItemID: c.id, OutputIndex: idx, Arguments: callDone["arguments"].(string)}, d) {
				return false
			}
			steps = []string{"response.mcp_call.in_progress", "response.mcp_call.completed"}
		}
		for _, step := range steps {
			if !e.send(step, &itemProgressEvent{ItemID: c.id, OutputIndex: idx}, d) {
				return false
			}
		}
		if !e.send("response.output_item.done", &anyItemEvent{OutputIndex: idx, Item: callDone}, d) {
			return false
		}
		idx++
	}
	return true
}

// sendAnnotations streams the citations that end within the first sent
// characters of the text, in script order; it reports whether the stream
// may go on.
func (a *answer) sendAnnotations(e *sseStream, sent int) bool {
	for a.annotationsSent < len(a.hosted.annotations) {
		an := a.hosted.annotations[a.annotationsSent]
		if an.end() > sent {
			return true
		}
		ev := &annotationAddedEvent{ItemID: a.msgID, OutputIndex: a.msgIndex, AnnotationIndex: a.annotationsSent, Annotation: an.wire()}
		if !e.send("response.output_text.annotation.added", ev, e.interval) {
			return false
		}
		a.annotationsSent++
	}
	return true
}

func runes(s string) int { return utf8.RuneCountInString(s) }

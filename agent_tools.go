package chatkit

// The agent's tools: OpenAI's hosted tools (web search, file search, remote
// MCP servers), their rules, the `tools` array they become in the fixed
// start of every Responses request, and what the visitor is told while one
// runs. Function tools that Caddy itself executes add their entries to the
// same array (see agentRequestTools).

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"unicode"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/net/http/httpguts"
)

// AgentWebSearch turns on OpenAI's hosted web search.
type AgentWebSearch struct {
	// Bare host names (`example.com`, no scheme, port or path) the search
	// is limited to, subdomains included; at most 100. Default: the whole
	// web.
	AllowedDomains []string `json:"allowed_domains,omitempty"`
}

// AgentFileSearch turns on OpenAI's hosted file search.
type AgentFileSearch struct {
	// The OpenAI vector stores searched (`vs_…`). Placeholders are
	// resolved at load time.
	VectorStoreIDs []string `json:"vector_store_ids"`
}

// AgentMCP is a remote MCP server that OpenAI calls as a hosted tool. It
// is called without approval (nobody could give one mid-answer), so only
// the tools named in `allow` are offered to the model.
type AgentMCP struct {
	// The server's label in tool calls: a letter, then letters, digits,
	// `-` and `_`. Each server of an agent has its own.
	Label string `json:"label"`

	// The server's URL (https). OpenAI's servers, not Caddy, connect to
	// it. Placeholders are resolved at load time.
	URL string `json:"url"`

	// The server's tools the model may call; at least one.
	Allow []string `json:"allow"`

	// HTTP headers OpenAI sends to the server with every call, such as
	// an `Authorization` token. Their values are sent to OpenAI with
	// every request; placeholders (`{env.MCP_TOKEN}`) are resolved at
	// load time.
	Headers map[string]string `json:"headers,omitempty"`
}

// agentReasoningSummaries are the reasoning_summary values, as the
// Responses API names them (reasoning.summary).
var agentReasoningSummaries = []string{"auto", "concise", "detailed"}

// agentMaxAllowedDomains is OpenAI's bound on filters.allowed_domains
// (web search guide: "up to 100 domains").
const agentMaxAllowedDomains = 100

// ---------------------------------------------------------------- rules

func checkAgentReasoningSummary(s string) error {
	if !slices.Contains(agentReasoningSummaries, s) {
		return refuse("reasoning_summary", "agent reasoning_summary must be %s, got %q", strings.Join(agentReasoningSummaries, ", "), s)
	}
	return nil
}

// checkAgentSearchDomain accepts a bare host name: OpenAI wants domains
// without the scheme ("openai.com", not "https://openai.com/").
func checkAgentSearchDomain(d string) error {
	ok := d != "" && len(d) <= 253 && !strings.HasPrefix(d, ".") && !strings.HasSuffix(d, ".") &&
		!strings.HasPrefix(d, "-") && !strings.Contains(d, "..")
	for _, r := range d {
		if !(r == '.' || r == '-' || unicode.IsLetter(r) || unicode.IsDigit(r)) {
			ok = false
			break
		}
	}
	if !ok {
		return refuse("web_search", "agent web_search domain must be a bare host name such as example.com (no scheme, port or path), got %q", d)
	}
	return nil
}

func checkAgentWebSearch(w *AgentWebSearch) error {
	if len(w.AllowedDomains) > agentMaxAllowedDomains {
		return refuse("web_search", "agent web_search takes at most %d domains, got %d", agentMaxAllowedDomains, len(w.AllowedDomains))
	}
	for _, d := range w.AllowedDomains {
		if err := checkAgentSearchDomain(d); err != nil {
			return err
		}
	}
	return nil
}

func checkAgentVectorStoreID(id string) error {
	if id == "" || strings.IndexFunc(id, unicode.IsSpace) >= 0 {
		return refuse("file_search", "agent file_search vector store id must be a word such as vs_abc123, got %q", id)
	}
	return nil
}

func checkAgentFileSearch(f *AgentFileSearch) error {
	if len(f.VectorStoreIDs) == 0 {
		return refuse("file_search", "agent file_search needs at least one vector store id")
	}
	for _, id := range f.VectorStoreIDs {
		if err := checkAgentVectorStoreID(id); err != nil {
			return err
		}
	}
	return nil
}

// checkAgentMCPLabel applies OpenAI's rule on server_label: a letter, then
// letters, digits, '-' and '_'.
func checkAgentMCPLabel(label string) error {
	ok := label != ""
	for i, r := range label {
		switch {
		case r < 0x80 && unicode.IsLetter(r):
		case i > 0 && (r == '-' || r == '_' || (r >= '0' && r <= '9')):
		default:
			ok = false
		}
	}
	if !ok {
		return refuse("mcp", "agent mcp label must start with a letter and hold only letters, digits, '-' and '_', got %q", label)
	}
	return nil
}

// checkAgentMCPURL wants an absolute https URL: OpenAI connects to it from
// the internet, with the headers. A URL still holding a placeholder is
// judged once it is resolved.
func checkAgentMCPURL(label, raw string) error {
	if strings.Contains(raw, "{") {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		return refuse("mcp", "agent mcp %s url must be an absolute https URL without credentials, got %q", label, raw)
	}
	return nil
}

func checkAgentMCPAllow(label string, tools []string) error {
	if len(tools) == 0 {
		return refuse("mcp", "agent mcp %s needs allow <tool>...: its tools run without approval, so each must be named", label)
	}
	for _, t := range tools {
		if t == "" || strings.IndexFunc(t, unicode.IsSpace) >= 0 {
			return refuse("mcp", "agent mcp %s allow: a tool name must be one word, got %q", label, t)
		}
	}
	return nil
}

// checkAgentMCPHeader judges a header name, and its value unless it is
// still a placeholder (judged once resolved).
func checkAgentMCPHeader(label, name, value string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return refuse("mcp", "agent mcp %s header name %q is not a valid header name", label, name)
	}
	if !strings.Contains(value, "{") && !httpguts.ValidHeaderFieldValue(value) {
		// Never echo the value: it is usually a token.
		return refuse("mcp", "agent mcp %s header %s has a value that is not a valid header value", label, name)
	}
	return nil
}

func checkAgentMCP(m *AgentMCP) error {
	if err := checkAgentMCPLabel(m.Label); err != nil {
		return err
	}
	if m.URL == "" {
		return refuse("mcp", "agent mcp %s needs a url", m.Label)
	}
	if err := checkAgentMCPURL(m.Label, m.URL); err != nil {
		return err
	}
	if err := checkAgentMCPAllow(m.Label, m.Allow); err != nil {
		return err
	}
	for name, value := range m.Headers {
		if err := checkAgentMCPHeader(m.Label, name, value); err != nil {
			return err
		}
	}
	return nil
}

// hasHostedTools reports whether any of OpenAI's hosted tools is on.
func (a *Agent) hasHostedTools() bool {
	return a.WebSearch != nil || a.FileSearch != nil || len(a.MCP) > 0
}

// validateTools applies the tool rules and the ones joining them to the
// rest of the agent.
func (a *Agent) validateTools() error {
	if a.ReasoningSummary != "" {
		if err := checkAgentReasoningSummary(a.ReasoningSummary); err != nil {
			return err
		}
	}
	if a.WebSearch != nil {
		if err := checkAgentWebSearch(a.WebSearch); err != nil {
			return err
		}
	}
	if a.FileSearch != nil {
		if err := checkAgentFileSearch(a.FileSearch); err != nil {
			return err
		}
	}
	labels := make(map[string]bool, len(a.MCP))
	for i := range a.MCP {
		m := &a.MCP[i]
		if err := checkAgentMCP(m); err != nil {
			return err
		}
		if labels[m.Label] {
			return refuse("mcp", "agent mcp label %q is used twice", m.Label)
		}
		labels[m.Label] = true
	}
	// OpenAI refuses hosted tools at minimal effort (the Agents SDK
	// defaults GPT-5 to low for this reason).
	if a.ReasoningEffort == "minimal" && a.hasHostedTools() {
		return refuse("reasoning_effort", "agent reasoning_effort minimal cannot be used with web_search, file_search or mcp (OpenAI refuses hosted tools at minimal effort): use low or more, or leave it unset")
	}
	return nil
}

// ---------------------------------------------------------------- request

// The tool objects, as OpenAI's Responses reference defines them
// (openai-python types/responses: web_search_tool_param.py, WebSearchTool
// with filters.allowed_domains; file_search_tool_param.py, FileSearchTool
// with vector_store_ids; tool_param.py, Mcp with server_label, server_url,
// allowed_tools, headers, require_approval).

type agentWebSearchTool struct {
	Type    string                 `json:"type"` // web_search
	Filters *agentWebSearchFilters `json:"filters,omitempty"`
}

type agentWebSearchFilters struct {
	AllowedDomains []string `json:"allowed_domains"`
}

type agentFileSearchTool struct {
	Type           string   `json:"type"` // file_search
	VectorStoreIDs []string `json:"vector_store_ids"`
}

type agentMCPTool struct {
	Type         string            `json:"type"` // mcp
	ServerLabel  string            `json:"server_label"`
	ServerURL    string            `json:"server_url"`
	AllowedTools []string          `json:"allowed_tools"`
	Headers      map[string]string `json:"headers,omitempty"`
	// RequireApproval is always "never": an approval request would end
	// the response waiting for an answer nobody can give.
	RequireApproval string `json:"require_approval"`
}

// agentHostedTools encodes the agent's hosted tools, one `tools` element
// each, resolving placeholders in vector store ids, MCP URLs and header
// values.
func agentHostedTools(cfg *Agent, repl *caddy.Replacer) ([]json.RawMessage, error) {
	var tools []any
	if w := cfg.WebSearch; w != nil {
		t := agentWebSearchTool{Type: "web_search"}
		if len(w.AllowedDomains) > 0 {
			t.Filters = &agentWebSearchFilters{AllowedDomains: w.AllowedDomains}
		}
		tools = append(tools, t)
	}
	if f := cfg.FileSearch; f != nil {
		ids := make([]string, len(f.VectorStoreIDs))
		for i, id := range f.VectorStoreIDs {
			ids[i] = strings.TrimSpace(repl.ReplaceAll(id, ""))
			if err := checkAgentVectorStoreID(ids[i]); err != nil {
				return nil, fmt.Errorf("%w (from %q)", err, id)
			}
		}
		tools = append(tools, agentFileSearchTool{Type: "file_search", VectorStoreIDs: ids})
	}
	for i := range cfg.MCP {
		m := &cfg.MCP[i]
		t := agentMCPTool{
			Type: "mcp", ServerLabel: m.Label, AllowedTools: m.Allow, RequireApproval: "never",
			ServerURL: strings.TrimSpace(repl.ReplaceAll(m.URL, "")),
		}
		if strings.Contains(t.ServerURL, "{") || checkAgentMCPURL(m.Label, t.ServerURL) != nil {
			// The resolved URL may hold a secret: name only its source.
			return nil, refuse("mcp", "agent mcp %s url %q did not resolve to an absolute https URL", m.Label, m.URL)
		}
		if len(m.Headers) > 0 {
			t.Headers = make(map[string]string, len(m.Headers))
			for name, value := range m.Headers {
				v := repl.ReplaceAll(value, "")
				if v == "" || !httpguts.ValidHeaderFieldValue(v) {
					return nil, refuse("mcp", "agent mcp %s header %s resolved to an empty or invalid value", m.Label, name)
				}
				t.Headers[name] = v
			}
		}
		tools = append(tools, t)
	}
	out := make([]json.RawMessage, len(tools))
	for i, t := range tools {
		b, err := json.Marshal(t)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// agentHostedToolsJSON is the hosted tools as the request's tools array
// holds them: JSON objects, comma-separated (appendAgentRequestTools).
func agentHostedToolsJSON(cfg *Agent, repl *caddy.Replacer) ([]byte, error) {
	tools, err := agentHostedTools(cfg, repl)
	if err != nil {
		return nil, err
	}
	var out []byte
	for i, t := range tools {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, t...)
	}
	return out, nil
}

// appendAgentReasoning encodes `"reasoning":{…},` when an effort or a
// summary is set: models without reasoning refuse the object.
func appendAgentReasoning(buf []byte, effort, summary string) []byte {
	if effort == "" && summary == "" {
		return buf
	}
	buf = append(buf, `"reasoning":{`...)
	if effort != "" {
		buf = append(buf, `"effort":`...)
		buf = appendAgentString(buf, effort)
	}
	if summary != "" {
		if effort != "" {
			buf = append(buf, ',')
		}
		buf = append(buf, `"summary":`...)
		buf = appendAgentString(buf, summary)
	}
	return append(buf, "},"...)
}

// ---------------------------------------------------------------- progress

// agentToolProgress is what the visitor is told while a hosted tool runs
// (a progress_update; the next event replaces it).
type agentToolProgress struct {
	// webSearch is "Searching the web…", or "Searching <domain>…" when
	// the search is limited to one domain.
	webSearch string
	// mcpLabels are the configured MCP server labels: a call names its
	// server only when it is one of them.
	mcpLabels []string
}

func newAgentToolProgress(cfg *Agent) agentToolProgress {
	p := agentToolProgress{webSearch: "Searching the web…"}
	if w := cfg.WebSearch; w != nil && len(w.AllowedDomains) == 1 {
		p.webSearch = "Searching " + w.AllowedDomains[0] + "…"
	}
	for i := range cfg.MCP {
		p.mcpLabels = append(p.mcpLabels, cfg.MCP[i].Label)
	}
	return p
}

// text is the icon and text for a hosted tool call item type
// (web_search_call, file_search_call, mcp_call, mcp_list_tools); ok is
// false for other types.
func (p *agentToolProgress) text(itemType, serverLabel string) (icon, text string, ok bool) {
	switch itemType {
	case "web_search_call":
		if p.webSearch == "" {
			return "globe", "Searching the web…", true
		}
		return "globe", p.webSearch, true
	case "file_search_call":
		return "document", "Searching files…", true
	case "mcp_list_tools":
		if slices.Contains(p.mcpLabels, serverLabel) {
			return "bolt", "Connecting to " + serverLabel + "…", true
		}
		return "bolt", "Connecting to tools…", true
	case "mcp_call":
		if slices.Contains(p.mcpLabels, serverLabel) {
			return "bolt", "Calling " + serverLabel + "…", true
		}
		return "bolt", "Calling a tool…", true
	}
	return "", "", false
}

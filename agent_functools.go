package chatkit

// Function tools that Caddy itself runs for the model: `http_tool` (a URL
// template the model fills in) and the `wordpress_search` preset (the
// site's own posts and pages). This file holds their configuration and
// rules, the tool definitions sent to OpenAI, and their execution; the
// rounds of the tool loop are in agent_stream.go (callModel).
//
// Security: a tool reaches only the host its configuration names (a
// placeholder can never be in the host, a redirect to another host is
// refused), through an http.Client of its own (no cookie jar, no header of
// the visitor's request, never the OpenAI API key). What a tool answers is
// capped and given to the model as text; a tool that fails gives the model
// a text that says so, and the turn goes on.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
)

// Function tool defaults and bounds.
const (
	defaultAgentMaxToolCalls  = 5
	maxAgentMaxToolCalls      = 100
	defaultAgentToolResponse  = 16 << 10
	maxAgentToolResponse      = 1 << 20
	defaultAgentToolTimeout   = 10 * time.Second
	agentToolRedirects        = 5
	agentToolParallel         = 4 // calls of one batch run at once
	agentToolProgressLength   = 60
	agentWordPressName        = "wordpress_search"
	agentWordPressResults     = 3
	agentWordPressResultChars = 4000
	// agentWordPressPostBytes bounds one post's JSON (its markup is much
	// longer than the text kept).
	agentWordPressPostBytes = 1 << 20
)

// agentToolNamePattern is OpenAI's rule for function names (and ours for
// parameter names, which also name placeholders).
var agentToolNamePattern = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// agentParamPlaceholder finds `{param.<name>}` in a URL template.
var agentParamPlaceholder = regexp.MustCompile(`\{param\.([^{}]*)\}`)

// AgentHTTPTool is a function tool that Caddy runs: the model fills in the
// parameters, Caddy calls the URL and gives the model the response.
type AgentHTTPTool struct {
	// The function's name as the model sees it: 1 to 64 letters, digits,
	// `_` or `-` (OpenAI's rule), unique in the agent.
	Name string `json:"name"`

	// The URL template: an absolute http(s) URL whose path and query may
	// hold `{param.<name>}` placeholders. A value in the query is
	// URL-encoded; a value in the path is exactly one path segment (`/` and
	// dot segments are escaped). The scheme and host are fixed: the tool
	// can reach no other host.
	URL string `json:"url"`

	// What the tool does, for the model (and, cut short, the progress text
	// the visitor sees while it runs).
	Description string `json:"description,omitempty"`

	// The parameters, each a required string (the tool is declared strict).
	// With GET every parameter must appear in the URL template; with POST
	// they are sent as a JSON object.
	Params []AgentToolParam `json:"params,omitempty"`

	// `GET` or `POST`. Default: `GET`.
	Method string `json:"method,omitempty"`

	// Headers sent with every call (placeholders such as `{env.WEATHER_KEY}`
	// are resolved at load time). Nothing of the visitor's request is sent.
	Headers map[string]string `json:"headers,omitempty"`

	// The most of the response the model gets, in bytes (it is told when
	// the response was cut). Default: 16 KiB; at most 1 MiB.
	MaxResponse int64 `json:"max_response,omitempty"`

	// How long one call may take. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// AgentToolParam is one parameter of an http_tool.
type AgentToolParam struct {
	// The parameter's name (the rule of tool names), used in the template
	// as `{param.<name>}`.
	Name string `json:"name"`

	// What the model should put in it.
	Description string `json:"description,omitempty"`
}

// AgentWordPressSearch is the `wordpress_search` preset: a function tool
// that searches a WordPress site through its REST API
// (`/wp-json/wp/v2/search`) and reads the text of the best matches.
type AgentWordPressSearch struct {
	// The WordPress site, as `https://example.com` (or with the path
	// WordPress lives under). Default: the site as the browser reached it
	// (scheme and host of the request, X-Forwarded-* only from trusted
	// proxies).
	Site string `json:"site,omitempty"`
}

// ---------------------------------------------------------------- rules

func checkAgentToolName(directive, name string) error {
	if !agentToolNamePattern.MatchString(name) {
		return refuse(directive, "agent %s name must be 1 to 64 letters, digits, '_' or '-', got %q", directive, name)
	}
	return nil
}

func checkAgentMaxToolCalls(n int) error {
	return within("max_tool_calls", "agent max_tool_calls", n, 1, maxAgentMaxToolCalls, "1 to "+strconv.Itoa(maxAgentMaxToolCalls))
}

func checkAgentToolMethod(m string) error {
	if m != http.MethodGet && m != http.MethodPost {
		return refuse("http_tool", "agent http_tool method must be GET or POST, got %q", m)
	}
	return nil
}

func checkAgentToolMaxResponse(n int64) error {
	return within("http_tool", "agent http_tool max_response", n, 1, maxAgentToolResponse, "1 byte to 1 MiB")
}

func checkAgentToolTimeout(d time.Duration) error {
	return positiveDuration("http_tool", "agent http_tool timeout", d)
}

// checkAgentToolHeader refuses header names that are not HTTP field names
// and the ones a tool call may not set: they frame or route the request,
// or would carry what must never reach a tool.
func checkAgentToolHeader(name string) error {
	if name == "" || strings.IndexFunc(name, func(r rune) bool { return !isTokenChar(r) }) >= 0 {
		return refuse("http_tool", "agent http_tool header %q is not an HTTP header name", name)
	}
	switch canonical := http.CanonicalHeaderKey(name); canonical {
	case "Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Te", "Trailer", "Upgrade", "Cookie":
		return refuse("http_tool", "agent http_tool header %q cannot be set", name)
	}
	return nil
}

// agentSplitTemplate splits a URL template into its fixed origin
// (scheme://host) and the rest (path and query), refusing what a template
// may not be.
func agentSplitTemplate(directive, tmpl string) (origin *url.URL, rest string, err error) {
	scheme, after, ok := strings.Cut(tmpl, "://")
	if !ok || (scheme != "http" && scheme != "https") {
		return nil, "", refuse(directive, "agent %s URL must start with http:// or https://, got %q", directive, tmpl)
	}
	end := strings.IndexAny(after, "/?#")
	if end < 0 {
		end = len(after)
	}
	authority := after[:end]
	rest = after[end:]
	if strings.ContainsAny(authority, "{}") {
		return nil, "", refuse(directive, "agent %s URL %q: the host cannot hold a placeholder", directive, tmpl)
	}
	origin, perr := url.Parse(scheme + "://" + authority)
	if perr != nil || origin.Host == "" || origin.Hostname() == "" {
		return nil, "", refuse(directive, "agent %s URL %q has no valid host", directive, tmpl)
	}
	if origin.User != nil {
		return nil, "", refuse(directive, "agent %s URL %q: put credentials in a header, not in the URL", directive, tmpl)
	}
	if strings.Contains(rest, "#") {
		return nil, "", refuse(directive, "agent %s URL %q cannot have a fragment", directive, tmpl)
	}
	if rest == "" || rest[0] == '?' {
		rest = "/" + rest
	}
	return origin, rest, nil
}

// checkAgentHTTPTool judges one http_tool as a whole.
func checkAgentHTTPTool(t *AgentHTTPTool) error {
	if err := checkAgentToolName("http_tool", t.Name); err != nil {
		return err
	}
	if t.Name == agentWordPressName {
		return refuse("http_tool", "agent http_tool name %q is the wordpress_search tool's", t.Name)
	}
	_, rest, err := agentSplitTemplate("http_tool", t.URL)
	if err != nil {
		return err
	}
	path, _, _ := strings.Cut(rest, "?")
	for _, seg := range strings.Split(path, "/") {
		if seg == "." || seg == ".." {
			return refuse("http_tool", "agent http_tool %s URL %q has a dot segment", t.Name, t.URL)
		}
	}
	declared := make(map[string]bool, len(t.Params))
	for _, p := range t.Params {
		if err := checkAgentToolName("http_tool", p.Name); err != nil {
			return refuse("http_tool", "agent http_tool %s param name must be 1 to 64 letters, digits, '_' or '-', got %q", t.Name, p.Name)
		}
		if declared[p.Name] {
			return refuse("http_tool", "agent http_tool %s declares param %q twice", t.Name, p.Name)
		}
		declared[p.Name] = true
	}
	used := make(map[string]bool)
	for _, m := range agentParamPlaceholder.FindAllStringSubmatch(rest, -1) {
		if !declared[m[1]] {
			return refuse("http_tool", "agent http_tool %s URL uses {param.%s}, which is not a declared param", t.Name, m[1])
		}
		used[m[1]] = true
	}
	method := t.Method
	if method == "" {
		method = http.MethodGet
	}
	if err := checkAgentToolMethod(method); err != nil {
		return err
	}
	if method == http.MethodGet {
		for _, p := range t.Params {
			if !used[p.Name] {
				return refuse("http_tool", "agent http_tool %s param %q is not in the URL template (a GET sends nothing else)", t.Name, p.Name)
			}
		}
	}
	for name := range t.Headers {
		if err := checkAgentToolHeader(name); err != nil {
			return err
		}
	}
	if t.MaxResponse != 0 {
		if err := checkAgentToolMaxResponse(t.MaxResponse); err != nil {
			return err
		}
	}
	if t.Timeout != 0 {
		if err := checkAgentToolTimeout(time.Duration(t.Timeout)); err != nil {
			return err
		}
	}
	return nil
}

// checkAgentWordPressSite judges wordpress_search's site URL.
func checkAgentWordPressSite(site string) error {
	_, rest, err := agentSplitTemplate("wordpress_search", site)
	if err != nil {
		return err
	}
	if strings.ContainsAny(rest, "?{}") {
		return refuse("wordpress_search", "agent wordpress_search site must be scheme://host[/path], got %q", site)
	}
	return nil
}

// validateFunctionTools applies the function tools' rules (called from
// Agent.validate).
func (a *Agent) validateFunctionTools() error {
	names := make(map[string]bool, len(a.HTTPTools))
	for _, t := range a.HTTPTools {
		if t == nil {
			return refuse("http_tool", "agent http_tool is empty")
		}
		if err := checkAgentHTTPTool(t); err != nil {
			return err
		}
		if names[t.Name] {
			return refuse("http_tool", "agent http_tool %q is defined twice", t.Name)
		}
		names[t.Name] = true
	}
	if w := a.WordPressSearch; w != nil && w.Site != "" {
		if err := checkAgentWordPressSite(w.Site); err != nil {
			return err
		}
	}
	if a.MaxToolCalls != 0 {
		if err := checkAgentMaxToolCalls(a.MaxToolCalls); err != nil {
			return err
		}
		if len(a.HTTPTools) == 0 && a.WordPressSearch == nil {
			return refuse("max_tool_calls", "agent max_tool_calls has no effect without http_tool or wordpress_search")
		}
	}
	return nil
}

// ---------------------------------------------------------------- runtime

// agentToolbox is the function tools of an agent, ready to run.
type agentToolbox struct {
	tools    map[string]*agentFunctionTool
	defs     []byte // the tool definitions, each a JSON object, comma-separated
	maxCalls int
	client   *http.Client
}

// agentFunctionTool is one tool Caddy runs.
type agentFunctionTool struct {
	http        *agentHTTPToolRuntime
	wordpress   *agentWordPressRuntime
	progress    string // the progress text; "" for wordpress (it names the host)
	timeout     time.Duration
	maxResponse int
}

// agentHTTPToolRuntime is an http_tool with its template parsed.
type agentHTTPToolRuntime struct {
	origin  *url.URL
	rest    string // path and query, with placeholders
	method  string
	headers http.Header
	params  []string
}

// agentWordPressRuntime is the wordpress_search preset.
type agentWordPressRuntime struct {
	site *url.URL // nil: the site as the browser reached it
}

// newAgentToolbox builds the function tools from the config; nil when there
// are none.
func newAgentToolbox(cfg *Agent, repl *caddy.Replacer) (*agentToolbox, error) {
	if len(cfg.HTTPTools) == 0 && cfg.WordPressSearch == nil {
		return nil, nil
	}
	tb := &agentToolbox{
		tools:    make(map[string]*agentFunctionTool),
		maxCalls: defaultAgentMaxToolCalls,
		client:   newAgentToolClient(),
	}
	if cfg.MaxToolCalls > 0 {
		tb.maxCalls = cfg.MaxToolCalls
	}
	var defs []byte
	addDef := func(name, description string, params []AgentToolParam) {
		if len(defs) > 0 {
			defs = append(defs, ',')
		}
		defs = appendAgentFunctionDef(defs, name, description, params)
	}
	for _, t := range cfg.HTTPTools {
		origin, rest, err := agentSplitTemplate("http_tool", t.URL)
		if err != nil {
			return nil, err
		}
		rt := &agentHTTPToolRuntime{origin: origin, rest: rest, method: t.Method, headers: make(http.Header)}
		if rt.method == "" {
			rt.method = http.MethodGet
		}
		for name, v := range t.Headers {
			rt.headers.Set(name, repl.ReplaceAll(v, ""))
		}
		for _, p := range t.Params {
			rt.params = append(rt.params, p.Name)
		}
		progress := "Calling " + t.Name + "…"
		if d := strings.TrimSpace(t.Description); d != "" {
			progress = agentShorten(strings.TrimRight(d, "."), agentToolProgressLength) + "…"
		}
		ft := &agentFunctionTool{
			http: rt, progress: progress,
			timeout:     time.Duration(t.Timeout),
			maxResponse: int(t.MaxResponse),
		}
		tb.tools[t.Name] = ft
		addDef(t.Name, t.Description, t.Params)
	}
	if w := cfg.WordPressSearch; w != nil {
		rt := &agentWordPressRuntime{}
		if w.Site != "" {
			site, err := url.Parse(strings.TrimRight(w.Site, "/"))
			if err != nil {
				return nil, fmt.Errorf("chatkit: agent wordpress_search site %q: %w", w.Site, err)
			}
			rt.site = site
		}
		tb.tools[agentWordPressName] = &agentFunctionTool{wordpress: rt}
		addDef(agentWordPressName,
			"Search this website's own posts and pages (a WordPress site) and read the best matches. Use it to answer questions about the site's content, and cite the links it gives.",
			[]AgentToolParam{{Name: "query", Description: "What to search for, in a few keywords."}})
	}
	for _, ft := range tb.tools {
		if ft.timeout <= 0 {
			ft.timeout = defaultAgentToolTimeout
		}
		if ft.maxResponse <= 0 {
			ft.maxResponse = defaultAgentToolResponse
		}
	}
	tb.defs = defs
	return tb, nil
}

// newAgentToolClient is the tools' own client: a transport of its own
// (never the one that carries the API key), no cookie jar, and no redirect
// to another host than the one asked.
func newAgentToolClient() *http.Client {
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 0, // each call has its own timeout
	}
	return &http.Client{
		Transport: transport,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= agentToolRedirects {
				return errAgentToolRedirects
			}
			first := via[0].URL
			if req.URL.Host != first.Host || (first.Scheme == "https" && req.URL.Scheme != "https") {
				return errAgentToolOffHost
			}
			return nil
		},
	}
}

// close drops the tools' idle connections (the config is going away).
func (tb *agentToolbox) close() {
	if tb != nil {
		tb.client.CloseIdleConnections()
	}
}

// appendAgentFunctionDef encodes one function tool as the Responses API
// defines it (type function, name, description, parameters, strict), its
// parameters a strict JSON schema: an object of required strings with no
// other properties (OpenAI's function-calling guide, "Strict mode":
// additionalProperties false and every property in required).
func appendAgentFunctionDef(buf []byte, name, description string, params []AgentToolParam) []byte {
	buf = append(buf, `{"type":"function","name":`...)
	buf = appendAgentString(buf, name)
	if description != "" {
		buf = append(buf, `,"description":`...)
		buf = appendAgentString(buf, description)
	}
	buf = append(buf, `,"parameters":{"type":"object","properties":{`...)
	for i, p := range params {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendAgentString(buf, p.Name)
		buf = append(buf, `:{"type":"string"`...)
		if p.Description != "" {
			buf = append(buf, `,"description":`...)
			buf = appendAgentString(buf, p.Description)
		}
		buf = append(buf, '}')
	}
	buf = append(buf, `},"required":[`...)
	for i, p := range params {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendAgentString(buf, p.Name)
	}
	return append(buf, `],"additionalProperties":false},"strict":true}`...)
}

// appendAgentRequestTools appends the request's one `tools` array: the
// hosted tools (JSON objects, comma-separated), then the function tools of
// tb (nil without any). With function tools, the tool choice is `none` for
// the last round, so the model answers; and with encrypted, the encrypted
// reasoning that lets a reasoning model's own reasoning be sent back when
// OpenAI keeps nothing (`include: ["reasoning.encrypted_content"]`,
// Responses API reference, "include": "enables reasoning items to be used
// in multi-turn conversations when using the Responses API statelessly").
// Models that do not reason refuse that include ("Encrypted content is not
// supported with this model"), so it is asked only when reasoning is
// configured.
func appendAgentRequestTools(buf, hosted []byte, tb *agentToolbox, final, encrypted bool) []byte {
	if len(hosted) == 0 && tb == nil {
		return buf
	}
	buf = append(buf, `,"tools":[`...)
	buf = append(buf, hosted...)
	if tb != nil {
		if len(hosted) > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, tb.defs...)
	}
	buf = append(buf, ']')
	if tb == nil {
		return buf
	}
	if final {
		buf = append(buf, `,"tool_choice":"none"`...)
	}
	if encrypted {
		buf = append(buf, `,"include":["reasoning.encrypted_content"]`...)
	}
	return buf
}

// ---------------------------------------------------------------- calls

// agentFunctionCall is a function_call output item the model asked for.
type agentFunctionCall struct {
	CallID    string `json:"call_id"`
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// Why a tool call did not get an answer.
var (
	errAgentToolOffHost   = errors.New("a redirect to another host was refused")
	errAgentToolRedirects = errors.New("too many redirects")
)

// agentToolSite is where the request came from, for wordpress_search's
// default site.
type agentToolSite struct {
	scheme, host string
}

// progress is what the visitor sees while call runs: the progress_update
// icon ("" for none) and text.
func (tb *agentToolbox) progress(call *agentFunctionCall, site agentToolSite) (icon, text string) {
	ft := tb.tools[call.Name]
	switch {
	case ft == nil:
		return "", "Calling " + agentShorten(call.Name, agentToolProgressLength) + "…"
	case ft.wordpress != nil:
		host := site.host
		if ft.wordpress.site != nil {
			host = ft.wordpress.site.Host
		}
		return "search", "Searching " + host + "…"
	}
	return "", ft.progress
}

// runBatch runs the calls of one round, at most agentToolParallel at once,
// and returns one output per call, in order. Only the first allowed calls
// run; the others are told the turn's limit was reached.
func (tb *agentToolbox) runBatch(ctx context.Context, calls []agentFunctionCall, allowed int, site agentToolSite) []string {
	outputs := make([]string, len(calls))
	sem := make(chan struct{}, agentToolParallel)
	var wg sync.WaitGroup
	for i := range calls {
		if i >= allowed {
			outputs[i] = "Not run: the limit of tool calls for this answer was reached. Answer with what you have."
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			outputs[i] = tb.run(ctx, &calls[i], site)
		}()
	}
	wg.Wait()
	return outputs
}

// run runs one call and returns what the model reads: the tool's answer,
// or a sentence saying why there is none.
func (tb *agentToolbox) run(ctx context.Context, call *agentFunctionCall, site agentToolSite) string {
	ft := tb.tools[call.Name]
	if ft == nil {
		return "Error: there is no tool named " + strconv.Quote(call.Name) + "."
	}
	args, err := agentToolArguments(call.Arguments)
	if err != nil {
		return "Error: " + err.Error()
	}
	ctx, cancel := context.WithTimeout(ctx, ft.timeout)
	defer cancel()
	var out string
	if ft.wordpress != nil {
		out, err = tb.runWordPress(ctx, ft, args, site)
	} else {
		out, err = tb.runHTTP(ctx, ft, args)
	}
	if err != nil {
		return "Error: the tool call failed: " + agentToolFailure(ctx, err, ft.timeout)
	}
	return out
}

// agentToolFailure says why a call failed, in words that hold nothing of
// the configuration (no header values).
func agentToolFailure(ctx context.Context, err error, timeout time.Duration) string {
	var ue *agentToolError
	switch {
	case errors.As(err, &ue):
		return ue.msg
	case errors.Is(err, errAgentToolOffHost):
		return errAgentToolOffHost.Error() + "."
	case errors.Is(err, errAgentToolRedirects):
		return errAgentToolRedirects.Error() + "."
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return "it took longer than " + timeout.String() + "."
	case ctx.Err() != nil:
		return "it was cancelled."
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return "the host could not be found."
	}
	return "the host could not be reached."
}

// agentToolError is a failure whose message may be shown to the model.
type agentToolError struct{ msg string }

func (e *agentToolError) Error() string { return e.msg }

func agentToolErr(format string, args ...any) error {
	return &agentToolError{msg: fmt.Sprintf(format, args...)}
}

// agentToolArguments reads a call's arguments: a JSON object whose values
// are strings (strict mode gives nothing else; a number or boolean is
// taken as written).
func agentToolArguments(raw string) (map[string]string, error) {
	var obj map[string]json.RawMessage
	if strings.TrimSpace(raw) == "" {
		return map[string]string{}, nil
	}
	if err := json.Unmarshal([]byte(raw), &obj); err != nil {
		return nil, errors.New("the arguments are not a JSON object.")
	}
	out := make(map[string]string, len(obj))
	for k, v := range obj {
		var s string
		if json.Unmarshal(v, &s) == nil {
			out[k] = s
			continue
		}
		out[k] = string(bytes.TrimSpace(v))
	}
	return out, nil
}

// buildURL fills the template in: query values URL-encoded, path values
// each one segment (`/` escaped, and a segment that would be `.` or `..`
// escaped too, so no value can climb out of the path).
func (rt *agentHTTPToolRuntime) buildURL(args map[string]string) (string, error) {
	path, query, hasQuery := strings.Cut(rt.rest, "?")
	var missing error
	fill := func(s string, escape func(string) string, inPath bool) string {
		return agentParamPlaceholder.ReplaceAllStringFunc(s, func(m string) string {
			name := m[len("{param.") : len(m)-1]
			v, ok := args[name]
			if !ok && missing == nil {
				missing = agentToolErr("the parameter %q is missing.", name)
			}
			if inPath && v == "" && missing == nil {
				missing = agentToolErr("the parameter %q cannot be empty.", name)
			}
			return escape(v)
		})
	}
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		if !strings.Contains(seg, "{param.") {
			continue
		}
		seg = fill(seg, url.PathEscape, true)
		if seg == "." || seg == ".." {
			seg = strings.ReplaceAll(seg, ".", "%2E")
		}
		segs[i] = seg
	}
	u := rt.origin.Scheme + "://" + rt.origin.Host + strings.Join(segs, "/")
	if hasQuery {
		u += "?" + fill(query, url.QueryEscape, false)
	}
	return u, missing
}

// runHTTP calls an http_tool.
func (tb *agentToolbox) runHTTP(ctx context.Context, ft *agentFunctionTool, args map[string]string) (string, error) {
	rt := ft.http
	for _, p := range rt.params {
		if _, ok := args[p]; !ok {
			return "", agentToolErr("the parameter %q is missing.", p)
		}
	}
	target, err := rt.buildURL(args)
	if err != nil {
		return "", err
	}
	var body io.Reader
	if rt.method == http.MethodPost {
		obj := make(map[string]string, len(rt.params))
		for _, p := range rt.params {
			obj[p] = args[p]
		}
		b, _ := json.Marshal(obj)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, rt.method, target, body)
	if err != nil {
		return "", agentToolErr("the URL could not be built.")
	}
	for k, v := range rt.headers {
		req.Header[k] = v
	}
	if rt.method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	agentToolHeaders(req)
	resp, err := tb.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	text, cut, err := agentReadToolBody(resp.Body, ft.maxResponse)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(&b, "The tool answered HTTP %d %s.\n", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	b.WriteString(text)
	if cut {
		fmt.Fprintf(&b, "\n[The response was cut at %d bytes.]", ft.maxResponse)
	}
	return b.String(), nil
}

// agentToolHeaders sets what every tool request says of itself, unless
// the configuration says otherwise.
func agentToolHeaders(req *http.Request) {
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "caddy-chatkit/"+moduleVersion)
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json, text/plain;q=0.9, */*;q=0.5")
	}
}

// agentReadToolBody reads at most limit bytes of a tool's answer as text
// (invalid UTF-8 replaced, a rune cut in two dropped) and whether there
// was more.
func agentReadToolBody(r io.Reader, limit int) (string, bool, error) {
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return "", false, err
	}
	text, cut := string(data), len(data) > limit
	if cut {
		text = agentCutBytes(text, limit)
	}
	return strings.ToValidUTF8(text, "\uFFFD"), cut, nil
}

// ---------------------------------------------------------------- wordpress

// wpSearchResult is one result of /wp-json/wp/v2/search (WordPress REST
// API reference, "Search Results": id, title, url, type, subtype).
type wpSearchResult struct {
	ID      json.Number `json:"id"`
	Title   string      `json:"title"`
	URL     string      `json:"url"`
	Type    string      `json:"type"`
	Subtype string      `json:"subtype"`
}

// runWordPress searches the site and reads the text of the best matches
// (posts and pages, `content.rendered`), stripped of markup, each capped,
// the whole within the tool's max_response.
func (tb *agentToolbox) runWordPress(ctx context.Context, ft *agentFunctionTool, args map[string]string, site agentToolSite) (string, error) {
	query := strings.TrimSpace(args["query"])
	if query == "" {
		return "", agentToolErr("the parameter \"query\" is missing.")
	}
	base := ft.wordpress.site
	if base == nil {
		if site.host == "" {
			return "", agentToolErr("the site is unknown.")
		}
		base = &url.URL{Scheme: site.scheme, Host: site.host}
	}
	api := base.Scheme + "://" + base.Host + strings.TrimRight(base.Path, "/") + "/wp-json/wp/v2/"
	var results []wpSearchResult
	if err := tb.getJSON(ctx, api+"search?search="+url.QueryEscape(query)+"&per_page="+strconv.Itoa(agentWordPressResults), ft.maxResponse, &results); err != nil {
		return "", err
	}
	if len(results) == 0 {
		return "No posts or pages of " + base.Host + " match " + strconv.Quote(query) + ".", nil
	}
	results = results[:min(len(results), agentWordPressResults)]

	texts := make([]string, len(results))
	var wg sync.WaitGroup
	for i := range results {
		kind := ""
		switch results[i].Subtype {
		case "post":
			kind = "posts"
		case "page":
			kind = "pages"
		}
		id := results[i].ID.String()
		if kind == "" || !agentDigits(id) {
			continue // other types have no content of their own here
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var doc struct {
				Content struct {
					Rendered string `json:"rendered"`
				} `json:"content"`
			}
			if tb.getJSON(ctx, api+kind+"/"+id+"?_fields=content", agentWordPressPostBytes, &doc) == nil {
				texts[i] = agentShorten(agentHTMLText(doc.Content.Rendered), agentWordPressResultChars)
			}
		}()
	}
	wg.Wait()

	var b strings.Builder
	fmt.Fprintf(&b, "Results from %s for %q:\n", base.Host, query)
	for i, r := range results {
		entry := fmt.Sprintf("\n%d. %s\n%s\n", i+1, agentHTMLText(r.Title), r.URL)
		if texts[i] != "" {
			entry += texts[i] + "\n"
		}
		if b.Len()+len(entry) > ft.maxResponse {
			rest := ft.maxResponse - b.Len()
			if rest > 0 {
				b.WriteString(agentCutBytes(entry, rest))
			}
			b.WriteString("\n[The results were cut.]")
			break
		}
		b.WriteString(entry)
	}
	return b.String(), nil
}

// getJSON GETs a WordPress API URL and decodes its JSON answer (at most
// limit bytes).
func (tb *agentToolbox) getJSON(ctx context.Context, target string, limit int, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return agentToolErr("the site's URL could not be built.")
	}
	req.Header.Set("Accept", "application/json")
	agentToolHeaders(req)
	resp, err := tb.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return agentToolErr("the site answered HTTP %d %s.", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return err
	}
	if len(data) > limit {
		return agentToolErr("the site's answer was too large.")
	}
	if json.Unmarshal(data, v) != nil {
		return agentToolErr("the site's answer was not WordPress REST API JSON.")
	}
	return nil
}

// agentHTMLText is the text of an HTML fragment: scripts, styles and tags
// dropped, entities decoded, white space collapsed.
func agentHTMLText(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		lt := strings.IndexByte(s, '<')
		if lt < 0 {
			b.WriteString(s)
			break
		}
		b.WriteString(s[:lt])
		s = s[lt:]
		lower := strings.ToLower(s[:min(len(s), 8)])
		for _, skip := range []string{"<script", "<style"} {
			if strings.HasPrefix(lower, skip) {
				end := strings.Index(strings.ToLower(s), "</"+skip[1:])
				if end < 0 {
					s = ""
				} else {
					s = s[end:]
				}
			}
		}
		gt := strings.IndexByte(s, '>')
		if gt < 0 {
			break
		}
		b.WriteByte(' ')
		s = s[gt+1:]
	}
	return strings.Join(strings.FieldsFunc(html.UnescapeString(b.String()), unicode.IsSpace), " ")
}

// agentShorten cuts s to at most n characters at a word boundary, with an
// ellipsis.
func agentShorten(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	runes := []rune(s)[:n]
	cut := len(runes)
	for j := len(runes) - 1; j > n/2; j-- {
		if runes[j] == ' ' {
			cut = j
			break
		}
	}
	return strings.TrimRightFunc(string(runes[:cut]), unicode.IsSpace) + "…"
}

// agentCutBytes cuts s to at most n bytes without splitting a rune.
func agentCutBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func agentDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------- the loop's items

// agentRoundItems collects, while a response streams, the output items the
// next round must send back: function calls and the messages around them,
// and with keepReasoning the reasoning items too, all as OpenAI gave them
// (a reasoning item must be followed by the items it led to, by id).
// Without keepReasoning (store false and no reasoning configured, so no
// encrypted reasoning can be had) reasoning items are left out and the
// others lose their ids, which would otherwise name the reasoning they
// need ("provided without its required 'reasoning' item").
type agentRoundItems struct {
	keepReasoning bool
	items         []json.RawMessage
	calls         []agentFunctionCall
}

// capture keeps an output_item.done event's item when the next round needs
// it. data is the event's JSON (copied).
func (r *agentRoundItems) capture(ev *responsesEvent, data []byte) {
	if ev.Type != "response.output_item.done" {
		return
	}
	switch ev.Item.Type {
	case "function_call", "reasoning", "message":
	default:
		return
	}
	var wrap struct {
		Item json.RawMessage `json:"item"`
	}
	if json.Unmarshal(data, &wrap) != nil || len(wrap.Item) == 0 {
		return
	}
	item := append(json.RawMessage(nil), wrap.Item...)
	if !r.keepReasoning {
		if ev.Item.Type == "reasoning" {
			return
		}
		var fields map[string]json.RawMessage
		if json.Unmarshal(item, &fields) != nil {
			return
		}
		delete(fields, "id")
		delete(fields, "status")
		item, _ = json.Marshal(fields)
	}
	if ev.Item.Type == "function_call" {
		var call agentFunctionCall
		if json.Unmarshal(item, &call) != nil || call.CallID == "" {
			return
		}
		r.calls = append(r.calls, call)
	}
	r.items = append(r.items, item)
}

// appendAgentCallOutput encodes a function_call_output input item.
func appendAgentCallOutput(buf []byte, callID, output string) []byte {
	buf = append(buf, `{"type":"function_call_output","call_id":`...)
	buf = appendAgentString(buf, callID)
	buf = append(buf, `,"output":`...)
	buf = appendAgentString(buf, output)
	return append(buf, '}')
}

package chatkit

// The agent mode: the module is the ChatKit server. One POST endpoint
// answers the ChatKit web component's requests, keeps threads in an
// embedded database and runs the model through OpenAI's Responses API.
// This file holds the configuration, the pooled thread store, the dispatch
// on the request's type and the JSON requests; agent_stream.go runs the
// model and streams its answer; agent_limits.go holds the limits only the
// agent has.

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// Agent defaults.
const (
	defaultAgentPath            = "/api/chatkit"
	defaultAgentHistory         = 30
	defaultAgentMaxOutputTokens = 2048
	defaultAgentMaxInput        = 4000
	defaultAgentIdleTimeout     = 2 * time.Minute
	// defaultAgentMaxBody fits a 4,000-character message in any script
	// (up to 4 bytes a character, 6 when JSON escapes it) with room for
	// the rest of the request.
	defaultAgentMaxBody = 64 << 10
	// The store types.
	agentStoreSQLite   = "sqlite"
	agentStorePostgres = "postgres"
	// defaultAgentQueryTimeout bounds each PostgreSQL call.
	defaultAgentQueryTimeout = 5 * time.Second
	// maxAgentInstructions bounds instructions, written or read from a file:
	// they are sent with every turn.
	maxAgentInstructions = 256 << 10
	// minAgentOutputTokens is OpenAI's lower bound on max_output_tokens.
	minAgentOutputTokens = 16
	// agentStoreOpenTimeout bounds opening (and migrating) the database;
	// agentStoreRetry is how long a failed open is answered from memory.
	agentStoreOpenTimeout = 30 * time.Second
	agentStoreRetry       = 2 * time.Second
	// agentStoreBusyWait is the Retry-After of store_unavailable.
	agentStoreBusyWait = 5 * time.Second
	// agentSafetyLabel derives the safety_identifier key from the API key,
	// so the key itself never hashes user ids.
	agentSafetyLabel = "caddy-chatkit agent safety_identifier v1"
	// agentTitleLength is the longest title taken from a first message.
	agentTitleLength = 60
)

// agentReasoningEfforts are the reasoning_effort values accepted.
var agentReasoningEfforts = []string{"minimal", "low", "medium", "high"}

// Agent makes the module a ChatKit server: the web component talks to it
// with `api: { url: '<path>', domainKey: '<key>' }`; threads live in an
// embedded database and answers come from OpenAI's Responses API. The
// block's `api_key`, `api_base`, `timeout`, `retries`, `circuit_breaker`,
// `user`, cookie, `allow_origins`, `rate_limit`, `budget` and `max_body`
// apply to it as to the other endpoints. Below its path it also serves
// `embed.js`, which mounts the web component on a page from one script tag
// (see AgentEmbed).
type Agent struct {
	// The one ChatKit endpoint, matched exactly on the path as the request
	// arrived. Default: `/api/chatkit`.
	Path string `json:"path,omitempty"`

	// The model that answers, such as `gpt-5-mini`. Required unless
	// `prompt` is set (a dashboard prompt names its own model).
	Model string `json:"model,omitempty"`

	// The system instructions sent with every turn (at most 256 KiB).
	Instructions string `json:"instructions,omitempty"`

	// A file the instructions are read from when the config loads
	// (placeholders allowed in the path). A missing file is a config error.
	// Not with `instructions`.
	InstructionsFile string `json:"instructions_file,omitempty"`

	// An OpenAI dashboard prompt to run, instead of or besides model and
	// instructions.
	Prompt *AgentPrompt `json:"prompt,omitempty"`

	// Where threads live. Default: SQLite at
	// `<Caddy data dir>/chatkit/threads.db`.
	Store *AgentStore `json:"store,omitempty"`

	// How long a thread nobody touched (no message added, no rename) is
	// kept: a background sweep, at least every tenth of it and at least
	// hourly, deletes older threads with their items, feedback and files.
	// At least 1h. Handlers sharing a store keep the shortest retention any
	// of them sets. Default: threads are kept until deleted.
	Retention caddy.Duration `json:"retention,omitempty"`

	// How many recent thread items, the new message included, are sent to
	// the model each turn, 1 to 1000. Default: 30.
	History int `json:"history,omitempty"`

	// The longest answer, in tokens (at least 16). Default: 2048.
	MaxOutputTokens int `json:"max_output_tokens,omitempty"`

	// Reasoning effort for reasoning models: `minimal`, `low`, `medium` or
	// `high`. Default: the model's own.
	ReasoningEffort string `json:"reasoning_effort,omitempty"`

	// The longest user message accepted, in characters. Default: 4000.
	MaxInput int `json:"max_input,omitempty"`

	// The model that writes thread titles with one short call after a
	// thread's first answer, or `off` (the default): the title is then the
	// first message, cut to about 60 characters at a word boundary.
	TitleModel string `json:"title_model,omitempty"`

	// Tokens (as OpenAI reports them) allowed per user and for the whole
	// site. Default: no limit.
	TokenBudget *AgentTokenBudget `json:"token_budget,omitempty"`

	// The longest silence from the model once it has started answering;
	// past it the turn ends with an error and the partial answer saved.
	// Default: 2m.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// The Responses API's `store` flag: whether OpenAI keeps the responses.
	// Default: off, since the conversation lives in the module's database.
	OpenAIStore bool `json:"openai_store,omitempty"`

	// Dictation: the composer's microphone, transcribed by OpenAI (the
	// audio is sent to OpenAI). Default: off.
	Dictation *AgentDictation `json:"dictation,omitempty"`

	// What `<path>/embed.js`, the one-script-tag embed, mounts: the domain
	// key, the start screen, the theme and the launcher (see AgentEmbed).
	// The script is served with or without it.
	Embed *AgentEmbed `json:"embed,omitempty"`

	// Function tools that Caddy itself runs when the model asks: each
	// calls a URL of a host its template names (see AgentHTTPTool).
	HTTPTools []*AgentHTTPTool `json:"http_tools,omitempty"`

	// The wordpress_search preset: a function tool over the site's own
	// WordPress search (see AgentWordPressSearch).
	WordPressSearch *AgentWordPressSearch `json:"wordpress_search,omitempty"`

	// How many tool calls Caddy runs in one turn, all rounds together
	// (not OpenAI's max_tool_calls, which counts hosted tool calls in one
	// response). At the bound the model is asked once more, with
	// tool_choice none, for its answer. 1 to 100; only with function tools.
	// Default: 5.
	MaxToolCalls int `json:"max_tool_calls,omitempty"`

	// OpenAI's hosted web search as a tool the model may use, limited to
	// the given domains when there are any. Not with `reasoning_effort
	// minimal`.
	WebSearch *AgentWebSearch `json:"web_search,omitempty"`

	// OpenAI's hosted file search over the owner's vector stores. Not with
	// `reasoning_effort minimal`.
	FileSearch *AgentFileSearch `json:"file_search,omitempty"`

	// Remote MCP servers OpenAI calls as hosted tools, without approval
	// and only for the allowed tools. Header values are sent to OpenAI.
	// Not with `reasoning_effort minimal`.
	MCP []AgentMCP `json:"mcp,omitempty"`

	// Ask a reasoning model for summaries of its reasoning: `auto`,
	// `concise` or `detailed`. The widget shows them as a reasoning
	// workflow above the answer, saved with the thread (never sent back to
	// the model). Default: no summaries.
	ReasoningSummary string `json:"reasoning_summary,omitempty"`
	// Files visitors may attach to their messages. Default: off.
	Attachments *AgentAttachments `json:"attachments,omitempty"`
}

// AgentPrompt names an OpenAI dashboard prompt.
type AgentPrompt struct {
	// The prompt id (`pmpt_…`). Placeholders are resolved at load time.
	ID string `json:"id"`

	// A pinned version. Default: the prompt's current version.
	Version string `json:"version,omitempty"`
}

// AgentStore says where threads live: a SQLite file, or a PostgreSQL
// database that several Caddys may share.
type AgentStore struct {
	// The store type: `sqlite` or `postgres`. Default: `sqlite`.
	Type string `json:"type,omitempty"`

	// The SQLite file (placeholders allowed); a relative path is taken from
	// Caddy's data directory. Default: `<data dir>/chatkit/threads.db`.
	// Handlers naming the same file share one open database, across
	// config reloads. Only with `sqlite`.
	Path string `json:"path,omitempty"`

	// The PostgreSQL DSN, a `postgres://` URL or libpq key=value pairs
	// (libpq's PG* environment variables apply). Required with `postgres`.
	// Use a placeholder such as `{env.DATABASE_URL}` to keep the password
	// out of the config: it is resolved at provision, and the password is
	// never logged or answered. Handlers resolving to the same DSN and
	// options share one connection pool, across config reloads. The schema
	// `chatkit` is created or migrated on first use.
	DSN string `json:"dsn,omitempty"`

	// The longest any call to PostgreSQL may take, connecting included;
	// past it the request answers 503 store_unavailable. Twice it is the
	// server's statement_timeout unless the DSN sets one. Only with
	// `postgres`. Default: 5s.
	QueryTimeout caddy.Duration `json:"query_timeout,omitempty"`

	// The size of the PostgreSQL connection pool. Only with `postgres`.
	// Default: the DSN's `pool_max_conns`, else the larger of 4 and the
	// number of CPUs.
	MaxConns int `json:"max_conns,omitempty"`
}

// AgentTokenBudget holds the token budgets, each optional.
type AgentTokenBudget struct {
	// Tokens one user may spend per interval.
	User *TokenBudgetLimit `json:"user,omitempty"`

	// Tokens the whole site may spend per interval.
	Site *TokenBudgetLimit `json:"site,omitempty"`
}

// TokenBudgetLimit is a number of tokens per fixed window of time: once a
// window's usage has reached it, no turn starts until the next window (a
// turn that started under the budget may finish over it).
type TokenBudgetLimit struct {
	// Tokens per window (input and output together, as OpenAI's
	// `usage.total_tokens`).
	Tokens int64 `json:"tokens"`

	// The window's length. In-process, windows follow one another from
	// when the site's config was first loaded, on the monotonic clock (a
	// step of the system clock neither ends nor stretches one); a reload
	// keeps them and what was spent, a restart starts afresh. With the
	// block's Redis (`rate_limit … { redis <url> }`, or `rate_limit off {
	// redis <url> }`), the spend is counted there by one atomic script and
	// windows are aligned to the Unix epoch on Redis's clock (TIME), so
	// every instance shares the same windows and the same count, and a
	// restart of one forgets nothing; while Redis does not answer,
	// `on_redis_error` decides (`local` counts in-process meanwhile).
	Interval caddy.Duration `json:"interval"`
}

// agentRuntime is an Agent ready to serve.
type agentRuntime struct {
	path            string
	model           string
	history         int
	maxInput        int
	maxBody         int64
	idleTimeout     time.Duration
	titleModel      string // "" when titles come from the first message
	reasoningEffort string
	// reasoningSummary turns reasoning summaries into a workflow item.
	reasoningSummary string
	// toolProgress is what the visitor sees while a hosted tool runs.
	toolProgress agentToolProgress
	// bodyHead is the start of every Responses request, up to `"input":`.
	bodyHead []byte
	// sidKey is the HMAC key for safety_identifier.
	sidKey []byte
	// tools are the function tools Caddy runs; nil when there are none.
	tools       *agentToolbox
	openAIStore bool
	// hostedTools are OpenAI's tools of the request (web and file search,
	// MCP): JSON objects, comma-separated.
	hostedTools []byte

	userBudget, siteBudget *tokenLimit
	// attach is nil when attachments are off.
	attach *agentAttachments

	dictation *agentDictation // nil when off

	// subPaths are the paths answered below path (agentSubPaths).
	subPaths []agentSubPath
	embed    embedScript

	store    *agentStoreHandle
	storeKey string
	zoneKey  string
	zone     *agentZone
	released bool
}

// The agent's field rules (see validate.go): each names the subdirective
// of the agent block it judges.

func checkAgentPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return refuse("agent", "agent path must start with '/': %q", p)
	}
	return nil
}

func checkAgentStoreType(t string) error {
	if t != agentStoreSQLite && t != agentStorePostgres {
		return refuse("store", "agent store must be sqlite or postgres, got %q", t)
	}
	return nil
}

func checkAgentQueryTimeout(d time.Duration) error {
	return positiveDuration("store", "agent store query_timeout", d)
}

func checkAgentMaxConns(n int) error {
	return within("store", "agent store max_conns", n, 1, math.MaxInt32, "at least 1")
}

// validate judges the store's fields together: each type takes its own.
func (s *AgentStore) validate() error {
	if s.Type != "" {
		if err := checkAgentStoreType(s.Type); err != nil {
			return err
		}
	}
	if s.Type != agentStorePostgres {
		if s.DSN != "" || s.QueryTimeout != 0 || s.MaxConns != 0 {
			return refuse("store", "agent store dsn, query_timeout and max_conns are for store postgres")
		}
		return nil
	}
	if s.Path != "" {
		return refuse("store", "agent store postgres takes a dsn, not a path")
	}
	if strings.TrimSpace(s.DSN) == "" {
		return refuse("store", "agent store postgres needs a DSN: store postgres <dsn>, such as {env.DATABASE_URL}")
	}
	if s.QueryTimeout != 0 {
		if err := checkAgentQueryTimeout(time.Duration(s.QueryTimeout)); err != nil {
			return err
		}
	}
	if s.MaxConns != 0 {
		return checkAgentMaxConns(s.MaxConns)
	}
	return nil
}

func checkAgentHistory(n int) error {
	return within("history", "agent history", n, 1, threadstore.MaxRecentItems, "1 to "+strconv.Itoa(threadstore.MaxRecentItems))
}

func checkAgentMaxOutputTokens(n int) error {
	return within("max_output_tokens", "agent max_output_tokens", n, minAgentOutputTokens, math.MaxInt32, "at least "+strconv.Itoa(minAgentOutputTokens))
}

func checkAgentReasoningEffort(e string) error {
	if !slices.Contains(agentReasoningEfforts, e) {
		return refuse("reasoning_effort", "agent reasoning_effort must be %s, got %q", strings.Join(agentReasoningEfforts, ", "), e)
	}
	return nil
}

func checkAgentMaxInput(n int) error { return atLeastOne("max_input", "agent max_input", n) }

func checkAgentIdleTimeout(d time.Duration) error {
	return positiveDuration("idle_timeout", "agent idle_timeout", d)
}

func checkAgentInstructions(s string) error {
	if len(s) > maxAgentInstructions {
		return refuse("instructions", "agent instructions are longer than %d KiB", maxAgentInstructions>>10)
	}
	return nil
}

// checkTokenBudget judges one scope's budget; both values are required.
func checkTokenBudget(scope string, l *TokenBudgetLimit) error {
	if l.Tokens < 1 {
		return refuse("token_budget", "agent token_budget %s tokens must be at least 1, got %d", scope, l.Tokens)
	}
	return positiveDuration("token_budget", "agent token_budget "+scope+" interval", time.Duration(l.Interval))
}

// validate applies the agent's rules: its fields, and the ones that join
// them.
func (a *Agent) validate() error {
	for _, rule := range []struct {
		set bool
		err func() error
	}{
		{a.Path != "", func() error { return checkAgentPath(a.Path) }},
		{a.Instructions != "", func() error { return checkAgentInstructions(a.Instructions) }},
		{a.Store != nil, func() error { return a.Store.validate() }},
		{a.History != 0, func() error { return checkAgentHistory(a.History) }},
		{a.MaxOutputTokens != 0, func() error { return checkAgentMaxOutputTokens(a.MaxOutputTokens) }},
		{a.ReasoningEffort != "", func() error { return checkAgentReasoningEffort(a.ReasoningEffort) }},
		{a.MaxInput != 0, func() error { return checkAgentMaxInput(a.MaxInput) }},
		{a.IdleTimeout != 0, func() error { return checkAgentIdleTimeout(time.Duration(a.IdleTimeout)) }},
		{a.Retention != 0, func() error { return checkAgentRetention(time.Duration(a.Retention)) }},
		{a.TokenBudget != nil && a.TokenBudget.User != nil, func() error { return checkTokenBudget("user", a.TokenBudget.User) }},
		{a.TokenBudget != nil && a.TokenBudget.Site != nil, func() error { return checkTokenBudget("site", a.TokenBudget.Site) }},
		{a.Dictation != nil, func() error { return a.Dictation.validate() }},
		{a.Embed != nil, func() error { return a.Embed.validate() }},
		{a.Attachments != nil, func() error { return a.Attachments.validate() }},
	} {
		if rule.set {
			if err := rule.err(); err != nil {
				return err
			}
		}
	}
	if err := a.validateFunctionTools(); err != nil {
		return err
	}
	if a.Prompt != nil && a.Prompt.ID == "" {
		return refuse("prompt", "agent prompt needs an id")
	}
	if a.Model == "" && a.Prompt == nil {
		return refuse("agent", "agent needs a model: add model <name> (or prompt <id>)")
	}
	if a.Instructions != "" && a.InstructionsFile != "" {
		return refuse("instructions_file", "agent takes instructions or instructions_file, not both")
	}
	return a.validateTools()
}

// agentSubPath is a path the agent answers below its own, matched exactly
// on the path as the request arrived.
type agentSubPath struct {
	path     string
	endpoint endpoint
	name     string // for messages
	// dir: a directory of attachment links, path being its prefix (the
	// rest is an attachment id), answered only with attachments on.
	dir bool
}

// agentSubPaths lists the paths the agent at agentPath answers below it.
// Routing and the rule that they shadow no other endpoint
// (checkAgentPathFree) both read this list: a feature with a path of its
// own under the agent adds it here.
func agentSubPaths(agentPath string) []agentSubPath {
	base := strings.TrimSuffix(agentPath, "/")
	return []agentSubPath{
		{path: base + embedScriptName, endpoint: endpointEmbed, name: "embed.js"},
		{path: base + "/" + agentUploadsDir + "/", endpoint: endpointAgentUpload, name: "uploads", dir: true},
		{path: base + "/" + agentPreviewsDir + "/", endpoint: endpointAgentPreview, name: "previews", dir: true},
	}
}

// routeAgent names the agent endpoint at path, or endpointNone.
func (a *agentRuntime) routeAgent(path string) endpoint {
	if path == a.path {
		return endpointAgent
	}
	for _, sp := range a.subPaths {
		switch {
		case sp.dir && strings.HasPrefix(path, sp.path):
			return a.attach.route(a.path, path)
		case path == sp.path:
			return sp.endpoint
		}
	}
	return endpointNone
}

// checkAgentPathFree refuses an agent path, or a path the agent answers
// below it, that another endpoint of the handler already answers.
func (h *Handler) checkAgentPathFree() error {
	p := cmp.Or(h.Agent.Path, defaultAgentPath)
	others := []string{cmp.Or(h.HealthPath, defaultHealthPath)}
	if h.Workflow != nil {
		others = append(others, cmp.Or(h.StartPath, defaultStartPath), cmp.Or(h.RefreshPath, defaultRefreshPath))
	}
	if slices.Contains(others, p) {
		return refuse("agent", "the agent path %q is already the start, refresh or health path", p)
	}
	for _, sp := range agentSubPaths(p) {
		if slices.Contains(others, sp.path) {
			return refuse("agent", "the agent's %s path %q is also the start, refresh or health path; give that endpoint or the agent another path", sp.name, sp.path)
		}
		if sp.dir && slices.ContainsFunc(others, func(o string) bool { return strings.HasPrefix(o, sp.path) }) {
			return refuse("agent", "the start, refresh or health path lies in the agent's %s directory %q; give that endpoint or the agent another path", sp.name, sp.path)
		}
	}
	return nil
}

// provisionAgent builds the agent from its config. It reads
// instructions_file and nothing else: the database opens on first use (a
// PostgreSQL store's in the background, see probe).
// The API key, the upstream client and the rate-limit zone must be ready.
func (h *Handler) provisionAgent(repl *caddy.Replacer) error {
	cfg := h.Agent
	a := &agentRuntime{
		path:            cmp.Or(cfg.Path, defaultAgentPath),
		model:           strings.TrimSpace(repl.ReplaceAll(cfg.Model, "")),
		history:         cmp.Or(cfg.History, defaultAgentHistory),
		maxInput:        cmp.Or(cfg.MaxInput, defaultAgentMaxInput),
		maxBody:         cmp.Or(h.MaxBody, defaultAgentMaxBody),
		idleTimeout:     cmp.Or(time.Duration(cfg.IdleTimeout), defaultAgentIdleTimeout),
		reasoningEffort: cfg.ReasoningEffort,
		// Summaries are read from the stream only when they were asked for.
		reasoningSummary: cfg.ReasoningSummary,
		toolProgress:     newAgentToolProgress(cfg),
	}
	if tm := strings.TrimSpace(cfg.TitleModel); tm != "" && tm != "off" {
		a.titleModel = tm
	}
	instructions := cfg.Instructions
	if cfg.InstructionsFile != "" {
		path := repl.ReplaceAll(cfg.InstructionsFile, "")
		data, err := readAgentInstructions(path)
		if err != nil {
			return err
		}
		instructions = data
	}
	var prompt *AgentPrompt
	if cfg.Prompt != nil {
		prompt = &AgentPrompt{
			ID:      strings.TrimSpace(repl.ReplaceAll(cfg.Prompt.ID, "")),
			Version: strings.TrimSpace(repl.ReplaceAll(cfg.Prompt.Version, "")),
		}
		if prompt.ID == "" {
			return fmt.Errorf("chatkit: agent prompt id %q resolved to an empty value", cfg.Prompt.ID)
		}
	}
	if a.model == "" && prompt == nil {
		return fmt.Errorf("chatkit: agent model %q resolved to an empty value", cfg.Model)
	}
	maxOutput := cmp.Or(cfg.MaxOutputTokens, defaultAgentMaxOutputTokens)
	a.bodyHead = appendAgentBodyHead(nil, a.model, instructions, prompt, maxOutput, cfg.OpenAIStore, a.reasoningEffort, a.reasoningSummary)

	a.sidKey = agentSafetyKey(h.apiKey)
	a.openAIStore = cfg.OpenAIStore
	hosted, err := agentHostedToolsJSON(cfg, repl)
	if err != nil {
		return err
	}
	a.hostedTools = hosted
	tools, err := newAgentToolbox(cfg, repl)
	if err != nil {
		return err
	}
	a.tools = tools
	a.attach = newAgentAttachments(cfg.Attachments, h.apiKey)

	dictation, err := newAgentDictation(cfg.Dictation, func(s string) string { return repl.ReplaceAll(s, "") })
	if err != nil {
		return err
	}
	a.dictation = dictation

	a.subPaths = agentSubPaths(a.path)
	embed, err := newEmbedScript(cfg, a.path, repl)
	if err != nil {
		return err
	}
	a.embed = embed

	if b := cfg.TokenBudget; b != nil {
		if b.User != nil {
			a.userBudget = &tokenLimit{tokens: b.User.Tokens, interval: time.Duration(b.User.Interval)}
		}
		if b.Site != nil {
			a.siteBudget = &tokenLimit{tokens: b.Site.Tokens, interval: time.Duration(b.Site.Interval)}
		}
	}

	target, err := resolveAgentStore(cfg.Store, repl)
	if err != nil {
		return err
	}
	a.storeKey = target.key
	val, _, err := agentStores.LoadOrNew(a.storeKey, func() (caddy.Destructor, error) {
		hd := newAgentStoreHandle(target.name, target.open).startSweeper(h.logger)
		if target.probe {
			hd.probe(h.logger)
		}
		return hd, nil
	})
	if err != nil {
		return err
	}
	a.store = val.(*agentStoreHandle)

	a.zoneKey = "agent:" + h.limiter.zoneKey
	maxKeys := defaultMaxKeys
	if h.RateLimit != nil && h.RateLimit.MaxKeys > 0 {
		maxKeys = h.RateLimit.MaxKeys
	}
	zv, _, err := agentZones.LoadOrNew(a.zoneKey, func() (caddy.Destructor, error) {
		return newAgentZone(maxKeys), nil
	})
	if err != nil {
		_, _ = agentStores.Delete(a.storeKey)
		return err
	}
	a.zone = zv.(*agentZone)
	a.store.retain(a, time.Duration(cfg.Retention))
	h.agent = a
	return nil
}

// readAgentInstructions reads instructions_file, bounded.
func readAgentInstructions(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("chatkit: agent instructions_file: %w", err)
	}
	defer f.Close()
	data, err := readCapped(f, -1, maxAgentInstructions+1)
	if err != nil {
		return "", fmt.Errorf("chatkit: agent instructions_file: %w", err)
	}
	if len(data) > maxAgentInstructions {
		return "", fmt.Errorf("chatkit: agent instructions_file %s is larger than %d KiB", path, maxAgentInstructions>>10)
	}
	if !utf8.Valid(data) {
		return "", fmt.Errorf("chatkit: agent instructions_file %s is not UTF-8 text", path)
	}
	return string(data), nil
}

// cleanupAgent releases the pooled store and zone. A stream still running
// keeps the store open until it ends (see agentStoreHandle.Destruct).
func (h *Handler) cleanupAgent() {
	a := h.agent
	if a == nil || a.released {
		return
	}
	a.released = true
	a.tools.close()
	if a.store != nil {
		a.store.retain(a, 0)
		_, _ = agentStores.Delete(a.storeKey)
	}
	if a.zone != nil {
		_, _ = agentZones.Delete(a.zoneKey)
	}
}

// appendAgentBodyHead encodes the fixed start of every Responses request:
// everything but the input and the safety identifier, in one buffer built
// once. tools are the `tools` array's elements (none: no array).
func appendAgentBodyHead(buf []byte, model, instructions string, prompt *AgentPrompt, maxOutput int, store bool, effort, summary string) []byte {
	buf = append(buf, '{')
	if model != "" {
		buf = append(buf, `"model":`...)
		buf = appendAgentString(buf, model)
		buf = append(buf, ',')
	}
	if instructions != "" {
		buf = append(buf, `"instructions":`...)
		buf = appendAgentString(buf, instructions)
		buf = append(buf, ',')
	}
	if prompt != nil {
		buf = append(buf, `"prompt":{"id":`...)
		buf = appendAgentString(buf, prompt.ID)
		if prompt.Version != "" {
			buf = append(buf, `,"version":`...)
			buf = appendAgentString(buf, prompt.Version)
		}
		buf = append(buf, "},"...)
	}
	buf = appendAgentReasoning(buf, effort, summary)
	buf = append(buf, `"max_output_tokens":`...)
	buf = strconv.AppendInt(buf, int64(maxOutput), 10)
	buf = append(buf, `,"store":`...)
	buf = strconv.AppendBool(buf, store)
	return append(buf, `,"stream":true,"input":`...)
}

// agentSafetyKey derives the safety_identifier key from the API key.
func agentSafetyKey(apiKey string) []byte {
	mac := hmac.New(sha256.New, []byte(apiKey))
	mac.Write([]byte(agentSafetyLabel))
	return mac.Sum(nil)
}

// reasons reports whether the model is configured as a reasoning model
// (an effort or summaries asked for): only those accept reasoning items
// and the include of their encrypted content.
func (a *agentRuntime) reasons() bool { return a.reasoningEffort != "" || a.reasoningSummary != "" }

// safetyIdentifier is what OpenAI gets instead of the user id: a keyed
// hash, `sid_` and 60 hex digits (OpenAI allows 64 characters).
func (a *agentRuntime) safetyIdentifier(user string) string {
	mac := hmac.New(sha256.New, a.sidKey)
	mac.Write([]byte(user))
	var sum [sha256.Size]byte
	return "sid_" + hex.EncodeToString(mac.Sum(sum[:0]))[:60]
}

// agentNewID returns a fresh id: the prefix, an underscore and 96 random
// bits in hex. Ids are never OpenAI's.
func agentNewID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return prefix + "_" + hex.EncodeToString(b[:])
}

// agentTitle is a title taken from the first message: its first line, cut
// to agentTitleLength characters at a word boundary.
func agentTitle(message string) string {
	s := strings.TrimSpace(message)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	s = strings.Join(strings.FieldsFunc(s, unicode.IsSpace), " ")
	if utf8.RuneCountInString(s) <= agentTitleLength {
		return s
	}
	runes := []rune(s)
	cut := agentTitleLength
	for i := agentTitleLength; i > agentTitleLength/2; i-- {
		if runes[i] == ' ' {
			cut = i
			break
		}
	}
	return strings.TrimRightFunc(string(runes[:cut]), func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsPunct(r)
	}) + "…"
}

// ---------------------------------------------------------------- store pool

// agentStores holds one open thread store per database file, shared by
// every handler naming it and across config reloads.
var agentStores = caddy.NewUsagePool()

// agentStoreHandle is a pooled database: opened on first use, with one
// open at a time (concurrent first requests wait for it), and kept open
// while any request uses it, even after the last config using it went.
type agentStoreHandle struct {
	// path names the store in logs and admin answers: the SQLite file, or
	// PostgreSQL's server, database and user (never the password).
	path string
	open func(ctx context.Context) (threadstore.Store, error)

	mu         sync.Mutex
	store      threadstore.Store
	opening    chan struct{} // closed when the open in flight ends
	openErr    error
	retryAt    time.Time
	users      int
	destructed bool
	waiting    int // requests waiting for the open in flight (tests watch it)
	sweeper    *agentSweeper
}

func newAgentStoreHandle(path string, open func(context.Context) (threadstore.Store, error)) *agentStoreHandle {
	return &agentStoreHandle{path: path, open: open}
}

func openSQLiteStore(path string) func(context.Context) (threadstore.Store, error) {
	return func(ctx context.Context) (threadstore.Store, error) {
		return threadstore.OpenSQLite(ctx, path, threadstore.SQLiteOptions{})
	}
}

// errAgentStoreOpen wraps why the database could not be opened.
var errAgentStoreOpen = errors.New("the thread store could not be opened")

// acquire returns the open store, opening it if needed; release must be
// called when the request is done with it. A failed open is remembered for
// a moment, so a broken database is not retried on every request.
func (s *agentStoreHandle) acquire(ctx context.Context) (threadstore.Store, func(), error) {
	for {
		s.mu.Lock()
		if s.destructed {
			s.mu.Unlock()
			return nil, nil, threadstore.ErrClosed
		}
		if s.store != nil {
			s.users++
			st := s.store
			s.mu.Unlock()
			return st, s.release, nil
		}
		if s.opening == nil && s.openErr != nil && time.Now().Before(s.retryAt) {
			err := s.openErr
			s.mu.Unlock()
			return nil, nil, err
		}
		if wait := s.opening; wait != nil {
			s.waiting++
			s.mu.Unlock()
			var err error
			select {
			case <-wait:
			case <-ctx.Done():
				err = fmt.Errorf("%w: %w", threadstore.ErrUnavailable, ctx.Err())
			}
			s.mu.Lock()
			s.waiting--
			s.mu.Unlock()
			if err != nil {
				return nil, nil, err
			}
			continue
		}
		done := make(chan struct{})
		s.opening = done
		s.mu.Unlock()

		// Detached: requests waiting on this open must not fail because the
		// first one's browser went away.
		openCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), agentStoreOpenTimeout)
		st, err := s.open(openCtx)
		cancel()
		s.mu.Lock()
		s.opening = nil
		if err != nil {
			s.openErr = fmt.Errorf("%w: %w", errAgentStoreOpen, err)
			s.retryAt = time.Now().Add(agentStoreRetry)
		} else if s.destructed {
			_ = st.Close()
		} else {
			s.store, s.openErr = st, nil
		}
		close(done)
		s.mu.Unlock()
	}
}

func (s *agentStoreHandle) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users--
	if s.destructed && s.users == 0 {
		s.closeLocked()
	}
}

// Destruct is called when no config uses the database any more; it closes
// it now, or when the last request using it ends.
func (s *agentStoreHandle) Destruct() error {
	s.stopSweeper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.destructed = true
	if s.users == 0 {
		s.closeLocked()
	}
	return nil
}

func (s *agentStoreHandle) closeLocked() {
	if s.store != nil {
		_ = s.store.Close()
		s.store = nil
	}
}

// ---------------------------------------------------------------- metrics

var (
	agentRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "agent_requests_total",
		Help: "Requests to the agent endpoint, by ChatKit request type and outcome.",
	}, []string{"type", "outcome"})

	agentTokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "agent_tokens_total",
		Help: "Tokens OpenAI reported for agent turns and titles, by direction (input, output).",
	}, []string{"direction"})

	agentFeedback = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "agent_feedback_total",
		Help: "Items rated with items.feedback, by kind (positive, negative).",
	}, []string{"kind"})
)

// registerAgentMetrics adds the agent's collectors to a config's registry.
func registerAgentMetrics(registry prometheus.Registerer) error {
	if registry == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{agentRequests, agentTokens, agentFeedback, agentRetentionDeleted, agentRetentionSweeps} {
		if err := registry.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// agentMetricType bounds the type label.
func agentMetricType(t string) string {
	switch t {
	case agentThreadsCreate, agentThreadsAddUserMessage, agentThreadsRetryAfterItem,
		agentThreadsGetByID, agentThreadsList, agentItemsList, agentThreadsUpdate,
		agentThreadsDelete, agentItemsFeedback, agentInputTranscribe,
		agentAttachmentsCreate, agentAttachmentsDelete:
		return t
	case "":
		return "none"
	}
	return "other"
}

// ---------------------------------------------------------------- dispatch

// serveAgent answers one request to the agent endpoint: origin, method,
// body and type, then the request itself. Everything decided before
// anything is saved is answered as JSON.
func (h *Handler) serveAgent(x *exchange) {
	a := h.agent
	r := x.r
	defer func() {
		agentRequests.WithLabelValues(agentMetricType(x.requestType), x.outcome).Inc()
	}()
	h.judgeOrigin(x)
	if r.Method == http.MethodOptions {
		x.requestType = "preflight"
		h.servePreflight(x, agentPreflight)
		return
	}
	if r.Method != http.MethodPost {
		x.w.Header().Set("Allow", "OPTIONS, POST")
		x.refuse(answerMethodNotAllowed)
		return
	}
	if !x.verdict.allowed {
		x.refuse(answerOriginDenied)
		return
	}
	// As on protected paths, the body is read before anything is charged
	// (its type decides the charge), under the same bounds: the largest any
	// type may send, then its own type's.
	limit := a.maxBodyFor(agentInputTranscribe)
	release, ok := h.holdPending(x, limit)
	if !ok {
		return
	}
	body, ok := h.readRequestBody(x, limit)
	release()
	if !ok {
		return
	}
	req, derr := decodeAgentRequest(body, agentRequestLimits{MaxInput: a.maxInput, MaxAttachments: a.attach.maxFilesPerMessage()})
	if own := a.maxBodyFor(req.Type); int64(len(body)) > own {
		x.refuse(bodyTooLarge(own))
		return
	}
	if derr != nil {
		x.requestType = "malformed"
		// Probing with bad bodies is not free.
		verdict, state := h.limiter.chargeClient(r.Context(), r, x.repl, h.now())
		x.rateLimit = state
		if x.admitted(verdict) {
			x.refuse(answerBadRequest.withMessage(derr.Error()))
		}
		return
	}
	x.requestType = req.Type
	switch {
	case req.Type == agentInputTranscribe:
		h.serveTranscribe(x, &req)
	case req.Type == agentAttachmentsCreate || req.Type == agentAttachmentsDelete:
		h.serveAgentAttachment(x, &req)
	case req.streaming():
		h.serveAgentTurn(x, &req)
	default:
		h.serveAgentJSON(x, &req)
	}
}

// openVisitorStore identifies the visitor, then opens the store for their
// request; false when either step has answered the request.
func (h *Handler) openVisitorStore(x *exchange) (threadstore.Store, func(), bool) {
	if !h.identifyVisitor(x) {
		return nil, nil, false
	}
	return h.openAgentStore(x)
}

// openAgentStore returns the store for this request, answering 503 when it
// cannot be opened.
func (h *Handler) openAgentStore(x *exchange) (threadstore.Store, func(), bool) {
	st, release, err := h.agent.store.acquire(x.r.Context())
	if err != nil {
		h.failAgentStore(x, "open", err)
		return nil, nil, false
	}
	return st, release, true
}

// failAgentStore answers a store error: not found is the caller's 404
// (whoever owns the thread), unavailable a 503, anything else a 500. The
// cause is logged, never sent.
func (h *Handler) failAgentStore(x *exchange, op string, err error) {
	switch {
	case errors.Is(err, threadstore.ErrNotFound):
		x.refuse(answerNotFound)
		return
	case x.r.Context().Err() != nil:
		// The visitor left: not the store's fault.
		x.refuse(failCanceled.rule().answer)
	case errors.Is(err, threadstore.ErrUnavailable), errors.Is(err, errAgentStoreOpen):
		h.logger.Error("the agent's thread store is unavailable",
			zap.String("request_id", x.requestID), zap.String("operation", op),
			zap.String("path", h.agent.store.path), zap.Error(err))
		x.refuseAfter(answerStoreUnavailable, agentStoreBusyWait)
	default:
		h.logger.Error("the agent's thread store failed",
			zap.String("request_id", x.requestID), zap.String("operation", op), zap.Error(err))
		x.refuse(answerStoreFailed)
	}
}

// serveAgentJSON answers the requests that read or change threads without
// running the model. They spend no rate-limit token but each client has a
// read bucket.
func (h *Handler) serveAgentJSON(x *exchange, req *agentRequest) {
	if !h.agentReadAllowed(x) {
		return
	}
	st, release, ok := h.openVisitorStore(x)
	if !ok {
		return
	}
	defer release()
	ctx, owner := x.r.Context(), x.user
	if req.ThreadID != "" {
		x.logFields = append(x.logFields, zap.String("thread_id", req.ThreadID))
	}

	var out []byte
	switch req.Type {
	case agentThreadsGetByID:
		t, err := st.Thread(ctx, owner, req.ThreadID)
		if err != nil {
			h.failAgentStore(x, "thread", err)
			return
		}
		// The oldest page, as chatkit-python answers; the client pages on
		// with items.list.
		page, err := st.ListItems(ctx, owner, t.ID, "", agentDefaultPageLimit, threadstore.Asc)
		if err != nil {
			h.failAgentStore(x, "list items", err)
			return
		}
		th := agentThreadOf(t)
		out = th.appendJSON(make([]byte, 0, 512), h.agentItemsOut(x, agentVisibleItems(page.Data)), page.HasMore, page.After)
	case agentThreadsList:
		page, err := st.ListThreads(ctx, owner, req.After, req.Limit, threadstore.Order(req.Order))
		if err != nil {
			h.failAgentStore(x, "list threads", err)
			return
		}
		threads := make([]agentThread, len(page.Data))
		for i := range page.Data {
			threads[i] = agentThreadOf(page.Data[i])
		}
		out = appendAgentThreadsPage(make([]byte, 0, 256*len(threads)+32), threads, page.HasMore, page.After)
	case agentItemsList:
		page, err := st.ListItems(ctx, owner, req.ThreadID, req.After, req.Limit, threadstore.Order(req.Order))
		if err != nil {
			h.failAgentStore(x, "list items", err)
			return
		}
		out = appendAgentItemsPage(make([]byte, 0, 512), h.agentItemsOut(x, agentVisibleItems(page.Data)), page.HasMore, page.After)
	case agentThreadsUpdate:
		title := req.Title
		t, err := st.UpdateThread(ctx, owner, req.ThreadID, threadstore.ThreadUpdate{Title: &title})
		if err != nil {
			h.failAgentStore(x, "update thread", err)
			return
		}
		th := agentThreadOf(t)
		out = th.appendJSON(make([]byte, 0, 256), nil, false, "")
	case agentThreadsDelete:
		// Only the owner learns whether the thread is busy.
		if _, err := st.Thread(ctx, owner, req.ThreadID); err != nil {
			h.failAgentStore(x, "thread", err)
			return
		}
		if !h.deleteAgentThread(x, st, owner, req.ThreadID) {
			return
		}
		out = []byte(agentEmptyObject)
	case agentItemsFeedback:
		kind := threadstore.FeedbackKind(req.Kind)
		if err := st.AddFeedback(ctx, owner, req.ThreadID, req.ItemIDs, kind); err != nil {
			h.failAgentStore(x, "feedback", err)
			return
		}
		agentFeedback.WithLabelValues(req.Kind).Add(float64(len(req.ItemIDs)))
		out = []byte(agentEmptyObject)
	default:
		x.refuse(answerBadRequest.withMessage("unknown request type"))
		return
	}
	x.outcome = outcomeSuccess
	x.writeJSON(http.StatusOK, out)
}

// agentReadAllowed spends a token from the client's read bucket (on while
// rate_limit is), answering 429 when it is empty.
func (h *Handler) agentReadAllowed(x *exchange) bool {
	if h.limiter.policy == "" {
		return true
	}
	key := h.limiter.clientKey(x.r, x.repl)
	d := h.agent.zone.reads.allow(key, limit{burst: agentReadBurst, interval: agentReadInterval}, h.limiter.zone.clock.nanos(h.now()))
	if d.allowed {
		return true
	}
	x.refuseAfter(answerRateLimited, d.retryAfter)
	return false
}

// agentThreadOf is a stored thread as the client sees it.
func agentThreadOf(t threadstore.Thread) agentThread {
	return agentThread{ID: t.ID, Title: t.Title, CreatedAt: t.CreatedAt, Status: t.Status}
}

// agentVisibleItems drops the items the client never sees (the page may
// then hold fewer than its limit, as chatkit-python's does).
func agentVisibleItems(items []threadstore.Item) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(items))
	for i := range items {
		if !agentItemHidden(items[i].Type) {
			out = append(out, items[i].Data)
		}
	}
	return out
}

package chatkit

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/dustin/go-humanize"
)

func init() {
	// Not RegisterHandlerDirective: it strips the matcher before the block
	// is parsed, and a protect block must refuse one.
	httpcaddyfile.RegisterDirective("chatkit", parseCaddyfile)
	// Before `handle`, so it sees requests ahead of respond, reverse_proxy,
	// php_fastcgi and file_server without a global `order` option.
	httpcaddyfile.RegisterDirectiveOrder("chatkit", httpcaddyfile.Before, "handle")
}

// parseCaddyfile sets up the directive: an optional matcher, then the
// block (see UnmarshalCaddyfile).
func parseCaddyfile(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	if !h.Next() {
		return nil, h.ArgErr()
	}
	directive := h.Token()
	matcherSet, err := h.ExtractMatcherSet()
	if err != nil {
		return nil, err
	}
	m := new(Handler)
	if err := m.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	if matcherSet != nil && len(m.Protect) > 0 {
		// The module removes client-sent identity headers only on the
		// requests it sees: the ones a matcher skips would reach the
		// backend with the client's own header.
		return nil, tokenErr(directive, fmt.Errorf("chatkit: protect cannot be used with a matcher: requests the matcher skips would reach the backend carrying the client's own %s header; use chatkit without a matcher and scope the backend with reverse_proxy's own matcher",
			cmp.Or(m.IdentityHeader, defaultIdentityHeader)))
	}
	if m.Site, err = siteAddresses(reflect.ValueOf(h)); err != nil {
		if m.RateLimit == nil || m.RateLimit.Zone == "" {
			return nil, tokenErr(directive, err)
		}
		// A named zone does not need the site.
	}
	return h.NewRoute(matcherSet, m), nil
}

// siteAddresses returns the addresses of the site block a directive is in,
// as written ("example.com, www.example.com"; "&(name)" in a named route,
// which every site invoking it shares), from an
// httpcaddyfile.Helper. The Helper keeps its server block unexported
// (parentBlock), so it is read by reflection; a Caddy whose Helper no
// longer has it is refused with an error, never guessed.
func siteAddresses(helper reflect.Value) (string, error) {
	block := helper.FieldByName("parentBlock")
	if !block.IsValid() || block.Type() != reflect.TypeFor[caddyfile.ServerBlock]() {
		return "", errors.New("chatkit: this Caddy's Caddyfile adapter does not tell which site block the directive is in, " +
			"which keeps default rate-limit zones of different sites apart; name one with rate_limit { zone <name> }, and please report this")
	}
	keys := block.FieldByName("Keys")
	addresses := make([]string, keys.Len())
	for i := range addresses {
		addresses[i] = keys.Index(i).FieldByName("Text").String()
	}
	site := strings.Join(addresses, ", ")
	if block.FieldByName("IsNamedRoute").Bool() {
		// As written, so it never equals a site's address.
		site = "&(" + site + ")"
	}
	return site, nil
}

// tokenErr attaches the file and line of tok to err, as Dispenser.Err does
// for the current token.
func tokenErr(tok caddyfile.Token, err error) error {
	d := caddyfile.NewDispenser([]caddyfile.Token{tok})
	d.Next()
	return d.WrapErr(err)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	chatkit [<matcher>] {
//		workflow <id> [<version>]
//		api_key <key>
//		api_base <url>
//		organization <id>
//		project <id>
//		tracing on|off
//		state_variable <name> <value>
//
//		start_path <path>
//		refresh_path <path>
//		health_path <path>|off
//
//		user <placeholder>
//		cookie_name <name>
//		cookie_secret <secret>
//		cookie_max_age <duration>
//
//		session_ttl <duration>
//		max_requests_per_minute <n>
//		file_upload on|off {
//			max_file_size <megabytes>
//			max_files <n>
//		}
//		history on|off {
//			recent_threads <n>
//		}
//		thread_titling on|off
//
//		timeout <duration>
//		max_body <size>
//		allow_origins <origin>...
//
//		rate_limit off
//		rate_limit <burst> <interval>
//		rate_limit [off|<burst> <interval>] {
//			key <placeholder>
//			ipv4_prefix <bits>
//			ipv6_prefix <bits>
//			max_keys <n>
//			zone <name>
//			redis <url>
//			on_redis_error local|deny
//		}
//		budget <sessions> <interval>
//
//		retries <n>
//		circuit_breaker off|<failures> <cooldown>
//		error_cache off|<duration>
//		revoke_on_refresh on|off
//
//		protect <path>...
//		identity_header <name>
//		max_upload <size>
//
//		agent [<path>] {
//			model <name>
//			instructions <text>
//			instructions_file <path>
//			prompt <id> [<version>]
//			store sqlite [<path>]
//			store postgres <dsn> {
//				query_timeout <duration>
//				max_conns <n>
//			}
//			retention <duration>
//			history <n>
//			max_output_tokens <n>
//			reasoning_effort minimal|low|medium|high
//			max_input <chars>
//			title_model <name>|off
//			token_budget user|site <tokens> <interval>
//			idle_timeout <duration>
//			openai_store on|off
//			dictation on|off [<model>] {
//				max_audio <size>
//			}
//			http_tool <name> <url template> {
//				description <text>
//				param <name> <description>
//				method GET|POST
//				header <name> <value>
//				max_response <size>
//				timeout <duration>
//			}
//			wordpress_search [<site url>]
//			max_tool_calls <n>
//			web_search [<domain>...]
//			file_search <vector_store_id>...
//			mcp <label> <url> {
//				allow <tool>...
//				header <name> <value>
//			}
//			reasoning_summary auto|concise|detailed
//			attachments on|off {
//				max_size <size>
//				max_files <n>
//				types <mime pattern>...
//			}
//
//			domain_key <key>
//			greeting <text>
//			suggestion <label> <prompt>
//			placeholder <text>
//			theme light|dark|auto
//			accent <color> [<level 0-3>]
//			launcher on|off
//			script_url <url>|<path>
//		}
//	}
//
// `rate_limit off` with a block takes only `redis` and `on_redis_error`
// (the budget, the revoke registry and the agent's token budgets still use
// Redis). `workflow` is
// required unless `agent` or `protect` is used. An option that can have no
// effect is refused: with `protect` alone (no workflow), those of minted
// sessions and of OpenAI calls (`api_key` to `project`, `start_path`,
// `refresh_path`, `session_ttl` to `thread_titling`, `timeout`, `retries`,
// `circuit_breaker`, `error_cache`, `revoke_on_refresh`); with `agent` and
// no workflow, those of minted sessions only; without `protect`,
// `identity_header` and `max_upload`. In the `agent` block `model` is
// required unless `prompt` is given, `instructions` and
// `instructions_file` exclude each other, `token_budget` may appear once
// per scope, `suggestion` may be repeated (the prompts keep their order),
// `http_tool` once per name (`param` and `header` repeated in its block,
// each name once), `mcp` once per server label, and every other option may
// appear once. `domain_key` to `script_url` configure `<agent
// path>/embed.js`, the script that mounts the chat on a page from one tag.
// A block with `protect`
// takes no matcher: the requests a matcher skips would reach the backend
// with the client's own identity header. `state_variable`,
// `allow_origins` and `protect` may be repeated; every other subdirective
// may appear once. The blocks after `file_upload` and `history` are
// optional. Every value is checked by the rules JSON configs are checked
// by (validate.go), and an error names its line.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	directive := d.Token()
	if d.NextArg() {
		return d.ArgErr()
	}
	// Where each subdirective first appears, for the rules checked once
	// the whole block is known.
	lines := make(map[string]caddyfile.Token)
	for d.NextBlock(0) {
		name := d.Val()
		if _, dup := lines[name]; dup && name != "state_variable" && name != "allow_origins" && name != "protect" {
			return d.Errf("duplicate subdirective %q", name)
		}
		if _, ok := lines[name]; !ok {
			lines[name] = d.Token()
		}
		if err := h.parseSubdirective(d, name); err != nil {
			return err
		}
	}
	// Each value was checked on its own line; what remains are the rules
	// that join settings (the modes, the paths), reported at the line of
	// the setting they name.
	if err := h.validate(); err != nil {
		at, ok := lines[directiveOf(err)]
		if !ok {
			at = directive
		}
		return tokenErr(at, err)
	}
	return nil
}

// parseSubdirective parses one subdirective and checks its value.
func (h *Handler) parseSubdirective(d *caddyfile.Dispenser, name string) error {
	switch name {
	case "workflow":
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return d.ArgErr()
		}
		w := h.workflow()
		w.ID = args[0]
		if len(args) == 2 {
			w.Version = args[1]
		}
		return check(d, w.validate())
	case "api_key":
		return singleArg(d, &h.APIKey)
	case "api_base":
		return singleArg(d, &h.APIBase)
	case "organization":
		return singleArg(d, &h.Organization)
	case "project":
		return singleArg(d, &h.Project)
	case "tracing":
		on, err := onOff(d)
		if err != nil {
			return err
		}
		h.workflow().Tracing = &on
		return nil
	case "state_variable":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.ArgErr()
		}
		w := h.workflow()
		if w.StateVariables == nil {
			w.StateVariables = make(map[string]any)
		}
		if _, dup := w.StateVariables[args[0]]; dup {
			return d.Errf("duplicate state_variable %q", args[0])
		}
		w.StateVariables[args[0]] = args[1]
		return check(d, checkStateVariable(args[0], args[1]))
	case "start_path":
		return pathArg(d, &h.StartPath)
	case "refresh_path":
		return pathArg(d, &h.RefreshPath)
	case "health_path":
		return pathArg(d, &h.HealthPath)
	case "user":
		return singleArg(d, &h.User)
	case "cookie_name":
		return singleArg(d, &h.cookie().Name)
	case "cookie_secret":
		return singleArg(d, &h.cookie().Secret)
	case "cookie_max_age":
		return durationArg(d, &h.cookie().MaxAge, checkCookieMaxAge)
	case "session_ttl":
		return durationArg(d, &h.SessionTTL, checkSessionTTL)
	case "max_requests_per_minute":
		return intArg(d, &h.MaxRequestsPerMinute, checkMaxRequestsPerMinute)
	case "file_upload":
		return h.parseFileUpload(d)
	case "history":
		return h.parseHistory(d)
	case "thread_titling":
		on, err := onOff(d)
		if err != nil {
			return err
		}
		h.chatKitConfiguration().AutomaticThreadTitling = &Toggle{Enabled: &on}
		return nil
	case "timeout":
		return durationArg(d, &h.Timeout, checkTimeout)
	case "max_body":
		return sizeArg(d, &h.MaxBody, checkMaxBody)
	case "rate_limit":
		return h.parseRateLimit(d)
	case "budget":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.ArgErr()
		}
		n, convErr := strconv.Atoi(args[0])
		interval, durErr := caddy.ParseDuration(args[1])
		if convErr != nil || durErr != nil {
			return d.Errf("budget: want <sessions> <interval>, got %q %q", args[0], args[1])
		}
		h.Budget = &Budget{Sessions: n, Interval: caddy.Duration(interval)}
		return check(d, h.Budget.validate())
	case "retries":
		var n int
		if err := intArg(d, &n, checkRetries); err != nil {
			return err
		}
		h.Retries = &n
		return nil
	case "circuit_breaker":
		args := d.RemainingArgs()
		switch {
		case len(args) == 1 && args[0] == "off":
			h.CircuitBreaker = &CircuitBreaker{Disabled: true}
			return nil
		case len(args) != 2:
			return d.ArgErr()
		}
		n, convErr := strconv.Atoi(args[0])
		cooldown, durErr := caddy.ParseDuration(args[1])
		if convErr != nil || durErr != nil {
			return d.Errf("circuit_breaker: want off or <failures> <cooldown>, got %q %q", args[0], args[1])
		}
		h.CircuitBreaker = &CircuitBreaker{Failures: n, Cooldown: caddy.Duration(cooldown)}
		// Both values are written, so zero is checked too.
		return check(d, cmp.Or(checkBreakerFailures(n), checkBreakerCooldown(cooldown)))
	case "error_cache":
		var v string
		if err := singleArg(d, &v); err != nil {
			return err
		}
		ttl := caddy.Duration(0)
		if v != "off" {
			dur, err := durationValue(d, "error_cache", v, checkErrorCache)
			if err != nil {
				return err
			}
			ttl = caddy.Duration(dur)
		}
		h.ErrorCache = &ttl
		return nil
	case "revoke_on_refresh":
		var err error
		h.RevokeOnRefresh, err = onOff(d)
		return err
	case "allow_origins":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		h.AllowOrigins = append(h.AllowOrigins, args...)
		return check(d, checkAllowOrigins(args))
	case "protect":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		for _, p := range args {
			if err := checkProtectPath(p); err != nil {
				return d.WrapErr(err)
			}
		}
		h.Protect = append(h.Protect, args...)
		return nil
	case "identity_header":
		if err := singleArg(d, &h.IdentityHeader); err != nil {
			return err
		}
		return check(d, checkIdentityHeader(h.IdentityHeader))
	case "max_upload":
		return sizeArg(d, &h.MaxUpload, checkMaxUpload)
	case "agent":
		return h.parseAgent(d)
	}
	return d.Errf("unrecognized chatkit subdirective %q", name)
}

// parseAgent parses the agent block (see UnmarshalCaddyfile).
func (h *Handler) parseAgent(d *caddyfile.Dispenser) error {
	at := d.Token()
	a := new(Agent)
	switch args := d.RemainingArgs(); len(args) {
	case 0:
	case 1:
		if err := checkAgentPath(args[0]); err != nil {
			return d.WrapErr(err)
		}
		a.Path = args[0]
	default:
		return d.ArgErr()
	}
	lines := make(map[string]caddyfile.Token)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if _, dup := lines[name]; dup && !agentOptionRepeatable(name) {
			return d.Errf("duplicate agent option %q", name)
		}
		lines[name] = d.Token()
		if err := a.parseOption(d, name); err != nil {
			return err
		}
	}
	h.Agent = a
	if err := a.validate(); err != nil {
		if tok, ok := lines[directiveOf(err)]; ok {
			at = tok
		}
		return tokenErr(at, err)
	}
	return nil
}

// agentOptionRepeatable reports whether an agent option may appear more
// than once.
func agentOptionRepeatable(name string) bool {
	if name == "token_budget" || name == "http_tool" {
		return true // once per scope or name, checked in parseOption
	}
	if name == "mcp" {
		return true // once per label, checked in validateTools
	}
	_, repeatable := embedOption(name)
	return repeatable
}

// parseOption parses one option of the agent block and checks its value.
func (a *Agent) parseOption(d *caddyfile.Dispenser, name string) error {
	switch name {
	case "model":
		return singleArg(d, &a.Model)
	case "instructions":
		if err := singleArg(d, &a.Instructions); err != nil {
			return err
		}
		return check(d, checkAgentInstructions(a.Instructions))
	case "instructions_file":
		return singleArg(d, &a.InstructionsFile)
	case "prompt":
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return d.ArgErr()
		}
		a.Prompt = &AgentPrompt{ID: args[0]}
		if len(args) == 2 {
			a.Prompt.Version = args[1]
		}
		return nil
	case "store":
		return a.parseStore(d)
	case "history":
		return intArg(d, &a.History, checkAgentHistory)
	case "max_output_tokens":
		return intArg(d, &a.MaxOutputTokens, checkAgentMaxOutputTokens)
	case "reasoning_effort":
		if err := singleArg(d, &a.ReasoningEffort); err != nil {
			return err
		}
		return check(d, checkAgentReasoningEffort(a.ReasoningEffort))
	case "max_input":
		return intArg(d, &a.MaxInput, checkAgentMaxInput)
	case "title_model":
		return singleArg(d, &a.TitleModel)
	case "token_budget":
		args := d.RemainingArgs()
		if len(args) != 3 {
			return d.ArgErr()
		}
		tokens, convErr := strconv.ParseInt(args[1], 10, 64)
		interval, durErr := caddy.ParseDuration(args[2])
		if convErr != nil || durErr != nil {
			return d.Errf("token_budget: want user|site <tokens> <interval>, got %q %q %q", args[0], args[1], args[2])
		}
		if a.TokenBudget == nil {
			a.TokenBudget = new(AgentTokenBudget)
		}
		l := &TokenBudgetLimit{Tokens: tokens, Interval: caddy.Duration(interval)}
		var slot **TokenBudgetLimit
		switch args[0] {
		case "user":
			slot = &a.TokenBudget.User
		case "site":
			slot = &a.TokenBudget.Site
		default:
			return d.Errf("token_budget: the scope must be user or site, got %q", args[0])
		}
		if *slot != nil {
			return d.Errf("duplicate token_budget %s", args[0])
		}
		*slot = l
		return check(d, checkTokenBudget(args[0], l))
	case "idle_timeout":
		return durationArg(d, &a.IdleTimeout, checkAgentIdleTimeout)
	case "retention":
		return durationArg(d, &a.Retention, checkAgentRetention)
	case "openai_store":
		var err error
		a.OpenAIStore, err = onOff(d)
		return err
	case "dictation":
		return a.parseDictation(d)
	case "http_tool":
		return a.parseHTTPTool(d)
	case "wordpress_search":
		args := d.RemainingArgs()
		if len(args) > 1 {
			return d.ArgErr()
		}
		a.WordPressSearch = new(AgentWordPressSearch)
		if len(args) == 1 {
			a.WordPressSearch.Site = args[0]
			return check(d, checkAgentWordPressSite(args[0]))
		}
		return nil
	case "max_tool_calls":
		return intArg(d, &a.MaxToolCalls, checkAgentMaxToolCalls)
	case "web_search", "file_search", "mcp", "reasoning_summary":
		return a.parseToolOption(d, name)
	case "attachments":
		return a.parseAttachments(d)
	}
	if known, _ := embedOption(name); known {
		return a.parseEmbedOption(d, name)
	}
	return d.Errf("unrecognized agent option %q", name)
}

// parseToolOption parses the agent's hosted tool options and
// reasoning_summary:
//
//	web_search [<domain>...]
//	file_search <vector_store_id>...
//	mcp <label> <url> {
//		allow <tool>...
//		header <name> <value>
//	}
//	reasoning_summary auto|concise|detailed
//
// `mcp` may be repeated, one per server; `allow` may be repeated and each
// header named once.
func (a *Agent) parseToolOption(d *caddyfile.Dispenser, name string) error {
	switch name {
	case "web_search":
		w := &AgentWebSearch{AllowedDomains: d.RemainingArgs()}
		a.WebSearch = w
		return check(d, checkAgentWebSearch(w))
	case "file_search":
		f := &AgentFileSearch{VectorStoreIDs: d.RemainingArgs()}
		a.FileSearch = f
		return check(d, checkAgentFileSearch(f))
	case "reasoning_summary":
		if err := singleArg(d, &a.ReasoningSummary); err != nil {
			return err
		}
		return check(d, checkAgentReasoningSummary(a.ReasoningSummary))
	case "mcp":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.ArgErr()
		}
		m := AgentMCP{Label: args[0], URL: args[1]}
		if err := checkAgentMCPLabel(m.Label); err != nil {
			return d.WrapErr(err)
		}
		if err := checkAgentMCPURL(m.Label, m.URL); err != nil {
			return d.WrapErr(err)
		}
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			switch sub := d.Val(); sub {
			case "allow":
				tools := d.RemainingArgs()
				if len(tools) == 0 {
					return d.ArgErr()
				}
				m.Allow = append(m.Allow, tools...)
			case "header":
				hv := d.RemainingArgs()
				if len(hv) != 2 {
					return d.ArgErr()
				}
				if _, dup := m.Headers[hv[0]]; dup {
					return d.Errf("duplicate header %q in mcp %s", hv[0], m.Label)
				}
				if err := checkAgentMCPHeader(m.Label, hv[0], hv[1]); err != nil {
					return d.WrapErr(err)
				}
				if m.Headers == nil {
					m.Headers = make(map[string]string)
				}
				m.Headers[hv[0]] = hv[1]
			default:
				return d.Errf("unrecognized mcp option %q", sub)
			}
		}
		a.MCP = append(a.MCP, m)
		return check(d, checkAgentMCP(&a.MCP[len(a.MCP)-1]))
	}
	return d.Errf("unrecognized agent option %q", name)
}

// parseDictation parses `dictation on|off [<model>] { max_audio <size> }`.
func (a *Agent) parseDictation(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.ArgErr()
	}
	dict := new(AgentDictation)
	switch args[0] {
	case "on":
		dict.Enabled = true
	case "off":
	default:
		return d.Errf("dictation: expected on or off, got %q", args[0])
	}
	if len(args) == 2 {
		dict.Model = args[1]
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return d.Errf("duplicate dictation option %q", name)
		}
		seen[name] = true
		switch name {
		case "max_audio":
			if err := sizeArg(d, &dict.MaxAudio, checkDictationMaxAudio); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized dictation option %q", name)
		}
	}
	a.Dictation = dict
	return check(d, dict.validate())
}

// parseStore parses `store sqlite [<path>]` or `store postgres <dsn>`
// with its block.
func (a *Agent) parseStore(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.ArgErr()
	}
	if err := checkAgentStoreType(args[0]); err != nil {
		return d.WrapErr(err)
	}
	s := &AgentStore{Type: args[0]}
	switch s.Type {
	case agentStoreSQLite:
		if len(args) == 2 {
			s.Path = args[1]
		}
	case agentStorePostgres:
		if len(args) != 2 {
			return d.Errf("store postgres needs a DSN: store postgres <dsn>, such as {env.DATABASE_URL}")
		}
		s.DSN = args[1]
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if s.Type != agentStorePostgres {
			return d.Errf("store %s takes no block (its options are for store postgres)", s.Type)
		}
		if seen[name] {
			return d.Errf("duplicate store option %q", name)
		}
		seen[name] = true
		switch name {
		case "query_timeout":
			if err := durationArg(d, &s.QueryTimeout, checkAgentQueryTimeout); err != nil {
				return err
			}
		case "max_conns":
			if err := intArg(d, &s.MaxConns, checkAgentMaxConns); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized store option %q", name)
		}
	}
	a.Store = s
	return check(d, s.validate())
}

// parseHTTPTool parses one http_tool and its block.
func (a *Agent) parseHTTPTool(d *caddyfile.Dispenser) error {
	at := d.Token()
	args := d.RemainingArgs()
	if len(args) != 2 {
		return d.ArgErr()
	}
	t := &AgentHTTPTool{Name: args[0], URL: args[1]}
	if err := checkAgentToolName("http_tool", t.Name); err != nil {
		return d.WrapErr(err)
	}
	for _, other := range a.HTTPTools {
		if other.Name == t.Name {
			return d.Errf("duplicate http_tool %q", t.Name)
		}
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] && opt != "param" && opt != "header" {
			return d.Errf("duplicate http_tool option %q", opt)
		}
		seen[opt] = true
		switch opt {
		case "description":
			if err := singleArg(d, &t.Description); err != nil {
				return err
			}
		case "param":
			pa := d.RemainingArgs()
			if len(pa) < 1 || len(pa) > 2 {
				return d.ArgErr()
			}
			p := AgentToolParam{Name: pa[0]}
			if len(pa) == 2 {
				p.Description = pa[1]
			}
			if slices.ContainsFunc(t.Params, func(q AgentToolParam) bool { return q.Name == p.Name }) {
				return d.Errf("duplicate http_tool param %q", p.Name)
			}
			t.Params = append(t.Params, p)
		case "method":
			if err := singleArg(d, &t.Method); err != nil {
				return err
			}
			if err := check(d, checkAgentToolMethod(t.Method)); err != nil {
				return err
			}
		case "header":
			ha := d.RemainingArgs()
			if len(ha) != 2 {
				return d.ArgErr()
			}
			if err := check(d, checkAgentToolHeader(ha[0])); err != nil {
				return err
			}
			if t.Headers == nil {
				t.Headers = make(map[string]string)
			}
			key := http.CanonicalHeaderKey(ha[0])
			if _, dup := t.Headers[key]; dup {
				return d.Errf("duplicate http_tool header %q", ha[0])
			}
			t.Headers[key] = ha[1]
		case "max_response":
			if err := sizeArg(d, &t.MaxResponse, checkAgentToolMaxResponse); err != nil {
				return err
			}
		case "timeout":
			if err := durationArg(d, &t.Timeout, checkAgentToolTimeout); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized http_tool option %q", opt)
		}
	}
	if err := checkAgentHTTPTool(t); err != nil {
		return tokenErr(at, err)
	}
	a.HTTPTools = append(a.HTTPTools, t)
	return nil
}

func (h *Handler) workflow() *Workflow {
	if h.Workflow == nil {
		h.Workflow = new(Workflow)
	}
	return h.Workflow
}

func (h *Handler) cookie() *CookieConfig {
	if h.Cookie == nil {
		h.Cookie = new(CookieConfig)
	}
	return h.Cookie
}

func (h *Handler) chatKitConfiguration() *ChatKitConfiguration {
	if h.ChatKitConfiguration == nil {
		h.ChatKitConfiguration = new(ChatKitConfiguration)
	}
	return h.ChatKitConfiguration
}

func (h *Handler) parseFileUpload(d *caddyfile.Dispenser) error {
	on, err := onOff(d)
	if err != nil {
		return err
	}
	fu := &FileUpload{Enabled: &on}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return d.Errf("duplicate file_upload option %q", name)
		}
		seen[name] = true
		switch name {
		case "max_file_size":
			err = intArg(d, &fu.MaxFileSize, checkMaxFileSize)
		case "max_files":
			err = intArg(d, &fu.MaxFiles, checkMaxFiles)
		default:
			err = d.Errf("unrecognized file_upload option %q", name)
		}
		if err != nil {
			return err
		}
	}
	h.chatKitConfiguration().FileUpload = fu
	return check(d, fu.validate())
}

func (h *Handler) parseRateLimit(d *caddyfile.Dispenser) error {
	rl := new(RateLimit)
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
	case 1:
		if args[0] != "off" {
			return d.Errf("rate_limit: want off or <burst> <interval>, got %q", args[0])
		}
		// Off still takes redis, for the budget and the revoke registry.
		rl.Disabled = true
	case 2:
		burst, err := strconv.Atoi(args[0])
		interval, durErr := caddy.ParseDuration(args[1])
		if err != nil || durErr != nil {
			return d.Errf("rate_limit: want <burst> <interval>, got %q %q", args[0], args[1])
		}
		// Both values are written, so zero is checked too.
		if err := cmp.Or(checkBurst(burst), checkInterval(interval)); err != nil {
			return d.WrapErr(err)
		}
		rl.Burst, rl.Interval = burst, caddy.Duration(interval)
	default:
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return d.Errf("duplicate rate_limit option %q", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "key":
			err = singleArg(d, &rl.Key)
		case "zone":
			err = singleArg(d, &rl.Zone)
		case "ipv4_prefix":
			err = intArg(d, &rl.IPv4Prefix, checkIPv4Prefix)
		case "ipv6_prefix":
			err = intArg(d, &rl.IPv6Prefix, checkIPv6Prefix)
		case "max_keys":
			err = intArg(d, &rl.MaxKeys, checkMaxKeys)
		case "redis":
			err = singleArg(d, &rl.Redis)
		case "on_redis_error":
			err = singleArg(d, &rl.OnRedisError)
		default:
			err = d.Errf("unrecognized rate_limit option %q", name)
		}
		if err == nil {
			err = check(d, rl.validate())
		}
		if err != nil {
			return err
		}
	}
	h.RateLimit = rl
	return nil
}

func (h *Handler) parseHistory(d *caddyfile.Dispenser) error {
	on, err := onOff(d)
	if err != nil {
		return err
	}
	hist := &History{Enabled: &on}
	seen := false
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() != "recent_threads" {
			return d.Errf("unrecognized history option %q", d.Val())
		}
		if seen {
			return d.Err("duplicate history option \"recent_threads\"")
		}
		seen = true
		if err := intArg(d, &hist.RecentThreads, checkRecentThreads); err != nil {
			return err
		}
	}
	h.chatKitConfiguration().History = hist
	return check(d, hist.validate())
}

// check attaches the current line to a rule's refusal.
func check(d *caddyfile.Dispenser, err error) error {
	if err != nil {
		return d.WrapErr(err)
	}
	return nil
}

func singleArg(d *caddyfile.Dispenser, target *string) error {
	if !d.AllArgs(target) {
		return d.ArgErr()
	}
	return nil
}

func pathArg(d *caddyfile.Dispenser, target *string) error {
	name := d.Val()
	if err := singleArg(d, target); err != nil {
		return err
	}
	return check(d, checkEndpointPath(name, *target))
}

// intArg reads a whole number and checks it with rule.
func intArg(d *caddyfile.Dispenser, target *int, rule func(int) error) error {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return d.Errf("%s: %q is not a whole number", name, s)
	}
	if err := rule(n); err != nil {
		return d.WrapErr(err)
	}
	*target = n
	return nil
}

// durationArg reads a duration and checks it with rule.
func durationArg(d *caddyfile.Dispenser, target *caddy.Duration, rule func(time.Duration) error) error {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	dur, err := durationValue(d, name, s, rule)
	if err != nil {
		return err
	}
	*target = caddy.Duration(dur)
	return nil
}

// durationValue parses s, the value of subdirective name, and checks it
// with rule.
func durationValue(d *caddyfile.Dispenser, name, s string, rule func(time.Duration) error) (time.Duration, error) {
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return 0, d.Errf("%s: %q is not a duration", name, s)
	}
	return dur, check(d, rule(dur))
}

// sizeArg reads a size in bytes (`16KiB`, `1MB`, `2000`) and checks it
// with rule.
func sizeArg(d *caddyfile.Dispenser, target *int64, rule func(int64) error) error {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n > math.MaxInt64 {
		return d.Errf("%s: %q is not a size in bytes", name, s)
	}
	if err := rule(int64(n)); err != nil {
		return d.WrapErr(err)
	}
	*target = int64(n)
	return nil
}

func onOff(d *caddyfile.Dispenser) (bool, error) {
	var s string
	if !d.NextArg() {
		return false, d.ArgErr()
	}
	s = d.Val()
	if d.NextArg() {
		return false, d.ArgErr()
	}
	switch s {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, d.Errf("expected on or off, got %q", s)
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)

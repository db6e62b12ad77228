package chatkit

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Every rule on the configuration is written here, once, with its wording.
//
// Field rules (checkX) judge one value. The config types' validate methods
// apply them to JSON configs, where a zero value means "the default", and
// add the rules that join several settings. The Caddyfile parser applies
// the field rule to each value as written (zero included) right after the
// subdirective is parsed, and runs validate when the block ends, so its
// errors carry file:line. Rules on values known only once placeholders are
// resolved (the API key, api_base, the cookie secret) run in Provision and
// Validate.

// settingError is a refused setting. directive names the Caddyfile
// subdirective it comes from, so the parser can point at its line.
type settingError struct {
	directive string
	msg       string
}

func (e *settingError) Error() string { return "chatkit: " + e.msg }

func refuse(directive, format string, args ...any) error {
	return &settingError{directive: directive, msg: fmt.Sprintf(format, args...)}
}

// within refuses v outside [lo, hi]; want says the allowed range in words.
func within[T int | int64 | time.Duration](directive, name string, v, lo, hi T, want string) error {
	if v < lo || v > hi {
		return refuse(directive, "%s must be %s, got %v", name, want, v)
	}
	return nil
}

func atLeastOne(directive, name string, n int) error {
	return within(directive, name, n, 1, math.MaxInt, "at least 1")
}

func positiveDuration(directive, name string, d time.Duration) error {
	return within(directive, name, d, 1, math.MaxInt64, "positive")
}

func positiveSize(directive string, n int64) error {
	return within(directive, directive, n, 1, math.MaxInt64, "positive")
}

// ---- field rules ----

func checkSessionTTL(d time.Duration) error {
	return within("session_ttl", "session_ttl", d, time.Second, 10*time.Minute, "between 1s and 10m")
}

func checkMaxRequestsPerMinute(n int) error {
	return atLeastOne("max_requests_per_minute", "max_requests_per_minute", n)
}

func checkTimeout(d time.Duration) error { return positiveDuration("timeout", "timeout", d) }

func checkMaxBody(n int64) error { return positiveSize("max_body", n) }

func checkMaxUpload(n int64) error { return positiveSize("max_upload", n) }

func checkRetries(n int) error { return within("retries", "retries", n, 0, 10, "0 to 10") }

func checkErrorCache(d time.Duration) error {
	return within("error_cache", "error_cache", d, 0, maxErrorCache, "off or at most 30s")
}

func checkCookieMaxAge(d time.Duration) error {
	return positiveDuration("cookie_max_age", "cookie max_age", d)
}

func checkMaxFileSize(n int) error {
	return within("max_file_size", "file_upload max_file_size", n, 1, 512, "1 to 512 (MB)")
}

func checkMaxFiles(n int) error { return atLeastOne("max_files", "file_upload max_files", n) }

func checkRecentThreads(n int) error {
	return atLeastOne("recent_threads", "history recent_threads", n)
}

func checkBurst(n int) error { return atLeastOne("rate_limit", "rate_limit burst", n) }

func checkInterval(d time.Duration) error {
	return positiveDuration("rate_limit", "rate_limit interval", d)
}

func checkIPv4Prefix(n int) error {
	return within("ipv4_prefix", "rate_limit ipv4_prefix", n, 1, 32, "1 to 32")
}

func checkIPv6Prefix(n int) error {
	return within("ipv6_prefix", "rate_limit ipv6_prefix", n, 1, 128, "1 to 128")
}

func checkMaxKeys(n int) error { return atLeastOne("max_keys", "rate_limit max_keys", n) }

func checkOnRedisError(s string) error {
	if s != "local" && s != "deny" {
		return refuse("on_redis_error", "rate_limit on_redis_error must be local or deny, got %q", s)
	}
	return nil
}

// parseRedisURL reads a resolved `redis` URL. The URL may hold a password,
// so the error never repeats it.
func parseRedisURL(raw string) (*redis.Options, error) {
	opts, err := redis.ParseURL(raw)
	if err != nil {
		return nil, refuse("redis", "rate_limit redis: not a valid redis:// or rediss:// URL")
	}
	return opts, nil
}

// checkRedisURL judges a URL as written: one with placeholders is judged
// once they are resolved.
func checkRedisURL(raw string) error {
	if strings.Contains(raw, "{") {
		return nil
	}
	_, err := parseRedisURL(raw)
	return err
}

func checkBudgetSessions(n int) error {
	if n > maxBudgetSessions {
		return refuse("budget", "budget sessions must be at most %d (the budget keeps the time of each session in its window), got %d",
			maxBudgetSessions, n)
	}
	return atLeastOne("budget", "budget sessions", n)
}

func checkBudgetInterval(d time.Duration) error {
	return positiveDuration("budget", "budget interval", d)
}

func checkBreakerFailures(n int) error {
	return atLeastOne("circuit_breaker", "circuit_breaker failures", n)
}

func checkBreakerCooldown(d time.Duration) error {
	return positiveDuration("circuit_breaker", "circuit_breaker cooldown", d)
}

// checkWorkflowVersion judges a version as written and, in Provision, as
// resolved from its placeholders.
func checkWorkflowVersion(v string) error {
	if strings.EqualFold(strings.TrimSpace(v), "latest") {
		return refuse("workflow", `workflow version "latest" breaks chats after they start; pin a version number or omit it to use the deployed one`)
	}
	return nil
}

func checkStateVariable(name string, value any) error {
	if name == "" || len(name) > 64 {
		return refuse("state_variable", "state variable names must be 1 to 64 characters: %q", name)
	}
	switch value.(type) {
	case string, float64, bool:
		return nil
	}
	return refuse("state_variable", "state variable %q must be a string, number or boolean", name)
}

// checkEndpointPath judges start_path, refresh_path and health_path.
func checkEndpointPath(directive, p string) error {
	if directive == "health_path" && p == pathOff {
		return nil
	}
	if !strings.HasPrefix(p, "/") {
		if directive == "health_path" {
			return refuse(directive, "health_path must start with '/' or be 'off': %q", p)
		}
		return refuse(directive, "%s must start with '/': %q", directive, p)
	}
	return nil
}

func checkProtectPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return refuse("protect", "protect paths must start with '/': %q", p)
	}
	return nil
}

// checkIdentityHeader refuses names that are not HTTP field names (RFC 9110
// tokens) and names that cannot carry an identity to the backend: proxies
// remove or rewrite them, or they frame or route the request.
func checkIdentityHeader(name string) error {
	if name == "" || strings.IndexFunc(name, func(r rune) bool { return !isTokenChar(r) }) >= 0 {
		return refuse("identity_header", "identity_header %q is not an HTTP header name", name)
	}
	canonical := http.CanonicalHeaderKey(name)
	why := ""
	switch {
	case canonical == "Connection" || canonical == "Keep-Alive" || canonical == "Te" ||
		canonical == "Trailer" || canonical == "Upgrade" || strings.HasPrefix(canonical, "Proxy-"):
		why = "proxies remove hop-by-hop headers"
	case canonical == "Transfer-Encoding" || canonical == "Content-Length":
		why = "it frames the request body"
	case canonical == "Host":
		why = "it names the site the request is for"
	case canonical == "Cookie":
		why = "it carries the browser's cookies"
	case canonical == "Forwarded" || strings.HasPrefix(canonical, "X-Forwarded-"):
		why = "reverse_proxy rewrites it"
	}
	if why != "" {
		return refuse("identity_header", "identity_header %q cannot carry the user id: %s", name, why)
	}
	return nil
}

// isTokenChar reports whether r may appear in an RFC 9110 token.
func isTokenChar(r rune) bool {
	switch {
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		return true
	}
	return strings.ContainsRune("!#$%&'*+-.^_`|~", r)
}

// ---- the config types ----

// validate applies every static rule to the handler: its fields, the
// types it holds, and the rules on which settings make sense together.
func (h *Handler) validate() error {
	for _, rule := range []struct {
		set bool
		err func() error
	}{
		{h.SessionTTL != 0, func() error { return checkSessionTTL(time.Duration(h.SessionTTL)) }},
		{h.MaxRequestsPerMinute != 0, func() error { return checkMaxRequestsPerMinute(h.MaxRequestsPerMinute) }},
		{h.Timeout != 0, func() error { return checkTimeout(time.Duration(h.Timeout)) }},
		{h.MaxBody != 0, func() error { return checkMaxBody(h.MaxBody) }},
		{h.MaxUpload != 0, func() error { return checkMaxUpload(h.MaxUpload) }},
		{h.Retries != nil, func() error { return checkRetries(*h.Retries) }},
		{h.ErrorCache != nil, func() error { return checkErrorCache(time.Duration(*h.ErrorCache)) }},
		{h.StartPath != "", func() error { return checkEndpointPath("start_path", h.StartPath) }},
		{h.RefreshPath != "", func() error { return checkEndpointPath("refresh_path", h.RefreshPath) }},
		{h.HealthPath != "", func() error { return checkEndpointPath("health_path", h.HealthPath) }},
		{h.IdentityHeader != "", func() error { return checkIdentityHeader(h.IdentityHeader) }},
		{len(h.AllowOrigins) > 0, func() error { return checkAllowOrigins(h.AllowOrigins) }},
		{h.Workflow != nil, func() error { return h.Workflow.validate() }},
		{h.Cookie != nil, func() error { return h.Cookie.validate() }},
		{h.ChatKitConfiguration != nil, func() error { return h.ChatKitConfiguration.validate() }},
		{h.RateLimit != nil, func() error { return h.RateLimit.validate() }},
		{h.Budget != nil, func() error { return h.Budget.validate() }},
		{h.CircuitBreaker != nil, func() error { return h.CircuitBreaker.validate() }},
		{h.Agent != nil, func() error { return h.Agent.validate() }},
		{h.Agent != nil, h.checkAgentPathFree},
	} {
		if rule.set {
			if err := rule.err(); err != nil {
				return err
			}
		}
	}
	for _, p := range h.Protect {
		if err := checkProtectPath(p); err != nil {
			return err
		}
	}
	if err := h.checkPathsDiffer(); err != nil {
		return err
	}
	return h.checkModes()
}

// checkAllowOrigins judges allow_origins with the policy the handler is
// built from.
func checkAllowOrigins(origins []string) error {
	if _, err := newOriginPolicy(origins); err != nil {
		return &settingError{directive: "allow_origins", msg: strings.TrimPrefix(err.Error(), "chatkit: ")}
	}
	return nil
}

func (h *Handler) checkPathsDiffer() error {
	start := cmp.Or(h.StartPath, defaultStartPath)
	refresh := cmp.Or(h.RefreshPath, defaultRefreshPath)
	health := cmp.Or(h.HealthPath, defaultHealthPath)
	if start == refresh || start == health || refresh == health {
		// Point at a path the block sets: a default cannot be the culprit
		// alone.
		directive := "start_path"
		switch {
		case h.HealthPath != "" && (health == start || health == refresh):
			directive = "health_path"
		case h.RefreshPath != "":
			directive = "refresh_path"
		}
		return refuse(directive, "start_path, refresh_path and health_path must differ")
	}
	return nil
}

// checkModes refuses the settings that can have no effect given what the
// handler does: minting (a workflow is set) and protecting (protect paths).
func (h *Handler) checkModes() error {
	protecting := len(h.Protect) > 0
	if w := h.Workflow; w != nil && w.ID == "" {
		// tracing and state_variable create the workflow in the Caddyfile.
		for _, opt := range []struct {
			set             bool
			directive, name string
		}{
			{w.Tracing != nil, "tracing", "tracing"},
			{len(w.StateVariables) > 0, "state_variable", "state_variable (workflow.state_variables)"},
			{w.Version != "", "workflow", "workflow version"},
		} {
			if opt.set {
				return refuse(opt.directive, "%s is a workflow option, but no workflow is set: add workflow <id>", opt.name)
			}
		}
		return refuse("workflow", "workflow needs an id")
	}
	if h.Workflow == nil {
		switch {
		case h.Agent != nil:
			if opt := h.firstMintingSetting(false); opt.directive != "" {
				return refuse(opt.directive, "%s has no effect without a workflow: the agent mints no sessions (add workflow <id>, or remove %s)", opt.name, opt.directive)
			}
		case !protecting:
			return refuse("", "workflow is required: add workflow <id>, or protect <path> for a self-hosted ChatKit server, or agent to make Caddy the ChatKit server")
		default:
			if opt := h.firstMintingSetting(true); opt.directive != "" {
				return refuse(opt.directive, "%s has no effect without a workflow: with protect alone the module mints no sessions and calls no OpenAI API (add workflow <id>, or remove %s)", opt.name, opt.directive)
			}
		}
	}
	if !protecting {
		for _, opt := range []struct {
			set       bool
			directive string
		}{
			{h.IdentityHeader != "", "identity_header"},
			{h.MaxUpload != 0, "max_upload"},
		} {
			if opt.set {
				return refuse(opt.directive, "%s has no effect without protect: it applies only to protected paths (add protect <path>, or remove %s)", opt.directive, opt.directive)
			}
		}
	}
	return nil
}

// namedSetting is a setting as the Caddyfile spells it (directive) and as
// messages name it (with the JSON spelling when that differs).
type namedSetting struct{ directive, name string }

// firstMintingSetting returns the first setting h has that only the start
// and refresh endpoints use (the sessions they mint and, with
// withOpenAICalls, the OpenAI calls that mint them, which the agent makes
// too), or a zero namedSetting. budget is not one: it also applies to
// model-running requests on protected paths and to the agent's runs.
func (h *Handler) firstMintingSetting(withOpenAICalls bool) namedSetting {
	ckc := h.ChatKitConfiguration
	if ckc == nil {
		ckc = new(ChatKitConfiguration)
	}
	for _, s := range []struct {
		set, openAICall bool
		namedSetting
	}{
		{h.APIKey != "", true, namedSetting{"api_key", "api_key"}},
		{h.APIBase != "", true, namedSetting{"api_base", "api_base"}},
		{h.Organization != "", true, namedSetting{"organization", "organization"}},
		{h.Project != "", true, namedSetting{"project", "project"}},
		{h.StartPath != "", false, namedSetting{"start_path", "start_path"}},
		{h.RefreshPath != "", false, namedSetting{"refresh_path", "refresh_path"}},
		{h.SessionTTL != 0, false, namedSetting{"session_ttl", "session_ttl"}},
		{h.MaxRequestsPerMinute != 0, false, namedSetting{"max_requests_per_minute", "max_requests_per_minute"}},
		{ckc.FileUpload != nil, false, namedSetting{"file_upload", "file_upload (chatkit_configuration.file_upload)"}},
		{ckc.History != nil, false, namedSetting{"history", "history (chatkit_configuration.history)"}},
		{ckc.AutomaticThreadTitling != nil, false, namedSetting{"thread_titling", "thread_titling (chatkit_configuration.automatic_thread_titling)"}},
		{h.Timeout != 0, true, namedSetting{"timeout", "timeout"}},
		{h.Retries != nil, true, namedSetting{"retries", "retries"}},
		{h.CircuitBreaker != nil, true, namedSetting{"circuit_breaker", "circuit_breaker"}},
		{h.ErrorCache != nil, true, namedSetting{"error_cache", "error_cache"}},
		{h.RevokeOnRefresh, false, namedSetting{"revoke_on_refresh", "revoke_on_refresh"}},
	} {
		if s.set && (withOpenAICalls || !s.openAICall) {
			return s.namedSetting
		}
	}
	return namedSetting{}
}

// validate judges the workflow's own settings; whether it has an id is a
// question of the handler's modes (checkModes).
func (w *Workflow) validate() error {
	if err := checkWorkflowVersion(w.Version); err != nil {
		return err
	}
	for k, v := range w.StateVariables {
		if err := checkStateVariable(k, v); err != nil {
			return err
		}
	}
	return nil
}

func (c *CookieConfig) validate() error {
	if c.MaxAge != 0 {
		return checkCookieMaxAge(time.Duration(c.MaxAge))
	}
	return nil
}

func (c *ChatKitConfiguration) validate() error {
	if c.FileUpload != nil {
		if err := c.FileUpload.validate(); err != nil {
			return err
		}
	}
	if c.History != nil {
		return c.History.validate()
	}
	return nil
}

func (f *FileUpload) validate() error {
	if f.MaxFileSize != 0 {
		if err := checkMaxFileSize(f.MaxFileSize); err != nil {
			return err
		}
	}
	if f.MaxFiles != 0 {
		return checkMaxFiles(f.MaxFiles)
	}
	return nil
}

func (hist *History) validate() error {
	if hist.RecentThreads != 0 {
		return checkRecentThreads(hist.RecentThreads)
	}
	return nil
}

func (rl *RateLimit) validate() error {
	if rl.Disabled {
		// Off keeps redis for the budget and the revoke registry; nothing
		// else has an effect.
		for _, opt := range []struct {
			set             bool
			directive, name string
		}{
			{rl.Burst != 0, "rate_limit", "burst"},
			{rl.Interval != 0, "rate_limit", "interval"},
			{rl.Key != "", "key", "key"},
			{rl.IPv4Prefix != 0, "ipv4_prefix", "ipv4_prefix"},
			{rl.IPv6Prefix != 0, "ipv6_prefix", "ipv6_prefix"},
			{rl.MaxKeys != 0, "max_keys", "max_keys"},
			{rl.Zone != "", "zone", "zone"},
		} {
			if opt.set {
				return refuse(opt.directive, "rate_limit off takes only redis and on_redis_error, not %s", opt.name)
			}
		}
	}
	for _, rule := range []struct {
		set bool
		err func() error
	}{
		{rl.Burst != 0, func() error { return checkBurst(rl.Burst) }},
		{rl.Interval != 0, func() error { return checkInterval(time.Duration(rl.Interval)) }},
		{rl.IPv4Prefix != 0, func() error { return checkIPv4Prefix(rl.IPv4Prefix) }},
		{rl.IPv6Prefix != 0, func() error { return checkIPv6Prefix(rl.IPv6Prefix) }},
		{rl.MaxKeys != 0, func() error { return checkMaxKeys(rl.MaxKeys) }},
		{rl.Redis != "", func() error { return checkRedisURL(rl.Redis) }},
		{rl.OnRedisError != "", func() error { return checkOnRedisError(rl.OnRedisError) }},
	} {
		if rule.set {
			if err := rule.err(); err != nil {
				return err
			}
		}
	}
	return nil
}

// validate: both fields are required, so zero is refused too.
func (b *Budget) validate() error {
	if err := checkBudgetSessions(b.Sessions); err != nil {
		return err
	}
	return checkBudgetInterval(time.Duration(b.Interval))
}

func (cb *CircuitBreaker) validate() error {
	if cb.Disabled {
		if cb.Failures != 0 || cb.Cooldown != 0 {
			return refuse("circuit_breaker", "circuit_breaker off takes no failures or cooldown")
		}
		return nil
	}
	if cb.Failures != 0 {
		if err := checkBreakerFailures(cb.Failures); err != nil {
			return err
		}
	}
	if cb.Cooldown != 0 {
		return checkBreakerCooldown(time.Duration(cb.Cooldown))
	}
	return nil
}

// directiveOf returns the Caddyfile subdirective a refused setting comes
// from, or "" for an error that names none.
func directiveOf(err error) string {
	if se, ok := errors.AsType[*settingError](err); ok {
		return se.directive
	}
	return ""
}

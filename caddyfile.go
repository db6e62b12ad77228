package chatkit

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"

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
	return h.NewRoute(matcherSet, m), nil
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
//	}
//
// `rate_limit off` with a block takes only `redis` and `on_redis_error`
// (the budget and the revoke registry still use Redis). `workflow` is
// required unless `protect` is used. `state_variable`,
// `allow_origins` and `protect` may be repeated; every other subdirective
// may appear once. The blocks after
// `file_upload` and `history` are optional.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		name := d.Val()
		if seen[name] && name != "state_variable" && name != "allow_origins" && name != "protect" {
			return d.Errf("duplicate subdirective %q", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "workflow":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return d.ArgErr()
			}
			if h.Workflow == nil {
				h.Workflow = new(Workflow)
			}
			h.Workflow.ID = args[0]
			if len(args) == 2 {
				if strings.EqualFold(args[1], "latest") {
					return d.Err(`workflow version "latest" breaks chats after they start; pin a version or omit it`)
				}
				h.Workflow.Version = args[1]
			}
		case "api_key":
			err = singleArg(d, &h.APIKey)
		case "api_base":
			err = singleArg(d, &h.APIBase)
		case "organization":
			err = singleArg(d, &h.Organization)
		case "project":
			err = singleArg(d, &h.Project)
		case "tracing":
			var on bool
			if on, err = onOff(d); err == nil {
				if h.Workflow == nil {
					h.Workflow = new(Workflow)
				}
				h.Workflow.Tracing = &on
			}
		case "state_variable":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.ArgErr()
			}
			if h.Workflow == nil {
				h.Workflow = new(Workflow)
			}
			if h.Workflow.StateVariables == nil {
				h.Workflow.StateVariables = make(map[string]any)
			}
			if _, dup := h.Workflow.StateVariables[args[0]]; dup {
				return d.Errf("duplicate state_variable %q", args[0])
			}
			h.Workflow.StateVariables[args[0]] = args[1]
		case "start_path":
			err = singleArg(d, &h.StartPath)
		case "refresh_path":
			err = singleArg(d, &h.RefreshPath)
		case "health_path":
			err = singleArg(d, &h.HealthPath)
		case "user":
			err = singleArg(d, &h.User)
		case "cookie_name":
			err = singleArg(d, &h.cookie().Name)
		case "cookie_secret":
			err = singleArg(d, &h.cookie().Secret)
		case "cookie_max_age":
			err = durationArg(d, &h.cookie().MaxAge)
		case "session_ttl":
			err = durationArg(d, &h.SessionTTL)
		case "max_requests_per_minute":
			err = intArg(d, &h.MaxRequestsPerMinute)
		case "file_upload":
			err = h.parseFileUpload(d)
		case "history":
			err = h.parseHistory(d)
		case "thread_titling":
			var on bool
			if on, err = onOff(d); err == nil {
				h.chatKitConfiguration().AutomaticThreadTitling = &Toggle{Enabled: &on}
			}
		case "timeout":
			err = durationArg(d, &h.Timeout)
		case "max_body":
			var size string
			if err = singleArg(d, &size); err == nil {
				var n uint64
				// int64(n) <= 0 also catches sizes too large for MaxBody.
				if n, err = humanize.ParseBytes(size); err != nil || int64(n) <= 0 {
					return d.Errf("max_body: invalid size %q", size)
				}
				h.MaxBody = int64(n)
			}
		case "rate_limit":
			err = h.parseRateLimit(d)
		case "budget":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.ArgErr()
			}
			n, convErr := strconv.Atoi(args[0])
			interval, durErr := caddy.ParseDuration(args[1])
			if convErr != nil || n < 1 || durErr != nil || interval <= 0 {
				return d.Errf("budget: want <sessions> <interval>, got %q %q", args[0], args[1])
			}
			h.Budget = &Budget{Sessions: n, Interval: caddy.Duration(interval)}
		case "retries":
			var n string
			if err = singleArg(d, &n); err == nil {
				retries, convErr := strconv.Atoi(n)
				if convErr != nil || retries < 0 || retries > 10 {
					return d.Errf("retries must be 0 to 10, got %q", n)
				}
				h.Retries = &retries
			}
		case "circuit_breaker":
			args := d.RemainingArgs()
			switch {
			case len(args) == 1 && args[0] == "off":
				h.CircuitBreaker = &CircuitBreaker{Disabled: true}
			case len(args) == 2:
				n, convErr := strconv.Atoi(args[0])
				cooldown, durErr := caddy.ParseDuration(args[1])
				if convErr != nil || n < 1 || durErr != nil || cooldown <= 0 {
					return d.Errf("circuit_breaker: want <failures> <cooldown>, got %q %q", args[0], args[1])
				}
				h.CircuitBreaker = &CircuitBreaker{Failures: n, Cooldown: caddy.Duration(cooldown)}
			default:
				return d.ArgErr()
			}
		case "error_cache":
			var v string
			if err = singleArg(d, &v); err == nil {
				ttl := caddy.Duration(0)
				if v != "off" {
					dur, durErr := caddy.ParseDuration(v)
					if durErr != nil || dur <= 0 || dur > maxErrorCache {
						return d.Errf("error_cache must be off or a duration up to 30s, got %q", v)
					}
					ttl = caddy.Duration(dur)
				}
				h.ErrorCache = &ttl
			}
		case "revoke_on_refresh":
			h.RevokeOnRefresh, err = onOff(d)
		case "allow_origins":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.AllowOrigins = append(h.AllowOrigins, args...)
		case "protect":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, p := range args {
				if !strings.HasPrefix(p, "/") {
					return d.Errf("protect: %q must be a path starting with '/'", p)
				}
			}
			h.Protect = append(h.Protect, args...)
		case "identity_header":
			err = singleArg(d, &h.IdentityHeader)
		case "max_upload":
			var size string
			if err = singleArg(d, &size); err == nil {
				n, sizeErr := humanize.ParseBytes(size)
				if sizeErr != nil || int64(n) <= 0 {
					return d.Errf("max_upload: invalid size %q", size)
				}
				h.MaxUpload = int64(n)
			}
		default:
			return d.Errf("unrecognized chatkit subdirective %q", name)
		}
		if err != nil {
			return err
		}
	}
	if (h.Workflow == nil || h.Workflow.ID == "") && len(h.Protect) == 0 {
		return d.Err("chatkit: the workflow subdirective is required (or protect, for a self-hosted ChatKit server)")
	}
	return nil
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
			err = intArg(d, &fu.MaxFileSize)
			if err == nil && (fu.MaxFileSize < 1 || fu.MaxFileSize > 512) {
				err = d.Errf("max_file_size must be 1 to 512 (MB), got %d", fu.MaxFileSize)
			}
		case "max_files":
			err = intArg(d, &fu.MaxFiles)
			if err == nil && fu.MaxFiles < 1 {
				err = d.Errf("max_files must be at least 1, got %d", fu.MaxFiles)
			}
		default:
			err = d.Errf("unrecognized file_upload option %q", name)
		}
		if err != nil {
			return err
		}
	}
	h.chatKitConfiguration().FileUpload = fu
	return nil
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
		if err != nil || burst < 1 || durErr != nil || interval <= 0 {
			return d.Errf("rate_limit: want <burst> <interval>, got %q %q", args[0], args[1])
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
		if rl.Disabled && name != "redis" && name != "on_redis_error" {
			return d.Errf("rate_limit off takes only redis and on_redis_error, not %q", name)
		}
		var err error
		switch name {
		case "key":
			err = singleArg(d, &rl.Key)
		case "zone":
			err = singleArg(d, &rl.Zone)
		case "ipv4_prefix":
			if err = intArg(d, &rl.IPv4Prefix); err == nil && rl.IPv4Prefix > 32 {
				err = d.Errf("ipv4_prefix must be 1 to 32, got %d", rl.IPv4Prefix)
			}
		case "ipv6_prefix":
			if err = intArg(d, &rl.IPv6Prefix); err == nil && rl.IPv6Prefix > 128 {
				err = d.Errf("ipv6_prefix must be 1 to 128, got %d", rl.IPv6Prefix)
			}
		case "max_keys":
			err = intArg(d, &rl.MaxKeys)
		case "redis":
			err = singleArg(d, &rl.Redis)
			// A placeholder for the whole URL is checked once resolved.
			if err == nil && !strings.HasPrefix(rl.Redis, "redis://") && !strings.HasPrefix(rl.Redis, "rediss://") && !strings.HasPrefix(rl.Redis, "{") {
				err = d.Err("redis: want a redis:// or rediss:// URL")
			}
		case "on_redis_error":
			err = singleArg(d, &rl.OnRedisError)
			if err == nil && rl.OnRedisError != "local" && rl.OnRedisError != "deny" {
				err = d.Errf("on_redis_error must be local or deny, got %q", rl.OnRedisError)
			}
		default:
			err = d.Errf("unrecognized rate_limit option %q", name)
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
		if err := intArg(d, &hist.RecentThreads); err != nil {
			return err
		}
		if hist.RecentThreads < 1 {
			return d.Errf("recent_threads must be at least 1, got %d", hist.RecentThreads)
		}
	}
	h.chatKitConfiguration().History = hist
	return nil
}

func singleArg(d *caddyfile.Dispenser, target *string) error {
	if !d.AllArgs(target) {
		return d.ArgErr()
	}
	return nil
}

func intArg(d *caddyfile.Dispenser, target *int) error {
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return d.Errf("%q is not a positive whole number", s)
	}
	*target = n
	return nil
}

func durationArg(d *caddyfile.Dispenser, target *caddy.Duration) error {
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur <= 0 {
		return d.Errf("%q is not a positive duration", s)
	}
	*target = caddy.Duration(dur)
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

// Package chatkit is a Caddy HTTP handler that mints OpenAI ChatKit client
// secrets inline, so a site can embed ChatKit without exposing its OpenAI API
// key and without running a separate token service.
package chatkit

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// moduleVersion is reported by the health endpoint.
const moduleVersion = "0.1.0"

// Defaults for the optional settings.
const (
	defaultAPIKey      = "{env.OPENAI_API_KEY}"
	defaultAPIBase     = "https://api.openai.com/v1"
	defaultStartPath   = "/api/chatkit/start"
	defaultRefreshPath = "/api/chatkit/refresh"
	defaultHealthPath  = "/api/health"
	defaultTimeout     = 10 * time.Second
	defaultMaxBody     = 8 << 10
	// pathOff disables an optional endpoint (a real path always starts with "/").
	pathOff = "off"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler mints ChatKit client secrets for the browser. POST requests to
// the start and refresh paths create a ChatKit session upstream with the
// server's API key, the configured workflow and the end user's id, and answer
// `{"client_secret": "...", "expires_at": <unix>}`. Requests on `protect`
// paths get the same origin rules, limits and identity, then go to the next
// handler with the user in the identity header. With `agent`, the module is
// the ChatKit server itself: one POST endpoint answers the web component,
// keeps threads in an embedded database and streams the model's answers
// from OpenAI's Responses API (see Agent). Every other path is passed to
// the next handler untouched.
//
// # Placeholders
//
// Set on every request the module handles, for access logs (`log_append`)
// and later handlers; on protect paths they are set before the backend runs
// (outcome `proxied`) and updated once it has answered:
//
//	{http.chatkit.outcome}     what happened: success, rate_limited, upstream_error, proxied, ...
//	                           (the list is in the README, "Observability")
//	{http.chatkit.session_id}  the ChatKit session minted (cksess_...), empty otherwise
//	{http.chatkit.user_hash}   a short, non-reversible hash of the user id, empty if none
//
// # Errors
//
// The module answers its own errors itself: a JSON body
// `{"error","message","request_id"}` with the status of the README's error
// table, the CORS headers the origin is allowed, `Cache-Control: no-store`,
// and `Retry-After` on every answer that can be retried. It then returns
// nil, so `handle_errors` never sees these answers and Caddy's error
// pages never replace them. The one error returned to Caddy is the
// backend's own, on a protect path (for example reverse_proxy's 502 when
// the self-hosted server is down): that one reaches `handle_errors`. On the
// agent endpoint, a stream that has begun ends with a ChatKit `error`
// event instead, and a refused model run (rate limit, budget, token
// budget) is a 200 event stream whose one `error` event says, in words,
// what happened and when to try again (with Retry-After): the ChatKit
// widget shows that message to the person, and not a 429's body.
//
// # Directive order
//
// The `chatkit` directive is ordered before `handle`: after `rewrite`,
// `uri`, `try_files`, `header`, `request_body` and `basic_auth` (so `user
// {http.auth.user.id}` sees the signed-in user), ahead of `handle`,
// `respond`, `reverse_proxy`, `php_fastcgi` and `file_server`. The module
// recognizes its own paths on the request as it arrived, before any
// rewrite, so a site-wide `try_files {path} {path}/ /index.php?{query}`
// (WordPress) does not hide them.
type Handler struct {
	// The OpenAI API key. Default: `{env.OPENAI_API_KEY}`. Placeholders
	// (`{env.*}`, `{file.*}`) are resolved when the config is loaded; prefer
	// them to Caddyfile `{$VAR}` substitution, which writes the key into the
	// adapted JSON and Caddy's autosaved config.
	APIKey string `json:"api_key,omitempty"`

	// Base URL of the OpenAI API. Default: `https://api.openai.com/v1`.
	// Sessions are created at `<api_base>/chatkit/sessions`.
	APIBase string `json:"api_base,omitempty"`

	// Optional OpenAI organization id, sent as `OpenAI-Organization`.
	Organization string `json:"organization,omitempty"`

	// Optional OpenAI project id, sent as `OpenAI-Project`.
	Project string `json:"project,omitempty"`

	// The Agent Builder workflow every session runs. Required unless
	// protect is set; without it the module mints nothing, and the options
	// of minted sessions and OpenAI calls are refused (they would have no
	// effect).
	Workflow *Workflow `json:"workflow,omitempty"`

	// Path of the endpoint that starts a chat. Default: `/api/chatkit/start`.
	StartPath string `json:"start_path,omitempty"`

	// Path of the endpoint that replaces an expiring client secret.
	// Default: `/api/chatkit/refresh`.
	RefreshPath string `json:"refresh_path,omitempty"`

	// Path of the health endpoint, or `off` to disable it.
	// Default: `/api/health`.
	HealthPath string `json:"health_path,omitempty"`

	// Where the end user's id comes from, as a placeholder such as
	// `{http.auth.user.id}`. A request for which it resolves empty is
	// refused with 401. When unset, visitors are anonymous and identified by
	// a signed cookie.
	User string `json:"user,omitempty"`

	// The anonymous-visitor cookie.
	Cookie *CookieConfig `json:"cookie,omitempty"`

	// Lifetime of each session, 1s to 10m (sent as `expires_after`).
	// Default: OpenAI's (10 minutes).
	SessionTTL caddy.Duration `json:"session_ttl,omitempty"`

	// Per-session ChatKit request limit (sent as
	// `rate_limits.max_requests_per_1_minute`). Default: OpenAI's (10).
	MaxRequestsPerMinute int `json:"max_requests_per_minute,omitempty"`

	// Makes the module the ChatKit server itself: threads in an embedded
	// database, answers from OpenAI's Responses API, at one endpoint the
	// web component is pointed at (see Agent). With agent, workflow is
	// optional; workflow, protect and agent may be combined, sharing the
	// visitor's identity, the origins and the limits.
	Agent *Agent `json:"agent,omitempty"`

	// ChatKit features for the session; only the fields set are sent.
	ChatKitConfiguration *ChatKitConfiguration `json:"chatkit_configuration,omitempty"`

	// Deadline for the whole upstream call. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Largest request body accepted, in bytes. Default: 8 KiB on the start
	// and refresh paths, 1 MiB for ChatKit requests on protected paths.
	MaxBody int64 `json:"max_body,omitempty"`

	// Path prefixes of a self-hosted ChatKit server behind this Caddy
	// (e.g. `/chatkit`, matched like `reverse_proxy /chatkit*`). Requests
	// there get the same origin rules, limits and user identity as the
	// minting endpoints, then go to the next handler with the user in the
	// identity header. With protect, workflow is optional.
	Protect []string `json:"protect,omitempty"`

	// Request header that carries the user id to the self-hosted server
	// (with protect only). Client-sent copies are always removed. It must
	// be a header name that reaches the backend intact: hop-by-hop and
	// framing headers, Host, Cookie and X-Forwarded-* are refused.
	// Default: `X-ChatKit-User`.
	IdentityHeader string `json:"identity_header,omitempty"`

	// Largest attachment upload (multipart body) on protected paths, in
	// bytes (with protect only). Default: 20 MiB.
	MaxUpload int64 `json:"max_upload,omitempty"`

	// Browser origins, besides the site's own, that may call the start and
	// refresh endpoints with credentials: exact `scheme://host[:port]`
	// entries, or `https://*.example.com` for its subdomains at any depth
	// (not the bare domain; the scheme's default port unless one is written).
	AllowOrigins []string `json:"allow_origins,omitempty"`

	// The site this handler serves, used to keep default rate-limit zones
	// apart: handlers without `rate_limit.zone` share buckets (and the
	// budget and the revoke registry) only when they have the same site,
	// limit the same workflow and protected paths, and have the same
	// rate_limit and budget settings. The Caddyfile sets it to the site
	// block's addresses (for a named route, its name). In JSON configs,
	// give each site's handlers their own value (any string): handlers
	// without one share with every other site-less handler that limits
	// the same thing the same way. Name a `zone` to share on purpose.
	Site string `json:"site,omitempty"`

	// Per-client request limit on the start and refresh paths. Default: on,
	// 10 at once then 1 per second, keyed by client IP.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`

	// Site-wide ceiling on sessions minted. Default: none.
	Budget *Budget `json:"budget,omitempty"`

	// Retries of a failed OpenAI call (connection errors, 408, 409, 429,
	// 5xx) within the timeout. Default: 2; 0 disables.
	Retries *int `json:"retries,omitempty"`

	// The circuit breaker in front of OpenAI. Default: on, opening after 5
	// consecutive failures for 30s.
	CircuitBreaker *CircuitBreaker `json:"circuit_breaker,omitempty"`

	// How long an auth or workflow error from OpenAI (401, 403, 404) is
	// answered from memory, at most 30s; 0 disables. Default: 10s.
	ErrorCache *caddy.Duration `json:"error_cache,omitempty"`

	// Cancel the replaced session upstream after a refresh, when the
	// presented secret is one this server issued to the same user.
	RevokeOnRefresh bool `json:"revoke_on_refresh,omitempty"`

	apiKey           string
	workflowID       string
	minting          bool
	protected        protectedPaths
	identityHeader   string
	protectedMaxBody int64
	maxUpload        int64
	origins          originPolicy
	limiter          *rateLimiter
	limiterReleased  bool
	guard            *upstreamGuard
	now              func() time.Time
	background       *sync.WaitGroup
	backgroundMu     *sync.Mutex
	// backgroundClosed refuses new background work once Cleanup has begun.
	backgroundClosed bool
	backgroundCtx    context.Context
	stopBackground   context.CancelFunc
	startPath        string
	refreshPath      string
	healthPath       string
	timeout          time.Duration
	maxBody          int64
	sessionBody      sessionBodyTemplate
	upstream         *upstreamClient
	agent            *agentRuntime
	identity         *identitySource
	logger           *zap.Logger

	// beforeRevoke, when set (by tests only), runs first in each
	// background session cancel.
	beforeRevoke func()
}

// Workflow names the Agent Builder workflow sessions run.
type Workflow struct {
	// The workflow id (`wf_…`). Placeholders are resolved at load time.
	ID string `json:"id"`

	// A pinned workflow version. Default: the latest deployed version.
	// The literal `latest` is refused: OpenAI accepts it when the session
	// is created but the chat breaks later.
	Version string `json:"version,omitempty"`

	// Variables passed to the workflow. String values may hold request
	// placeholders, resolved for every request; numbers and booleans are
	// sent as they are. Keys are at most 64 characters.
	StateVariables map[string]any `json:"state_variables,omitempty"`

	// Whether OpenAI traces the workflow's runs. Default: OpenAI's (on).
	Tracing *bool `json:"tracing,omitempty"`
}

// ChatKitConfiguration mirrors the session's `chatkit_configuration`.
type ChatKitConfiguration struct {
	// Whether threads get titles automatically.
	AutomaticThreadTitling *Toggle `json:"automatic_thread_titling,omitempty"`

	// Attachment uploads.
	FileUpload *FileUpload `json:"file_upload,omitempty"`

	// The thread history panel.
	History *History `json:"history,omitempty"`
}

// Toggle turns a ChatKit feature on or off.
type Toggle struct {
	// Whether the feature is on. Default: OpenAI's.
	Enabled *bool `json:"enabled,omitempty"`
}

// FileUpload configures attachment uploads.
type FileUpload struct {
	// Whether users may attach files. OpenAI's default: off.
	Enabled *bool `json:"enabled,omitempty"`

	// Largest file in megabytes, 1 to 512.
	MaxFileSize int `json:"max_file_size,omitempty"`

	// Most files per upload, at least 1.
	MaxFiles int `json:"max_files,omitempty"`
}

// History configures the thread history panel.
type History struct {
	// Whether the history panel is shown. OpenAI's default: on.
	Enabled *bool `json:"enabled,omitempty"`

	// How many recent threads it lists, at least 1. Default: all.
	RecentThreads int `json:"recent_threads,omitempty"`
}

// CookieConfig configures the cookie that identifies anonymous visitors.
type CookieConfig struct {
	// Cookie name. Default: `chatkit_uid`.
	Name string `json:"name,omitempty"`

	// Secret the cookie is signed with (placeholders allowed, at least 32
	// characters). Default: a random key generated once and kept in Caddy's
	// storage, so restarts and instances sharing storage agree.
	Secret string `json:"secret,omitempty"`

	// How long a visitor keeps the same id. Default: 30 days.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.chatkit",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves secrets and defaults and builds the upstream client.
// It does no network I/O, so `caddy validate` works offline.
func (h *Handler) Provision(ctx caddy.Context) error {
	// Zones, buckets and the session body are built from these values:
	// refuse bad ones before using them.
	if err := h.validate(); err != nil {
		return err
	}
	h.logger = ctx.Logger()
	if h.now == nil {
		h.now = time.Now
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	h.backgroundCtx, h.stopBackground = context.WithCancel(context.Background())
	h.background = new(sync.WaitGroup)
	h.backgroundMu = new(sync.Mutex)
	repl := caddy.NewReplacer()

	h.startPath = cmp.Or(h.StartPath, defaultStartPath)
	h.refreshPath = cmp.Or(h.RefreshPath, defaultRefreshPath)
	h.healthPath = cmp.Or(h.HealthPath, defaultHealthPath)
	if h.healthPath == pathOff {
		h.healthPath = ""
	}
	h.timeout = time.Duration(h.Timeout)
	if h.timeout == 0 {
		h.timeout = defaultTimeout
	}
	h.maxBody = cmp.Or(h.MaxBody, defaultMaxBody)
	// ChatKit messages are larger than start/refresh bodies: protected
	// paths get their own default unless max_body is set.
	h.protectedMaxBody = cmp.Or(h.MaxBody, defaultProtectedMaxBody)
	h.maxUpload = cmp.Or(h.MaxUpload, defaultMaxUpload)
	h.identityHeader = ""
	if len(h.Protect) > 0 {
		h.identityHeader = http.CanonicalHeaderKey(cmp.Or(h.IdentityHeader, defaultIdentityHeader))
	}
	var err error
	if h.protected, err = newProtectedPaths(ctx, h.Protect); err != nil {
		return err
	}
	if h.origins, err = newOriginPolicy(h.AllowOrigins); err != nil {
		return err
	}

	// Minting needs a workflow; a handler that only protects a self-hosted
	// ChatKit server needs neither a workflow nor an API key. The agent
	// calls OpenAI without a workflow.
	h.minting = h.Workflow != nil || len(h.Protect) == 0 && h.Agent == nil
	if h.minting || h.Agent != nil {
		if err := h.provisionOpenAI(repl); err != nil {
			return err
		}
	}
	if h.minting {
		if err := h.provisionMinting(repl); err != nil {
			return err
		}
	}
	if h.upstream != nil {
		h.guard = h.newUpstreamGuard()
	}
	if err := h.provisionZone(h.defaultZoneKey()); err != nil {
		return err
	}
	if h.Agent != nil {
		if err := registerAgentMetrics(ctx.GetMetricsRegistry()); err != nil {
			return err
		}
		if err := h.provisionAgent(repl); err != nil {
			return err
		}
	}

	var storage certmagic.Storage
	secret := ""
	if h.Cookie != nil && h.Cookie.Secret != "" {
		secret = repl.ReplaceAll(h.Cookie.Secret, "")
		if len(secret) < minCookieSecretLen {
			return fmt.Errorf("chatkit: cookie secret must be at least %d characters once resolved", minCookieSecretLen)
		}
	} else if h.User == "" {
		// Only anonymous mode needs the stored key; it is read on first use
		// so that Provision stays free of I/O.
		storage = ctx.Storage()
	}
	h.identity = newIdentitySource(h.User, h.Cookie, secret, storage)
	return nil
}

// defaultZoneKey names the rate-limit zone of a handler without `zone`.
// Handlers share buckets only when they serve the same site, limit the same
// thing (the workflow and the protected paths) and limit it the same way,
// so a default zone never joins two sites, nor handlers whose limits
// differ; a reload that keeps all of it keeps the buckets.
func (h *Handler) defaultZoneKey() string {
	rl := h.RateLimit
	if rl == nil {
		rl = new(RateLimit)
	}
	key := rl.Key
	if key == clientIPKey {
		key = ""
	}
	var budget Budget
	if h.Budget != nil {
		budget = *h.Budget
	}
	// Defaults are filled in, so spelling one out changes nothing.
	settings := fmt.Sprintf("site=%q workflow=%q protect=%q off=%t burst=%d interval=%d key=%q ipv4=%d ipv6=%d max_keys=%d budget=%d/%d",
		h.Site, h.workflowID, h.Protect, rl.Disabled,
		cmp.Or(rl.Burst, defaultBurst), cmp.Or(time.Duration(rl.Interval), defaultInterval), key,
		cmp.Or(rl.IPv4Prefix, defaultIPv4Prefix), cmp.Or(rl.IPv6Prefix, defaultIPv6Prefix),
		cmp.Or(rl.MaxKeys, defaultMaxKeys), budget.Sessions, time.Duration(budget.Interval))
	digest := sha256.Sum256([]byte(settings))
	scope := "protect:" + strings.Join(h.Protect, ",")
	if h.Agent != nil {
		scope = "agent:" + cmp.Or(h.Agent.Path, defaultAgentPath) + "|" + scope
	}
	if h.minting {
		scope = "workflow:" + h.workflowID
	}
	// Readable for logs, metrics and Redis keys; the digest tells apart
	// what the readable part does not show.
	return "site:" + h.Site + "|" + scope + "|" + hex.EncodeToString(digest[:8])
}

// provisionOpenAI resolves the API key and builds the upstream client the
// minting endpoints and the agent call OpenAI with.
func (h *Handler) provisionOpenAI(repl *caddy.Replacer) error {
	keyTemplate := cmp.Or(h.APIKey, defaultAPIKey)
	h.apiKey = strings.TrimSpace(repl.ReplaceAll(keyTemplate, ""))
	if h.apiKey == "" {
		// Name the source, never the value.
		if h.APIKey == "" {
			return errors.New("chatkit: no OpenAI API key: set OPENAI_API_KEY in Caddy's environment or configure api_key")
		}
		return errors.New("chatkit: api_key resolved to an empty value (check the environment variable or file it names)")
	}
	apiBase := strings.TrimRight(repl.ReplaceAll(cmp.Or(h.APIBase, defaultAPIBase), ""), "/")
	retries := 2
	if h.Retries != nil {
		retries = *h.Retries
	}
	h.upstream = newUpstreamClient(upstreamConfig{
		apiBase:      apiBase,
		apiKey:       h.apiKey,
		organization: repl.ReplaceAll(h.Organization, ""),
		project:      repl.ReplaceAll(h.Project, ""),
		retries:      retries,
	})
	return nil
}

// provisionMinting resolves the workflow and builds the session body for
// the start and refresh endpoints.
func (h *Handler) provisionMinting(repl *caddy.Replacer) error {
	h.workflowID = strings.TrimSpace(repl.ReplaceAll(h.Workflow.ID, ""))
	workflowVersion := strings.TrimSpace(repl.ReplaceAll(h.Workflow.Version, ""))
	if h.workflowID == "" {
		return fmt.Errorf("chatkit: workflow id %q resolved to an empty value", h.Workflow.ID)
	}
	if err := checkWorkflowVersion(workflowVersion); err != nil {
		return err
	}
	body, err := newSessionBodyTemplate(h, h.workflowID, workflowVersion)
	if err != nil {
		return err
	}
	h.sessionBody = body
	return nil
}

// Validate checks the configuration for values OpenAI or Caddy would
// refuse: the static rules (validate.go, the ones the Caddyfile parser
// runs; Provision ran them too, before building from the values) and the
// values Provision resolved from placeholders.
func (h *Handler) Validate() error {
	if err := h.validate(); err != nil {
		return err
	}
	if h.upstream != nil {
		u, err := url.Parse(h.upstream.apiBase)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("chatkit: api_base must be an http(s) URL: %q", h.upstream.apiBase)
		}
	}
	return nil
}

// Cleanup stops background session cancels, releases this config's hold
// on its rate-limit zone and closes the upstream client's idle connections.
func (h *Handler) Cleanup() error {
	if h.stopBackground != nil {
		h.backgroundMu.Lock()
		h.backgroundClosed = true
		h.backgroundMu.Unlock()
		h.stopBackground()
		h.background.Wait()
	}
	h.guard.unregister()
	h.cleanupAgent()
	h.cleanupRateLimit()
	if h.upstream != nil {
		h.upstream.close()
	}
	return nil
}

// Interface guards
var (
	_ caddy.Module                = (*Handler)(nil)
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

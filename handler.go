package chatkit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// requestIDHeader carries Caddy's request id (`{http.request.uuid}`) on
// every answer from the module, so a user's report can be matched to the
// log line and to the access log.
const requestIDHeader = "X-Request-Id"

// maxClientSecretLen bounds `currentClientSecret` on refresh.
const maxClientSecretLen = 2 << 10

// endpoint is one of the module's own paths.
type endpoint uint8

const (
	endpointNone endpoint = iota
	endpointStart
	endpointRefresh
	endpointHealth
	endpointProtected
	endpointAgent
	endpointEmbed
	endpointAgentUpload
	endpointAgentPreview
)

func (e endpoint) String() string {
	switch e {
	case endpointStart:
		return "start"
	case endpointRefresh:
		return "refresh"
	case endpointHealth:
		return "health"
	case endpointProtected:
		return "protect"
	case endpointAgent:
		return "agent"
	case endpointEmbed:
		return "embed"
	case endpointAgentUpload:
		return "agent_upload"
	case endpointAgentPreview:
		return "agent_preview"
	}
	return "none"
}

// Outcomes, as logged and exposed in `{http.chatkit.outcome}`.
const (
	outcomeSuccess              = "success"
	outcomeHealth               = "health"
	outcomePreflight            = "preflight"
	outcomeBadRequest           = "bad_request"
	outcomeTooLarge             = "payload_too_large"
	outcomeMethodNotAllowed     = "method_not_allowed"
	outcomeOriginDenied         = "origin_denied"
	outcomeUnauthorized         = "unauthorized"
	outcomeRateLimited          = "rate_limited"
	outcomeBudgetExhausted      = "budget_exhausted"
	outcomeCircuitOpen          = "circuit_open"
	outcomeRateLimitUnavailable = "rate_limit_unavailable"
	outcomeProxied              = "proxied"
	outcomeBackendError         = "backend_error"
	outcomeUpstreamError        = "upstream_error"
	outcomeUpstreamTimeout      = "upstream_timeout"
	outcomeClientClosed         = "client_closed"
	outcomeInternalError        = "internal_error"
	outcomeNotFound             = "not_found"
	outcomeThreadBusy           = "thread_busy"
	outcomeStoreUnavailable     = "store_unavailable"
	outcomeTokenBudgetExhausted = "token_budget_exhausted"
)

// exchange is the state of one request to a module endpoint.
type exchange struct {
	w         http.ResponseWriter
	r         *http.Request
	repl      *caddy.Replacer
	endpoint  endpoint
	requestID string
	started   time.Time
	scheme    string // as the browser saw it
	verdict   originVerdict

	requestType string // ChatKit request type on protected paths
	outcome     string
	status      int
	user        string
	sessionID   string
	upstream    upstreamCall
	upstreamErr *upstreamError
	cachedError bool
	userHash    string
	rateLimit   rateLimitState // written with the answer
	logFields   []zap.Field    // what the endpoint adds to the log entry
}

// ServeHTTP answers the module's own paths and passes everything else on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	ep := h.route(arrivedPath(r))
	if ep == endpointNone {
		// Protected paths match the request as rewritten: it is what the
		// backend will see.
		if !h.protected.match(r) {
			if h.identityHeader != "" {
				// Only the module may speak for the user, on any path.
				guardIdentity(r, h.identityHeader, "")
			}
			return next.ServeHTTP(w, r)
		}
		ep = endpointProtected
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	x := &exchange{w: w, r: r, repl: repl, endpoint: ep, started: time.Now()}
	x.requestID, _ = repl.GetString("http.request.uuid")
	w.Header().Set(requestIDHeader, x.requestID)

	var err error
	switch ep {
	case endpointHealth:
		h.serveHealth(x)
	case endpointProtected:
		err = h.serveProtected(x, next)
	case endpointAgent:
		h.serveAgent(x)
	case endpointEmbed:
		h.serveEmbed(x)
	case endpointAgentUpload:
		h.serveAgentUpload(x)
	case endpointAgentPreview:
		h.serveAgentPreview(x)
	default:
		h.serveMint(x)
	}
	h.finish(x)
	return err
}

// arrivedPath is the request's path as it reached Caddy. try_files,
// rewrite and uri run before chatkit in the directive order (a WordPress
// site's `try_files {path} {path}/ /index.php?{query}` sends every path
// that is not a file to /index.php), so the module's own endpoints are
// matched on the path the browser asked for.
func arrivedPath(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL.Path
	}
	return r.URL.Path
}

// route names the module endpoint at path (as the request arrived). The
// exact paths of start, refresh and health come first: no path of the
// agent's may take theirs (checkAgentPathFree refuses such a config too).
func (h *Handler) route(path string) endpoint {
	switch {
	case path == "":
		return endpointNone
	case h.minting && path == h.startPath:
		return endpointStart
	case h.minting && path == h.refreshPath:
		return endpointRefresh
	case path == h.healthPath:
		return endpointHealth
	case h.agent != nil:
		return h.agent.routeAgent(path)
	}
	return endpointNone
}

func (h *Handler) serveHealth(x *exchange) {
	if x.r.Method != http.MethodGet && x.r.Method != http.MethodHead {
		x.w.Header().Set("Allow", "GET, HEAD")
		x.refuse(answerHealthMethod)
		return
	}
	x.outcome = outcomeHealth
	status := "ok"
	if h.guard.degraded(h.now()) {
		// Still 200: the WordPress admin page reads the body.
		status = "degraded"
	}
	x.writeJSON(http.StatusOK, []byte(`{"status":"`+status+`","version":"`+moduleVersion+`"}`))
}

// serveMint handles start and refresh: origin, method, body, identity,
// then one upstream session.
func (h *Handler) serveMint(x *exchange) {
	r := x.r
	h.judgeOrigin(x)
	if r.Method == http.MethodOptions {
		if x.verdict.cors || x.verdict.origin == "" && r.Header.Get("Origin") == "" {
			x.rateLimit = h.limiter.peekClient(r, x.repl, h.now())
		}
		h.servePreflight(x, mintPreflight)
		return
	}
	if r.Method != http.MethodPost {
		x.rateLimit = h.limiter.peekClient(r, x.repl, h.now())
		x.w.Header().Set("Allow", "OPTIONS, POST")
		x.refuse(answerMethodNotAllowed)
		return
	}
	if !x.verdict.allowed {
		x.rateLimit = h.limiter.peekClient(r, x.repl, h.now())
		x.refuse(answerOriginDenied)
		return
	}
	// Every POST past the origin check costs a token, whatever follows:
	// probing with bad bodies is not free.
	verdict, state := h.limiter.chargeClient(r.Context(), r, x.repl, h.now())
	x.rateLimit = state
	if !x.admitted(verdict) {
		return
	}

	body, ok := h.readRequestBody(x, h.maxBody)
	if !ok {
		return
	}
	var presented string
	var err error
	if x.endpoint == endpointStart {
		err = validateStartBody(body)
	} else {
		presented, err = parseRefreshBody(body)
	}
	if err != nil {
		x.refuse(answerBadRequest.withMessage(err.Error()))
		return
	}
	if !h.identifyVisitor(x) {
		return
	}

	session, ok := h.mint(x)
	if !ok {
		return
	}
	if h.RevokeOnRefresh {
		h.trackForRevocation(x, presented, session)
	}

	out := make([]byte, 0, 64+len(session.ClientSecret))
	out = append(out, `{"client_secret":`...)
	out = appendJSONString(out, session.ClientSecret)
	out = append(out, `,"expires_at":`...)
	out = strconv.AppendInt(out, session.ExpiresAt, 10)
	out = append(out, '}')
	x.outcome = outcomeSuccess
	x.writeJSON(http.StatusOK, out)
}

// judgeOrigin is the origin step of the minting and protected paths: what
// the browser's origin may do, and the CORS headers every answer then
// carries (errors included).
func (h *Handler) judgeOrigin(x *exchange) {
	x.scheme = browserScheme(x.r)
	x.verdict = h.origins.judge(x.r, x.scheme)
	setCORS(x.w.Header(), x.verdict)
}

// identifyVisitor is the identity step of the minting and protected paths:
// who the user is, with a new or renewed anonymous cookie set at once (even
// if what follows fails, so a retry keeps the id). It answers 401 or 500
// itself and reports false when the request cannot go on.
func (h *Handler) identifyVisitor(x *exchange) bool {
	v, err := h.identity.identify(x.r.Context(), x.r, x.repl, x.secure())
	if errors.Is(err, errNoUser) {
		x.refuse(answerUnauthorized)
		return false
	}
	if err != nil && x.r.Context().Err() != nil {
		// The visitor left while the key was loading: not a server fault.
		x.refuse(failCanceled.rule().answer)
		return false
	}
	if err != nil {
		h.logger.Error("cannot load the anonymous cookie signing key", zap.Error(err))
		x.refuse(answerNoIdentity)
		return false
	}
	x.user = v.user
	if v.cookie != nil {
		http.SetCookie(x.w, v.cookie)
	}
	return true
}

// mint creates one session upstream behind the breaker, the error cache
// and the budget. It answers the request itself when it fails.
func (h *Handler) mint(x *exchange) (createdSession, bool) {
	var session createdSession
	cached, breakerWait, probe := h.guard.check(h.now())
	if cached != nil {
		// The same answer the live error got, without calling OpenAI.
		x.upstreamErr, x.cachedError = cached, true
		h.failUpstream(x, cached)
		return session, false
	}
	if breakerWait > 0 {
		x.refuseAfter(answerCircuitOpen, breakerWait)
		return session, false
	}
	if !x.admitted(h.limiter.spendBudget(x.r.Context(), h.now())) {
		h.guard.release(probe)
		return session, false
	}
	payload, err := h.sessionBody.build(x.user, x.repl)
	if err != nil {
		h.guard.release(probe)
		h.logger.Error("cannot encode the session request", zap.Error(err))
		x.refuse(answerInternal)
		return session, false
	}
	ctx, cancel := context.WithTimeout(x.r.Context(), h.timeout)
	session, call, uerr := h.upstream.createSession(ctx, payload)
	cancel()
	h.guard.record(uerr, probe, h.now())
	x.upstream = call
	x.sessionID = session.ID
	if uerr != nil {
		x.upstreamErr = uerr
		h.failUpstream(x, uerr)
		return session, false
	}
	return session, true
}

// secure reports whether cookies should be Secure: the browser reached the
// site over HTTPS, directly or through a trusted TLS-terminating proxy.
func (x *exchange) secure() bool { return x.scheme == "https" }

// failUpstream answers an upstream failure as its rule says. The
// upstream body never reaches the browser.
func (h *Handler) failUpstream(x *exchange, e *upstreamError) {
	rule := e.failure.rule()
	if rule.waitByDefault > 0 {
		wait := e.retryAfter
		if wait <= 0 {
			wait = rule.waitByDefault
		}
		x.refuseAfter(rule.answer, min(wait, time.Minute))
		return
	}
	x.refuse(rule.answer)
}

// admitted answers a limiter's refusal as JSON and reports whether the
// request may go on.
func (x *exchange) admitted(v limitVerdict) bool {
	if v.result == limitAllowed {
		return true
	}
	x.refuseAfter(limitRefusals[v.result].json, v.retryAfter)
	return false
}

// retryAfterSeconds renders a wait as whole seconds, rounded up, never 0.
func retryAfterSeconds(d time.Duration) string {
	secs := int64(math.Ceil(d.Seconds()))
	return strconv.FormatInt(max(secs, 1), 10)
}

var errStartBody = errors.New("the body must be empty or a JSON object")

// trimJSONSpace removes the whitespace JSON allows around a value, and no
// other (bytes.TrimSpace would also accept \v, \f and Unicode spaces).
func trimJSONSpace(b []byte) []byte { return bytes.Trim(b, " \t\r\n") }

// validateStartBody accepts an empty body or any JSON object; nothing in it
// is used, because the workflow and user come from the server.
func validateStartBody(body []byte) error {
	trimmed := trimJSONSpace(body)
	if len(trimmed) == 0 {
		return nil
	}
	if trimmed[0] != '{' || !json.Valid(trimmed) {
		return errStartBody
	}
	return nil
}

var (
	errRefreshBody   = errors.New("the body must be a JSON object with a currentClientSecret string")
	errRefreshSecret = errors.New("currentClientSecret must be a non-empty string")
	errRefreshLong   = errors.New("currentClientSecret is too long")
)

// parseRefreshBody returns the presented secret. It need not be one this
// server issued: a restart must never break an open chat. The key is
// matched exactly (encoding/json would fold case into struct fields, so
// another parser could see a different secret than this one).
func parseRefreshBody(body []byte) (string, error) {
	trimmed := trimJSONSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return "", errRefreshBody
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &fields); err != nil {
		return "", errRefreshBody
	}
	raw := fields["currentClientSecret"]
	var secret string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &secret) != nil {
		return "", errRefreshSecret
	}
	if strings.TrimSpace(secret) == "" {
		return "", errRefreshSecret
	}
	if len(secret) > maxClientSecretLen {
		return "", errRefreshLong
	}
	return secret, nil
}

// writeJSON sends a JSON answer. Nothing the module sends may be cached:
// secrets must never sit in a shared cache.
func (x *exchange) writeJSON(status int, body []byte) {
	hdr := x.w.Header()
	// Canonical keys set directly (Set would canonicalize each). Fresh
	// slices: a later header handler may rewrite values in place.
	hdr["Content-Type"] = []string{"application/json"}
	hdr["Cache-Control"] = []string{"no-store"}
	hdr["X-Content-Type-Options"] = []string{"nosniff"}
	hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	x.rateLimit.apply(hdr)
	x.status = status
	x.w.WriteHeader(status)
	if x.r.Method != http.MethodHead {
		_, _ = x.w.Write(body)
	}
}

func (x *exchange) writeStatus(status int) {
	hdr := x.w.Header()
	hdr["Cache-Control"] = []string{"no-store"}
	x.rateLimit.apply(hdr)
	x.status = status
	x.w.WriteHeader(status)
}

// refuse sends an error answer: `{"error","message","request_id"}`.
func (x *exchange) refuse(a answer) {
	x.outcome = a.outcome
	out := a.appendHead(make([]byte, 0, 96+len(a.message)+len(x.requestID)))
	out = append(out, `,"request_id":`...)
	out = appendJSONString(out, x.requestID)
	out = append(out, '}')
	x.writeJSON(a.status, out)
}

// refuseAfter sends an answer that can be retried after wait, saying when
// in Retry-After and in the message.
func (x *exchange) refuseAfter(a answer, wait time.Duration) {
	secs := retryAfterSeconds(wait)
	x.w.Header().Set("Retry-After", secs)
	x.refuse(a.withMessage(a.message + ", retry in " + secs + "s"))
}

// userHash is a short, stable, non-reversible tag for a user id, for logs.
func userHash(user string) string {
	if user == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(user))
	return hex.EncodeToString(sum[:6])
}

// publishPlaceholders sets `{http.chatkit.*}` for access logs and later
// handlers.
func (h *Handler) publishPlaceholders(x *exchange) {
	x.userHash = userHash(x.user)
	x.repl.Set("http.chatkit.outcome", x.outcome)
	x.repl.Set("http.chatkit.session_id", x.sessionID)
	x.repl.Set("http.chatkit.user_hash", x.userHash)
}

// finish publishes placeholders and writes the request's one log entry.
func (h *Handler) finish(x *exchange) {
	h.publishPlaceholders(x)
	hash := x.userHash
	requestsTotal.WithLabelValues(x.endpoint.String(), x.outcome).Inc()
	if x.endpoint == endpointProtected && x.requestType != "" {
		protectedRequests.WithLabelValues(x.requestType, x.outcome).Inc()
	}

	level, msg := zapcore.InfoLevel, "handled chatkit request"
	if e := x.upstreamErr; e != nil {
		level, msg = upstreamLogLevel(e)
		if x.cachedError {
			msg += " (cached answer; OpenAI not called)"
		}
	} else if x.outcome == outcomeCircuitOpen {
		level = zapcore.WarnLevel
	}
	ce := h.logger.Check(level, msg)
	if ce == nil {
		return
	}
	clientIP, _ := caddyhttp.GetVar(x.r.Context(), caddyhttp.ClientIPVarKey).(string)
	fields := make([]zap.Field, 0, 16)
	fields = append(fields,
		zap.String("request_id", x.requestID),
		zap.String("endpoint", x.endpoint.String()),
		zap.String("method", x.r.Method),
		zap.String("outcome", x.outcome),
		zap.Int("status", x.status),
		zap.Duration("duration", time.Since(x.started)),
		zap.String("client_ip", clientIP),
	)
	if x.upstream.status != 0 || x.upstreamErr != nil {
		fields = append(fields,
			zap.Int("upstream_status", x.upstream.status),
			zap.Duration("upstream_duration", x.upstream.duration),
			zap.Int("retries", x.upstream.retries),
			zap.String("openai_request_id", x.upstream.requestID))
	}
	if x.sessionID != "" {
		fields = append(fields, zap.String("session_id", x.sessionID))
	}
	if x.requestType != "" {
		fields = append(fields, zap.String("chatkit_type", x.requestType))
	}
	if hash != "" {
		fields = append(fields, zap.String("user_hash", hash))
	}
	fields = append(fields, x.logFields...)
	if e := x.upstreamErr; e != nil {
		if e.errType != "" || e.errCode != "" || e.errParam != "" {
			fields = append(fields, zap.String("openai_error_type", e.errType),
				zap.String("openai_error_code", e.errCode), zap.String("openai_error_param", e.errParam))
		}
		if e.cause != nil {
			fields = append(fields, zap.NamedError("cause", e.cause))
		}
	}
	ce.Write(fields...)
}

// upstreamLogLevel picks a level and a message that says what to fix.
func upstreamLogLevel(e *upstreamError) (zapcore.Level, string) {
	rule := e.failure.rule()
	return rule.level, rule.log
}

package chatkit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
)

// maxUpstreamBody caps how much of an upstream response is read: a session
// object is well under 4 KiB, so anything near this is a fault.
const maxUpstreamBody = 1 << 20

// upstreamConfig is what the upstream client needs from the module config.
type upstreamConfig struct {
	apiBase      string
	apiKey       string
	organization string
	project      string
	retries      int
}

// Retry backoff: exponential with full jitter, like OpenAI's SDKs, and a
// cap on how long a Retry-After header may make a request wait.
const (
	retryBaseDelay     = 250 * time.Millisecond
	retryMaxDelay      = 4 * time.Second
	retryAfterMaxDelay = 8 * time.Second
)

// upstreamClient calls OpenAI's ChatKit sessions API over one shared,
// keep-alive HTTP client.
type upstreamClient struct {
	apiBase      string
	sessionsURL  string
	responsesURL string
	// header and noBodyHeader are shared by every request and never
	// modified: the transport only reads them.
	header       http.Header
	noBodyHeader http.Header
	// responsesHeader and streamHeader are the Responses API's: no
	// OpenAI-Beta, which only the ChatKit API wants.
	responsesHeader http.Header
	streamHeader    http.Header
	transport       *http.Transport
	retries         int
	baseDelay       time.Duration
}

// transports keeps one keep-alive transport per API base URL across
// handlers and config reloads, so a reload does not drop warm connections.
var transports = caddy.NewUsagePool()

type pooledTransport struct{ *http.Transport }

func (p pooledTransport) Destruct() error {
	p.CloseIdleConnections()
	return nil
}

func newTransport() *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          128,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

func newUpstreamClient(cfg upstreamConfig) *upstreamClient {
	val, _, _ := transports.LoadOrNew(cfg.apiBase, func() (caddy.Destructor, error) {
		return pooledTransport{newTransport()}, nil
	})
	transport := val.(pooledTransport).Transport
	header := http.Header{
		"Authorization": {"Bearer " + cfg.apiKey},
		"Openai-Beta":   {"chatkit_beta=v1"},
		"Content-Type":  {"application/json"},
		"Accept":        {"application/json"},
		"User-Agent":    {"caddy-chatkit/" + moduleVersion},
	}
	if cfg.organization != "" {
		header.Set("OpenAI-Organization", cfg.organization)
	}
	if cfg.project != "" {
		header.Set("OpenAI-Project", cfg.project)
	}
	noBodyHeader := header.Clone()
	noBodyHeader.Del("Content-Type")
	responsesHeader := header.Clone()
	responsesHeader.Del("Openai-Beta")
	streamHeader := responsesHeader.Clone()
	streamHeader.Set("Accept", "text/event-stream")
	return &upstreamClient{
		apiBase:         cfg.apiBase,
		sessionsURL:     cfg.apiBase + "/chatkit/sessions",
		responsesURL:    cfg.apiBase + "/responses",
		header:          header,
		noBodyHeader:    noBodyHeader,
		responsesHeader: responsesHeader,
		streamHeader:    streamHeader,
		transport:       transport,
		retries:         cfg.retries,
		baseDelay:       retryBaseDelay,
	}
}

// close releases this handler's hold on the shared transport.
func (c *upstreamClient) close() { _, _ = transports.Delete(c.apiBase) }

// upstreamError describes a failed upstream call without carrying any part
// of the upstream body except OpenAI's error type, code and param.
type upstreamError struct {
	failure     upstreamFailure
	status      int
	retryAfter  time.Duration
	shouldRetry string // OpenAI's x-should-retry header: "true", "false" or ""
	errType     string
	errCode     string
	errParam    string
	cause       error
}

func (e *upstreamError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream failure %d", e.failure)
	if e.status != 0 {
		fmt.Fprintf(&b, " (status %d)", e.status)
	}
	if e.cause != nil {
		fmt.Fprintf(&b, ": %v", e.cause)
	}
	return b.String()
}

// retryable follows OpenAI's SDKs: requests OpenAI refused as such (400,
// 401, 403, 404) never are; otherwise the failure's rule decides, weighing
// OpenAI's `x-should-retry` header.
func (e *upstreamError) retryable() bool {
	switch e.status {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return false
	}
	switch e.failure.rule().retry {
	case retryNever:
		return false
	case retryUnlessRefused:
		return e.shouldRetry != "false"
	}
	switch e.shouldRetry {
	case "true":
		return true
	case "false":
		return false
	}
	return e.status == http.StatusRequestTimeout || e.status == http.StatusConflict
}

// upstreamCall records facts about one upstream exchange (all its
// attempts) for the log.
type upstreamCall struct {
	status    int
	requestID string
	duration  time.Duration
	retries   int
}

// createdSession is the part of a `chatkit.session` object the module uses.
type createdSession struct {
	ID           string `json:"id"`
	ClientSecret string `json:"client_secret"`
	ExpiresAt    int64  `json:"expires_at"`
}

// createSession posts body to `<api_base>/chatkit/sessions`, retrying
// transient failures while the context's deadline leaves room.
func (c *upstreamClient) createSession(ctx context.Context, body []byte) (createdSession, upstreamCall, *upstreamError) {
	var session createdSession
	call, payload, uerr := c.postWithRetries(ctx, operationCreate, c.sessionsURL, body)
	if uerr != nil {
		return session, call, uerr
	}
	if err := decodeSession(payload, &session); err != nil {
		return session, call, &upstreamError{failure: failInvalidResponse, status: call.status, cause: err}
	}
	return session, call, nil
}

func (c *upstreamClient) postWithRetries(ctx context.Context, operation, target string, body []byte) (upstreamCall, []byte, *upstreamError) {
	header := c.header
	if body == nil {
		header = c.noBodyHeader
	}
	return c.postRetrying(ctx, operation, target, header, body)
}

// postRetrying makes a POST that is not streamed, retrying as retrying
// says within the context's deadline, and returns the answer's body.
func (c *upstreamClient) postRetrying(ctx context.Context, operation, target string, header http.Header, body []byte) (upstreamCall, []byte, *upstreamError) {
	var payload []byte
	deadline, _ := ctx.Deadline()
	call, uerr := c.retrying(ctx, operation, deadline, func() (int, string, *upstreamError) {
		status, requestID, p, uerr := c.post(ctx, target, header, body)
		payload = p
		return status, requestID, uerr
	})
	return call, payload, uerr
}

// retrying makes attempts until one succeeds, one fails for good, or the
// deadline (zero: none) leaves no room to wait for another.
func (c *upstreamClient) retrying(ctx context.Context, operation string, deadline time.Time, attempt func() (status int, requestID string, uerr *upstreamError)) (upstreamCall, *upstreamError) {
	var call upstreamCall
	start := time.Now()
	for n := 0; ; n++ {
		attemptStart := time.Now()
		status, requestID, uerr := attempt()
		observeUpstream(operation, status, uerr, time.Since(attemptStart))
		call.status, call.requestID = status, requestID
		if uerr == nil || n >= c.retries || !uerr.retryable() {
			call.duration = time.Since(start)
			return call, uerr
		}
		wait := c.backoff(n)
		if uerr.retryAfter > 0 {
			wait = min(uerr.retryAfter, retryAfterMaxDelay)
		}
		// Waiting past the deadline would only turn this answer into a
		// timeout: return it now instead.
		if !deadline.IsZero() && time.Until(deadline) <= wait {
			call.duration = time.Since(start)
			return call, uerr
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			call.duration = time.Since(start)
			return call, transportFailure(ctx, ctx.Err())
		case <-timer.C:
		}
		call.retries++
		upstreamRetries.WithLabelValues(operation).Inc()
	}
}

// openStream posts a streaming Responses request to `<api_base>/responses`
// and returns the response, open, once its headers arrive with a 2xx
// status and an event stream; the caller reads and closes the body.
// Failures before that are retried, until deadline: never once the answer
// has begun. ctx bounds the whole stream.
func (c *upstreamClient) openStream(ctx context.Context, deadline time.Time, body []byte) (*http.Response, upstreamCall, *upstreamError) {
	var resp *http.Response
	call, uerr := c.retrying(ctx, operationResponses, deadline, func() (int, string, *upstreamError) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.responsesURL, nil)
		if err != nil {
			return 0, "", &upstreamError{failure: failNetwork, cause: err}
		}
		req.Header = c.streamHeader
		// The request outlives its sending by as long as the answer streams
		// (the transport keeps it): a body that lets go of its bytes once
		// sent keeps the history out of memory meanwhile.
		req.Body, req.ContentLength = &spentBody{rest: body}, int64(len(body))
		r, err := c.transport.RoundTrip(req)
		if err != nil {
			return 0, "", transportFailure(ctx, err)
		}
		status, requestID := r.StatusCode, r.Header.Get("X-Request-Id")
		if status < 200 || status > 299 {
			payload, _ := readCapped(r.Body, r.ContentLength, maxUpstreamBody)
			r.Body.Close()
			return status, requestID, responseFailure(r, payload)
		}
		if mediaType, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mediaType != "text/event-stream" {
			r.Body.Close()
			return status, requestID, &upstreamError{failure: failInvalidResponse, status: status, cause: errors.New("the Responses API answered without an event stream")}
		}
		resp = r
		return status, requestID, nil
	})
	return resp, call, uerr
}

// postResponses makes a Responses request that is not streamed
// (`<api_base>/responses`) and returns its body.
func (c *upstreamClient) postResponses(ctx context.Context, body []byte) (upstreamCall, []byte, *upstreamError) {
	return c.postRetrying(ctx, operationTitle, c.responsesURL, c.responsesHeader, body)
}

// postTranscription posts a multipart form to
// `<api_base>/audio/transcriptions` and returns the answer's body;
// contentType is the form's, with its boundary.
func (c *upstreamClient) postTranscription(ctx context.Context, contentType string, form []byte) (upstreamCall, []byte, *upstreamError) {
	header := c.responsesHeader.Clone()
	header["Content-Type"] = []string{contentType}
	return c.postRetrying(ctx, operationTranscription, c.apiBase+"/audio/transcriptions", header, form)
}

// backoff is the full-jitter exponential delay before retry attempt+1.
func (c *upstreamClient) backoff(attempt int) time.Duration {
	ceiling := min(c.baseDelay<<attempt, retryMaxDelay)
	return time.Duration(rand.Int64N(int64(ceiling) + 1))
}

// cancelSession posts to `<api_base>/chatkit/sessions/{id}/cancel`.
func (c *upstreamClient) cancelSession(ctx context.Context, sessionID string) (upstreamCall, *upstreamError) {
	call, _, uerr := c.postWithRetries(ctx, operationCancel, c.apiBase+"/chatkit/sessions/"+url.PathEscape(sessionID)+"/cancel", nil)
	return call, uerr
}

// post makes one attempt. The body is read up to a cap, bounded by the
// context, so a response that never ends cannot outlive the deadline.
func (c *upstreamClient) post(ctx context.Context, target string, header http.Header, body []byte) (status int, requestID string, payload []byte, uerr *upstreamError) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, "", nil, &upstreamError{failure: failNetwork, cause: err}
	}
	req.Header = header
	// The transport directly, not an http.Client: OpenAI does not redirect
	// this API, and the client would copy the headers for redirects on every
	// call. The deadline comes with the request's context.
	resp, err := c.transport.RoundTrip(req)
	if err != nil {
		return 0, "", nil, transportFailure(ctx, err)
	}
	defer resp.Body.Close()
	status, requestID = resp.StatusCode, resp.Header.Get("X-Request-Id")

	// Read one byte past the cap to tell "exactly at the cap" from "over".
	payload, err = readCapped(resp.Body, resp.ContentLength, maxUpstreamBody+1)
	if err != nil {
		// The headers came; the body did not (cut short, or it hangs until
		// the deadline): the answer is unusable, not late.
		uerr := transportFailure(ctx, err)
		uerr.status = status
		if uerr.failure != failCanceled {
			uerr.failure = failInvalidResponse
		}
		return status, requestID, nil, uerr
	}
	if len(payload) > maxUpstreamBody {
		return status, requestID, nil, &upstreamError{failure: failInvalidResponse, status: status, cause: errors.New("response body over 1 MiB")}
	}
	if status >= 200 && status < 300 {
		return status, requestID, payload, nil
	}
	return status, requestID, nil, responseFailure(resp, payload)
}

// responseFailure describes an error status from OpenAI: its class, how
// long it asks us to wait, and its error type, code and param.
func responseFailure(resp *http.Response, payload []byte) *upstreamError {
	status := resp.StatusCode
	uerr := &upstreamError{failure: statusFailure(status), status: status, shouldRetry: resp.Header.Get("X-Should-Retry")}
	uerr.retryAfter = parseRetryAfter(resp.Header, time.Now())
	uerr.errType, uerr.errCode, uerr.errParam = decodeAPIError(payload)
	return uerr
}

func statusFailure(status int) upstreamFailure {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return failAuth
	case status == http.StatusNotFound:
		return failNotFound
	case status == http.StatusTooManyRequests:
		return failRateLimited
	case status >= 500:
		return failServer
	default:
		return failRejected
	}
}

// transportFailure tells a deadline from a departed client from a network
// fault, using the context rather than the error text.
func transportFailure(ctx context.Context, err error) *upstreamError {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &upstreamError{failure: failTimeout, cause: context.DeadlineExceeded}
	case ctx.Err() != nil:
		return &upstreamError{failure: failCanceled, cause: ctx.Err()}
	}
	return &upstreamError{failure: failNetwork, cause: err}
}

// decodeSession checks a 2xx body is a session with a usable secret. The
// secret's format is undocumented, so only its presence is checked.
func decodeSession(payload []byte, s *createdSession) error {
	if err := json.Unmarshal(payload, s); err != nil {
		return fmt.Errorf("decoding session: %w", err)
	}
	if s.ClientSecret == "" {
		return errors.New("session has no client_secret")
	}
	if s.ExpiresAt <= 0 {
		return errors.New("session has no expires_at")
	}
	return nil
}

// decodeAPIError extracts OpenAI's error type, code and param. The message
// is dropped on purpose: it can echo part of the key.
func decodeAPIError(payload []byte) (errType, code, param string) {
	var body struct {
		Error struct {
			Type  string `json:"type"`
			Code  any    `json:"code"`
			Param any    `json:"param"`
		} `json:"error"`
	}
	if json.Unmarshal(payload, &body) != nil {
		return "", "", ""
	}
	return truncate(body.Error.Type, 64), truncate(scalarString(body.Error.Code), 64), truncate(scalarString(body.Error.Param), 128)
}

func scalarString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return ""
}

// truncate cuts s to at most n bytes without splitting a character.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// parseRetryAfter reads `retry-after-ms` or `Retry-After` (seconds or an
// HTTP date). It returns 0 when neither is usable.
func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	if ms, err := strconv.ParseFloat(h.Get("Retry-After-Ms"), 64); err == nil {
		return boundedWait(ms, time.Millisecond)
	}
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		return boundedWait(secs, time.Second)
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// boundedWait converts a header's number of units to a duration: 0 for
// NaN, negative or zero values, and capped (not wrapped negative) when huge.
func boundedWait(n float64, unit time.Duration) time.Duration {
	if !(n > 0) {
		return 0
	}
	if n >= float64(math.MaxInt64/int64(unit)) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(n * float64(unit))
}

// sessionParams is the documented create-session body. Optional fields are
// pointers or omitempty so only what the site configured is sent.
type sessionParams struct {
	User                 string                `json:"user"`
	Workflow             workflowParams        `json:"workflow"`
	ExpiresAfter         *expiresAfterParams   `json:"expires_after,omitempty"`
	RateLimits           *rateLimitParams      `json:"rate_limits,omitempty"`
	ChatKitConfiguration *ChatKitConfiguration `json:"chatkit_configuration,omitempty"`
}

type workflowParams struct {
	ID             string         `json:"id"`
	Version        string         `json:"version,omitempty"`
	StateVariables map[string]any `json:"state_variables,omitempty"`
	Tracing        *Toggle        `json:"tracing,omitempty"`
}

type expiresAfterParams struct {
	Anchor  string `json:"anchor"`
	Seconds int    `json:"seconds"`
}

type rateLimitParams struct {
	MaxRequestsPer1Minute int `json:"max_requests_per_1_minute"`
}

// sessionBodyTemplate builds create-session bodies. Everything but the user
// is fixed at load time unless a state variable holds a placeholder, so the
// common case is one small append per request.
type sessionBodyTemplate struct {
	params  sessionParams
	tail    []byte // the body after `{"user":<user>`
	dynamic []string
}

func newSessionBodyTemplate(h *Handler, workflowID, workflowVersion string) (sessionBodyTemplate, error) {
	p := sessionParams{
		Workflow: workflowParams{
			ID:             workflowID,
			Version:        workflowVersion,
			StateVariables: h.Workflow.StateVariables,
		},
		ChatKitConfiguration: h.ChatKitConfiguration,
	}
	if h.Workflow.Tracing != nil {
		p.Workflow.Tracing = &Toggle{Enabled: h.Workflow.Tracing}
	}
	if ttl := time.Duration(h.SessionTTL); ttl > 0 {
		p.ExpiresAfter = &expiresAfterParams{Anchor: "created_at", Seconds: int((ttl + time.Second - 1) / time.Second)}
	}
	if h.MaxRequestsPerMinute > 0 {
		p.RateLimits = &rateLimitParams{MaxRequestsPer1Minute: h.MaxRequestsPerMinute}
	}
	t := sessionBodyTemplate{params: p}
	for k, v := range p.Workflow.StateVariables {
		if s, ok := v.(string); ok && strings.Contains(s, "{") {
			t.dynamic = append(t.dynamic, k)
		}
	}
	full, err := json.Marshal(p)
	if err != nil {
		return t, fmt.Errorf("chatkit: encoding session parameters: %v", err)
	}
	t.tail = bytes.TrimPrefix(full, []byte(`{"user":""`))
	return t, nil
}

// build returns the body for one request.
func (t *sessionBodyTemplate) build(user string, repl *caddy.Replacer) ([]byte, error) {
	if len(t.dynamic) == 0 {
		buf := make([]byte, 0, len(`{"user":`)+len(user)+8+len(t.tail))
		buf = append(buf, `{"user":`...)
		buf = appendJSONString(buf, user)
		return append(buf, t.tail...), nil
	}
	p := t.params
	p.User = user
	vars := make(map[string]any, len(p.Workflow.StateVariables))
	for k, v := range p.Workflow.StateVariables {
		vars[k] = v
	}
	for _, k := range t.dynamic {
		vars[k] = repl.ReplaceAll(vars[k].(string), "")
	}
	p.Workflow.StateVariables = vars
	return json.Marshal(p)
}

// appendJSONString appends s as a JSON string literal that is also safe to
// embed in HTML (<, > and & escaped), as the module's own answers are.
func appendJSONString(buf []byte, s string) []byte { return appendJSONText(buf, s, true) }

// appendJSONText is the module's one JSON string writer: `"`, `\` and
// control characters escaped, U+2028/U+2029 escaped (JavaScript line
// terminators), invalid UTF-8 as U+FFFD (it would make the whole body
// invalid JSON), and with escapeHTML also <, > and &.
func appendJSONText(buf []byte, s string, escapeHTML bool) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && !(escapeHTML && (c == '<' || c == '>' || c == '&')) {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch c {
			case '"', '\\':
				buf = append(buf, '\\', c)
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

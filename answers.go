package chatkit

import (
	"net/http"
	"time"

	"go.uber.org/zap/zapcore"
)

// answer is one of the module's own error answers: the HTTP status, the
// stable `error` code clients and the README rely on, a message for
// people, and the outcome logged and exposed in `{http.chatkit.outcome}`.
// Every error the module sends is one of the values below (the README's
// error table is checked against them).
type answer struct {
	status  int
	code    string
	message string
	outcome string
}

// The module's error answers.
var (
	answerMethodNotAllowed = answer{http.StatusMethodNotAllowed, "method_not_allowed", "use POST", outcomeMethodNotAllowed}
	answerHealthMethod     = answer{http.StatusMethodNotAllowed, "method_not_allowed", "use GET", outcomeMethodNotAllowed}
	answerOriginDenied     = answer{http.StatusForbidden, "origin_not_allowed", "this origin may not use this chat", outcomeOriginDenied}
	answerTooLarge         = answer{http.StatusRequestEntityTooLarge, "payload_too_large", "the request body is too large", outcomeTooLarge}
	answerUnreadableBody   = answer{http.StatusBadRequest, "bad_request", "could not read the request body", outcomeBadRequest}
	answerBadRequest       = answer{http.StatusBadRequest, "bad_request", "the request is malformed", outcomeBadRequest}
	answerUnauthorized     = answer{http.StatusUnauthorized, "unauthorized", "sign in to chat", outcomeUnauthorized}
	answerNoIdentity       = answer{http.StatusInternalServerError, "internal_error", "the server could not identify this visitor", outcomeInternalError}
	answerInternal         = answer{http.StatusInternalServerError, "internal_error", "the server could not build the session request", outcomeInternalError}
	answerRateLimited      = answer{http.StatusTooManyRequests, "rate_limit_exceeded", "too many requests", outcomeRateLimited}
	answerBudgetExhausted  = answer{http.StatusServiceUnavailable, "budget_exhausted", "the site's chat budget is used up", outcomeBudgetExhausted}
	answerLimiterDown      = answer{http.StatusServiceUnavailable, "rate_limit_unavailable", "the rate limiter is unavailable", outcomeRateLimitUnavailable}
	answerCircuitOpen      = answer{http.StatusServiceUnavailable, "circuit_open", "the chat service is failing", outcomeCircuitOpen}
	// Bodies the module reads itself (body.go): one that did not arrive in
	// time, and requests refused before their body is read because too many
	// bodies are pending, from this client or in all. All three close the
	// connection, so an unread body pins no memory.
	answerBodyTimeout    = answer{http.StatusRequestTimeout, "body_timeout", "the request body did not arrive in time", outcomeBodyTimeout}
	answerTooManyPending = answer{http.StatusTooManyRequests, "too_many_pending", "too many of this client's requests are still sending their body", outcomeTooManyPending}
	answerServerBusy     = answer{http.StatusServiceUnavailable, "too_many_pending", "too many requests are still sending their body", outcomeTooManyPending}
)

// Outcomes of the answers about bodies the module reads itself; they
// belong with the other outcomes in handler.go.
const (
	outcomeBodyTimeout    = "body_timeout"
	outcomeTooManyPending = "too_many_pending"
)

// allAnswers lists every answer the module can send, the failure table's
// included: the README's error table is checked against it, and a test
// checks that no answer literal in the package is missing from it.
func allAnswers() []answer {
	answers := []answer{
		answerMethodNotAllowed, answerHealthMethod, answerOriginDenied, answerTooLarge,
		answerUnreadableBody, answerBadRequest, answerUnauthorized, answerNoIdentity,
		answerInternal, answerRateLimited, answerBudgetExhausted, answerLimiterDown,
		answerCircuitOpen, answerBodyTimeout, answerTooManyPending, answerServerBusy,
		answerNotFound, answerThreadBusy, answerStoreUnavailable, answerStoreFailed,
		answerTurnRateLimited, answerTurnBudget, answerTurnTokensUser, answerTurnTokensSite,
		answerTurnLimiterDown, answerTurnCircuitOpen,
		answerDictationOff, answerTokensUser, answerTokensSite,
		answerUnsupportedMedia, answerAttachmentConflict, answerLinkInvalid,
		answerAdminUserMethod, answerUserNotFound, answerBackupExists, answerBackupPostgres,
	}
	for f := upstreamFailure(1); f < failureCount; f++ {
		answers = append(answers, f.rule().answer)
	}
	return answers
}

// The agent endpoint's own answers. The JSON ones are errors decided before
// anything is saved. The answerTurn ones refuse a model run: their status
// and code are what the refusal means (logged, counted, documented), but
// they go out as a 200 event stream whose one `error` event (code
// "custom") carries the message, in words for the person, with the wait
// appended and in Retry-After: the ChatKit widget shows an error event's
// message to the person, and a 429's body it would not.
var (
	answerNotFound         = answer{http.StatusNotFound, "not_found", "no such thread or item", outcomeNotFound}
	answerThreadBusy       = answer{http.StatusConflict, "thread_busy", "this thread is still answering; wait for the answer or stop it", outcomeThreadBusy}
	answerStoreUnavailable = answer{http.StatusServiceUnavailable, "store_unavailable", "the chat history is unavailable", outcomeStoreUnavailable}
	answerStoreFailed      = answer{http.StatusInternalServerError, "internal_error", "the chat history could not be read or written", outcomeInternalError}

	answerTurnRateLimited = answer{http.StatusTooManyRequests, "rate_limit_exceeded", "You are sending messages faster than this site allows.", outcomeRateLimited}
	answerTurnBudget      = answer{http.StatusServiceUnavailable, "budget_exhausted", "The assistant has answered as many messages as this site allows for now.", outcomeBudgetExhausted}
	answerTurnTokensUser  = answer{http.StatusTooManyRequests, "token_budget_exhausted", "You have used your share of the assistant for now.", outcomeTokenBudgetExhausted}
	answerTurnTokensSite  = answer{http.StatusServiceUnavailable, "token_budget_exhausted", "The assistant has used this site's allowance for now.", outcomeTokenBudgetExhausted}
	answerTurnLimiterDown = answer{http.StatusServiceUnavailable, "rate_limit_unavailable", "The assistant cannot check this site's limits right now.", outcomeRateLimitUnavailable}
	answerTurnCircuitOpen = answer{http.StatusServiceUnavailable, "circuit_open", "The assistant is unavailable right now.", outcomeCircuitOpen}

	// Dictation's (input.transcribe, a JSON request): the agent has it
	// off, or a token budget refuses the transcription.
	answerDictationOff = answer{http.StatusBadRequest, "dictation_off", "dictation is not enabled on this chat", outcomeBadRequest}
	answerTokensUser   = answer{http.StatusTooManyRequests, "token_budget_exhausted", "this visitor's token budget is used up", outcomeTokenBudgetExhausted}
	answerTokensSite   = answer{http.StatusServiceUnavailable, "token_budget_exhausted", "the site's token budget is used up", outcomeTokenBudgetExhausted}
)

// The agent's attachment answers (agent_attachments.go): a file whose bytes
// are of a type the site does not accept, an attachment in the wrong state
// for the request (not uploaded yet, uploaded already, in another thread),
// and an upload or preview link that is forged, altered or expired.
var (
	answerUnsupportedMedia   = answer{http.StatusUnsupportedMediaType, "unsupported_media_type", "files of this type are not accepted here", outcomeUnsupportedMedia}
	answerAttachmentConflict = answer{http.StatusConflict, "attachment_conflict", "the attachment cannot be used for this now", outcomeAttachmentConflict}
	answerLinkInvalid        = answer{http.StatusForbidden, "link_invalid", "this link is not valid or has expired", outcomeLinkInvalid}
)

// The admin API's own answers (admin.go): the user routes take GET and
// DELETE; nothing is stored for the user named; a backup would overwrite a
// file; a PostgreSQL store has its own tools. The admin's other refusals
// are the endpoints' (bad_request, method_not_allowed for the backup route,
// store_unavailable, internal_error).
var (
	answerAdminUserMethod = answer{http.StatusMethodNotAllowed, "method_not_allowed", "use GET or DELETE", outcomeMethodNotAllowed}
	answerUserNotFound    = answer{http.StatusNotFound, "not_found", "nothing is stored for this user", outcomeNotFound}
	answerBackupExists    = answer{http.StatusConflict, "backup_exists", "a file already exists at the backup path; name a new one", outcomeBackupExists}
	answerBackupPostgres  = answer{http.StatusBadRequest, "bad_request", "this store is PostgreSQL: back it up with pg_dump", outcomeBadRequest}
)

// Outcome of the admin API's backup refusal.
const outcomeBackupExists = "backup_exists"

// Outcomes of the attachment answers.
const (
	outcomeUnsupportedMedia   = "unsupported_media_type"
	outcomeAttachmentConflict = "attachment_conflict"
	outcomeLinkInvalid        = "link_invalid"
)

// limitRefusals is the answer each of the limiter's refusals gets: as JSON,
// and for a model run on the agent endpoint (an event stream).
var limitRefusals = [...]struct{ json, turn answer }{
	limitRateLimited:     {answerRateLimited, answerTurnRateLimited},
	limitBudgetExhausted: {answerBudgetExhausted, answerTurnBudget},
	limitUnavailable:     {answerLimiterDown, answerTurnLimiterDown},
}

// tokenRefusals is the answer a token budget's refusal gets, as JSON and
// for a model run, by the budget that refused (tokenScopeNone admits).
var tokenRefusals = [...]struct{ json, turn answer }{
	tokenScopeUser: {answerTokensUser, answerTurnTokensUser},
	tokenScopeSite: {answerTokensSite, answerTurnTokensSite},
	// The budgets are in Redis, which does not answer (on_redis_error deny).
	tokenScopeUnavailable: {answerLimiterDown, answerTurnLimiterDown},
}

// appendHead appends the start of the answer's body, `{"error":…,"message":…`,
// which the endpoint closes (the site's with its request id).
func (a answer) appendHead(out []byte) []byte {
	out = append(out, `{"error":`...)
	out = appendJSONString(out, a.code)
	out = append(out, `,"message":`...)
	return appendJSONString(out, a.message)
}

// withMessage is the same answer with a message that says more.
func (a answer) withMessage(message string) answer {
	a.message = message
	return a
}

// upstreamFailure classifies why an OpenAI call failed.
type upstreamFailure int

const (
	failNetwork         upstreamFailure = iota + 1 // connection refused, reset, DNS
	failTimeout                                    // the deadline passed
	failCanceled                                   // the browser went away
	failAuth                                       // 401/403: the key is wrong or lacks access
	failNotFound                                   // 404: the workflow is unknown to the key's project
	failRateLimited                                // 429
	failServer                                     // 5xx
	failRejected                                   // other 4xx: OpenAI refused what we sent
	failInvalidResponse                            // a 200 we cannot use
	failureCount
)

// failureRule is everything one kind of upstream failure means, in one
// place: the answer the browser gets (and, on the agent's streams, the
// error event), how it is logged, what it does to the circuit breaker,
// whether it is a configuration error (cached for error_cache, health
// "degraded"), whether it is retried, and its metric status class when
// there was no HTTP status.
type failureRule struct {
	answer answer
	// event is what the agent's stream says once it has begun: the ChatKit
	// `error` event, whose allow_retry says whether trying again can help
	// (a zero Code: none, nobody is listening).
	event         agentStreamError
	level         zapcore.Level
	log           string
	breaker       breakerEffect
	configError   bool
	retry         retryPolicy
	metricClass   string
	waitByDefault time.Duration // Retry-After when OpenAI gave none; 0: no Retry-After
}

// breakerEffect is what a failure tells the circuit breaker.
type breakerEffect uint8

const (
	// breakerResets: OpenAI answered, so it is up; the run of failures ends.
	breakerResets breakerEffect = iota
	// breakerCounts: one more consecutive failure towards opening.
	breakerCounts
	// breakerIgnores: says nothing about OpenAI (the browser left).
	breakerIgnores
)

// retryPolicy is whether a failed attempt is tried again. OpenAI's
// `x-should-retry` header and the statuses it refuses as such (400, 401,
// 403, 404: never retried) are weighed in upstreamError.retryable.
type retryPolicy uint8

const (
	// retryWhenAsked: only on `x-should-retry: true`, 408 or 409.
	retryWhenAsked retryPolicy = iota
	// retryUnlessRefused: unless OpenAI says `x-should-retry: false`.
	retryUnlessRefused
	// retryNever: no time is left, or nobody waits for the answer.
	retryNever
)

// failureRules is indexed by upstreamFailure; failNetwork's rule is also
// the answer for anything unclassified.
var failureRules = [failureCount]failureRule{
	failNetwork: {
		answer: answer{http.StatusBadGateway, "upstream_unreachable", "the chat service could not be reached", outcomeUpstreamError},
		event:  agentStreamError{Code: agentErrorCodeStream, AllowRetry: true},
		level:  zapcore.WarnLevel, log: "could not reach OpenAI",
		breaker: breakerCounts, retry: retryUnlessRefused, metricClass: "error",
	},
	failTimeout: {
		answer: answer{http.StatusGatewayTimeout, "upstream_timeout", "OpenAI did not answer in time", outcomeUpstreamTimeout},
		event:  agentStreamError{Code: agentErrorCodeCustom, Message: "The assistant took too long to answer. Try again.", AllowRetry: true},
		level:  zapcore.WarnLevel, log: "OpenAI did not answer before the timeout",
		breaker: breakerCounts, retry: retryNever, metricClass: "timeout",
	},
	failCanceled: {
		// The browser is gone; nobody reads this, but the log says so.
		answer: answer{499, "client_closed_request", "the client went away", outcomeClientClosed},
		level:  zapcore.InfoLevel, log: "client went away during the upstream call",
		breaker: breakerIgnores, retry: retryNever, metricClass: "canceled",
	},
	failAuth: {
		answer: answer{http.StatusBadGateway, "upstream_auth_failed", "the chat service is misconfigured", outcomeUpstreamError},
		event:  agentStreamError{Code: agentErrorCodeStream, AllowRetry: false},
		level:  zapcore.ErrorLevel, log: "OpenAI rejected the API key: check api_key (OPENAI_API_KEY) and that its project may use ChatKit",
		configError: true,
	},
	failNotFound: {
		answer: answer{http.StatusBadGateway, "workflow_not_found", "the chat service is misconfigured", outcomeUpstreamError},
		event:  agentStreamError{Code: agentErrorCodeStream, AllowRetry: false},
		level:  zapcore.ErrorLevel, log: "OpenAI does not know the workflow (or the agent's model, prompt or dictation model): the key and the workflow belong to different projects, an id or model name is wrong, or Agent Builder has been retired",
		configError: true,
	},
	failRateLimited: {
		answer: answer{http.StatusServiceUnavailable, "upstream_rate_limited", "the chat service is busy", outcomeUpstreamError},
		// The wait OpenAI asked for is said in words when there is one.
		event: agentStreamError{Code: agentErrorCodeCustom, Message: "The assistant is busy right now. Try again in a moment.", AllowRetry: true},
		level: zapcore.WarnLevel, log: "OpenAI is rate limiting this key",
		retry: retryUnlessRefused, waitByDefault: 5 * time.Second,
	},
	failServer: {
		answer: answer{http.StatusBadGateway, "upstream_error", "the chat service failed, try again shortly", outcomeUpstreamError},
		event:  agentStreamError{Code: agentErrorCodeStream, AllowRetry: true},
		level:  zapcore.WarnLevel, log: "OpenAI failed to create the session or to answer the agent's turn",
		breaker: breakerCounts, retry: retryUnlessRefused,
	},
	failRejected: {
		answer: answer{http.StatusBadGateway, "upstream_rejected", "the chat service refused the request", outcomeUpstreamError},
		event:  agentStreamError{Code: agentErrorCodeStream, AllowRetry: false},
		level:  zapcore.ErrorLevel, log: "OpenAI refused the request: check the chatkit options, or the agent's model and options (see openai_error_param)",
	},
	failInvalidResponse: {
		answer: answer{http.StatusBadGateway, "upstream_invalid_response", "the chat service answered unexpectedly", outcomeUpstreamError},
		event:  agentStreamError{Code: agentErrorCodeStream, AllowRetry: true},
		level:  zapcore.WarnLevel, log: "OpenAI answered with an unusable response",
		breaker: breakerCounts,
	},
}

// rule returns what f means; an unknown value is treated as a network fault.
func (f upstreamFailure) rule() *failureRule {
	if f <= 0 || f >= failureCount {
		return &failureRules[failNetwork]
	}
	return &failureRules[f]
}

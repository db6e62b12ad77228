// Package fakeopenai is an in-process fake of OpenAI's ChatKit sessions API
// (create and cancel), of the Responses API (POST /v1/responses, streaming
// or not) and of the transcription endpoint (POST /v1/audio/transcriptions),
// strict in the same places the real endpoints are strict, with
// injectable faults for exercising client error handling.
package fakeopenai

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultAPIKey is the bearer key accepted when Options.APIKey is empty.
const DefaultAPIKey = "sk-test-fake"

// MaxBodyBytes is the largest request body the fake accepts (1 MiB).
const MaxBodyBytes = 1 << 20

const (
	createPath    = "/v1/chatkit/sessions"
	responsesPath = "/v1/responses"
	sessionsPref  = createPath + "/"
	cancelSuffix  = "/cancel"
	betaValue     = "chatkit_beta=v1"
)

// Options configure a Server. Zero values get sensible defaults.
type Options struct {
	// APIKey is the only accepted bearer key; default DefaultAPIKey.
	APIKey string
	// Workflows lists the known workflow ids. When empty, any id starting
	// with "wf_" is known. Unknown ids get a 404 like the real API's.
	Workflows []string
	// Now is the clock used for expires_at and the Responses timestamps;
	// default time.Now.
	Now func() time.Time
	// ResponseText is the answer of /v1/responses when no script gives one.
	// Empty means "You said: " followed by the last user message's text.
	ResponseText string
	// EventInterval is waited before every streamed Responses event but the
	// first (0 = none); SetEventInterval changes it later.
	EventInterval time.Duration
}

// Request is a copy of one request the fake received.
type Request struct {
	Method, Path string
	Header       http.Header
	// Body is what the client sent, cut at MaxBodyBytes+1 bytes.
	Body []byte
	// Status is the status of the complete response the fake gave; 0 when it
	// never delivered one (FaultHangMidBody, FaultLyingLength, FaultReset, or
	// the client going away during a delay).
	Status int
	// Create is the parsed body of a create request whose body was valid
	// (JSON content type, within size, passes every body check), else nil.
	// It is set even when the request then failed for another reason (key,
	// beta header, unknown workflow, injected fault), so tests can see what
	// was sent.
	Create *CreateRequest
	// Responses is, likewise, the parsed body of a POST /v1/responses whose
	// body was valid, else nil.
	Responses *ResponsesRequest
	// Transcription is, likewise, the form of a POST
	// /v1/audio/transcriptions whose form was valid, else nil.
	Transcription *TranscriptionRequest
	// Events lists the types of the SSE events a Responses stream sent, in
	// order. A stream's Status is 200 once its headers went out, whether or
	// not it then ended normally.
	Events []string
	// ClientGone reports that the client went away before the fake finished
	// a Responses answer (it is false for a stream the fake itself cut).
	ClientGone bool
}

// Session is a session the fake created successfully.
type Session struct {
	ID, ClientSecret, User, WorkflowID string
	ExpiresAt                          int64
	// Status is "active", "cancelled", or "expired" once Now passes ExpiresAt.
	Status string
}

// FaultKind selects a special misbehaviour for a Fault.
type FaultKind int

const (
	// FaultNone answers according to Fault.Status, or normally when that is 0.
	FaultNone FaultKind = iota
	// FaultMalformedJSON answers 200 with a body that is not JSON.
	FaultMalformedJSON
	// FaultMissingSecret answers 200 with a session object lacking client_secret.
	FaultMissingSecret
	// FaultHugeBody answers 200 with a valid-looking session object padded to 2 MiB.
	FaultHugeBody
	// FaultHangMidBody answers 200 with Content-Length 4096, writes about 100
	// bytes, flushes, then blocks until the client disconnects or Close.
	FaultHangMidBody
	// FaultLyingLength answers 200 with a Content-Length larger than the body
	// actually written, then closes the connection.
	FaultLyingLength
	// FaultReset hijacks the connection and resets it without answering.
	FaultReset
)

// Fault makes the fake misbehave on a create request.
type Fault struct {
	// Times is how many consecutive create requests it applies to (default 1).
	Times int
	// Status, with Kind FaultNone, answers with this status and an
	// OpenAI-style error body. With a Kind that answers, it replaces 200 as
	// the status line.
	Status int
	// Header holds extra response headers, e.g. "Retry-After" or "x-should-retry".
	Header map[string]string
	// Delay is waited before answering; the wait ends early, without an
	// answer, if the client goes away or the server closes.
	Delay time.Duration
	// Kind is a special misbehaviour.
	Kind FaultKind
}

// popFault takes the next use of the first queued fault, nil when none is
// queued; callers hold s.mu.
func popFault(queue *[]*queuedFault) *Fault {
	if len(*queue) == 0 {
		return nil
	}
	q := (*queue)[0]
	f := q.f
	if q.left--; q.left <= 0 {
		*queue = (*queue)[1:]
	}
	return &f
}

type queuedFault struct {
	f    Fault
	left int
}

// Server is a running fake. All methods are safe for concurrent use.
type Server struct {
	apiKey    string
	workflows map[string]bool
	now       func() time.Time

	srv       *http.Server
	url       string
	handler   http.Handler
	closing   chan struct{}
	serveDone chan struct{}
	closeOnce sync.Once
	handlers  sync.WaitGroup

	mu          sync.Mutex
	closed      bool
	requests    []*Request
	createCount int
	sessions    []*sessionObject
	byID        map[string]*sessionObject
	faults      []*queuedFault
	delay       time.Duration

	responseText    string
	eventInterval   time.Duration
	responsesCount  int
	scripts         []*queuedScript
	storedResponses map[string]bool // ids a previous_response_id may name
	clientsGone     int
	goneChanged     chan struct{} // closed and replaced whenever clientsGone grows

	transcriptionCount  int
	transcriptionFaults []*queuedFault

	// reasoningOf maps the id of a call made by a reasoning item of an
	// unstored response to that item's id.
	reasoningOf map[string]string
}

// New starts a fake listening on a random port of 127.0.0.1. It panics if it
// cannot listen, as there is nothing useful a test could do instead.
func New(opts Options) *Server {
	s := &Server{
		apiKey:    opts.APIKey,
		now:       opts.Now,
		closing:   make(chan struct{}),
		serveDone: make(chan struct{}),
		byID:      map[string]*sessionObject{},

		responseText:    opts.ResponseText,
		eventInterval:   opts.EventInterval,
		storedResponses: map[string]bool{},
		goneChanged:     make(chan struct{}),
	}
	if s.apiKey == "" {
		s.apiKey = DefaultAPIKey
	}
	if s.now == nil {
		s.now = time.Now
	}
	if len(opts.Workflows) > 0 {
		s.workflows = make(map[string]bool, len(opts.Workflows))
		for _, w := range opts.Workflows {
			s.workflows[w] = true
		}
	}
	s.handler = http.HandlerFunc(s.serveHTTP)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("fakeopenai: listen: %v", err))
	}
	s.url = "http://" + ln.Addr().String() + "/v1"
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		// Faults break connections on purpose; their log noise helps nobody.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(s.serveDone)
		_ = s.srv.Serve(ln) // always ErrServerClosed after Close
	}()
	return s
}

// URL returns the base URL including "/v1", the value a client uses as api_base.
func (s *Server) URL() string { return s.url }

// Handler returns the fake's handler, for mounting elsewhere. It expects full
// paths such as /v1/chatkit/sessions or /v1/responses.
func (s *Server) Handler() http.Handler { return s.handler }

// Close stops the server, releases hanging or delayed handlers (a Responses
// stream still open breaks off), and waits for every handler and the
// serving goroutine to return. It is idempotent.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.closing)
		_ = s.srv.Close()
		s.handlers.Wait()
		<-s.serveDone
	})
}

// Requests returns copies of every request received, in arrival order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		out[i] = Request{
			Method:     r.Method,
			Path:       r.Path,
			Header:     r.Header.Clone(),
			Body:       slices.Clone(r.Body),
			Status:     r.Status,
			Create:     r.Create.clone(),
			Responses:  r.Responses.clone(),
			Events:     slices.Clone(r.Events),
			ClientGone: r.ClientGone,

			Transcription: r.Transcription.clone(),
		}
	}
	return out
}

// CreateCount returns how many POST /v1/chatkit/sessions requests arrived,
// whatever their outcome.
func (s *Server) CreateCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.createCount
}

// LastCreate returns the parsed body of the most recent create request, or
// nil if there was none or its body was not valid.
func (s *Server) LastCreate() *CreateRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range slices.Backward(s.requests) {
		if r.Method == http.MethodPost && r.Path == createPath {
			return r.Create.clone()
		}
	}
	return nil
}

// Sessions returns the successfully created sessions, in creation order.
func (s *Server) Sessions() []Session {
	now := s.now().Unix()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Session, len(s.sessions))
	for i, so := range s.sessions {
		out[i] = Session{
			ID:           so.ID,
			ClientSecret: so.ClientSecret,
			User:         so.User,
			WorkflowID:   so.Workflow.ID,
			ExpiresAt:    so.ExpiresAt,
			Status:       so.statusAt(now),
		}
	}
	return out
}

// Reset forgets recorded requests, sessions, queued faults (transcription
// faults too) and response scripts, stored response ids and the client-gone count. The delay and the
// event interval are configuration and are kept.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
	s.createCount = 0
	s.sessions = nil
	s.byID = map[string]*sessionObject{}
	s.faults = nil
	s.responsesCount = 0
	s.scripts = nil
	s.storedResponses = map[string]bool{}
	s.reasoningOf = nil
	s.clientsGone = 0
	s.transcriptionCount = 0
	s.transcriptionFaults = nil
}

// Inject queues a fault. Queued faults apply to the following create
// requests in FIFO order, each to f.Times requests (default 1). They apply
// whatever the request holds (even a bad key) and never create sessions,
// except that a fault with only Delay and/or Header answers normally.
func (s *Server) Inject(f Fault) {
	n := f.Times
	if n <= 0 {
		n = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &queuedFault{f: f, left: n})
}

// SetDelay makes every response wait d first (0 = none). A client that goes
// away during the wait gets no answer.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// sessionObject is the wire form of a chatkit.session.
type sessionObject struct {
	ID                    string           `json:"id"`
	Object                string           `json:"object"`
	ClientSecret          string           `json:"client_secret,omitempty"` // empty only for FaultMissingSecret
	ExpiresAt             int64            `json:"expires_at"`
	Status                string           `json:"status"`
	User                  string           `json:"user"`
	Workflow              workflowObject   `json:"workflow"`
	RateLimits            rateLimitsObject `json:"rate_limits"`
	MaxRequestsPer1Minute int              `json:"max_requests_per_1_minute"`
	ChatKitConfiguration  configObject     `json:"chatkit_configuration"`
	Padding               string           `json:"padding,omitempty"` // FaultHugeBody only
}

type workflowObject struct {
	ID             string         `json:"id"`
	Version        *string        `json:"version"`
	StateVariables map[string]any `json:"state_variables"`
	Tracing        struct {
		Enabled bool `json:"enabled"`
	} `json:"tracing"`
}

type rateLimitsObject struct {
	MaxRequestsPer1Minute int `json:"max_requests_per_1_minute"`
}

type configObject struct {
	AutomaticThreadTitling struct {
		Enabled bool `json:"enabled"`
	} `json:"automatic_thread_titling"`
	FileUpload struct {
		Enabled     bool `json:"enabled"`
		MaxFileSize int  `json:"max_file_size"`
		MaxFiles    int  `json:"max_files"`
	} `json:"file_upload"`
	History struct {
		Enabled       bool `json:"enabled"`
		RecentThreads *int `json:"recent_threads"`
	} `json:"history"`
}

func (so *sessionObject) statusAt(now int64) string {
	if so.Status == "active" && now >= so.ExpiresAt {
		return "expired"
	}
	return so.Status
}

// newSession applies the documented defaults to cr; cr may be nil when a
// fault needs a plausible session for a request that did not parse.
func (s *Server) newSession(cr *CreateRequest) *sessionObject {
	so := &sessionObject{
		ID:           "cksess_" + randHex(16),
		Object:       "chatkit.session",
		ClientSecret: "ek_" + randHex(24),
		Status:       "active",
		User:         "user_unknown",
	}
	seconds := 600
	rate := 10
	so.Workflow.ID = "wf_unknown"
	so.Workflow.Tracing.Enabled = true
	cfg := &so.ChatKitConfiguration
	cfg.AutomaticThreadTitling.Enabled = true
	cfg.FileUpload.MaxFileSize = 512
	cfg.FileUpload.MaxFiles = 10
	cfg.History.Enabled = true

	if cr != nil {
		cr = cr.clone() // the session must not share pointers with the record
		so.User = cr.User
		so.Workflow.ID = cr.Workflow.ID
		so.Workflow.Version = cr.Workflow.Version
		if len(cr.Workflow.StateVariables) > 0 {
			so.Workflow.StateVariables = cr.Workflow.StateVariables
		}
		if t := cr.Workflow.Tracing; t != nil && t.Enabled != nil {
			so.Workflow.Tracing.Enabled = *t.Enabled
		}
		if cr.ExpiresAfter != nil {
			seconds = cr.ExpiresAfter.Seconds
		}
		if cr.RateLimits != nil && cr.RateLimits.MaxRequestsPer1Minute != nil {
			rate = *cr.RateLimits.MaxRequestsPer1Minute
		}
		if c := cr.ChatKitConfiguration; c != nil {
			if a := c.AutomaticThreadTitling; a != nil && a.Enabled != nil {
				cfg.AutomaticThreadTitling.Enabled = *a.Enabled
			}
			if f := c.FileUpload; f != nil {
				if f.Enabled != nil {
					cfg.FileUpload.Enabled = *f.Enabled
				}
				if f.MaxFileSize != nil {
					cfg.FileUpload.MaxFileSize = *f.MaxFileSize
				}
				if f.MaxFiles != nil {
					cfg.FileUpload.MaxFiles = *f.MaxFiles
				}
			}
			if h := c.History; h != nil {
				if h.Enabled != nil {
					cfg.History.Enabled = *h.Enabled
				}
				cfg.History.RecentThreads = h.RecentThreads
			}
		}
	}
	so.ExpiresAt = s.now().Unix() + int64(seconds)
	so.RateLimits.MaxRequestsPer1Minute = rate
	so.MaxRequestsPer1Minute = rate
	return so
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}

type route int

const (
	routeNone route = iota
	routeCreate
	routeCancel
	routeResponses
)

func classify(path string) (route, string) {
	switch path {
	case createPath:
		return routeCreate, ""
	case responsesPath:
		return routeResponses, ""
	}
	if rest, ok := strings.CutPrefix(path, sessionsPref); ok {
		if id, ok := strings.CutSuffix(rest, cancelSuffix); ok && id != "" && !strings.Contains(id, "/") {
			return routeCancel, id
		}
	}
	return routeNone, ""
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("x-request-id", "req_"+randHex(16))

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		writeRaw(w, &apiError{status: 503, message: "The fake server is closed.", typ: "server_error"})
		return
	}
	// Registered under the lock so Close never races Add against Wait.
	s.handlers.Add(1)
	s.mu.Unlock()
	defer s.handlers.Done()

	if r.URL.Path == transcriptionsPath {
		// Its body is an audio file: larger than MaxBodyBytes, and a form.
		s.serveTranscription(w, r)
		return
	}
	body, readErr := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
	rt, sessionID := classify(r.URL.Path)
	if rt == routeResponses {
		s.serveResponses(w, r, body, readErr)
		return
	}
	isCreate := rt == routeCreate && r.Method == http.MethodPost

	var cr *CreateRequest
	var bodyErr *apiError
	if isCreate {
		cr, bodyErr = checkCreateBody(r, body)
	}

	rec := &Request{
		Method: r.Method,
		Path:   r.URL.Path,
		Header: r.Header.Clone(),
		Body:   body,
		Create: cr,
	}
	var fault *Fault
	s.mu.Lock()
	s.requests = append(s.requests, rec)
	if isCreate {
		s.createCount++
		fault = popFault(&s.faults)
	}
	delay := s.delay
	s.mu.Unlock()

	if readErr != nil {
		return // the client broke off mid-body; nobody is left to answer
	}
	if !s.wait(r.Context(), delay) {
		return
	}
	resp := &responder{s: s, w: w, rec: rec}
	if fault != nil {
		if !s.wait(r.Context(), fault.Delay) {
			return
		}
		for k, v := range fault.Header {
			w.Header().Set(k, v)
		}
		if s.applyFault(resp, r, *fault, cr) {
			return
		}
	}

	if rt == routeNone {
		resp.error(&apiError{
			status:  404,
			message: fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path),
			typ:     "invalid_request_error",
		})
		return
	}
	if r.Method != http.MethodPost {
		resp.error(methodNotAllowed(w, r))
		return
	}
	if err := s.checkHeaders(r); err != nil {
		resp.error(err)
		return
	}
	switch rt {
	case routeCreate:
		if bodyErr != nil {
			resp.error(bodyErr)
			return
		}
		if !s.knownWorkflow(cr.Workflow.ID) {
			resp.error(workflowNotFound(cr.Workflow.ID))
			return
		}
		so := s.newSession(cr)
		s.mu.Lock()
		s.sessions = append(s.sessions, so)
		s.byID[so.ID] = so
		out := *so
		s.mu.Unlock()
		resp.json(200, &out)
	case routeCancel:
		now := s.now().Unix()
		s.mu.Lock()
		so, ok := s.byID[sessionID]
		var out sessionObject
		if ok {
			if so.Status == "active" {
				so.Status = "cancelled"
			}
			out = *so
			out.Status = so.statusAt(now)
		}
		s.mu.Unlock()
		if !ok {
			resp.error(&apiError{
				status:  404,
				message: fmt.Sprintf("Session with id '%s' not found.", sessionID),
				typ:     "invalid_request_error",
				code:    "not_found",
			})
			return
		}
		resp.json(200, &out)
	}
}

// checkCreateBody runs the content checks that belong to the body itself,
// so the record can hold the parsed request before any other decision.
func checkCreateBody(r *http.Request, body []byte) (*CreateRequest, *apiError) {
	if err := checkJSONBody(r, body); err != nil {
		return nil, err
	}
	return parseCreate(body)
}

// checkJSONBody enforces the JSON content type and the size limit.
func checkJSONBody(r *http.Request, body []byte) *apiError {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return invalidRequest("", "",
			"Invalid Content-Type header (%s), expected application/json.", ct)
	}
	if len(body) > MaxBodyBytes {
		return &apiError{
			status:  413,
			message: fmt.Sprintf("Request body too large: the maximum is %d bytes.", MaxBodyBytes),
			typ:     "invalid_request_error",
			code:    "request_too_large",
		}
	}
	return nil
}

// methodNotAllowed sets Allow and returns the answer for a method other
// than POST; every route of the fake accepts POST only.
func methodNotAllowed(w http.ResponseWriter, r *http.Request) *apiError {
	w.Header().Set("Allow", http.MethodPost)
	return &apiError{
		status:  405,
		message: fmt.Sprintf("Method not allowed: %s %s only accepts POST.", r.Method, r.URL.Path),
		typ:     "invalid_request_error",
		code:    "method_not_allowed",
	}
}

// checkKey enforces the bearer key. The key is never echoed: error bodies
// end up in logs.
func (s *Server) checkKey(r *http.Request) *apiError {
	if r.Header.Get("Authorization") != "Bearer "+s.apiKey {
		return &apiError{
			status:  401,
			message: "Incorrect API key provided.",
			typ:     "invalid_request_error",
			code:    "invalid_api_key",
		}
	}
	return nil
}

// checkHeaders enforces the key and the beta header on the ChatKit routes.
func (s *Server) checkHeaders(r *http.Request) *apiError {
	if err := s.checkKey(r); err != nil {
		return err
	}
	for _, v := range r.Header.Values("OpenAI-Beta") {
		for part := range strings.SplitSeq(v, ",") {
			if strings.TrimSpace(part) == betaValue {
				return nil
			}
		}
	}
	return invalidRequest("", "invalid_beta",
		"You must provide the 'OpenAI-Beta' header to access the ChatKit API. "+
			"Please try again by setting the header 'OpenAI-Beta: %s'.", betaValue)
}

func (s *Server) knownWorkflow(id string) bool {
	if s.workflows == nil {
		return strings.HasPrefix(id, "wf_")
	}
	return s.workflows[id]
}

func workflowNotFound(id string) *apiError {
	return &apiError{
		status:  404,
		message: fmt.Sprintf("Workflow with id '%s' not found.", id),
		typ:     "invalid_request_error",
		code:    "not_found",
	}
}

// wait sleeps d unless the request is abandoned or the server closes; it
// reports whether the handler should still answer.
func (s *Server) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.closing:
		return false
	}
}

// applyFault performs f and reports whether it answered (or deliberately
// did not); false means the request proceeds normally.
func (s *Server) applyFault(resp *responder, r *http.Request, f Fault, cr *CreateRequest) bool {
	status := f.Status
	if status == 0 {
		status = 200
	}
	switch f.Kind {
	case FaultMalformedJSON:
		// Looks like the start of a session cut short, so naive prefix
		// sniffing does not save a client from parsing it properly.
		resp.raw(status, "application/json", []byte(`{"id":"cksess_`+randHex(16)+`","object":"chatkit.session","client_secret":ek_`))
		return true
	case FaultMissingSecret:
		so := s.newSession(cr)
		so.ClientSecret = ""
		resp.json(status, so)
		return true
	case FaultHugeBody:
		so := s.newSession(cr)
		so.Padding = strings.Repeat("x", 2<<20)
		resp.json(status, so)
		return true
	case FaultHangMidBody:
		b, _ := json.Marshal(s.newSession(cr))
		h := resp.w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", "4096")
		resp.w.WriteHeader(status)
		_, _ = resp.w.Write(b[:min(100, len(b))])
		_ = http.NewResponseController(resp.w).Flush()
		select {
		case <-r.Context().Done():
		case <-s.closing:
		}
		return true
	case FaultLyingLength:
		b, _ := json.Marshal(s.newSession(cr))
		h := resp.w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(b)+1024))
		resp.w.WriteHeader(status)
		_, _ = resp.w.Write(b)
		// Returning short of the declared length makes net/http close the
		// connection instead of reusing it.
		return true
	case FaultReset:
		resetConnection(resp.w)
		return true
	}
	if f.Status == 0 {
		return false
	}
	resp.error(faultError(f.Status, cr))
	return true
}

// resetConnection hijacks the connection and resets it, also after part of
// an answer went out.
func resetConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // e.g. HTTP/2: abort the stream instead
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // a real RST rather than a polite FIN
	}
	_ = conn.Close()
}

// faultError is the body OpenAI would plausibly send with status.
func faultError(status int, cr *CreateRequest) *apiError {
	e := &apiError{status: status, typ: "invalid_request_error"}
	switch {
	case status == 400:
		e.message = "Invalid request."
	case status == 401:
		e.message = "Incorrect API key provided."
		e.code = "invalid_api_key"
	case status == 403:
		e.message = "Country, region, or territory not supported"
		e.typ = "request_forbidden"
		e.code = "unsupported_country_region_territory"
	case status == 404:
		id := "wf_unknown"
		if cr != nil {
			id = cr.Workflow.ID
		}
		return workflowNotFound(id)
	case status == 408:
		e.message = "Request timed out."
		e.typ = "timeout"
	case status == 409:
		e.message = "The request conflicted with another request."
		e.typ = "conflict"
	case status == 429:
		e.message = "Rate limit reached for requests. Please try again later."
		e.typ = "requests"
		e.code = "rate_limit_exceeded"
	case status == 503:
		e.message = "The server is overloaded or not ready yet."
		e.typ = "server_error"
	case status >= 500:
		e.message = "The server had an error while processing your request. Sorry about that!"
		e.typ = "server_error"
	default:
		e.message = fmt.Sprintf("Injected fault: status %d.", status)
	}
	return e
}

// responder writes complete responses and records their status before the
// first byte leaves, so a client that has its answer sees it in Requests.
type responder struct {
	s   *Server
	w   http.ResponseWriter
	rec *Request
}

func (r *responder) raw(status int, contentType string, b []byte) {
	r.s.mu.Lock()
	r.rec.Status = status
	r.s.mu.Unlock()
	h := r.w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	r.w.WriteHeader(status)
	_, _ = r.w.Write(b)
}

func (r *responder) json(status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // our own types only: cannot happen
	}
	r.raw(status, "application/json", b)
}

func (r *responder) error(e *apiError) { r.raw(e.status, "application/json", e.body()) }

// writeRaw answers without recording, for requests that arrive after Close.
func writeRaw(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	_, _ = w.Write(e.body())
}

package chatkit

// A model-running request (threads.create, threads.add_user_message,
// threads.retry_after_item) as it streams. The order is the reference
// server's: thread.created, the user item (saved first), stream_options,
// then the model's answer as it arrives, each item saved before its done
// event goes out, then thread.updated for a new title. Limits are decided
// before anything is saved; after the first frame every failure is an
// `error` event and the stream closes, with everything already saved kept.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

const (
	// agentMaxEvent bounds one upstream event: events echo the whole
	// response (instructions included), so this is well above any answer.
	agentMaxEvent = 4 << 20
	// agentSaveTimeout bounds each save, which runs detached from the
	// request so that an answer cut short by the browser leaving is kept.
	agentSaveTimeout = 10 * time.Second
	// agentTitleOutputTokens leaves a reasoning model room to think before
	// a six-word title.
	agentTitleOutputTokens = 256
	agentTitleInstructions = "Write a short title, at most six words, for a conversation that starts with the user's message below. Answer with the title only, without quotes."
)

// Why a turn's upstream context was cancelled.
var (
	errAgentFirstByte  = errors.New("the model did not start answering within the timeout")
	errAgentIdle       = errors.New("the model fell silent for longer than idle_timeout")
	errAgentClientGone = errors.New("the browser went away")
	errAgentSaveFailed = errors.New("an item could not be saved")
)

// agentTurn is one model-running request.
type agentTurn struct {
	h     *Handler
	x     *exchange
	a     *agentRuntime
	st    threadstore.Store
	req   *agentRequest
	owner string

	thread agentThread
	// retryItem is the user message threads.retry_after_item answers again.
	retryItem string
	probe     bool // this turn is the breaker's half-open probe

	frames agentFrames
	rc     *http.ResponseController
	gone   bool // writing to the browser failed
	cancel context.CancelCauseFunc
	// failed is set once a store error or the lost lease ended the turn
	// (already reported).
	failed bool

	// runCtx is the request's context, also cancelled when the turn loses
	// its thread's lease (stopRun's cause says so); the model and the tools
	// run under it.
	runCtx  context.Context
	stopRun context.CancelCauseFunc
	// The thread's lease while the turn holds it (agent_lease.go).
	lease       threadstore.Lease
	leaseThread string
	keeper      *agentLeaseKeeper

	// What the turn's model rounds reported, logged once at its end.
	usage                 agentUsage
	hasUsage              bool
	responseID            string
	turnEnd               agentOutcomeKind
	cut                   agentCut
	rounds, toolCallsDone int

	// files are the uploaded files the history's messages carry, sent
	// inline with every round.
	files agentFiles
}

// setAgentStreamHeaders sets what every event stream carries: the type,
// no caching anywhere, and no buffering in a proxy in front (nginx).
func setAgentStreamHeaders(hdr http.Header) {
	hdr["Content-Type"] = []string{"text/event-stream"}
	hdr["Cache-Control"] = []string{"no-store"}
	hdr["X-Accel-Buffering"] = []string{"no"}
	hdr["X-Content-Type-Options"] = []string{"nosniff"}
}

// refuseTurn refuses a model run before anything is saved. The ChatKit
// widget shows an error event's message to the person but not a 429's
// body, so the refusal is a 200 event stream whose one event says what
// happened and when to try again; Retry-After carries the wait for
// proxies and scripts, and the outcome counts it as a refusal.
func (x *exchange) refuseTurn(a answer, wait time.Duration) {
	x.outcome = a.outcome
	hdr := x.w.Header()
	setAgentStreamHeaders(hdr)
	message := a.message
	if wait > 0 {
		hdr.Set("Retry-After", retryAfterSeconds(wait))
		message += " Try again " + agentWaitWords(wait) + "."
	}
	x.rateLimit.apply(hdr)
	x.status = http.StatusOK
	x.w.WriteHeader(http.StatusOK)
	var f agentFrames
	f.errorEvent(agentStreamError{Code: agentErrorCodeCustom, Message: message, AllowRetry: true})
	_, _ = x.w.Write(f.Bytes())
}

// admittedTurn is admitted for model runs: refusals are event streams.
func (x *exchange) admittedTurn(v limitVerdict) bool {
	if v.result == limitAllowed {
		return true
	}
	x.refuseTurn(limitRefusals[v.result].turn, v.retryAfter)
	return false
}

// agentWaitWords says a wait the way a person would: "in 12 seconds", "in
// 3 minutes", "in 2 hours", "in 4 days" (rounded up).
func agentWaitWords(d time.Duration) string {
	unit, size := "second", time.Second
	switch {
	case d > 36*time.Hour:
		unit, size = "day", 24*time.Hour
	case d > 90*time.Minute:
		unit, size = "hour", time.Hour
	case d > 90*time.Second:
		unit, size = "minute", time.Minute
	}
	n := int64((d + size - 1) / size)
	n = max(n, 1)
	if n > 1 {
		unit += "s"
	}
	return "in " + strconv.FormatInt(n, 10) + " " + unit
}

// serveAgentTurn admits a model run and streams it.
func (h *Handler) serveAgentTurn(x *exchange, req *agentRequest) {
	a := h.agent
	r := x.r
	// Every model-running request costs a token, whatever follows.
	verdict, state := h.limiter.chargeClient(r.Context(), r, x.repl, h.now())
	x.rateLimit = state
	if !x.admittedTurn(verdict) {
		return
	}
	st, release, ok := h.openVisitorStore(x)
	if !ok {
		return
	}
	defer release()
	t := &agentTurn{h: h, x: x, a: a, st: st, req: req, owner: x.user}
	t.runCtx, t.stopRun = context.WithCancelCause(r.Context())
	defer t.stopRun(nil)
	defer t.endLease()
	ctx := r.Context()
	if req.Type != agentThreadsCreate {
		th, err := st.Thread(ctx, t.owner, req.ThreadID)
		if err != nil {
			h.failAgentStore(x, "thread", err)
			return
		}
		t.thread = agentThreadOf(th)
		x.logFields = append(x.logFields, zap.String("thread_id", th.ID))
	}
	if req.Type == agentThreadsRetryAfterItem {
		it, err := st.Item(ctx, t.owner, t.thread.ID, req.ItemID)
		if err != nil {
			h.failAgentStore(x, "item", err)
			return
		}
		if it.Type != agentItemUserMessage {
			x.refuse(answerBadRequest.withMessage("params.item_id: only a user message can be answered again"))
			return
		}
		t.retryItem = it.ID
	}
	if ids := req.Input.Attachments; len(ids) > 0 {
		if _, ok := h.checkTurnAttachments(x, st, t.thread.ID, ids); !ok {
			return
		}
	}

	// The limits, decided before anything is saved or the model is called.
	now := h.now()
	if scope, wait := h.admitTokens(ctx, t.owner, now); scope != tokenScopeNone {
		x.refuseTurn(tokenRefusals[scope].turn, wait)
		return
	}
	// A new thread is claimed with its id, before it is created.
	if t.thread.ID != "" && !t.claimTurn(t.thread.ID) {
		return
	}
	cached, breakerWait, probe := h.guard.check(now)
	if cached != nil {
		// A configuration error OpenAI gave moments ago: the same answer,
		// without calling it again.
		x.upstreamErr, x.cachedError = cached, true
		t.startStream()
		t.fail(cached)
		return
	}
	if breakerWait > 0 {
		x.refuseTurn(answerTurnCircuitOpen, breakerWait)
		return
	}
	if !x.admittedTurn(h.limiter.spendBudget(ctx, now)) {
		h.guard.release(probe)
		return
	}
	t.probe = probe
	t.run()
}

// run saves the user's side of the turn, streams it, and runs the model.
func (t *agentTurn) run() {
	h, a := t.h, t.a
	if t.req.Type == agentThreadsCreate {
		if !t.createThread() {
			h.guard.release(t.probe)
			return
		}
	}
	t.startStream()
	if t.req.Type == agentThreadsCreate {
		t.frames.threadCreated(&t.thread)
	}
	switch t.req.Type {
	case agentThreadsCreate, agentThreadsAddUserMessage:
		msg := newAgentUserMessage(agentNewID("msg"), t.thread.ID, h.now(), t.req.Input)
		if !t.attachToMessage(msg) {
			t.flush()
			h.guard.release(t.probe)
			return
		}
		blob := msg.appendJSON(nil)
		if !t.persist([]agentDoneItem{{ID: msg.ID, Type: agentItemUserMessage, CreatedAt: msg.CreatedAt, JSON: blob}}) {
			t.flush()
			h.guard.release(t.probe)
			return
		}
		t.frames.itemDoneJSON(h.agentItemsOut(t.x, []json.RawMessage{blob})[0])
		// Saved and sent: the model reads the message from the store, so
		// the decoded copy is not held while the answer streams.
		t.req.Input = agentUserInput{}
	case agentThreadsRetryAfterItem:
		ctx, cancel := t.saveContext()
		_, err := t.st.DeleteItemsAfter(ctx, t.owner, t.thread.ID, t.retryItem)
		cancel()
		if err != nil {
			t.storeFailed("delete items", err)
			t.flush()
			h.guard.release(t.probe)
			return
		}
	}
	t.frames.streamOptions(true)
	t.flush()

	ctx, cancel := t.saveContext()
	history, err := t.st.RecentItems(ctx, t.owner, t.thread.ID, a.history)
	cancel()
	if err == nil {
		t.files, err = t.loadFiles(history, a.history)
	}
	if err != nil {
		t.storeFailed("history", err)
		t.flush()
		h.guard.release(t.probe)
		return
	}
	// What the title needs is kept (the first message only for a title
	// model); the history itself is not held while the answer streams,
	// which may take minutes.
	var title agentTitleSource
	if t.thread.Title == "" && !agentHasAnswer(history) {
		title = newAgentTitleSource(agentFirstUserText(history), t.a.titleModel != "")
	}
	answered := t.callModel(history)
	if title.fallback != "" && !t.failed {
		// Titled even when the first answer was stopped or failed: the
		// next turn is no longer the first and would never title it. The
		// title model is asked only about a thread that got its answer, and
		// a stream that ended with an error says nothing after it.
		if !answered {
			title.message = ""
		}
		t.setTitle(title, answered)
	}
	t.flush()
}

// agentTitleSource is what an untitled thread's title is made from after
// the first answer: the first message for the title model, and the title
// taken from it for when there is no title model or it fails.
type agentTitleSource struct {
	message, fallback string
}

func newAgentTitleSource(first string, forModel bool) agentTitleSource {
	if strings.TrimSpace(first) == "" {
		return agentTitleSource{}
	}
	src := agentTitleSource{fallback: strings.Clone(agentTitle(first))}
	if forModel {
		src.message = first
	}
	return src
}

// createThread makes the new thread (a fresh id on the rare collision),
// claimed before it exists: no other request can run a turn on it, here or
// on another instance. It answers the request itself when it cannot.
func (t *agentTurn) createThread() bool {
	ctx := t.x.r.Context()
	for attempt := 0; ; attempt++ {
		id, claimed := agentNewID("thr"), time.Now()
		l, err := t.st.ClaimThread(ctx, id, agentLeaseTTL)
		if errors.Is(err, threadstore.ErrBusy) && attempt < 3 {
			continue // a collision with a claim of the same id
		}
		if err != nil {
			t.h.failAgentStore(t.x, "claim thread", err)
			return false
		}
		th, err := t.st.CreateThread(ctx, threadstore.Thread{ID: id, Owner: t.owner, CreatedAt: t.h.now()})
		if err != nil {
			t.h.releaseAgentLease(t.x, id, l)
			if errors.Is(err, threadstore.ErrExists) && attempt < 3 {
				continue
			}
			t.h.failAgentStore(t.x, "create thread", err)
			return false
		}
		t.thread = agentThreadOf(th)
		t.holdLease(th.ID, l, claimed)
		t.x.logFields = append(t.x.logFields, zap.String("thread_id", th.ID))
		return true
	}
}

// startStream sends the event stream's headers.
func (t *agentTurn) startStream() {
	x := t.x
	hdr := x.w.Header()
	setAgentStreamHeaders(hdr)
	x.rateLimit.apply(hdr)
	x.status = http.StatusOK
	x.outcome = outcomeSuccess
	x.w.WriteHeader(http.StatusOK)
	t.rc = http.NewResponseController(x.w)
	t.flush()
}

// flush writes the frames built so far and pushes them to the browser. A
// browser that cannot be written to has gone: the model is stopped at once.
func (t *agentTurn) flush() {
	if t.rc == nil || t.gone {
		t.frames.Reset()
		return
	}
	var err error
	if t.frames.Len() > 0 {
		_, err = t.x.w.Write(t.frames.Bytes())
	}
	t.frames.Reset()
	if err == nil {
		err = t.rc.Flush()
	}
	if err != nil {
		t.clientGone()
	}
}

// flushPending sends the frames built so far, if any.
func (t *agentTurn) flushPending() {
	if t.frames.Len() > 0 {
		t.flush()
	}
}

// flushBeforeRead calls flush before every read of r.
type flushBeforeRead struct {
	r     io.Reader
	flush func()
}

func (f flushBeforeRead) Read(p []byte) (int, error) {
	f.flush()
	return f.r.Read(p)
}

// agentIdleTimer fires when touch has not been called for the timeout. A
// touch only notes the time: the timer is re-armed when it fires early,
// not on every event.
type agentIdleTimer struct {
	timeout time.Duration
	fire    func()
	start   time.Time
	last    atomic.Int64 // since start, at the latest touch
	stopped atomic.Bool
	timer   atomic.Pointer[time.Timer]
}

func newAgentIdleTimer(timeout time.Duration, fire func()) *agentIdleTimer {
	it := &agentIdleTimer{timeout: timeout, fire: fire, start: time.Now()}
	it.arm(timeout)
	return it
}

func (it *agentIdleTimer) arm(d time.Duration) { it.timer.Store(time.AfterFunc(d, it.check)) }

func (it *agentIdleTimer) check() {
	if it.stopped.Load() {
		return
	}
	if quiet := time.Since(it.start) - time.Duration(it.last.Load()); quiet < it.timeout {
		it.arm(it.timeout - quiet)
		return
	}
	it.fire()
}

func (it *agentIdleTimer) touch() { it.last.Store(int64(time.Since(it.start))) }

// stop keeps the timer from firing; a check already running sees it.
func (it *agentIdleTimer) stop() {
	it.stopped.Store(true)
	it.timer.Load().Stop()
}

func (t *agentTurn) clientGone() {
	t.gone = true
	if t.cancel != nil {
		t.cancel(errAgentClientGone)
	}
}

// saveContext bounds a store call that must finish even if the browser has
// gone: the partial answer of a stopped turn is saved after it left.
func (t *agentTurn) saveContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(t.x.r.Context()), agentSaveTimeout)
}

// persist saves finished items in order; false once one cannot be saved
// (the turn then ends with an error event).
func (t *agentTurn) persist(done []agentDoneItem) bool {
	if len(done) == 0 || t.failed {
		return !t.failed
	}
	ctx, cancel := t.saveContext()
	defer cancel()
	for i := range done {
		if !t.leaseHeld() {
			t.unacknowledge(done[i:])
			return false // another turn may answer the thread now
		}
		d := &done[i]
		_, err := t.st.AddItem(ctx, t.owner, threadstore.Item{
			ID: d.ID, ThreadID: t.thread.ID, CreatedAt: d.CreatedAt, Type: d.Type, Data: d.JSON,
		})
		if err != nil {
			t.unacknowledge(done[i:])
			t.storeFailed("save item", err)
			return false
		}
	}
	return true
}

// unacknowledge drops the unsent thread.item.done events of items that were
// not saved: the event tells the client the item is kept.
func (t *agentTurn) unacknowledge(unsaved []agentDoneItem) {
	for i := range unsaved {
		t.frames.dropItemDone(unsaved[i].ID)
	}
}

// persistFed saves what the converter finished while the frames grew from
// mark. Once the turn has ended (a store error, a lost lease), nothing built
// since mark goes out: the error event stays the last, and no item that was
// not saved is announced done.
func (t *agentTurn) persistFed(mark int, done []agentDoneItem) {
	if t.failed {
		t.frames.truncate(mark)
		return
	}
	t.persist(done)
}

// storeFailed ends the turn after a store error once the stream began: an
// error event (retrying may help), the cause in the log only.
func (t *agentTurn) storeFailed(op string, err error) {
	t.failed = true
	if t.cancel != nil {
		t.cancel(errAgentSaveFailed)
	}
	outcome := outcomeInternalError
	if errors.Is(err, threadstore.ErrUnavailable) {
		outcome = outcomeStoreUnavailable
	}
	t.x.outcome = outcome
	t.h.logger.Error("the agent's thread store failed during a turn",
		zap.String("request_id", t.x.requestID), zap.String("operation", op), zap.Error(err))
	t.frames.errorEvent(agentStreamError{Code: agentErrorCodeStream, AllowRetry: true})
}

// fail ends the turn after an upstream failure with the error event its
// rule gives (none when the browser has gone).
func (t *agentTurn) fail(e *upstreamError) {
	rule := e.failure.rule()
	t.x.outcome = rule.answer.outcome
	if ev, ok := agentFailureEvent(e); ok {
		t.frames.errorEvent(ev)
	}
	t.flush()
}

// requestBody is the Responses request for one round of this turn: the
// fixed head, the history, the items earlier rounds of the turn produced
// (turnItems: output items and function call outputs, comma-separated),
// the function tools (tool_choice none when final) and the safety
// identifier.
func (t *agentTurn) requestBody(history []threadstore.Item, turnItems []byte, final bool) []byte {
	items := make([]json.RawMessage, len(history))
	size := len(t.a.bodyHead) + len(turnItems) + 128 + t.files.size()
	for i := range history {
		items[i] = history[i].Data
		size += len(history[i].Data)
	}
	size += len(t.a.hostedTools)
	if t.a.tools != nil {
		size += len(t.a.tools.defs) + 96
	}
	buf := make([]byte, 0, size)
	buf = append(buf, t.a.bodyHead...)
	buf, skipped := appendAgentHistoryFiles(buf, items, t.a.history, t.files)
	if skipped > 0 && len(turnItems) == 0 {
		t.h.logger.Warn("some stored thread items could not be read into the model's history",
			zap.String("request_id", t.x.requestID), zap.String("thread_id", t.thread.ID), zap.Int("skipped", skipped))
	}
	if len(turnItems) > 0 {
		buf = buf[:len(buf)-1] // the history's closing bracket
		if buf[len(buf)-1] != '[' {
			buf = append(buf, ',')
		}
		buf = append(append(buf, turnItems...), ']')
	}
	buf = appendAgentRequestTools(buf, t.a.hostedTools, t.a.tools, final, !t.a.openAIStore && t.a.reasons())
	buf = append(buf, `,"safety_identifier":`...)
	buf = appendAgentString(buf, t.a.safetyIdentifier(t.owner))
	return append(buf, '}')
}

// callModel runs the model for this turn, in rounds. While the model asks
// for function tools Caddy runs, and the turn's max_tool_calls allows,
// Caddy runs every call of the batch and asks again with their outputs.
// OpenAI keeps nothing with store false (no previous_response_id), so
// every round resends the turn's output items (calls, their reasoning with
// its encrypted content, messages) and the outputs; none of them is saved
// in the thread, so a later turn's history never holds a call without its
// output (the answer says what the tools gave). At the bound one more
// round with tool_choice none gives the visitor an answer. Each round is
// one model run for the token budget and the idle timeout. It reports
// whether the model completed an answer.
func (t *agentTurn) callModel(history []threadstore.Item) bool {
	defer t.logTurn()
	tools := t.a.tools
	var turnItems []byte
	for {
		final := tools == nil || t.toolCallsDone >= tools.maxCalls
		var round *agentRoundItems
		if !final {
			round = &agentRoundItems{keepReasoning: t.a.openAIStore || t.a.reasons()}
		}
		ok := t.streamRound(t.requestBody(history, turnItems, final), round)
		t.probe = false // only the turn's first call can be the breaker's probe
		if !ok || round == nil || len(round.calls) == 0 || t.gone {
			return ok
		}
		turnItems = t.runTools(round, turnItems)
		if !t.leaseHeld() {
			return false
		}
		if t.gone || t.x.r.Context().Err() != nil {
			t.x.outcome = outcomeClientClosed // left while the tools ran
			return false
		}
	}
}

// runTools runs one round's calls, showing each while it runs, and returns
// turnItems with the round's output items and the calls' outputs added.
func (t *agentTurn) runTools(round *agentRoundItems, turnItems []byte) []byte {
	tools := t.a.tools
	r := t.x.r
	site := agentToolSite{scheme: browserScheme(r), host: siteHost(r)}
	for i := range round.calls {
		t.frames.progress(tools.progress(&round.calls[i], site))
	}
	t.flush()
	allowed := tools.maxCalls - t.toolCallsDone
	outputs := tools.runBatch(t.runCtx, round.calls, allowed, site)
	t.toolCallsDone += min(len(round.calls), allowed)
	for _, item := range round.items {
		if len(turnItems) > 0 {
			turnItems = append(turnItems, ',')
		}
		turnItems = append(turnItems, item...)
	}
	for i := range round.calls {
		turnItems = append(turnItems, ',')
		turnItems = appendAgentCallOutput(turnItems, round.calls[i].CallID, outputs[i])
	}
	return turnItems
}

// streamRound sends body to the model and streams its answer; it reports
// whether the model completed an answer. With round set, the output items
// a next round needs are kept in it.
func (t *agentTurn) streamRound(body []byte, round *agentRoundItems) bool {
	h, x, a := t.h, t.x, t.a

	// The browser leaving cancels everything at once; the timers cancel with
	// their own cause, so the end of the turn can say which it was.
	ctx, cancel := context.WithCancelCause(t.runCtx)
	defer cancel(nil)
	t.cancel = cancel
	if t.gone {
		cancel(errAgentClientGone)
	}
	if !t.leaseHeld() {
		t.flush()
		return false
	}
	firstByte := time.AfterFunc(h.timeout, func() { cancel(errAgentFirstByte) })
	defer firstByte.Stop()

	resp, call, uerr := h.upstream.openStream(ctx, time.Now().Add(h.timeout), body)
	x.upstream = call
	if uerr != nil {
		uerr = t.classify(ctx, uerr)
		h.guard.record(uerr, t.probe, h.now())
		x.upstreamErr = uerr
		t.fail(uerr)
		return false
	}
	defer resp.Body.Close()

	conv := newAgentConverter(agentConverterConfig{
		ThreadID: t.thread.ID, NewID: agentNewID, Now: h.now,
		Reasoning: a.reasoningSummary != "", Tools: &a.toolProgress,
	}, &t.frames)
	// The frames go out just before the reader waits for the model: events
	// that arrived together share one write, and none waits for the next.
	rd := newSSEReader(flushBeforeRead{resp.Body, t.flushPending}, agentMaxEvent)
	var ev responsesEvent
	var idle *agentIdleTimer
	var readErr error
	badStream := false // the stream sent something that is not a Responses event
	for !conv.Finished() && !t.failed {
		_, data, err := rd.Next()
		if err != nil {
			readErr, badStream = err, errors.Is(err, errSSEEventTooLarge)
			break
		}
		if idle == nil {
			firstByte.Stop()
			idle = newAgentIdleTimer(a.idleTimeout, func() { cancel(errAgentIdle) })
		} else {
			idle.touch()
		}
		if err := ev.decode(data); err != nil {
			readErr, badStream = err, true
			break
		}
		mark := t.frames.Len()
		conv.Feed(&ev)
		if round != nil {
			round.capture(&ev, data)
		}
		t.persistFed(mark, conv.Done())
	}
	if idle != nil {
		idle.stop()
	}
	if !conv.Finished() {
		t.leaseHeld() // a lost lease ends the turn as a store error does
	}

	var turnErr *upstreamError
	if !conv.Finished() {
		cut := agentCutFailed
		switch {
		case t.failed:
			// A store error, not OpenAI's: storeFailed has said it.
		case readErr == nil || context.Cause(ctx) != nil:
			turnErr = t.classify(ctx, transportFailure(ctx, readErr))
			if turnErr.failure == failCanceled {
				cut = agentCutCancelled
			}
		case errors.Is(readErr, io.EOF) || errors.Is(readErr, io.ErrUnexpectedEOF):
			// The stream ended without saying how the answer ended.
			turnErr = &upstreamError{failure: failInvalidResponse, status: call.status, cause: errors.New("the Responses stream ended before the response did")}
		case badStream:
			turnErr = &upstreamError{failure: failInvalidResponse, status: call.status, cause: readErr}
		default:
			turnErr = &upstreamError{failure: failNetwork, status: call.status, cause: readErr} // a reset
		}
		mark := t.frames.Len()
		conv.Interrupt(cut)
		t.persistFed(mark, conv.Done())
	}
	o := conv.Outcome()
	if turnErr == nil {
		turnErr = agentOutcomeFailure(&o)
	}
	h.guard.record(turnErr, t.probe, h.now())
	t.recordUsage(conv, &o)

	switch {
	case t.failed:
		// storeFailed has said it.
	case turnErr != nil && turnErr.failure == failCanceled:
		x.outcome = outcomeClientClosed
	case turnErr != nil:
		x.upstreamErr = turnErr
		x.outcome = turnErr.failure.rule().answer.outcome
		if o.Kind == agentInterrupted {
			// Cut off by a timeout or a broken stream: the failure's event.
			if e, ok := agentFailureEvent(turnErr); ok {
				t.frames.errorEvent(e)
			}
		} else if e, ok := o.streamError(); ok {
			t.frames.errorEvent(e)
		}
	default:
		if e, ok := o.streamError(); ok {
			t.frames.errorEvent(e) // incomplete: cut at the length limit or filtered
		}
	}
	t.flush()
	return o.Kind == agentCompleted && !t.failed
}

// classify tells the turn's own timeouts from the browser leaving.
func (t *agentTurn) classify(ctx context.Context, e *upstreamError) *upstreamError {
	switch cause := context.Cause(ctx); {
	case cause == errAgentFirstByte, cause == errAgentIdle:
		return &upstreamError{failure: failTimeout, status: e.status, cause: cause}
	case cause == errAgentClientGone, t.x.r.Context().Err() != nil:
		return &upstreamError{failure: failCanceled, cause: errAgentClientGone}
	}
	return e
}

// agentOutcomeFailure is how a run that OpenAI ended with an error counts
// for the breaker and the log; nil when it answered.
func agentOutcomeFailure(o *agentOutcome) *upstreamError {
	if o.Kind != agentFailed && o.Kind != agentStreamErrored {
		return nil
	}
	e := &upstreamError{errCode: truncate(o.Code, 64), cause: errors.New("the model's answer failed: " + o.Kind.String())}
	switch ev := agentUpstreamError(o.Code); {
	case o.Code == "rate_limit_exceeded" || o.Code == "too_many_requests" || o.Code == "slow_down":
		e.failure = failRateLimited
	case !ev.AllowRetry:
		e.failure = failRejected // the request itself: retrying will not help
	default:
		e.failure = failServer
	}
	return e
}

// recordUsage counts what the run cost against the token budgets and in
// the metrics; the turn's log line sums its rounds (logTurn).
func (t *agentTurn) recordUsage(conv *agentConverter, o *agentOutcome) {
	t.rounds++
	t.responseID, t.turnEnd, t.cut = conv.ResponseID(), o.Kind, o.Cut
	u, ok := conv.Usage()
	if !ok {
		return
	}
	t.chargeTokens(u)
	t.hasUsage = true
	t.usage.InputTokens += u.InputTokens
	t.usage.OutputTokens += u.OutputTokens
}

// logTurn adds what the model rounds reported to the request's log line.
func (t *agentTurn) logTurn() {
	if t.rounds == 0 {
		return
	}
	t.x.logFields = append(t.x.logFields,
		zap.String("openai_response_id", t.responseID),
		zap.String("turn_end", t.turnEnd.String()), zap.String("cut", t.cut.String()))
	if t.a.tools != nil {
		t.x.logFields = append(t.x.logFields, zap.Int("model_rounds", t.rounds), zap.Int("tool_calls", t.toolCallsDone))
	}
	if t.hasUsage {
		t.x.logFields = append(t.x.logFields, zap.Int64("input_tokens", t.usage.InputTokens), zap.Int64("output_tokens", t.usage.OutputTokens))
	}
}

func (t *agentTurn) chargeTokens(u agentUsage) { t.h.chargeAgentTokens(t.owner, u) }

// chargeAgentTokens counts what OpenAI reported a call cost (a turn, a
// title, a transcription) against owner's and the site's token budgets and
// in the metrics.
func (h *Handler) chargeAgentTokens(owner string, u agentUsage) {
	total := u.TotalTokens
	if total == 0 {
		total = u.InputTokens + u.OutputTokens
	}
	h.chargeTokens(owner, total, h.now())
	agentTokens.WithLabelValues("input").Add(float64(max(u.InputTokens, 0)))
	agentTokens.WithLabelValues("output").Add(float64(max(u.OutputTokens, 0)))
}

// agentHasAnswer reports whether the history holds an assistant answer
// (then the thread's first answer has been given already).
func agentHasAnswer(history []threadstore.Item) bool {
	for i := range history {
		if history[i].Type == agentItemAssistantMessage {
			return true
		}
	}
	return false
}

// agentFirstUserText is the text of the oldest user message in history.
func agentFirstUserText(history []threadstore.Item) string {
	for i := range history {
		if history[i].Type == agentItemUserMessage {
			return agentStoredUserText(history[i].Data)
		}
	}
	return ""
}

// setTitle gives an untitled thread its title after its first answer: from
// the title model when one is set (falling back on failure), else from the
// first message.
func (t *agentTurn) setTitle(src agentTitleSource, announce bool) {
	title := ""
	if src.message != "" && !t.gone {
		title = t.titleFromModel(src.message)
	}
	if title == "" {
		title = src.fallback
	}
	ctx, cancel := t.saveContext()
	th, err := t.st.UpdateThread(ctx, t.owner, t.thread.ID, threadstore.ThreadUpdate{Title: &title})
	cancel()
	if err != nil {
		// The answer is saved; a missing title is not worth an error event.
		t.h.logger.Warn("could not save the thread's title",
			zap.String("request_id", t.x.requestID), zap.String("thread_id", t.thread.ID), zap.Error(err))
		return
	}
	t.thread = agentThreadOf(th)
	if announce {
		t.frames.threadUpdated(&t.thread)
	}
}

// titleFromModel asks the title model for a title; "" when it cannot.
func (t *agentTurn) titleFromModel(message string) string {
	body := make([]byte, 0, 512+len(message))
	body = append(body, `{"model":`...)
	body = appendAgentString(body, t.a.titleModel)
	body = append(body, `,"instructions":`...)
	body = appendAgentString(body, agentTitleInstructions)
	body = append(body, `,"input":[{"role":"user","content":[{"type":"input_text","text":`...)
	body = appendAgentString(body, message)
	body = append(body, `}]}],"max_output_tokens":`...)
	body = strconv.AppendInt(body, agentTitleOutputTokens, 10)
	body = append(body, `,"store":false,"safety_identifier":`...)
	body = appendAgentString(body, t.a.safetyIdentifier(t.owner))
	body = append(body, '}')

	ctx, cancel := context.WithTimeout(t.x.r.Context(), t.h.timeout)
	defer cancel()
	_, payload, uerr := t.h.upstream.postResponses(ctx, body)
	if uerr != nil {
		t.h.logger.Warn("the title model failed; the title is taken from the first message",
			zap.String("request_id", t.x.requestID), zap.Int("upstream_status", uerr.status),
			zap.String("openai_error_code", uerr.errCode), zap.NamedError("cause", uerr.cause))
		return ""
	}
	text, usage, ok := agentResponseText(payload)
	if ok {
		t.chargeTokens(usage)
	}
	text = strings.Trim(strings.TrimSpace(text), "\"'“”‘’")
	if text == "" {
		return ""
	}
	return agentTitle(text)
}

// agentResponseText reads a non-streamed response's output text and usage.
func agentResponseText(payload []byte) (string, agentUsage, bool) {
	var resp struct {
		Output []struct {
			Type    string `json:"type"`
			Content []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			} `json:"content"`
		} `json:"output"`
		Usage *agentUsage `json:"usage"`
	}
	if json.Unmarshal(payload, &resp) != nil {
		return "", agentUsage{}, false
	}
	var b strings.Builder
	for _, o := range resp.Output {
		if o.Type != "message" {
			continue
		}
		for _, c := range o.Content {
			if c.Type == "output_text" {
				b.WriteString(c.Text)
			}
		}
	}
	var u agentUsage
	if resp.Usage != nil {
		u = *resp.Usage
	}
	return b.String(), u, resp.Usage != nil
}

// agentStoredUserText is a stored user message's text as the model reads
// it (tags as @<text>).
func agentStoredUserText(raw json.RawMessage) string {
	var it struct {
		Content []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
	}
	if json.Unmarshal(raw, &it) != nil {
		return ""
	}
	var b bytes.Buffer
	for _, p := range it.Content {
		if p.Type == "input_tag" {
			b.WriteByte('@')
		}
		b.WriteString(p.Text)
	}
	return b.String()
}

// agentFailureEvent is the error event for an OpenAI call that failed
// before or while answering (its rule's), and whether there is one (none
// when the browser has gone). A wait OpenAI asked for is said in words.
func agentFailureEvent(e *upstreamError) (agentStreamError, bool) {
	ev := e.failure.rule().event
	if ev.Code == "" {
		return ev, false
	}
	if e.failure == failRateLimited && e.retryAfter > 0 {
		ev.Message = "The assistant is busy right now. Try again " + agentWaitWords(e.retryAfter) + "."
	}
	return ev, true
}

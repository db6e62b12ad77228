package chatkit

// One running turn per thread, across every Caddy on the database: a
// model-running request claims the thread's lease in the store before the
// model is called or anything is saved, renews it while the turn runs and
// releases it at the end. A second one meanwhile, here or on another
// instance, is refused with 409 thread_busy. A turn that loses its lease
// (another instance took the thread after renewals failed, or they failed
// for so long that it could lapse) stops with an error event and saves
// nothing more, rather than write into a thread another turn answers.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

const (
	// agentLeaseTTL is how long a claim holds without renewal: how long a
	// thread stays busy after the instance answering it died.
	agentLeaseTTL = 15 * time.Second
	// agentLeaseRenew is how often a running turn renews its claim: after
	// a failure it tries once more, and gives up 2.5 s before the claim
	// could lapse.
	agentLeaseRenew = 5 * time.Second
	// agentLeaseReleaseTimeout bounds the release at the end of a turn,
	// which runs detached from the request (the browser may have left).
	agentLeaseReleaseTimeout = 5 * time.Second
)

// Why a turn's context was cancelled by its lease.
var (
	errAgentLeaseLost      = errors.New("another turn took the thread")
	errAgentLeaseUnrenewed = errors.New("the thread's lease could not be renewed in time")
)

// claimAgentThread claims the thread for a turn or a delete, answering the
// request itself when it cannot: 409 thread_busy when another claim holds
// it, the store's answer (503 store_unavailable, ...) when the store fails.
func (h *Handler) claimAgentThread(x *exchange, st threadstore.Store, threadID string) (threadstore.Lease, bool) {
	l, err := st.ClaimThread(x.r.Context(), threadID, agentLeaseTTL)
	switch {
	case err == nil:
		return l, true
	case errors.Is(err, threadstore.ErrBusy):
		x.refuse(answerThreadBusy)
	default:
		h.failAgentStore(x, "claim thread", err)
	}
	return nil, false
}

// releaseAgentLease releases a claim, detached from the request: a claim
// left behind would keep the thread busy for a ttl.
func (h *Handler) releaseAgentLease(x *exchange, threadID string, l threadstore.Lease) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(x.r.Context()), agentLeaseReleaseTimeout)
	defer cancel()
	if err := l.Release(ctx); err != nil {
		h.logger.Warn("the agent could not release a thread's lease; it lapses by itself",
			zap.String("request_id", x.requestID), zap.String("thread_id", threadID), zap.Error(err))
	}
}

// deleteAgentThread deletes the thread under its lease, so that a thread
// answering anywhere is not deleted under its turn.
func (h *Handler) deleteAgentThread(x *exchange, st threadstore.Store, owner, threadID string) bool {
	l, ok := h.claimAgentThread(x, st, threadID)
	if !ok {
		return false
	}
	defer h.releaseAgentLease(x, threadID, l)
	if _, err := st.DeleteThread(x.r.Context(), owner, threadID); err != nil {
		h.failAgentStore(x, "delete thread", err)
		return false
	}
	return true
}

// agentLeaseKeeper renews a turn's lease until stopped, and cancels the
// turn's context when the lease is lost or could lapse before the next
// attempt.
type agentLeaseKeeper struct {
	lease      threadstore.Lease
	ttl, every time.Duration
	lost       context.CancelCauseFunc
	stopOnce   sync.Once
	stop, done chan struct{}
}

// startAgentLeaseKeeper starts renewing l, claimed at claimed, every
// `every`; lost is called with errAgentLeaseLost or errAgentLeaseUnrenewed.
func startAgentLeaseKeeper(l threadstore.Lease, claimed time.Time, ttl, every time.Duration, lost context.CancelCauseFunc) *agentLeaseKeeper {
	k := &agentLeaseKeeper{lease: l, ttl: ttl, every: every, lost: lost, stop: make(chan struct{}), done: make(chan struct{})}
	go k.run(claimed)
	return k
}

// run renews every k.every. After a failure it tries again at the next
// tick while that attempt can still end half a period before the claim
// lapses; otherwise it gives the lease up then, with time to stop the turn.
func (k *agentLeaseKeeper) run(renewed time.Time) {
	defer close(k.done)
	tick := time.NewTicker(k.every)
	defer tick.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-tick.C:
		}
		giveUp := renewed.Add(k.ttl - k.every/2)
		deadline := time.Now().Add(k.every)
		if giveUp.Before(deadline) {
			deadline = giveUp
		}
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		start := time.Now()
		err := k.lease.Renew(ctx)
		cancel()
		switch {
		case err == nil:
			renewed = start
		case errors.Is(err, threadstore.ErrBusy):
			k.lost(errAgentLeaseLost)
			return
		case !time.Now().Add(k.every).Before(giveUp):
			k.lost(fmt.Errorf("%w: %w", errAgentLeaseUnrenewed, err))
			return
		}
	}
}

// halt stops the renewals and waits for one in flight.
func (k *agentLeaseKeeper) halt() {
	k.stopOnce.Do(func() { close(k.stop) })
	<-k.done
}

// claimTurn claims the turn's thread and starts renewing the claim; false
// when it has answered the request.
func (t *agentTurn) claimTurn(threadID string) bool {
	claimed := time.Now()
	l, ok := t.h.claimAgentThread(t.x, t.st, threadID)
	if !ok {
		return false
	}
	t.holdLease(threadID, l, claimed)
	return true
}

// holdLease keeps l for the turn: renewed while it runs, and its loss
// cancels the turn's context.
func (t *agentTurn) holdLease(threadID string, l threadstore.Lease, claimed time.Time) {
	t.lease, t.leaseThread = l, threadID
	t.keeper = startAgentLeaseKeeper(l, claimed, agentLeaseTTL, agentLeaseRenew, t.stopRun)
}

// endLease stops renewing the turn's claim and releases it.
func (t *agentTurn) endLease() {
	if t.lease == nil {
		return
	}
	t.keeper.halt()
	t.h.releaseAgentLease(t.x, t.leaseThread, t.lease)
	t.lease, t.keeper = nil, nil
}

// leaseHeld reports whether the turn still holds its thread; once it does
// not, the turn ends with an error event (sent once) and saves nothing more.
func (t *agentTurn) leaseHeld() bool {
	cause := context.Cause(t.runCtx)
	lostLease := errors.Is(cause, errAgentLeaseLost)
	if !lostLease && !errors.Is(cause, errAgentLeaseUnrenewed) {
		return true
	}
	if t.failed {
		return false
	}
	t.failed = true
	t.x.outcome = outcomeStoreUnavailable
	if lostLease {
		t.x.outcome = outcomeThreadBusy
	}
	t.h.logger.Error("the agent's turn lost its thread lease and was stopped",
		zap.String("request_id", t.x.requestID), zap.String("thread_id", t.thread.ID), zap.Error(cause))
	t.frames.errorEvent(agentStreamError{Code: agentErrorCodeStream, AllowRetry: true})
	return false
}

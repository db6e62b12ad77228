package chatkit

// The background sweep of one pooled thread store: uploads no message
// named within a day, and with `retention` the threads nobody touched for
// longer. One loop per pooled store, started with the store's handle and
// stopped by its Destruct, whatever the number of handlers sharing it.

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

const (
	// agentSweepEvery is the longest time between two sweeps; with
	// retention, a tenth of it when that is shorter.
	agentSweepEvery   = time.Hour
	agentSweepTimeout = time.Minute
	// minAgentRetention is the shortest retention: a thread being read
	// must not vanish under its reader for want of a new message.
	minAgentRetention = time.Hour
)

func checkAgentRetention(d time.Duration) error {
	if d < minAgentRetention {
		return refuse("retention", "agent retention must be at least 1h, got %s", d)
	}
	return nil
}

// agentSweepInterval is the time between sweeps under retention (0: none).
func agentSweepInterval(retention time.Duration) time.Duration {
	if retention <= 0 {
		return agentSweepEvery
	}
	return min(agentSweepEvery, retention/10)
}

// agentSweepClock is the sweep's time: the wall clock, or a test's.
type agentSweepClock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type agentWallClock struct{}

func (agentWallClock) Now() time.Time                         { return time.Now() }
func (agentWallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// agentSweeper is the sweep loop of one pooled store, and the retention of
// every handler using the store. Several handlers (sites, or the old and
// the new config during a reload) may set different retentions on one
// database: the shortest wins, since a thread kept past what a site
// promised is the failure a retention exists to prevent. A handler without
// retention asks for none and keeps nobody's threads longer.
type agentSweeper struct {
	stop, done chan struct{}
	wake       chan struct{} // a retention changed: plan the next sweep again
	clock      agentSweepClock
	logger     *zap.Logger

	mu   sync.Mutex
	keep map[*agentRuntime]time.Duration
}

// startSweeper starts the handle's sweep on the wall clock; Destruct stops it.
func (s *agentStoreHandle) startSweeper(logger *zap.Logger) *agentStoreHandle {
	return s.startSweeperWith(logger, agentWallClock{})
}

func (s *agentStoreHandle) startSweeperWith(logger *zap.Logger, clock agentSweepClock) *agentStoreHandle {
	s.sweeper = &agentSweeper{
		stop: make(chan struct{}), done: make(chan struct{}), wake: make(chan struct{}, 1),
		clock: clock, logger: logger, keep: map[*agentRuntime]time.Duration{},
	}
	go s.sweepLoop(s.sweeper)
	return s
}

// retain sets the retention a handler asks of the store; 0 withdraws it
// (the handler's cleanup).
func (s *agentStoreHandle) retain(a *agentRuntime, d time.Duration) {
	sw := s.sweeper
	if sw == nil {
		return
	}
	sw.mu.Lock()
	old, had := sw.keep[a]
	if d > 0 {
		sw.keep[a] = d
	} else {
		delete(sw.keep, a)
	}
	sw.mu.Unlock()
	if old != d || had != (d > 0) {
		select {
		case sw.wake <- struct{}{}:
		default: // a wake is pending already
		}
	}
}

// retention is the shortest retention asked for; 0 when none is.
func (sw *agentSweeper) retention() time.Duration {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	var shortest time.Duration
	for _, d := range sw.keep {
		if shortest == 0 || d < shortest {
			shortest = d
		}
	}
	return shortest
}

// sweepLoop sweeps one interval after the last sweep (or the start). The
// next sweep is planned from the last one, not from a change of retention,
// so that reloads more frequent than the interval never put it off.
func (s *agentStoreHandle) sweepLoop(sw *agentSweeper) {
	defer close(sw.done)
	last := sw.clock.Now()
	for {
		wait := max(0, last.Add(agentSweepInterval(sw.retention())).Sub(sw.clock.Now()))
		select {
		case <-sw.stop:
			return
		case <-sw.wake:
			continue
		case <-sw.clock.After(wait):
		}
		last = sw.clock.Now()
		s.sweepOnce(sw, last)
	}
}

// sweepOnce runs one sweep at now; a panic in it is logged and the loop
// goes on.
func (s *agentStoreHandle) sweepOnce(sw *agentSweeper, now time.Time) {
	defer recoverInto(sw.logger, "sweep the thread store")
	ctx, cancel := context.WithTimeout(context.Background(), agentSweepTimeout)
	defer cancel()
	n, err := s.sweepUnattached(ctx, now)
	switch {
	case err != nil:
		sw.logger.Warn("could not remove the uploads no message named", zap.String("path", s.path), zap.Error(err))
	case n > 0:
		sw.logger.Info("removed uploads no message named within a day", zap.String("path", s.path), zap.Int64("removed", n))
	}
	retention := sw.retention()
	if retention <= 0 {
		return
	}
	d, err := s.sweepIdle(ctx, now.Add(-retention))
	for kind, n := range map[string]int64{"threads": d.Threads, "items": d.Items, "feedback": d.Feedback, "attachments": d.Attachments} {
		agentRetentionDeleted.WithLabelValues(kind).Add(float64(n))
	}
	counts := []zap.Field{zap.String("path", s.path), zap.Duration("retention", retention),
		zap.Int64("threads", d.Threads), zap.Int64("items", d.Items), zap.Int64("feedback", d.Feedback), zap.Int64("attachments", d.Attachments)}
	switch {
	case err != nil:
		agentRetentionSweeps.WithLabelValues("error").Inc()
		sw.logger.Warn("could not remove the threads idle for longer than retention (what was removed is counted)", append(counts, zap.Error(err))...)
	default:
		agentRetentionSweeps.WithLabelValues("ok").Inc()
		if d.Threads > 0 {
			sw.logger.Info("removed the threads idle for longer than retention", counts...)
		}
	}
}

// stopSweeper stops the sweep and waits for it (not under s.mu, which a
// sweep in progress takes).
func (s *agentStoreHandle) stopSweeper() {
	if sw := s.sweeper; sw != nil {
		s.sweeper = nil
		close(sw.stop)
		<-sw.done
	}
}

// sweepUnattached removes the uploads created before now minus
// agentUnattachedTTL that no message named, if the database is open (it is
// not opened for this).
func (s *agentStoreHandle) sweepUnattached(ctx context.Context, now time.Time) (int64, error) {
	s.mu.Lock()
	st := s.store
	if st == nil || s.destructed {
		s.mu.Unlock()
		return 0, nil
	}
	s.users++
	s.mu.Unlock()
	defer s.release()
	return st.DeleteUnattached(ctx, now.Add(-agentUnattachedTTL))
}

// sweepIdle removes the threads not touched since before. Unlike the
// uploads' sweep it opens the database if no request has yet: a site that
// promised retention keeps it across a restart with no visitors.
func (s *agentStoreHandle) sweepIdle(ctx context.Context, before time.Time) (threadstore.Deleted, error) {
	st, release, err := s.acquire(ctx)
	if err != nil {
		return threadstore.Deleted{}, err
	}
	defer release()
	return st.DeleteIdleThreads(ctx, before)
}

var (
	agentRetentionDeleted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "agent_retention_deleted_total",
		Help: "What the retention sweep removed, by kind (threads, items, feedback, attachments).",
	}, []string{"kind"})
	agentRetentionSweeps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "agent_retention_sweeps_total",
		Help: "Retention sweeps, by outcome (ok, error).",
	}, []string{"outcome"})
)

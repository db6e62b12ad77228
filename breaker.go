package chatkit

import (
	"cmp"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Breaker and error-cache defaults.
const (
	defaultBreakerFailures = 5
	defaultBreakerCooldown = 30 * time.Second
	defaultErrorCache      = 10 * time.Second
	maxErrorCache          = 30 * time.Second
)

// CircuitBreaker stops calling OpenAI for a while after a run of failures,
// so a site answers at once instead of piling up waiting requests.
type CircuitBreaker struct {
	// Turns the breaker off.
	Disabled bool `json:"disabled,omitempty"`

	// Consecutive upstream failures (5xx, timeouts, connection errors, unusable
	// answers; never client errors) that open the breaker. Default: 5.
	Failures int `json:"failures,omitempty"`

	// How long the breaker stays open before one probe request is let
	// through. Default: 30s.
	Cooldown caddy.Duration `json:"cooldown,omitempty"`
}

// upstreamGuard protects OpenAI and the site from each other: a circuit
// breaker for outages, and a short cache of configuration errors (bad key,
// unknown workflow) so a misconfigured site does not call OpenAI on every
// page view.
type upstreamGuard struct {
	threshold  int // 0: breaker disabled
	cooldown   time.Duration
	errorTTL   time.Duration // 0: configuration errors are not cached
	onOpen     func()
	onClose    func()
	series     breakerSeries // set while listed in breakers
	group      *breakerGroup
	mu         sync.Mutex
	failures   int
	openUntil  time.Time
	probing    bool
	cached     *upstreamError
	cachedTill time.Time
	// configError is set while the last answer was an auth or workflow
	// error; health reports "degraded" then.
	configError bool
}

// check says whether a call may go ahead. When it may not, it returns the
// cached configuration error to answer with, or how long the open breaker
// still refuses.
func (g *upstreamGuard) check(now time.Time) (cached *upstreamError, breakerWait time.Duration, probe bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cached != nil {
		if now.Before(g.cachedTill) {
			return g.cached, 0, false
		}
		g.cached = nil
	}
	if g.threshold == 0 || g.openUntil.IsZero() {
		return nil, 0, false
	}
	if now.Before(g.openUntil) {
		return nil, g.openUntil.Sub(now), false
	}
	// Half-open: exactly one probe at a time.
	if g.probing {
		return nil, time.Second, false
	}
	g.probing = true
	return nil, 0, true
}

// record updates the guard with a call's result, as the failure's rule
// says: a failure counts towards opening, an answer from OpenAI ends the
// run, and a call the browser abandoned says nothing.
func (g *upstreamGuard) record(uerr *upstreamError, probe bool, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if probe {
		g.probing = false
	}
	effect := breakerResets
	if uerr != nil {
		effect = uerr.failure.rule().breaker
	}
	switch effect {
	case breakerIgnores:
		return
	case breakerResets:
		if !g.openUntil.IsZero() && g.onClose != nil {
			g.onClose()
		}
		g.failures, g.openUntil = 0, time.Time{}
		g.configError = uerr != nil && uerr.failure.rule().configError
		if g.configError && g.errorTTL > 0 {
			g.cached, g.cachedTill = uerr, now.Add(g.errorTTL)
		}
		return
	}
	g.failures++
	if g.threshold > 0 && (probe || g.failures >= g.threshold) {
		if g.openUntil.IsZero() && g.onOpen != nil {
			g.onOpen()
		}
		g.openUntil = now.Add(g.cooldown)
	}
}

// isOpen reports whether the breaker has opened and no probe has closed it
// yet (past the cooldown it still counts as open until a probe succeeds).
func (g *upstreamGuard) isOpen() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.openUntil.IsZero()
}

// degraded reports whether health should say "degraded".
func (g *upstreamGuard) degraded(now time.Time) bool {
	if g == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.configError || (!g.openUntil.IsZero() && now.Before(g.openUntil))
}

func (h *Handler) newUpstreamGuard() *upstreamGuard {
	g := &upstreamGuard{
		threshold: defaultBreakerFailures,
		cooldown:  defaultBreakerCooldown,
		errorTTL:  defaultErrorCache,
	}
	if cb := h.CircuitBreaker; cb != nil {
		if cb.Disabled {
			g.threshold = 0
		} else {
			g.threshold = cmp.Or(cb.Failures, g.threshold)
			if cb.Cooldown > 0 {
				g.cooldown = time.Duration(cb.Cooldown)
			}
		}
	}
	if h.ErrorCache != nil {
		g.errorTTL = time.Duration(*h.ErrorCache)
	}
	g.onOpen = func() {
		h.logger.Warn("circuit breaker opened: OpenAI keeps failing, answering 503 until a probe succeeds",
			zap.Duration("cooldown", g.cooldown))
	}
	g.onClose = func() {
		h.logger.Info("circuit breaker closed: OpenAI answers again")
	}
	path := h.startPath
	if !h.minting && h.Agent != nil {
		path = cmp.Or(h.Agent.Path, defaultAgentPath) // the endpoint that calls OpenAI
	}
	g.register(breakerSeries{site: h.Site, workflow: h.workflowID, startPath: path})
	return g
}

// breakerSeries names a handler's breaker in the metrics: its site, workflow
// and start path. It comes from the config alone (never from requests), so
// it is stable across reloads and there are no more series than chatkit
// blocks.
type breakerSeries struct{ site, workflow, startPath string }

// breakers holds the breakers of live handlers, for the metrics collector:
// a handler's Provision adds its breaker and its Cleanup removes it, so a
// scrape describes the running config only.
var breakers = caddy.NewUsagePool()

// breakerGroup is the breakers of the live handlers that share a series:
// the old and the new handler while a reload is under way, or JSON configs
// that leave site unset.
type breakerGroup struct {
	mu     sync.Mutex
	guards map[*upstreamGuard]struct{}
}

func (*breakerGroup) Destruct() error { return nil }

// open reports whether any breaker of the group is open.
func (b *breakerGroup) open() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for g := range b.guards {
		if g.isOpen() {
			return true
		}
	}
	return false
}

// register lists the guard in the metrics under series.
func (g *upstreamGuard) register(series breakerSeries) {
	val, _, _ := breakers.LoadOrNew(series, func() (caddy.Destructor, error) {
		return &breakerGroup{guards: make(map[*upstreamGuard]struct{})}, nil
	})
	group := val.(*breakerGroup)
	group.mu.Lock()
	group.guards[g] = struct{}{}
	group.mu.Unlock()
	g.series, g.group = series, group
}

// unregister removes the guard from the metrics; Cleanup calls it once,
// and calling it again does nothing.
func (g *upstreamGuard) unregister() {
	if g == nil || g.group == nil {
		return
	}
	g.group.mu.Lock()
	delete(g.group.guards, g)
	g.group.mu.Unlock()
	_, _ = breakers.Delete(g.series)
	g.group = nil
}

// release ends a probe that never reached OpenAI.
func (g *upstreamGuard) release(probe bool) {
	if probe {
		g.mu.Lock()
		g.probing = false
		g.mu.Unlock()
	}
}

package chatkit

// Limits that only the agent has: token budgets (what OpenAI reports a turn
// cost, per user and for the site, in fixed windows) and the bucket that
// bounds reads of the thread store; one running turn per thread is the
// store's lease (agent_lease.go).
// Model runs also spend the block's `rate_limit` token and `budget` run,
// which live in the rate-limit zone (ratelimit.go). With the block's Redis
// the token budgets live there too (redis.go), shared by every instance.

import (
	"context"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The read bucket: threads.get_by_id, threads.list, items.list and the JSON
// writes cost no rate-limit token, but each client may make at most
// agentReadBurst of them at once, then one more per agentReadInterval
// (240 a minute), so that nobody can keep the database busy.
const (
	agentReadBurst    = 60
	agentReadInterval = 250 * time.Millisecond
)

// agentTokenSample is how many tracked users a full token ledger looks at
// to find the one to forget (the one that spent least).
const agentTokenSample = 8

// agentZones holds each rate-limit zone's agent state (token ledgers and
// read buckets) across config reloads, like the zone's own buckets.
var agentZones = caddy.NewUsagePool()

// agentZone is the agent's part of a rate-limit zone.
type agentZone struct {
	tokens *tokenLedger
	reads  *bucketStore
}

func newAgentZone(maxKeys int) *agentZone {
	return &agentZone{tokens: newTokenLedger(maxKeys), reads: newBucketStore(maxKeys)}
}

// Destruct has nothing to stop: the zone holds memory only.
func (z *agentZone) Destruct() error { return nil }

// tokenLimit is a token_budget: tokens per fixed window of interval.
type tokenLimit struct {
	tokens   int64
	interval time.Duration
}

// window returns the index of the fixed window that now (ns on the zone's
// monotonic time base) falls in, and the time left in it.
func (l tokenLimit) window(now int64) (index int64, left time.Duration) {
	iv := max(int64(l.interval), 1)
	index = now / iv
	if now < 0 && now%iv != 0 {
		index-- // floor
	}
	return index, time.Duration((index+1)*iv - now)
}

// tokenWindow is what was spent in one window.
type tokenWindow struct {
	index int64
	used  int64
}

// current returns the spend in now's window. A window that has passed
// counts nothing; one ahead of now (a clock that went back: not the
// monotonic one the handler uses, but a test's) is kept as the current one,
// so no clock step ever hands back a spent budget.
func (w *tokenWindow) current(index int64) *tokenWindow {
	if index > w.index {
		w.index, w.used = index, 0
	}
	return w
}

// tokenLedger counts tokens per user and for the site. Admission is exact:
// once a window's usage has reached its budget, nothing more is admitted in
// it; a turn admitted under the budget may finish over it. At most maxUsers
// users are tracked: a new user past that replaces, among a few sampled,
// the one that spent least in its window (bounded memory; under a flood of
// new users a forgotten user may get a fresh budget).
type tokenLedger struct {
	mu       sync.Mutex
	site     tokenWindow
	users    map[string]*tokenWindow
	maxUsers int
}

func newTokenLedger(maxUsers int) *tokenLedger {
	return &tokenLedger{users: make(map[string]*tokenWindow), maxUsers: max(maxUsers, 1)}
}

// tokenScope says which budget refused a turn.
type tokenScope uint8

const (
	tokenScopeNone tokenScope = iota
	tokenScopeUser
	tokenScopeSite
	// tokenScopeUnavailable: the budgets are in Redis, Redis does not
	// answer and on_redis_error is deny.
	tokenScopeUnavailable
)

// admitTokens decides a paid call for owner against the agent's token
// budgets: tokenScopeNone admits it, else the budget that refused and the
// wait until its window ends. With the block's Redis the decision is made
// there, for every instance; while Redis does not answer, on_redis_error
// decides, as for the other limits (rateLimiter.decideShared).
func (h *Handler) admitTokens(ctx context.Context, owner string, now time.Time) (tokenScope, time.Duration) {
	a := h.agent
	if a.userBudget == nil && a.siteBudget == nil {
		return tokenScopeNone, 0
	}
	scope, wait := tokenScopeNone, time.Duration(0)
	_, ok := h.limiter.decideShared(ctx, now,
		func(ctx context.Context, b *redisBackend) (decision, error) {
			var err error
			scope, wait, err = b.admitTokens(ctx, owner, a.userBudget, a.siteBudget, now)
			return decision{}, err
		},
		func() decision {
			scope, wait = a.zone.tokens.admit(owner, a.userBudget, a.siteBudget, h.limiter.zone.clock.nanos(now))
			return decision{}
		})
	if !ok {
		return tokenScopeUnavailable, redisRetryBackoff
	}
	return scope, wait
}

// chargeTokens counts what a call cost where admitTokens looks: in Redis
// when it answers, else in this instance's ledger (the one the fallback
// admits by), so what is spent while Redis is away counts on this
// instance only.
func (h *Handler) chargeTokens(owner string, tokens int64, now time.Time) {
	a := h.agent
	if tokens <= 0 || (a.userBudget == nil && a.siteBudget == nil) {
		return
	}
	// Not the request's context: a visitor who went away still spent the
	// tokens.
	h.limiter.decideShared(context.Background(), now,
		func(ctx context.Context, b *redisBackend) (decision, error) {
			return decision{}, b.chargeTokens(ctx, owner, tokens, a.userBudget, a.siteBudget, now)
		},
		func() decision {
			a.zone.tokens.charge(owner, tokens, a.userBudget, a.siteBudget, h.limiter.zone.clock.nanos(now))
			return decision{}
		})
}

// admit decides whether user may start a turn now (ns on the zone's
// monotonic base); when not, it says which budget is spent and how long its
// window still runs. A nil limit is no budget.
func (l *tokenLedger) admit(user string, perUser, site *tokenLimit, now int64) (tokenScope, time.Duration) {
	if perUser == nil && site == nil {
		return tokenScopeNone, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if site != nil {
		index, left := site.window(now)
		if l.site.current(index).used >= site.tokens {
			return tokenScopeSite, left
		}
	}
	if perUser != nil {
		if w := l.users[user]; w != nil {
			index, left := perUser.window(now)
			if w.current(index).used >= perUser.tokens {
				return tokenScopeUser, left
			}
		}
	}
	return tokenScopeNone, 0
}

// charge adds what a turn cost to the windows now falls in.
func (l *tokenLedger) charge(user string, tokens int64, perUser, site *tokenLimit, now int64) {
	if tokens <= 0 || (perUser == nil && site == nil) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if site != nil {
		index, _ := site.window(now)
		l.site.current(index).used += tokens
	}
	if perUser == nil {
		return
	}
	index, _ := perUser.window(now)
	w := l.users[user]
	if w == nil {
		if len(l.users) >= l.maxUsers {
			l.forgetOne(index)
		}
		w = &tokenWindow{index: index}
		l.users[user] = w
	}
	w.current(index).used += tokens
}

// forgetOne drops a user to make room: one whose window has passed if the
// sample holds one, else the one that spent least.
func (l *tokenLedger) forgetOne(index int64) {
	victim, least, n := "", int64(-1), 0
	for user, w := range l.users {
		if w.index < index {
			victim = user
			break
		}
		if least < 0 || w.used < least {
			victim, least = user, w.used
		}
		if n++; n >= agentTokenSample {
			break
		}
	}
	delete(l.users, victim)
}

// spent reports what user and the site have spent in now's windows (for
// tests and logs).
func (l *tokenLedger) spent(user string, perUser, site *tokenLimit, now int64) (userTokens, siteTokens int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if site != nil {
		index, _ := site.window(now)
		if l.site.index >= index {
			siteTokens = l.site.used
		}
	}
	if w := l.users[user]; w != nil && perUser != nil {
		index, _ := perUser.window(now)
		if w.index >= index {
			userTokens = w.used
		}
	}
	return userTokens, siteTokens
}

package chatkit

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Rate-limit defaults: the old token service's numbers.
const (
	defaultBurst    = 10
	defaultInterval = time.Second
	defaultMaxKeys  = 100_000
	clientIPKey     = "{client_ip}"
	// janitorPeriod is how often idle, refilled buckets are dropped. They
	// carry no state, so this only bounds memory between floods.
	janitorPeriod = 30 * time.Second
	// rateLimitPolicyName names the policy in the RateLimit headers.
	rateLimitPolicyName = `"chatkit"`
)

// zones holds each rate-limit zone's buckets across config reloads, so a
// reload neither forgets nor resets what clients have spent.
var zones = caddy.NewUsagePool()

// RateLimit limits how often each client may start or refresh a session:
// `burst` requests at once, then one more per `interval` (a token bucket
// with continuous refill). On by default at 10 per 1s.
type RateLimit struct {
	// Disables per-client limiting.
	Disabled bool `json:"disabled,omitempty"`

	// Requests a client may make at once. Default: 10.
	Burst int `json:"burst,omitempty"`

	// Time for one token to come back. Default: 1s.
	Interval caddy.Duration `json:"interval,omitempty"`

	// What identifies a client, as a placeholder. Default: `{client_ip}`,
	// which honours the server's `trusted_proxies`. A value that parses as
	// an IP address is grouped by the prefixes below; an empty value falls
	// back to the client IP.
	Key string `json:"key,omitempty"`

	// IPv4 addresses sharing this many leading bits share a bucket.
	// Default: 32.
	IPv4Prefix int `json:"ipv4_prefix,omitempty"`

	// IPv6 addresses sharing this many leading bits share a bucket, so
	// rotating addresses inside one allocation does not escape the limit.
	// Default: 64.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

	// Most buckets kept in memory; when full, refilled buckets go first,
	// then the least recently used. Default: 100000.
	MaxKeys int `json:"max_keys,omitempty"`

	// Handlers naming the same zone share buckets, the budget and the
	// revoke registry, across sites too. Default: a zone of the handler's
	// own, shared only with handlers of the same site that limit the same
	// workflow and paths with the same settings (see the handler's `site`).
	Zone string `json:"zone,omitempty"`

	// A `redis://` or `rediss://` URL (password and db in the URL;
	// placeholders allowed) to keep the buckets, the budget, the revoke
	// registry and the agent's token budgets in, so several Caddy
	// instances share one set of limits. Connections are opened on first
	// use.
	Redis string `json:"redis,omitempty"`

	// What to do while Redis is unreachable: `local` (default) falls back to
	// this instance's own buckets, budget and token counts; `deny` answers
	// 503 (a refused turn on the agent endpoint).
	OnRedisError string `json:"on_redis_error,omitempty"`
}

// Budget is a site-wide ceiling on sessions minted, shared by every client:
// at most `sessions` in any window of length `interval` (an exact sliding
// window, not a bucket). Handlers sharing a zone share its budget.
type Budget struct {
	// Sessions allowed in any window of the interval, at most 1000000 (the
	// budget keeps the time of each one still in the window).
	Sessions int `json:"sessions"`

	// The length of the window the sessions are counted over.
	Interval caddy.Duration `json:"interval"`
}

// limiterZone is the pooled state of one zone: per-client buckets, the
// budget and the registry of issued sessions. A janitor it owns stops when
// the last config using it goes.
type limiterZone struct {
	// clock is the zone's time base for buckets and the budget: it lives as
	// long as they do, across reloads, and does not follow wall-clock steps.
	clock   monoClock
	buckets *bucketStore
	budget  admissionLog
	// budgetWarnTill is when (on clock) the next "budget exhausted"
	// warning may be logged.
	budgetWarnTill atomic.Int64
	// limit is the most lenient per-client limit among the configs that
	// used the zone, which the janitor needs to tell refilled buckets.
	limit    atomic.Pointer[limit]
	sessions *sessionRegistry
	// logger is the newest config's (the zone outlives the others), for
	// the janitor.
	logger atomic.Pointer[zap.Logger]
	// sweepHook, set only by tests before the janitor starts, runs at the
	// start of every sweep.
	sweepHook func()
	stop      chan struct{}
	done      chan struct{}
}

// newLimiterZone returns a zone with its janitor running.
func newLimiterZone(maxKeys int, now func() time.Time) *limiterZone {
	z := makeLimiterZone(maxKeys)
	ticker := time.NewTicker(janitorPeriod)
	go func() {
		defer ticker.Stop()
		z.janitor(now, ticker.C)
	}()
	return z
}

// makeLimiterZone returns a zone whose janitor is not started yet.
func makeLimiterZone(maxKeys int) *limiterZone {
	z := &limiterZone{
		clock:    newMonoClock(),
		buckets:  newBucketStore(maxKeys),
		sessions: newSessionRegistry(maxRegisteredSessions),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	z.budgetWarnTill.Store(math.MinInt64)
	z.logger.Store(zap.NewNop())
	return z
}

// janitor sweeps at every tick until the zone is destructed.
func (z *limiterZone) janitor(now func() time.Time, ticks <-chan time.Time) {
	defer close(z.done)
	defer recoverInto(z.logger.Load(), "rate-limit janitor")
	for {
		select {
		case <-z.stop:
			return
		case <-ticks:
			z.sweep(now)
		}
	}
}

// sweep drops refilled buckets and expired sessions. A panic here is
// logged (by the newest config's logger) and the janitor carries on:
// memory stays bounded by max_keys without it, so it is no reason to take
// Caddy down.
func (z *limiterZone) sweep(now func() time.Time) {
	defer recoverInto(z.logger.Load(), "rate-limit janitor sweep")
	if z.sweepHook != nil {
		z.sweepHook()
	}
	t := now()
	if l := z.limit.Load(); l != nil {
		z.buckets.sweep(z.clock.nanos(t), *l)
	}
	z.sessions.forgetExpired(t)
}

// keepLenientLimit records l for the janitor if it lets buckets hold more
// than the limit recorded so far: handlers sharing a zone may differ, and a
// bucket is only dropped once it is full under the most lenient of them.
func (z *limiterZone) keepLenientLimit(l limit) {
	for {
		cur := z.limit.Load()
		if cur != nil {
			_, curTau, _ := cur.params()
			_, tau, _ := l.params()
			if curTau >= tau {
				return
			}
		}
		if z.limit.CompareAndSwap(cur, &l) {
			return
		}
	}
}

// Destruct stops the janitor; the pool calls it when no config uses the zone.
func (z *limiterZone) Destruct() error {
	close(z.stop)
	<-z.done
	return nil
}

// rateLimiter is a handler's view of its zone: the limits it applies and
// how it keys clients.
type rateLimiter struct {
	zoneKey    string
	zone       *limiterZone
	limit      limit
	keyPattern string
	ipv4Prefix int
	ipv6Prefix int
	policy     string // the RateLimit-Policy header value
	budget     *windowLimit
	redis      *redisBackend // nil: in-process only
	logger     *zap.Logger
}

// provisionZone acquires the handler's zone from the pool and sets up the
// limits it applies there.
func (h *Handler) provisionZone(defaultZone string) error {
	rl := h.RateLimit
	if rl == nil {
		rl = new(RateLimit)
	}
	r := &rateLimiter{
		limit:      limit{burst: cmp.Or(rl.Burst, defaultBurst), interval: time.Duration(rl.Interval)},
		keyPattern: rl.Key,
		ipv4Prefix: cmp.Or(rl.IPv4Prefix, defaultIPv4Prefix),
		ipv6Prefix: cmp.Or(rl.IPv6Prefix, defaultIPv6Prefix),
		logger:     h.logger,
	}
	if r.limit.interval == 0 {
		r.limit.interval = defaultInterval
	}
	if r.keyPattern == clientIPKey {
		r.keyPattern = ""
	}
	// The values were checked by validate (validate.go) before Provision
	// got here.
	maxKeys := cmp.Or(rl.MaxKeys, defaultMaxKeys)
	if b := h.Budget; b != nil {
		r.budget = &windowLimit{n: b.Sessions, interval: time.Duration(b.Interval)}
	}
	if !rl.Disabled {
		r.policy = fmt.Sprintf("%s;q=%d;w=%d", rateLimitPolicyName, r.limit.burst,
			ceilSeconds(r.limit.interval*time.Duration(r.limit.burst)))
	}

	// Without a zone: the handler's own (see defaultZoneKey).
	r.zoneKey = defaultZone
	if rl.Zone != "" {
		r.zoneKey = "zone:" + rl.Zone
	}
	val, _, err := zones.LoadOrNew(r.zoneKey, func() (caddy.Destructor, error) {
		return newLimiterZone(maxKeys, h.now), nil
	})
	if err != nil {
		return err
	}
	r.zone = val.(*limiterZone)
	r.zone.logger.Store(h.logger)
	h.limiter = r
	if rl.Redis != "" {
		if r.redis, err = newRedisBackend(rl.Redis, r.zoneKey, rl.OnRedisError, h.logger); err != nil {
			return err
		}
	}
	// The newest config decides the zone's size (a shrink evicts at once)
	// and the limit the janitor sweeps by.
	r.zone.buckets.setMaxKeys(maxKeys)
	r.zone.keepLenientLimit(r.limit)
	return nil
}

func (h *Handler) cleanupRateLimit() {
	// h.limiter stays set: a reload cleans up the old config while its last
	// requests may still be running, and the zone they point at stays valid
	// until they finish (a pooled value is only dropped, never reused).
	if h.limiter != nil && !h.limiterReleased {
		h.limiterReleased = true
		if h.limiter.redis != nil {
			h.limiter.redis.release()
		}
		_, _ = zones.Delete(h.limiter.zoneKey)
	}
}

func ceilSeconds(d time.Duration) int64 {
	return int64(math.Ceil(d.Seconds()))
}

// clientKey derives the bucket key for a request without allocating in the
// default `{client_ip}` case.
func (r *rateLimiter) clientKey(req *http.Request, repl *caddy.Replacer) bucketKey {
	if r.keyPattern != "" {
		if v := repl.ReplaceAll(r.keyPattern, ""); v != "" {
			if ip, err := netip.ParseAddr(v); err == nil {
				return ipBucketKey(ip, r.ipv4Prefix, r.ipv6Prefix)
			}
			return stringBucketKey(v)
		}
	}
	ipStr, _ := caddyhttp.GetVar(req.Context(), caddyhttp.ClientIPVarKey).(string)
	if ip, err := netip.ParseAddr(ipStr); err == nil {
		return ipBucketKey(ip, r.ipv4Prefix, r.ipv6Prefix)
	}
	// Never one shared "unknown" bucket: fall back to the peer address.
	host, _ := splitHostPort(req.RemoteAddr)
	if ip, err := netip.ParseAddr(host); err == nil {
		return ipBucketKey(ip, r.ipv4Prefix, r.ipv6Prefix)
	}
	return stringBucketKey(req.RemoteAddr)
}

// limitResult is the limiter's decision on one request.
type limitResult uint8

const (
	limitAllowed         limitResult = iota
	limitRateLimited                 // the client's bucket is empty
	limitBudgetExhausted             // the site-wide budget is used up
	limitUnavailable                 // Redis is unreachable and on_redis_error is deny
)

// limitVerdict is what the limiter decided; the handler turns a refusal
// into its answer.
type limitVerdict struct {
	result     limitResult
	retryAfter time.Duration
}

// rateLimitState is what the RateLimit headers report on the answer.
type rateLimitState struct {
	policy string // the RateLimit-Policy value; "" when the client limit is off
	state  string // the RateLimit value; "" when not known (a peek in Redis mode)
}

// apply writes the headers, once, when the answer goes out.
func (s rateLimitState) apply(hdr http.Header) {
	if s.policy == "" {
		return
	}
	hdr["Ratelimit-Policy"] = []string{s.policy}
	if s.state != "" {
		hdr["Ratelimit"] = []string{s.state}
	}
}

// chargeClient spends one of the client's tokens.
func (r *rateLimiter) chargeClient(ctx context.Context, req *http.Request, repl *caddy.Replacer, now time.Time) (limitVerdict, rateLimitState) {
	if r.policy == "" {
		return limitVerdict{}, rateLimitState{}
	}
	key := r.clientKey(req, repl)
	d, ok := r.decideShared(ctx, now,
		func(ctx context.Context, b *redisBackend) (decision, error) {
			return b.run(ctx, b.prefix+hex.EncodeToString(key[:]), r.limit, now)
		},
		func() decision { return r.zone.buckets.allow(key, r.limit, r.zone.clock.nanos(now)) })
	if !ok {
		return limitVerdict{result: limitUnavailable, retryAfter: redisRetryBackoff}, rateLimitState{policy: r.policy}
	}
	st := rateLimitState{policy: r.policy, state: rateLimitHeader(d)}
	if d.allowed {
		return limitVerdict{}, st
	}
	return limitVerdict{result: limitRateLimited, retryAfter: d.retryAfter}, st
}

// peekClient reports the client's bucket without spending from it, for
// answers that cost nothing. In Redis mode the in-process view is only an
// estimate, so only the policy is reported.
func (r *rateLimiter) peekClient(req *http.Request, repl *caddy.Replacer, now time.Time) rateLimitState {
	if r == nil || r.policy == "" {
		return rateLimitState{}
	}
	st := rateLimitState{policy: r.policy}
	if r.redis == nil {
		st.state = rateLimitHeader(r.zone.buckets.peek(r.clientKey(req, repl), r.limit, r.zone.clock.nanos(now)))
	}
	return st
}

// decideShared makes a decision that instances share: remote, in Redis,
// when configured, and local, in this instance's zone, otherwise or while
// Redis is down (unless on_redis_error is deny, in which case ok is false).
// Clients' buckets and the budget both go through here.
func (r *rateLimiter) decideShared(ctx context.Context, now time.Time,
	remote func(context.Context, *redisBackend) (decision, error), local func() decision) (d decision, ok bool) {
	if b := r.redis; b != nil {
		if b.usable(now) {
			d, err := remote(ctx, b)
			if err == nil {
				return d, true
			}
		}
		if b.deny {
			return d, false
		}
		redisFallbacks.Inc()
	}
	return local(), true
}

func rateLimitHeader(d decision) string {
	buf := make([]byte, 0, 40)
	buf = append(buf, rateLimitPolicyName...)
	buf = append(buf, ";r="...)
	buf = strconv.AppendInt(buf, int64(d.remaining), 10)
	buf = append(buf, ";t="...)
	buf = strconv.AppendInt(buf, ceilSeconds(d.nextToken), 10)
	return string(buf)
}

// spendBudget takes one model run from the site-wide budget.
func (r *rateLimiter) spendBudget(ctx context.Context, now time.Time) limitVerdict {
	if r.budget == nil {
		return limitVerdict{}
	}
	d, ok := r.decideShared(ctx, now,
		func(ctx context.Context, b *redisBackend) (decision, error) {
			return b.admitWindow(ctx, b.prefix+budgetRedisKey, *r.budget, now)
		},
		func() decision { return r.zone.budget.admit(*r.budget, r.zone.clock.nanos(now)) })
	if !ok {
		return limitVerdict{result: limitUnavailable, retryAfter: redisRetryBackoff}
	}
	if d.allowed {
		return limitVerdict{}
	}
	// One warning per window, not one per refused request.
	warned := &r.zone.budgetWarnTill
	if till, ns := warned.Load(), r.zone.clock.nanos(now); ns >= till &&
		warned.CompareAndSwap(till, addSat(ns, int64(r.budget.interval))) {
		r.logger.Warn("site-wide budget exhausted: refusing new ChatKit sessions and model runs until the oldest leaves the window",
			zap.Int("budget", r.budget.n), zap.Duration("interval", r.budget.interval),
			zap.Duration("retry_after", d.retryAfter))
	}
	budgetExhausted.WithLabelValues(r.zoneKey).Inc()
	return limitVerdict{result: limitBudgetExhausted, retryAfter: d.retryAfter}
}

package chatkit

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Redis timing: every operation is bounded so a down or stalled Redis can
// only add this much to a request, and after a failure Redis is skipped for
// a short while so an outage does not add it to every request.
const (
	redisOpTimeout    = 500 * time.Millisecond
	redisRetryBackoff = 2 * time.Second
)

// redisClients shares one client (and its connection pool) per Redis URL
// across handlers and config reloads.
var redisClients = caddy.NewUsagePool()

type pooledRedis struct {
	client  *redis.Client
	limiter *redis_rate.Limiter
}

func (p *pooledRedis) Destruct() error { return p.client.Close() }

// redisBackend keeps a zone's buckets, budget and session registry in
// Redis, so several Caddy instances enforce one set of limits.
type redisBackend struct {
	poolKey   string
	address   string // host:port only, for logs (the URL may hold a password)
	client    *redis.Client
	limiter   *redis_rate.Limiter
	prefix    string
	deny      bool
	logger    *zap.Logger
	clock     monoClock
	downUntil atomic.Int64 // on clock: Redis is skipped before then
	inOutage  atomic.Bool
}

// newRedisBackend parses the URL and takes a pooled client. go-redis
// connects lazily, so this does no I/O: `caddy validate` works without Redis.
func newRedisBackend(rawURL, zoneKey, onError string, logger *zap.Logger) (*redisBackend, error) {
	resolved := caddy.NewReplacer().ReplaceAll(rawURL, "")
	opts, err := parseRedisURL(resolved)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout = redisOpTimeout
	opts.ReadTimeout = redisOpTimeout
	opts.WriteTimeout = redisOpTimeout
	opts.PoolTimeout = redisOpTimeout
	opts.MaxRetries = -1 // one attempt: the fallback is the retry
	opts.DialerRetries = 1
	opts.ContextTimeoutEnabled = true
	val, _, err := redisClients.LoadOrNew(resolved, func() (caddy.Destructor, error) {
		client := redis.NewClient(opts)
		return &pooledRedis{client: client, limiter: redis_rate.NewLimiter(client)}, nil
	})
	if err != nil {
		return nil, err
	}
	pooled := val.(*pooledRedis)
	b := &redisBackend{
		poolKey: resolved,
		address: opts.Addr,
		client:  pooled.client,
		limiter: pooled.limiter,
		prefix:  "chatkit:" + zoneKey + ":",
		deny:    onError == "deny",
		logger:  logger,
		clock:   newMonoClock(),
	}
	b.downUntil.Store(math.MinInt64)
	return b, nil
}

func (b *redisBackend) release() { _, _ = redisClients.Delete(b.poolKey) }

// usable reports whether Redis should be tried now.
func (b *redisBackend) usable(now time.Time) bool { return b.clock.nanos(now) >= b.downUntil.Load() }

// failed records an error: Redis is skipped for a moment, and the outage is
// logged once, not once per request. A request whose browser went away says
// nothing about Redis and is not counted.
func (b *redisBackend) failed(ctx context.Context, now time.Time, err error) {
	if ctx.Err() != nil {
		return
	}
	redisErrors.Inc()
	b.downUntil.Store(b.clock.nanos(now.Add(redisRetryBackoff)))
	if b.inOutage.CompareAndSwap(false, true) {
		mode := "falling back to this instance's own limits"
		if b.deny {
			mode = "refusing rate-limited requests with 503"
		}
		b.logger.Warn("Redis is unreachable: "+mode+" until it answers again",
			zap.String("redis", b.address), zap.Error(err))
	}
}

func (b *redisBackend) succeeded() {
	if b.inOutage.CompareAndSwap(true, false) {
		b.logger.Info("Redis answers again: limits are shared again", zap.String("redis", b.address))
	}
}

// op runs one Redis operation under the op timeout and records whether
// Redis answered.
func (b *redisBackend) op(ctx context.Context, now time.Time, fn func(context.Context) error) error {
	opCtx, cancel := context.WithTimeout(ctx, redisOpTimeout)
	defer cancel()
	if err := fn(opCtx); err != nil {
		b.failed(ctx, now, err)
		return err
	}
	b.succeeded()
	return nil
}

// run spends one token from the bucket at key (a client's, or the budget).
func (b *redisBackend) run(ctx context.Context, key string, l limit, now time.Time) (decision, error) {
	var d decision
	err := b.op(ctx, now, func(ctx context.Context) error {
		res, err := b.limiter.Allow(ctx, key, redis_rate.Limit{Rate: 1, Period: l.interval, Burst: l.burst})
		if err == nil {
			d = redisDecision(res, l)
		}
		return err
	})
	return d, err
}

// redisDecision turns redis_rate's answer into the same decision the
// in-process store gives, for the same headers in both modes.
func redisDecision(res *redis_rate.Result, l limit) decision {
	d := decision{allowed: res.Allowed > 0, remaining: max(res.Remaining, 0)}
	if !d.allowed {
		d.retryAfter = max(res.RetryAfter, time.Nanosecond)
	}
	if reset := res.ResetAfter; reset > 0 && l.interval > 0 {
		used := (reset + l.interval - 1) / l.interval
		d.nextToken = reset - (used-1)*l.interval
	}
	return d
}

// budgetRedisKey names the budget's admission log under the zone prefix.
const budgetRedisKey = "budget:log"

// admitWindowScript is the budget's sliding window (window.go) in Redis:
// the same rule as admissionLog.admit, in one atomic script, on Redis's
// clock (the instances' clocks may disagree). KEYS[1] is a list of
// admission times, microseconds on Redis's clock, oldest first; ARGV are n
// and the window in microseconds. The list keeps the last n admissions and
// expires one window after the newest, when none of them counts any more.
// Returns {1, 0} when admitted, else {0, microseconds until the n-th most
// recent admission leaves the window}.
var admitWindowScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local key = KEYS[1]
local n = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local nowStr = t[1] .. string.format('%06d', tonumber(t[2]))
local now = tonumber(nowStr)
local len = redis.call('LLEN', key)
-- Redis's clock went back: a logged time later than now counts as now.
local i = -1
while i >= -len and tonumber(redis.call('LINDEX', key, i)) > now do
	redis.call('LSET', key, i, nowStr)
	i = i - 1
end
if len >= n then
	local wait = tonumber(redis.call('LINDEX', key, -n)) + window - now
	if wait > 0 then
		return {0, wait}
	end
end
redis.call('RPUSH', key, nowStr)
if len >= n then
	redis.call('LTRIM', key, -n, -1)
end
redis.call('PEXPIRE', key, math.ceil(window / 1000))
return {1, 0}
`)

// admitWindow takes one admission from the sliding window at key.
func (b *redisBackend) admitWindow(ctx context.Context, key string, l windowLimit, now time.Time) (decision, error) {
	var d decision
	err := b.op(ctx, now, func(ctx context.Context) error {
		res, err := admitWindowScript.Run(ctx, b.client, []string{key}, max(l.n, 1), windowMicros(l.interval)).Int64Slice()
		if err == nil && len(res) != 2 {
			err = fmt.Errorf("the budget script answered %v", res)
		}
		if err != nil {
			return err
		}
		d.allowed = res[0] == 1
		if !d.allowed {
			d.retryAfter = max(time.Duration(res[1])*time.Microsecond, time.Microsecond)
		}
		return nil
	})
	return d, err
}

// rememberSession stores a digest of an issued secret with its session,
// expiring with it.
func (b *redisBackend) rememberSession(ctx context.Context, secret string, s issuedSession, now time.Time) error {
	ttl := time.Unix(s.expiresAt, 0).Sub(now)
	if ttl < time.Second {
		return nil
	}
	return b.op(ctx, now, func(ctx context.Context) error {
		return b.client.Set(ctx, b.sessionKey(secret), s.sessionID+"\n"+s.user, ttl).Err()
	})
}

// takeSession returns and forgets the session of a secret issued to user,
// by any instance sharing this Redis.
func (b *redisBackend) takeSession(ctx context.Context, secret, user string, now time.Time) (issuedSession, bool, error) {
	key := b.sessionKey(secret)
	var val string
	err := b.op(ctx, now, func(ctx context.Context) error {
		var err error
		val, err = b.client.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			return nil // not found is an answer
		}
		return err
	})
	if err != nil || val == "" {
		return issuedSession{}, false, err
	}
	id, owner, ok := strings.Cut(val, "\n")
	if !ok || owner != user {
		return issuedSession{}, false, nil
	}
	delCtx, cancel := context.WithTimeout(ctx, redisOpTimeout)
	defer cancel()
	if b.client.Del(delCtx, key).Val() != 1 {
		// Another refresh took it first.
		return issuedSession{}, false, nil
	}
	return issuedSession{sessionID: id, user: owner}, true, nil
}

func (b *redisBackend) sessionKey(secret string) string {
	d := digestSecret(secret)
	return b.prefix + "sess:" + hex.EncodeToString(d[:])
}

// Token budgets (agent_limits.go) in Redis: each budget is a hash under the
// zone prefix, {w: the window's index, u: tokens used in it}, expiring when
// its window ends. Windows are fixed, interval long and aligned to the Unix
// epoch on Redis's clock, so every instance sees the same windows whatever
// its own clock says. A stored window later than now's (Redis's clock went
// back) stays the current one, so no clock step hands a spent budget back.
const (
	tokensSiteRedisKey = "tokens:site"
	tokensUserRedisKey = "tokens:user:"
)

// admitTokensScript decides a turn against the budgets: KEYS are the
// budgets' hashes, ARGV each one's tokens and window (µs), in turn. It
// returns {0, 0} when all are under their budget, else {i, µs until the
// window ends} for the first key (1-based) whose window is spent.
var admitTokensScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
	local tokens = tonumber(ARGV[2 * i - 1])
	local window = tonumber(ARGV[2 * i])
	local index = math.floor(now / window)
	local v = redis.call('HMGET', KEYS[i], 'w', 'u')
	if v[1] and tonumber(v[1]) >= index and tonumber(v[2] or '0') >= tokens then
		return {i, (index + 1) * window - now}
	end
end
return {0, 0}
`)

// chargeTokensScript adds ARGV[1] tokens to every budget in KEYS, in the
// window now falls in; ARGV[i+1] is KEYS[i]'s window (µs). string.format
// writes integers exactly (a Lua number as an argument keeps 14 digits).
var chargeTokensScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
	local window = tonumber(ARGV[i + 1])
	local index = math.floor(now / window)
	local stored = redis.call('HGET', KEYS[i], 'w')
	local w = nil
	if stored then w = tonumber(stored) end
	if w == nil or w < index then
		redis.call('HSET', KEYS[i], 'w', string.format('%d', index), 'u', ARGV[1])
		w = index
	else
		redis.call('HINCRBY', KEYS[i], 'u', ARGV[1])
	end
	redis.call('PEXPIRE', KEYS[i], string.format('%d', math.ceil(((w + 1) * window - now) / 1000)))
end
return 1
`)

// tokenBudgets lists the configured budgets for user, the site's first (it
// is checked first, as in-process), with their keys and scopes.
func (b *redisBackend) tokenBudgets(user string, perUser, site *tokenLimit) (keys []string, limits []*tokenLimit, scopes []tokenScope) {
	if site != nil {
		keys, limits, scopes = append(keys, b.prefix+tokensSiteRedisKey), append(limits, site), append(scopes, tokenScopeSite)
	}
	if perUser != nil {
		// A digest, not the id, as for the buckets: Redis's operators need
		// not see who chats.
		k := stringBucketKey(user)
		keys = append(keys, b.prefix+tokensUserRedisKey+hex.EncodeToString(k[:]))
		limits, scopes = append(limits, perUser), append(scopes, tokenScopeUser)
	}
	return keys, limits, scopes
}

// admitTokens is tokenLedger.admit in Redis, shared by every instance.
func (b *redisBackend) admitTokens(ctx context.Context, user string, perUser, site *tokenLimit, now time.Time) (tokenScope, time.Duration, error) {
	keys, limits, scopes := b.tokenBudgets(user, perUser, site)
	if len(keys) == 0 {
		return tokenScopeNone, 0, nil
	}
	args := make([]any, 0, 2*len(limits))
	for _, l := range limits {
		args = append(args, l.tokens, windowMicros(l.interval))
	}
	scope, wait := tokenScopeNone, time.Duration(0)
	err := b.op(ctx, now, func(ctx context.Context) error {
		res, err := admitTokensScript.Run(ctx, b.client, keys, args...).Int64Slice()
		if err == nil && (len(res) != 2 || res[0] < 0 || res[0] > int64(len(scopes))) {
			err = fmt.Errorf("the token budget script answered %v", res)
		}
		if err != nil {
			return err
		}
		if res[0] > 0 {
			scope, wait = scopes[res[0]-1], max(time.Duration(res[1])*time.Microsecond, time.Microsecond)
		}
		return nil
	})
	if err != nil {
		return tokenScopeNone, 0, err
	}
	return scope, wait, nil
}

// chargeTokens is tokenLedger.charge in Redis.
func (b *redisBackend) chargeTokens(ctx context.Context, user string, tokens int64, perUser, site *tokenLimit, now time.Time) error {
	keys, limits, _ := b.tokenBudgets(user, perUser, site)
	if len(keys) == 0 || tokens <= 0 {
		return nil
	}
	args := make([]any, 0, 1+len(limits))
	args = append(args, tokens)
	for _, l := range limits {
		args = append(args, windowMicros(l.interval))
	}
	return b.op(ctx, now, func(ctx context.Context) error {
		return chargeTokensScript.Run(ctx, b.client, keys, args...).Err()
	})
}

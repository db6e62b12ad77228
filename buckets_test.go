package chatkit

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"math/rand"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const t0 = int64(1_700_000_000) * int64(time.Second)

// ---- test helpers -------------------------------------------------------

// contains reports whether key has a live bucket.
func (s *bucketStore) contains(key bucketKey) bool {
	h := s.hash(&key)
	sh := s.shardOf(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.find(&key, uint32(h)) != 0
}

func (s *bucketStore) shardIndex(key bucketKey) int {
	return int(s.hash(&key) >> (64 - shardBits))
}

// check verifies the internal invariants of every shard: the LRU list, the
// free list and the table describe exactly the same set of entries.
func (s *bucketStore) check(t *testing.T) {
	t.Helper()
	for si := range s.shards {
		sh := &s.shards[si].shard
		sh.mu.Lock()
		err := sh.checkLocked(s)
		sh.mu.Unlock()
		if err != nil {
			t.Fatalf("shard %d: %v", si, err)
		}
	}
}

func (sh *shard) checkLocked(s *bucketStore) error {
	if sh.count > sh.cap {
		return fmt.Errorf("count %d > cap %d", sh.count, sh.cap)
	}
	if len(sh.entries) == 0 {
		if sh.count != 0 || sh.free != 0 {
			return fmt.Errorf("no entries but count %d free %d", sh.count, sh.free)
		}
		for _, sl := range sh.table {
			if sl != 0 {
				return fmt.Errorf("no entries but table slot %x", sl)
			}
		}
		return nil
	}
	if cap(sh.entries) > sh.cap+1 {
		// entries never grow past cap+1 (setMaxKeys compacts on shrink)
		return fmt.Errorf("entries cap %d > shard cap %d + 1", cap(sh.entries), sh.cap)
	}
	seen := make([]byte, len(sh.entries)) // 1 live, 2 free
	n := 0
	prev := uint32(0)
	for i := sh.entries[0].next; i != 0; i = sh.entries[i].next {
		if int(i) >= len(sh.entries) || seen[i] != 0 {
			return fmt.Errorf("bad LRU link %d", i)
		}
		if sh.entries[i].prev != prev {
			return fmt.Errorf("entry %d prev %d want %d", i, sh.entries[i].prev, prev)
		}
		seen[i] = 1
		prev = i
		n++
	}
	if sh.entries[0].prev != prev {
		return fmt.Errorf("sentinel prev %d want %d", sh.entries[0].prev, prev)
	}
	if n != sh.count {
		return fmt.Errorf("LRU has %d entries, count %d", n, sh.count)
	}
	for i := sh.free; i != 0; i = sh.entries[i].next {
		if int(i) >= len(sh.entries) || seen[i] != 0 || sh.entries[i].prev != freeSlot {
			return fmt.Errorf("bad free link %d", i)
		}
		seen[i] = 2
	}
	for i := 1; i < len(sh.entries); i++ {
		if seen[i] == 0 {
			return fmt.Errorf("slot %d neither live nor free", i)
		}
	}
	if sh.count*4 > len(sh.table)*3 {
		return fmt.Errorf("table load %d/%d", sh.count, len(sh.table))
	}
	inTable := 0
	for _, sl := range sh.table {
		if sl == 0 {
			continue
		}
		inTable++
		i := uint32(sl)
		if int(i) >= len(sh.entries) || seen[i] != 1 {
			return fmt.Errorf("table points at non-live slot %d", i)
		}
		k := sh.entries[i].key
		h := s.hash(&k)
		if uint32(sl>>32) != uint32(h) {
			return fmt.Errorf("table hash mismatch for slot %d", i)
		}
		if &s.shards[h>>(64-shardBits)].shard != sh {
			return fmt.Errorf("entry %d in wrong shard", i)
		}
		if sh.find(&k, uint32(h)) != i {
			return fmt.Errorf("entry %d not found by its key", i)
		}
	}
	if inTable != sh.count {
		return fmt.Errorf("table has %d entries, count %d", inTable, sh.count)
	}
	return nil
}

// refBucket is a straightforward token bucket with exact rational tokens:
// the reference model the store must agree with.
type refBucket struct {
	tokens *big.Rat
	last   int64
}

// request decides a request at now (not before the previous one) with the
// bucket capacity clamped to the burst in force now.
func (r *refBucket) request(now int64, l limit) decision {
	b := big.NewRat(int64(l.burst), 1)
	T := big.NewRat(int64(l.interval), 1)
	if r.tokens == nil {
		r.tokens = new(big.Rat).Set(b) // a new bucket is full
		r.last = now
	}
	r.tokens.Add(r.tokens, big.NewRat(now-r.last, int64(l.interval)))
	if r.tokens.Cmp(b) > 0 {
		r.tokens.Set(b)
	}
	r.last = now
	var d decision
	one := big.NewRat(1, 1)
	if r.tokens.Cmp(one) >= 0 {
		r.tokens.Sub(r.tokens, one)
		d.allowed = true
	}
	floor := new(big.Int).Quo(r.tokens.Num(), r.tokens.Denom()).Int64() // tokens >= 0
	d.remaining = int(floor)
	if r.tokens.Cmp(b) < 0 {
		x := new(big.Rat).Sub(big.NewRat(floor+1, 1), r.tokens)
		x.Mul(x, T)
		if !x.IsInt() {
			panic("reference: time to next token is not whole nanoseconds")
		}
		d.nextToken = time.Duration(x.Num().Int64())
	}
	if !d.allowed {
		d.retryAfter = d.nextToken // tokens < 1: the next whole token is the first
	}
	return d
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// ---- GCRA semantics -----------------------------------------------------

func TestBurstThenRefusalThenExactRefill(t *testing.T) {
	l := limit{burst: 10, interval: time.Second}
	s := newBucketStore(1000)
	k := stringBucketKey("user-1")
	other := stringBucketKey("user-2")
	ms := int64(time.Millisecond)

	expect := func(now int64, want decision) {
		t.Helper()
		if got := s.allow(k, l, now); got != want {
			t.Fatalf("at t0%+dms: got %+v, want %+v", (now-t0)/ms, got, want)
		}
	}
	for i := range 10 {
		expect(t0, decision{allowed: true, remaining: 9 - i, nextToken: time.Second})
	}
	expect(t0, decision{allowed: false, retryAfter: time.Second, nextToken: time.Second})
	expect(t0+999*ms, decision{allowed: false, retryAfter: time.Millisecond, nextToken: time.Millisecond})
	expect(t0+1000*ms-1, decision{allowed: false, retryAfter: 1, nextToken: 1})
	expect(t0+1000*ms, decision{allowed: true, remaining: 0, nextToken: time.Second})
	expect(t0+1000*ms, decision{allowed: false, retryAfter: time.Second, nextToken: time.Second})
	// 3.5 tokens at t0+4.5s: allowed, 2.5 left, the third whole one in 0.5s.
	expect(t0+4500*ms, decision{allowed: true, remaining: 2, nextToken: 500 * time.Millisecond})
	expect(t0+4500*ms, decision{allowed: true, remaining: 1, nextToken: 500 * time.Millisecond})
	// Idle long enough: full again, never more than burst.
	expect(t0+100_000*ms, decision{allowed: true, remaining: 9, nextToken: time.Second})

	// Another key is independent and starts full.
	if d := s.allow(other, l, t0); d != (decision{allowed: true, remaining: 9, nextToken: time.Second}) {
		t.Fatalf("other key: %+v", d)
	}
	// Burst 1: strictly one per interval.
	l1 := limit{burst: 1, interval: 250 * time.Millisecond}
	k1 := stringBucketKey("burst-1")
	if d := s.allow(k1, l1, t0); d != (decision{allowed: true, nextToken: 250 * time.Millisecond}) {
		t.Fatalf("burst 1 first: %+v", d)
	}
	if d := s.allow(k1, l1, t0+249*ms); d.allowed || d.retryAfter != time.Millisecond {
		t.Fatalf("burst 1 early: %+v", d)
	}
	if d := s.allow(k1, l1, t0+250*ms); !d.allowed {
		t.Fatalf("burst 1 on time: %+v", d)
	}
	s.check(t)
}

// gap returns a random time between two requests to one of nkeys keys
// under l: bursts of simultaneous requests, a mean rate per key close to the
// limit's, and now and then a pause long enough to refill the bucket.
func gap(rng *rand.Rand, l limit, nkeys int, micro bool) int64 {
	T, b, n := int64(l.interval), int64(l.burst), int64(nkeys)
	var g int64
	switch r := rng.Int63n(100 * b); {
	case r < 30*b:
		g = 0
	case r < 80*b:
		g = rng.Int63n(T/n + 1)
	case r < 100*b-5:
		g = rng.Int63n(3*T/n + 1)
	default:
		g = rng.Int63n(3*b*T + 1)
	}
	if micro {
		g = g / 1000 * 1000
	}
	return g
}

func TestMatchesReferenceModel(t *testing.T) {
	limits := []limit{
		{1, time.Second},
		{10, time.Second},
		{3, 333 * time.Millisecond},
		{100, 7 * time.Microsecond},
		{5, time.Hour},
		{2, 3},
		{7, 1234567},
		{60, time.Minute},
	}
	for li, l := range limits {
		for seed := int64(1); seed <= 4; seed++ {
			// Whole microseconds (where the interval allows), or arbitrary
			// nanoseconds: the reference is exact either way.
			micro := seed%2 == 0 && l.interval >= time.Millisecond
			rng := rand.New(rand.NewSource(seed*1000 + int64(li)))
			s := newBucketStore(1000)
			keys := make([]bucketKey, 5)
			refs := make([]refBucket, len(keys))
			for i := range keys {
				keys[i] = stringBucketKey(fmt.Sprintf("k%d", i))
			}
			now := t0
			allowed, refused := 0, 0
			for step := range 4000 {
				now += gap(rng, l, len(keys), micro)
				ki := rng.Intn(len(keys))
				got := s.allow(keys[ki], l, now)
				want := refs[ki].request(now, l)
				if got != want {
					t.Fatalf("limit %+v seed %d step %d key %d: got %+v, want %+v", l, seed, step, ki, got, want)
				}
				if got.allowed {
					allowed++
				} else {
					refused++
				}
			}
			t.Logf("limit %+v seed %d: %d allowed, %d refused", l, seed, allowed, refused)
			if allowed < 200 || refused < 200 {
				t.Fatalf("limit %+v seed %d: weak test, %d allowed, %d refused", l, seed, allowed, refused)
			}
		}
	}
}

// With the interval fixed and the burst changing from call to call, the
// store is exactly a token bucket whose capacity is the burst in force
// (tokens carried over, excess spilled).
func TestBurstChangesMatchModel(t *testing.T) {
	for _, T := range []time.Duration{time.Second, 777 * time.Microsecond} {
		for seed := int64(1); seed <= 3; seed++ {
			rng := rand.New(rand.NewSource(seed))
			s := newBucketStore(1000)
			k := stringBucketKey("x")
			var ref refBucket
			now := t0
			bursts := []int{1, 2, 5, 10, 50}
			burst := 10
			for step := range 5000 {
				if rng.Intn(20) == 0 {
					burst = bursts[rng.Intn(len(bursts))]
				}
				l := limit{burst: burst, interval: T}
				now += gap(rng, l, 1, false)
				got := s.allow(k, l, now)
				want := ref.request(now, l)
				if got != want {
					t.Fatalf("T %v seed %d step %d burst %d: got %+v, want %+v", T, seed, step, burst, got, want)
				}
			}
		}
	}
}

func TestLimitChangeKeepsState(t *testing.T) {
	orig := limit{burst: 10, interval: time.Second}
	ms := int64(time.Millisecond)
	for _, nl := range []limit{
		{10, time.Second},     // unchanged
		{5, time.Second},      // lower burst
		{10, 2 * time.Second}, // lower rate
		{1, time.Hour},        // both much lower
		{2, 10 * time.Second},
		{100, time.Millisecond}, // raised: still refused until its next token
	} {
		s := newBucketStore(100)
		k := stringBucketKey("client")
		for range 10 {
			if !s.allow(k, orig, t0).allowed {
				t.Fatal("burst not allowed")
			}
		}
		// Reload right after exhaustion: still refused, same wait.
		d := s.allow(k, nl, t0+ms)
		if d.allowed || d.retryAfter != 999*time.Millisecond {
			t.Fatalf("after reload to %+v: %+v", nl, d)
		}
		d = s.allow(k, nl, t0+500*ms)
		if d.allowed || d.retryAfter != 500*time.Millisecond {
			t.Fatalf("after reload to %+v, later: %+v", nl, d)
		}
		// Then one token when the old schedule gave it, nothing more.
		if d = s.allow(k, nl, t0+1000*ms); !d.allowed || d.remaining != 0 {
			t.Fatalf("after reload to %+v, on time: %+v", nl, d)
		}
		if d = s.allow(k, nl, t0+1000*ms); d.allowed {
			t.Fatalf("after reload to %+v, second: %+v", nl, d)
		}
		s.check(t)
	}

	// A half-spent client keeps its tokens (interval unchanged), capped at
	// a lowered burst.
	s := newBucketStore(100)
	k := stringBucketKey("half")
	for range 4 {
		s.allow(k, orig, t0)
	}
	if d := s.allow(k, limit{20, time.Second}, t0); !d.allowed || d.remaining != 5 {
		t.Fatalf("raised burst: %+v", d)
	}
	if d := s.allow(k, limit{3, time.Second}, t0); !d.allowed || d.remaining != 2 {
		t.Fatalf("lowered burst: %+v", d)
	}
	if d := s.allow(k, orig, t0); !d.allowed || d.remaining != 1 {
		t.Fatalf("back to original: %+v", d)
	}
}

// Property: whatever the history, a reload that lowers the limits (burst
// not larger, interval not shorter) never gives a client more whole tokens,
// and one that raises them never fewer; a refused client stays refused, with
// the same wait, under any new limit.
func TestLimitChangeMonotone(t *testing.T) {
	rng := rand.New(rand.NewSource(42))
	k := stringBucketKey("m")
	bursts := []int{1, 2, 3, 10, 100}
	intervals := []time.Duration{1, 1000, time.Millisecond, time.Second, time.Hour}
	randLimit := func() limit {
		return limit{bursts[rng.Intn(len(bursts))], intervals[rng.Intn(len(intervals))]}
	}
	// floorBefore is the whole tokens a client had before the request.
	floorBefore := func(d decision) int {
		if d.allowed {
			return d.remaining + 1
		}
		return 0
	}
	var refusedCases, lowerCases, higherCases, partialCases int
	for trial := range 3000 {
		l0 := randLimit()
		var hist []int64
		now := t0
		for range rng.Intn(30) {
			now += gap(rng, l0, 1, false)
			hist = append(hist, now)
		}
		now += gap(rng, l0, 1, false)
		replay := func() *bucketStore {
			s := newBucketStore(10)
			for _, at := range hist {
				s.allow(k, l0, at)
			}
			return s
		}
		a := replay().allow(k, l0, now)
		l1 := randLimit()
		b := replay().allow(k, l1, now)
		if !a.allowed && (b.allowed || b.retryAfter != a.retryAfter) {
			t.Fatalf("trial %d: refused under %+v (%+v) but %+v under %+v", trial, l0, a, b, l1)
		}
		lower := l1.burst <= l0.burst && l1.interval >= l0.interval
		higher := l1.burst >= l0.burst && l1.interval <= l0.interval
		if lower && floorBefore(b) > floorBefore(a) {
			t.Fatalf("trial %d: lowering %+v -> %+v gave tokens: %+v -> %+v", trial, l0, l1, a, b)
		}
		if higher && floorBefore(b) < floorBefore(a) {
			t.Fatalf("trial %d: raising %+v -> %+v took tokens: %+v -> %+v", trial, l0, l1, a, b)
		}
		if !a.allowed {
			refusedCases++
		} else if a.remaining+1 < l0.burst {
			partialCases++
		}
		if lower && l1 != l0 {
			lowerCases++
		}
		if higher && l1 != l0 {
			higherCases++
		}
	}
	t.Logf("%d refused, %d partly spent, %d lowered, %d raised", refusedCases, partialCases, lowerCases, higherCases)
	if refusedCases < 300 || partialCases < 300 || lowerCases < 300 || higherCases < 300 {
		t.Fatal("weak test: too few cases of some kind")
	}
}

func TestOverflowAndEdgeLimits(t *testing.T) {
	s := newBucketStore(100)

	// Interval of ~292 years: one request, then refused for that long.
	huge := limit{burst: 1, interval: math.MaxInt64}
	k := stringBucketKey("huge")
	if d := s.allow(k, huge, t0); !d.allowed || d.remaining != 0 || d.nextToken <= 0 {
		t.Fatalf("huge interval first: %+v", d)
	}
	for _, at := range []int64{t0, t0 + int64(time.Hour), t0 + 1<<62, math.MaxInt64 - 1} {
		if d := s.allow(k, huge, at); d.allowed || d.retryAfter <= 0 {
			t.Fatalf("huge interval at %d: %+v", at, d)
		}
	}

	// Huge burst with huge interval: the tolerance saturates, no overflow.
	hb := limit{burst: math.MaxInt, interval: time.Hour}
	k = stringBucketKey("hugeburst")
	for i := range 100 {
		d := s.allow(k, hb, t0)
		if !d.allowed || d.remaining <= 0 || d.remaining > math.MaxInt {
			t.Fatalf("huge burst request %d: %+v", i, d)
		}
	}

	// Burst 0 and interval 0 count as 1 and 1ns.
	z := limit{}
	k = stringBucketKey("zero")
	if d := s.allow(k, z, t0); !d.allowed || d.nextToken != 1 {
		t.Fatalf("zero limit first: %+v", d)
	}
	if d := s.allow(k, z, t0); d.allowed || d.retryAfter != 1 {
		t.Fatalf("zero limit second: %+v", d)
	}
	if d := s.allow(k, z, t0+1); !d.allowed {
		t.Fatalf("zero limit later: %+v", d)
	}

	// Extreme clocks. Below math.MinInt64+tau there is no room for the
	// tolerance (the bucket is smaller than burst): only sanity there.
	l := limit{burst: 3, interval: time.Second}
	for _, now := range []int64{math.MinInt64, math.MinInt64 + 1} {
		k := stringBucketKey(fmt.Sprint("clock", now))
		if d := s.allow(k, l, now); !d.allowed {
			t.Fatalf("now %d first: %+v", now, d)
		}
		for range 3 {
			d := s.allow(k, l, now)
			if d.remaining < 0 || d.remaining > 3 || d.allowed == (d.retryAfter > 0) {
				t.Fatalf("now %d: %+v", now, d)
			}
		}
		if d := s.allow(k, l, now); d.allowed {
			t.Fatalf("now %d: never refused: %+v", now, d)
		}
	}
	for _, now := range []int64{math.MinInt64 + 2*int64(time.Second), -1, 0, math.MaxInt64 - 1, math.MaxInt64} {
		k := stringBucketKey(fmt.Sprint("clock", now))
		for i := range 3 {
			if d := s.allow(k, l, now); !d.allowed || d.remaining != 2-i {
				t.Fatalf("now %d request %d: %+v", now, i, d)
			}
		}
		if d := s.allow(k, l, now); d.allowed || d.retryAfter <= 0 {
			t.Fatalf("now %d 4th: %+v", now, d)
		}
	}

	// A clock that steps back never grants extra tokens.
	k = stringBucketKey("backwards")
	l1 := limit{burst: 1, interval: time.Second}
	s.allow(k, l1, t0)
	if d := s.allow(k, l1, t0-int64(time.Hour)); d.allowed || d.retryAfter != time.Hour+time.Second {
		t.Fatalf("clock stepped back: %+v", d)
	}
	s.check(t)
}

// ---- keys ---------------------------------------------------------------

func TestIPBucketKeys(t *testing.T) {
	key := func(s string) bucketKey { return ipBucketKey(mustAddr(s), 32, 64) }
	same := func(a, b bucketKey, what string) {
		t.Helper()
		if a != b {
			t.Errorf("%s: keys differ: %x %x", what, a, b)
		}
	}
	differ := func(a, b bucketKey, what string) {
		t.Helper()
		if a == b {
			t.Errorf("%s: keys equal: %x", what, a)
		}
	}
	same(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "same /64")
	same(key("2001:db8:1:2::1"), key("2001:db8:1:2:8000::"), "same /64 (high host bit)")
	differ(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"), "different /64")
	differ(key("2001:db8:1:2::1"), key("2001:db9:1:2::1"), "different /64 (high bits)")
	same(key("fe80::1%eth0"), key("fe80::1%eth1"), "zone ignored")

	same(key("192.0.2.1"), key("::ffff:192.0.2.1"), "IPv4 and mapped IPv4")
	differ(key("192.0.2.1"), key("192.0.2.2"), "IPv4 /32")
	differ(key("192.0.2.1"), key("::192.0.2.1"), "IPv4 vs IPv4-compatible IPv6")
	differ(key("0.0.0.0"), key("::"), "IPv4 zero vs IPv6 zero")
	differ(key("0.0.0.0"), key("::ffff:0:0:0"), "IPv4 zero vs ::ffff:0:0:0")

	// Non-default prefixes.
	k24 := func(s string) bucketKey { return ipBucketKey(mustAddr(s), 24, 48) }
	same(k24("192.0.2.1"), k24("192.0.2.254"), "IPv4 /24")
	same(k24("192.0.2.1"), k24("::ffff:192.0.2.77"), "IPv4 /24 mapped")
	differ(k24("192.0.2.1"), k24("192.0.3.1"), "IPv4 /24 different")
	same(k24("2001:db8:1:2::1"), k24("2001:db8:1:ffff::1"), "IPv6 /48")
	differ(k24("2001:db8:1::1"), k24("2001:db8:2::1"), "IPv6 /48 different")
	k128 := func(s string) bucketKey { return ipBucketKey(mustAddr(s), 32, 128) }
	differ(k128("2001:db8::1"), k128("2001:db8::2"), "IPv6 /128")
	differ(k128("::ffff:0:0:1"), k128("0.0.0.1"), "::ffff:0:0:1 is not mapped IPv4")
	same(k128("::ffff:0:1"), k128("0.0.0.1"), "::ffff:0:1 is mapped IPv4")
	same(ipBucketKey(mustAddr("2001:db8::1"), 0, 0), key("2001:db8::1"), "prefix 0 = default (v6)")
	same(ipBucketKey(mustAddr("192.0.2.9"), -1, 0), key("192.0.2.9"), "prefix <0 = default (v4)")
	same(ipBucketKey(mustAddr("192.0.2.9"), 99, 999), key("192.0.2.9"), "prefix too long = whole address")
	same(ipBucketKey(mustAddr("2001:db8::1"), 32, 1), ipBucketKey(mustAddr("7fff::"), 32, 1), "IPv6 /1")

	// Through the store: the same /64 shares one bucket.
	s := newBucketStore(100)
	l := limit{burst: 2, interval: time.Hour}
	s.allow(key("2001:db8:a:b::1"), l, t0)
	s.allow(key("2001:db8:a:b::2"), l, t0)
	if d := s.allow(key("2001:db8:a:b:c:d:e:f"), l, t0); d.allowed {
		t.Fatalf("third address of the /64 allowed: %+v", d)
	}
	if d := s.allow(key("2001:db8:a:c::1"), l, t0); !d.allowed {
		t.Fatalf("neighbouring /64 refused: %+v", d)
	}
	s.allow(key("198.51.100.7"), l, t0)
	s.allow(key("198.51.100.7"), l, t0)
	if d := s.allow(key("::ffff:198.51.100.7"), l, t0); d.allowed {
		t.Fatalf("mapped form of an exhausted IPv4 allowed: %+v", d)
	}
}

func isStringDomain(k bucketKey) bool { return k[0] == 0xff && k[15]&1 == 1 }

func TestStringKeysNeverEqualIPKeys(t *testing.T) {
	seen := make(map[bucketKey]string)
	for i := range 20000 {
		s := fmt.Sprint("user-", i)
		k := stringBucketKey(s)
		if !isStringDomain(k) {
			t.Fatalf("string key outside its domain: %x", k)
		}
		if prev, dup := seen[k]; dup {
			t.Fatalf("string keys collide: %q %q", prev, s)
		}
		seen[k] = s
		if k != stringBucketKey(s) {
			t.Fatal("stringBucketKey not deterministic")
		}
	}
	if stringBucketKey("") == stringBucketKey("\x00") || stringBucketKey("a") == stringBucketKey("a\x00") {
		t.Fatal("trivial string collision")
	}

	// IP keys lie outside the string domain for every address family,
	// prefix, and first byte, including multicast and the invalid Addr.
	rng := rand.New(rand.NewSource(7))
	var b16 [16]byte
	for i := range 200000 {
		rng.Read(b16[:])
		if i < 256 {
			b16[0] = byte(i) // every first byte, ff (multicast) included
		}
		p4, p6 := rng.Intn(34)-1, rng.Intn(130)-1
		for _, ip := range []netip.Addr{
			netip.AddrFrom16(b16),
			netip.AddrFrom4([4]byte(b16[:4])),
			netip.AddrFrom16(b16).Unmap(),
			netip.AddrFrom4([4]byte(b16[:4])).WithZone(""),
		} {
			k := ipBucketKey(ip, p4, p6)
			if isStringDomain(k) {
				t.Fatalf("IP key %x of %v /%d /%d is in the string domain", k, ip, p4, p6)
			}
			if _, dup := seen[k]; dup {
				t.Fatalf("IP key equals a string key")
			}
		}
	}
	bogus := ipBucketKey(netip.Addr{}, 32, 64)
	if bogus != ipBucketKey(mustAddr("ff02::1"), 32, 128) || isStringDomain(bogus) {
		t.Fatalf("invalid/multicast key %x", bogus)
	}
	// No unicast IPv6 key starts with 0xff, whatever the prefix.
	for p := 0; p <= 128; p++ {
		for _, a := range []string{"fe80::1", "feff:ffff::1", "ffff::1", "ff02::1"} {
			if k := ipBucketKey(mustAddr(a), 32, p); k[0] == 0xff && k != bogus {
				t.Fatalf("%s /%d gives key %x", a, p, k)
			}
		}
	}
}

// ---- bounds and eviction ------------------------------------------------

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func mallocs() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

// floodAddr is the i-th address of a flood: a different /64 each time.
func floodAddr(i int) netip.Addr {
	var a [16]byte
	a[0], a[1], a[2], a[3] = 0x20, 0x01, 0x0d, 0xb8
	binary.BigEndian.PutUint32(a[4:], uint32(i))
	binary.BigEndian.PutUint64(a[8:], uint64(i)*0x9e3779b97f4a7c15)
	return netip.AddrFrom16(a)
}

func TestFloodIsBounded(t *testing.T) {
	const maxKeys = 10_000
	const flood = 1_000_000
	l := limit{burst: 5, interval: 100 * time.Millisecond}
	legit := ipBucketKey(mustAddr("203.0.113.9"), 32, 64)
	var ref refBucket

	legitGot := make([]decision, 0, flood/100) // checked after the flood
	base := heapAlloc()
	s := newBucketStore(maxKeys)
	var midHeap, midMallocs uint64
	for i := range flood {
		now := t0 + int64(i)*int64(time.Microsecond) // the flood lasts 1s
		d := s.allow(ipBucketKey(floodAddr(i), 32, 64), l, now)
		// A new key is limited like any other: a full bucket, minus one.
		if !d.allowed || d.remaining != l.burst-1 {
			t.Fatalf("flood key %d: %+v", i, d)
		}
		if i%100 == 0 {
			legitGot = append(legitGot, s.allow(legit, l, now))
		}
		if i == flood/5 {
			midHeap, midMallocs = heapAlloc(), mallocs()
		}
	}
	endMallocs := mallocs()
	endHeap := heapAlloc()
	if n := s.len(); n > maxKeys || n < maxKeys*9/10 {
		t.Fatalf("len %d after flood, max %d", n, maxKeys)
	}
	if !s.contains(legit) {
		t.Fatal("the recently used legitimate key was evicted")
	}
	legitAllowed := 0
	for j, got := range legitGot {
		now := t0 + int64(j*100)*int64(time.Microsecond)
		if want := ref.request(now, l); got != want {
			t.Fatalf("legitimate key at flood request %d: got %+v, want %+v", j*100, got, want)
		}
		if got.allowed {
			legitAllowed++
		}
	}
	// 5 at once, then one per 100ms: 9 more by the last request at 999.9ms.
	if legitAllowed != 5+9 {
		t.Fatalf("legitimate key allowed %d times", legitAllowed)
	}
	s.check(t)

	// Bound: each of the 64 shards holds at most ceil(10000/64) = 157
	// entries of 32 bytes (158 slots with the sentinel: 5056 B, a 5376 B
	// size class) and a 256-slot table of 8 bytes (2 KiB): about 465 KiB
	// in all. Allow 1 MiB for the store header and GC noise.
	grow := int64(endHeap) - int64(base)
	t.Logf("heap growth after %d new keys: %d bytes (%.1f bytes per live key); mallocs in the last %d: %d",
		flood, grow, float64(grow)/float64(s.len()), flood-flood/5, endMallocs-midMallocs)
	if grow > 1<<20 {
		t.Fatalf("heap grew by %d bytes", grow)
	}
	// At capacity a new key reuses an evicted slot: no growth, no allocation.
	if d := int64(endHeap) - int64(midHeap); d > 64<<10 {
		t.Fatalf("heap grew by %d bytes between 20%% and 100%% of the flood", d)
	}
	if m := endMallocs - midMallocs; m > 100 {
		t.Fatalf("%d allocations at steady state", m)
	}
	runtime.KeepAlive(s)
}

// sameShardKeys returns n distinct string keys that fall in one shard of s.
func sameShardKeys(s *bucketStore, n int) []bucketKey {
	var keys []bucketKey
	for i := 0; len(keys) < n; i++ {
		k := stringBucketKey(fmt.Sprint("same-shard-", i))
		if s.shardIndex(k) == 0 {
			keys = append(keys, k)
		}
	}
	return keys
}

func TestEvictionPrefersRefilledBuckets(t *testing.T) {
	s := newBucketStore(4 * numShards) // 4 per shard
	k := sameShardKeys(s, 8)
	l := limit{burst: 1, interval: 10 * time.Second}
	sec := int64(time.Second)
	// Bucket i refills at its request time + 10s.
	s.allow(k[0], l, t0)       // refills at 10s
	s.allow(k[1], l, t0+1*sec) // 11s
	s.allow(k[2], l, t0+2*sec) // 12s
	s.allow(k[3], l, t0+8*sec) // 18s
	// Touch k0, k1, k2 (refused): LRU order, oldest first, is k3 k0 k1 k2.
	for _, i := range []int{0, 1, 2} {
		if d := s.allow(k[i], l, t0+9*sec); d.allowed {
			t.Fatalf("k%d allowed early", i)
		}
	}
	present := func(want ...int) {
		t.Helper()
		for i := range k {
			has := s.contains(k[i])
			exp := false
			for _, w := range want {
				exp = exp || w == i
			}
			if has != exp {
				t.Fatalf("k%d present=%v, want %v (want set %v)", i, has, exp, want)
			}
		}
	}
	present(0, 1, 2, 3)
	now := t0 + 12*sec + sec/2
	// k3 is least recently used but not refilled; k0 (then k1, k2) are.
	s.allow(k[4], l, now)
	present(1, 2, 3, 4)
	s.allow(k[5], l, now)
	present(2, 3, 4, 5)
	s.allow(k[6], l, now)
	present(3, 4, 5, 6)
	// Nothing refilled now: the least recently used (k3) goes.
	s.allow(k[7], l, now)
	present(4, 5, 6, 7)
	// The newcomer was limited, not waved through.
	if d := s.allow(k[7], l, now); d.allowed {
		t.Fatalf("new key after eviction not limited: %+v", d)
	}
	s.check(t)
}

func TestEvictionScanIsBounded(t *testing.T) {
	const per = evictScan + 2
	s := newBucketStore(per * numShards)
	k := sameShardKeys(s, per+1)
	l := limit{burst: 1, interval: 10 * time.Second}
	sec := int64(time.Second)
	// The only refilled bucket sits just beyond the scan from the LRU tail.
	s.allow(k[0], l, t0) // refills at 10s
	for i := 1; i < per; i++ {
		s.allow(k[i], l, t0+5*sec) // refill at 15s
	}
	// Touch k0, then k9 (both refused; no state change).
	s.allow(k[0], l, t0+6*sec)
	s.allow(k[per-1], l, t0+6*sec)
	// LRU order, oldest first: k1..k8 (evictScan buckets, none refilled at
	// 11s), then k0 (refilled), then k9.
	s.allow(k[per], l, t0+11*sec)
	if !s.contains(k[0]) || s.contains(k[1]) {
		t.Fatalf("expected the LRU k1 evicted (k0 is beyond the scan): k0=%v k1=%v", s.contains(k[0]), s.contains(k[1]))
	}
	s.check(t)
}

func TestSweepRemovesOnlyRefilled(t *testing.T) {
	s := newBucketStore(100_000)
	l := limit{burst: 3, interval: time.Second}
	sec := int64(time.Second)
	const n = 64 * 600 // several sweep chunks per shard
	refs := make([]refBucket, n)
	keys := make([]bucketKey, n)
	for i := range keys {
		keys[i] = stringBucketKey(fmt.Sprint("sweep-", i))
		// i%4 requests at t0: the bucket refills at t0 + (i%4) seconds
		// (0 requests: never created).
		for range i % 4 {
			s.allow(keys[i], l, t0)
			refs[i].request(t0, l)
		}
	}
	if got := s.len(); got != n*3/4 {
		t.Fatalf("len %d", got)
	}
	if r := s.sweep(t0+sec/2, l); r != 0 {
		t.Fatalf("sweep at 0.5s removed %d", r)
	}
	if r := s.sweep(t0+sec+sec/2, l); r != n/4 {
		t.Fatalf("sweep at 1.5s removed %d, want %d", r, n/4)
	}
	s.check(t)
	for i := range keys {
		if want := i%4 >= 2; s.contains(keys[i]) != want {
			t.Fatalf("key %d (%d requests) present=%v", i, i%4, !want)
		}
	}
	// Survivors keep their state exactly.
	now := t0 + 2*sec + sec/4
	for i := range keys {
		if i%4 < 2 {
			continue
		}
		if got, want := s.allow(keys[i], l, now), refs[i].request(now, l); got != want {
			t.Fatalf("key %d after sweep: got %+v, want %+v", i, got, want)
		}
	}
	// Everything refilled: all removed, and the shards release their memory.
	before := heapAlloc()
	if r := s.sweep(t0+100*sec, l); r != n/2 {
		t.Fatalf("final sweep removed %d, want %d", r, n/2)
	}
	if s.len() != 0 {
		t.Fatalf("len %d after final sweep", s.len())
	}
	after := heapAlloc()
	for i := range s.shards {
		if s.shards[i].entries != nil || s.shards[i].table != nil {
			t.Fatalf("shard %d kept its memory", i)
		}
	}
	t.Logf("final sweep released %d bytes", int64(before)-int64(after))
	s.check(t)
	// The store is still usable.
	if d := s.allow(keys[5], l, now); !d.allowed || d.remaining != 2 {
		t.Fatalf("after full sweep: %+v", d)
	}
	s.check(t)
}

func TestSweepShrinksMostlyEmptyShards(t *testing.T) {
	s := newBucketStore(1 << 20)
	l := limit{burst: 2, interval: time.Second}
	for i := range 64 * 1000 {
		s.allow(stringBucketKey(fmt.Sprint("a", i)), l, t0)
	}
	keep := stringBucketKey("keep")
	s.allow(keep, l, t0+10*int64(time.Second))
	s.allow(keep, l, t0+10*int64(time.Second))
	s.sweep(t0+10*int64(time.Second), l)
	if s.len() != 1 || !s.contains(keep) {
		t.Fatalf("len %d", s.len())
	}
	sh := s.shardOf(s.hash(&keep))
	if cap(sh.entries) > 2*minEntries+1 || len(sh.table) > 2*minEntries {
		t.Fatalf("shard not compacted: %d entries, %d table slots", cap(sh.entries), len(sh.table))
	}
	s.check(t)
	if d := s.allow(keep, l, t0+10*int64(time.Second)); d.allowed {
		t.Fatalf("state lost in compaction: %+v", d)
	}
}

func TestSetMaxKeys(t *testing.T) {
	s := newBucketStore(100 * numShards)
	l := limit{burst: 2, interval: time.Minute}
	var keys []bucketKey
	for i := range 200 * numShards {
		k := stringBucketKey(fmt.Sprint("m", i))
		keys = append(keys, k)
		s.allow(k, l, t0+int64(i))
	}
	if n := s.len(); n > 100*numShards || n < 90*numShards {
		t.Fatalf("len %d", n)
	}
	last := keys[len(keys)-1]
	s.allow(last, l, t0+int64(len(keys)))

	s.setMaxKeys(10 * numShards)
	if n := s.len(); n > 10*numShards {
		t.Fatalf("len %d after shrink", n)
	}
	if !s.contains(last) {
		t.Fatal("most recently used key evicted by shrink")
	}
	s.check(t)
	for i := range s.shards {
		if c := cap(s.shards[i].entries); c > 11 {
			t.Fatalf("shard %d keeps %d entry slots after shrink to 10", i, c)
		}
	}
	// The surviving key kept its state: it spent both tokens.
	if d := s.allow(last, l, t0+int64(len(keys))); d.allowed {
		t.Fatalf("state lost on shrink: %+v", d)
	}
	s.setMaxKeys(0) // minimum: one per shard
	if n := s.len(); n > numShards {
		t.Fatalf("len %d after setMaxKeys(0)", n)
	}
	s.check(t)
	s.setMaxKeys(1000 * numShards)
	for _, k := range keys {
		s.allow(k, l, t0)
	}
	if n := s.len(); n != len(keys) {
		t.Fatalf("len %d after growing back, want %d", n, len(keys))
	}
	s.check(t)
	if got := shardCapFor(math.MaxInt, 0); got != maxShardCap {
		t.Fatalf("shardCapFor(MaxInt) = %d", got)
	}
	for _, n := range []int{numShards, numShards + 1, 10_000, 1_000_003, 3*numShards - 1} {
		total := 0
		for i := range numShards {
			c := shardCapFor(n, i)
			if c != n/numShards && c != (n+numShards-1)/numShards {
				t.Fatalf("shardCapFor(%d, %d) = %d", n, i, c)
			}
			total += c
		}
		if total != n {
			t.Fatalf("shard caps for %d add up to %d", n, total)
		}
	}
	if shardCapFor(5, 63) != 1 || shardCapFor(-5, 0) != 1 {
		t.Fatal("shard cap minimum")
	}
}

// full reports whether the reference bucket would be full at now under l.
func (r *refBucket) full(now int64, l limit) bool {
	if r.tokens == nil {
		return true
	}
	t := new(big.Rat).Add(r.tokens, big.NewRat(now-r.last, int64(l.interval)))
	return t.Cmp(big.NewRat(int64(l.burst), 1)) >= 0
}

// TestMatchesModelStore drives a small, heavily evicting store with random
// requests, sweeps and capacity changes, against a model that keeps a plain
// slice as each shard's LRU list, applies the documented eviction policy,
// and decides with the exact reference bucket. Decisions, membership,
// sweep counts and internal invariants must all agree.
func TestMatchesModelStore(t *testing.T) {
	for seed := int64(1); seed <= 3; seed++ {
		rng := rand.New(rand.NewSource(seed))
		l := limit{burst: 1 + int(seed)*2, interval: time.Duration(seed) * 10 * time.Millisecond}
		maxKeys := 8 * numShards
		s := newBucketStore(maxKeys)
		pool := make([]bucketKey, 3000)
		for i := range pool {
			if i%2 == 0 {
				pool[i] = ipBucketKey(floodAddr(i), 32, 64)
			} else {
				pool[i] = stringBucketKey(fmt.Sprint("model-", i))
			}
		}
		lru := make([][]bucketKey, numShards) // index 0: most recently used
		refs := make(map[bucketKey]*refBucket)
		remove := func(si, j int) {
			delete(refs, lru[si][j])
			lru[si] = append(lru[si][:j], lru[si][j+1:]...)
		}
		now := t0
		sweeps, shrinks, refilledEvictions, lruEvictions := 0, 0, 0, 0
		for step := range 100_000 {
			// Hot keys and a long tail, so that both eviction paths run.
			var k bucketKey
			if rng.Intn(3) == 0 {
				k = pool[rng.Intn(40)]
			} else {
				k = pool[rng.Intn(len(pool))]
			}
			now += rng.Int63n(int64(l.interval) / 50)
			si := s.shardIndex(k)
			pos := -1
			for j, x := range lru[si] {
				if x == k {
					pos = j
				}
			}
			if pos >= 0 {
				lru[si] = append(lru[si][:pos], lru[si][pos+1:]...)
			} else {
				if len(lru[si]) >= shardCapFor(maxKeys, si) {
					v := -1
					for j := 0; j < evictScan && j < len(lru[si]); j++ {
						if c := len(lru[si]) - 1 - j; refs[lru[si][c]].full(now, l) {
							v = c
							break
						}
					}
					if v >= 0 {
						refilledEvictions++
					} else {
						v = len(lru[si]) - 1
						lruEvictions++
					}
					remove(si, v)
				}
				refs[k] = &refBucket{}
			}
			lru[si] = append([]bucketKey{k}, lru[si]...)
			got, want := s.allow(k, l, now), refs[k].request(now, l)
			if got != want {
				t.Fatalf("seed %d step %d: got %+v, want %+v", seed, step, got, want)
			}

			switch rng.Intn(5000) {
			case 0:
				wantRemoved := 0
				for si := range lru {
					for j := 0; j < len(lru[si]); {
						if refs[lru[si][j]].full(now, l) {
							remove(si, j)
							wantRemoved++
						} else {
							j++
						}
					}
				}
				if r := s.sweep(now, l); r != wantRemoved {
					t.Fatalf("seed %d step %d: sweep removed %d, want %d", seed, step, r, wantRemoved)
				}
				sweeps++
			case 1, 2:
				maxKeys = numShards/2 + rng.Intn(12*numShards)
				s.setMaxKeys(maxKeys)
				for si := range lru {
					for len(lru[si]) > shardCapFor(maxKeys, si) {
						remove(si, len(lru[si])-1)
					}
				}
				shrinks++
			}
			if step%5000 == 0 {
				s.check(t)
				n := 0
				for si := range lru {
					n += len(lru[si])
				}
				if s.len() != n {
					t.Fatalf("seed %d step %d: len %d, model %d", seed, step, s.len(), n)
				}
				for _, k := range pool {
					if _, in := refs[k]; in != s.contains(k) {
						t.Fatalf("seed %d step %d: membership differs", seed, step)
					}
				}
			}
		}
		t.Logf("seed %d: %d evictions of refilled buckets, %d of unrefilled LRU ones, %d sweeps, %d capacity changes",
			seed, refilledEvictions, lruEvictions, sweeps, shrinks)
		if sweeps == 0 || shrinks == 0 || refilledEvictions < 1000 || lruEvictions < 1000 {
			t.Fatal("weak test: some path not exercised")
		}
		s.check(t)
	}
}

// ---- concurrency --------------------------------------------------------

func TestConcurrentExactAccounting(t *testing.T) {
	s := newBucketStore(1000)
	k := stringBucketKey("shared")
	l := limit{burst: 1000, interval: time.Hour}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				if s.allow(k, l, t0).allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := allowed.Load(); got != 1000 {
		t.Fatalf("%d allowed, want exactly the burst of 1000", got)
	}
}

func TestConcurrentMixedOperations(t *testing.T) {
	s := newBucketStore(2000)
	l := limit{burst: 3, interval: time.Millisecond}
	var clock atomic.Int64
	clock.Store(t0)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewSource(int64(g)))
			for range 50_000 {
				now := clock.Add(int64(rng.Intn(2000)))
				var k bucketKey
				if rng.Intn(2) == 0 {
					k = ipBucketKey(floodAddr(rng.Intn(8000)), 32, 64)
				} else {
					k = stringBucketKey(fmt.Sprint(rng.Intn(100)))
				}
				d := s.allow(k, l, now)
				if d.remaining < 0 || d.remaining > l.burst || (d.allowed && d.retryAfter != 0) || (!d.allowed && d.retryAfter <= 0) {
					panic(fmt.Sprintf("bad decision %+v", d))
				}
			}
		})
	}
	var maintenance sync.WaitGroup
	maintenance.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s.sweep(clock.Load(), l)
			if n := s.len(); n > 4096 {
				panic(fmt.Sprintf("len %d", n))
			}
			if i%10 == 0 {
				s.setMaxKeys(1000 + (i%3)*1000)
			}
		}
	})
	wg.Wait()
	close(stop)
	maintenance.Wait()
	s.check(t)
	if n := s.len(); n > 3000 {
		t.Fatalf("len %d", n)
	}
}

// ---- allocations and memory ----------------------------------------------

func TestZeroAllocations(t *testing.T) {
	s := newBucketStore(64 * 100)
	l := limit{burst: 10, interval: time.Second}
	k := ipBucketKey(mustAddr("192.0.2.1"), 32, 64)
	now := t0
	s.allow(k, l, now)
	if a := testing.AllocsPerRun(1000, func() {
		now += 1000
		s.allow(k, l, now)
	}); a != 0 {
		t.Fatalf("existing key: %v allocs per decision", a)
	}
	// Fill to capacity, then new keys must reuse evicted slots.
	i := 0
	for range 64 * 200 {
		s.allow(ipBucketKey(floodAddr(i), 32, 64), l, now)
		i++
	}
	if a := testing.AllocsPerRun(10000, func() {
		s.allow(ipBucketKey(floodAddr(i), 32, 64), l, now)
		i++
	}); a != 0 {
		t.Fatalf("new key at capacity: %v allocs per decision", a)
	}
	str := "user-12345678"
	ip := mustAddr("2001:db8::1")
	if a := testing.AllocsPerRun(1000, func() {
		_ = stringBucketKey(str)
		_ = ipBucketKey(ip, 32, 64)
	}); a != 0 {
		t.Fatalf("key construction: %v allocs", a)
	}
}

func TestMemoryPerLiveKey(t *testing.T) {
	if testing.Short() {
		t.Skip("inserts a million keys")
	}
	const n = 1_000_000
	base := heapAlloc()
	s := newBucketStore(n + n/10)
	l := limit{burst: 10, interval: time.Second}
	for i := range n {
		s.allow(memKey(i), l, t0)
	}
	if s.len() != n {
		t.Fatalf("len %d, want %d (evictions?)", s.len(), n)
	}
	per := float64(int64(heapAlloc())-int64(base)) / n
	t.Logf("%.1f bytes per live key", per)
	if per > 80 {
		t.Fatalf("%.1f bytes per live key, target 80", per)
	}
	runtime.KeepAlive(s)
}

// memAddr is the i-th address of the memory tests: even i IPv4, odd i IPv6
// with a distinct /64.
func memAddr(i int) netip.Addr {
	if i%2 == 0 {
		return netip.AddrFrom4([4]byte{10 + byte(i>>25), byte(i >> 17), byte(i >> 9), byte(i >> 1)})
	}
	return floodAddr(i)
}

func memKey(i int) bucketKey { return ipBucketKey(memAddr(i), 32, 64) }

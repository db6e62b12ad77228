package chatkit

// Benchmarks of the bucket store against the usual baseline, a
// sync.Mutex-guarded map[string]*rate.Limiter keyed by the IP's string form.
//
//	go test -run xxx -bench . -benchmem -cpu 1,2 -count 3
//
// Both sides get the same injected clock (rate.Limiter.AllowN takes the
// time), the same limit and the same key sequence. Note that the baseline
// answers only allowed/refused, while the store also computes remaining,
// retryAfter and nextToken.

import (
	"math/bits"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// xrateStore is the baseline.
type xrateStore struct {
	mu sync.Mutex
	m  map[string]*rate.Limiter
	l  limit
}

func newXrateStore(l limit) *xrateStore {
	return &xrateStore{m: make(map[string]*rate.Limiter), l: l}
}

func (x *xrateStore) allow(key string, now time.Time) bool {
	x.mu.Lock()
	lim := x.m[key]
	if lim == nil {
		lim = rate.NewLimiter(rate.Every(x.l.interval), x.l.burst)
		x.m[key] = lim
	}
	x.mu.Unlock()
	return lim.AllowN(now, 1) // the limiter has its own mutex
}

// rng is a cheap per-goroutine PRNG (wyrand).
type rng uint64

func (r *rng) next() uint64 {
	*r += 0xa0761d6478bd642f
	hi, lo := bits.Mul64(uint64(*r), uint64(*r)^0xe7037ed1a0b428db)
	return hi ^ lo
}

// below returns a value in [0, n).
func (r *rng) below(n int) int {
	hi, _ := bits.Mul64(r.next(), uint64(n))
	return int(hi)
}

const benchKeys = 100_000

var benchLimit = limit{burst: 10, interval: time.Millisecond}

// benchData: 100,000 clients, half IPv4, half IPv6 (distinct /64s), as our
// keys and as the baseline's strings.
var benchData = sync.OnceValues(func() ([]bucketKey, []string) {
	keys := make([]bucketKey, benchKeys)
	strs := make([]string, benchKeys)
	for i := range keys {
		a := memAddr(i)
		keys[i] = ipBucketKey(a, 32, 64)
		strs[i] = a.String()
	}
	return keys, strs
})

func populatedStores() (*bucketStore, *xrateStore) {
	keys, strs := benchData()
	s := newBucketStore(2 * benchKeys)
	x := newXrateStore(benchLimit)
	for i := range keys {
		s.allow(keys[i], benchLimit, t0)
		x.allow(strs[i], time.Unix(0, t0))
	}
	if s.len() != benchKeys {
		panic("evictions while populating")
	}
	runtime.GC() // no GC cycle left running into the timed loop
	return s, x
}

// BenchmarkExistingKey: one decision for a key that already has a bucket,
// serially; the clock advances 1µs per request.
func BenchmarkExistingKey(b *testing.B) {
	l := limit{burst: 10, interval: 2 * time.Microsecond} // about half refused
	ip := netip.MustParseAddr("192.0.2.1")
	b.Run("one-key/chatkit", func(b *testing.B) {
		b.ReportAllocs()
		s := newBucketStore(benchKeys)
		k := ipBucketKey(ip, 32, 64)
		now := t0
		for b.Loop() {
			now += 1000
			s.allow(k, l, now)
		}
	})
	b.Run("one-key/xrate", func(b *testing.B) {
		b.ReportAllocs()
		x := newXrateStore(l)
		k := ip.String()
		now := t0
		for b.Loop() {
			now += 1000
			x.allow(k, time.Unix(0, now))
		}
	})
	// Walk 100,000 existing keys in random order: cache misses included.
	b.Run("100k-keys/chatkit", func(b *testing.B) {
		b.ReportAllocs()
		keys, _ := benchData()
		s, _ := populatedStores()
		r := rng(1)
		now := t0
		b.ResetTimer()
		for b.Loop() {
			now += 1000
			s.allow(keys[r.below(len(keys))], benchLimit, now)
		}
	})
	b.Run("100k-keys/xrate", func(b *testing.B) {
		b.ReportAllocs()
		_, strs := benchData()
		_, x := populatedStores()
		r := rng(1)
		now := t0
		b.ResetTimer()
		for b.Loop() {
			now += 1000
			x.allow(strs[r.below(len(strs))], time.Unix(0, now))
		}
	})
}

// BenchmarkFromAddr: the same, including turning the peer's netip.Addr into
// the key (ipBucketKey for the store, Addr.String for the baseline).
func BenchmarkFromAddr(b *testing.B) {
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		addrs[i] = memAddr(i)
	}
	b.Run("chatkit", func(b *testing.B) {
		b.ReportAllocs()
		s := newBucketStore(benchKeys)
		now, i := t0, 0
		for b.Loop() {
			now += 1000
			s.allow(ipBucketKey(addrs[i&1023], 32, 64), benchLimit, now)
			i++
		}
	})
	b.Run("xrate", func(b *testing.B) {
		b.ReportAllocs()
		x := newXrateStore(benchLimit)
		now, i := t0, 0
		for b.Loop() {
			now += 1000
			x.allow(addrs[i&1023].String(), time.Unix(0, now))
			i++
		}
	})
}

// BenchmarkParallel: all goroutines (GOMAXPROCS = -cpu) decide requests for
// 100,000 pre-populated keys, each walking them with its own PRNG and clock.
func BenchmarkParallel(b *testing.B) {
	b.Run("chatkit", func(b *testing.B) {
		b.ReportAllocs()
		keys, _ := benchData()
		s, _ := populatedStores()
		var seed sync.Mutex
		next := uint64(0)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			seed.Lock()
			next++
			r := rng(next * 0x9e3779b97f4a7c15)
			seed.Unlock()
			now := t0
			for pb.Next() {
				now += 1000
				s.allow(keys[r.below(len(keys))], benchLimit, now)
			}
		})
	})
	b.Run("xrate", func(b *testing.B) {
		b.ReportAllocs()
		_, strs := benchData()
		_, x := populatedStores()
		var seed sync.Mutex
		next := uint64(0)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			seed.Lock()
			next++
			r := rng(next * 0x9e3779b97f4a7c15)
			seed.Unlock()
			now := t0
			for pb.Next() {
				now += 1000
				x.allow(strs[r.below(len(strs))], time.Unix(0, now))
			}
		})
	})
}

// BenchmarkNewKeyAtCapacity: a flood of new keys into a full store; each
// reuses an evicted slot (0 allocs/op).
func BenchmarkNewKeyAtCapacity(b *testing.B) {
	b.ReportAllocs()
	s := newBucketStore(benchKeys)
	i := 0
	for ; i < 2*benchKeys; i++ {
		s.allow(ipBucketKey(floodAddr(i), 32, 64), benchLimit, t0)
	}
	now := t0
	b.ResetTimer()
	for b.Loop() {
		now += 1000
		s.allow(ipBucketKey(floodAddr(i), 32, 64), benchLimit, now)
		i++
	}
}

// BenchmarkMemory: heap per live key with 1,000,000 live keys (half IPv4,
// half IPv6), measured as the HeapAlloc growth after GC divided by the keys.
// The baseline's count includes its key strings (IP string forms). One
// iteration builds one full store; ns/op is the time to do so.
func BenchmarkMemory(b *testing.B) {
	const n = 1_000_000
	b.Run("chatkit", func(b *testing.B) {
		total := 0.0
		for range b.N {
			base := heapAlloc()
			s := newBucketStore(n + n/10)
			for i := range n {
				s.allow(memKey(i), benchLimit, t0)
			}
			if s.len() != n {
				b.Fatalf("len %d, want %d", s.len(), n)
			}
			total += float64(int64(heapAlloc())-int64(base)) / n
			runtime.KeepAlive(s)
		}
		b.ReportMetric(total/float64(b.N), "bytes/key")
	})
	b.Run("xrate", func(b *testing.B) {
		total := 0.0
		for range b.N {
			base := heapAlloc()
			x := newXrateStore(benchLimit)
			for i := range n {
				x.allow(memAddr(i).String(), time.Unix(0, t0))
			}
			if len(x.m) != n {
				b.Fatalf("len %d, want %d", len(x.m), n)
			}
			total += float64(int64(heapAlloc())-int64(base)) / n
			runtime.KeepAlive(x)
		}
		b.ReportMetric(total/float64(b.N), "bytes/key")
	})
}

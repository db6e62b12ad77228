package chatkit

// In-process rate-limit bucket store.
//
// Each key owns a token bucket with continuous refill, implemented as GCRA
// (the generic cell rate algorithm): the only per-key state is one int64
// time in nanoseconds, so no fractions of a token are ever lost. Times are
// on a monotonic base (monoClock), never the wall clock: a wall-clock step
// back would otherwise refuse every recent client for as long as the step.
//
// The store is sharded (numShards shards chosen by hash bits, one mutex
// each) and bounded: every shard holds at most ceil(maxKeys/numShards)
// entries in a slice of fixed-size entries, indexed by an open-addressing
// table and threaded on an intrusive LRU list. A full shard reuses the slot
// of a bucket that has refilled (or, failing that, of the least recently
// used one), so a flood of new keys never grows the heap past the bound and,
// at steady state, allocates nothing.

import (
	"crypto/sha256"
	"encoding/binary"
	"hash/maphash"
	"math"
	"net/netip"
	"sync"
	"time"
	"unsafe"
)

// bucketKey is a fixed-size key: an IP prefix or a hash of any other string.
//
// The 128-bit key space is split into disjoint domains, so an IP key can
// never equal a string key:
//
//   - IPv6 (not IPv4-mapped, not multicast): the address masked to the IPv6
//     prefix, verbatim (all 128 bits are usable, so even /128 works).
//   - IPv4 and IPv4-mapped IPv6: the IPv4 address masked to the IPv4 prefix,
//     in IPv4-mapped form ::ffff:a.b.c.d. A masked non-mapped IPv6 address
//     never lies in ::ffff:0:0/96 (its first 96 bits would have to be those
//     of a mapped address), so the two cannot meet.
//   - Anything that cannot be a peer's source address (IPv6 multicast, the
//     invalid zero Addr): the single key ff00:: ("bogus peer").
//   - Strings: first byte 0xff and lowest bit of the last byte 1, i.e. inside
//     ff00::/8, which a unicast IPv6 key never starts with, and never ff00::
//     itself. The remaining 119 bits are a keyed hash of the string.
type bucketKey [16]byte

const (
	defaultIPv4Prefix = 32
	defaultIPv6Prefix = 64
)

// ipBucketKey returns the bucket key of ip masked to ipv4Prefix bits (IPv4
// and IPv4-mapped IPv6) or ipv6Prefix bits (other IPv6). A prefix <= 0 means
// the default (/32 for IPv4, /64 for IPv6); a larger one than the address
// has means the whole address. The zone of ip is ignored.
func ipBucketKey(ip netip.Addr, ipv4Prefix, ipv6Prefix int) bucketKey {
	var k bucketKey
	if ip.Is4In6() {
		ip = ip.Unmap()
	}
	switch {
	case ip.Is4():
		p := ipv4Prefix
		if p <= 0 {
			p = defaultIPv4Prefix
		}
		p = min(p, 32)
		a := ip.As4()
		v := binary.BigEndian.Uint32(a[:]) & (^uint32(0) << (32 - p))
		k[10], k[11] = 0xff, 0xff
		binary.BigEndian.PutUint32(k[12:], v)
	case ip.Is6() && !ip.IsMulticast():
		p := ipv6Prefix
		if p <= 0 {
			p = defaultIPv6Prefix
		}
		p = min(p, 128)
		a := ip.As16()
		hi := binary.BigEndian.Uint64(a[:8])
		lo := binary.BigEndian.Uint64(a[8:])
		if p <= 64 {
			hi &= ^uint64(0) << (64 - p)
			lo = 0
		} else {
			lo &= ^uint64(0) << (128 - p)
		}
		binary.BigEndian.PutUint64(k[:8], hi)
		binary.BigEndian.PutUint64(k[8:], lo)
	default:
		k[0] = 0xff // ff00::, shared by all addresses no real peer can have
	}
	return k
}

// stringBucketKey returns the bucket key of a non-IP key such as a user id:
// SHA-256 of the string with 9 bits overwritten by the string-domain tag
// (119 hash bits remain). It must be the same in every process, because
// instances sharing Redis look the same client up under this key; and it
// must resist chosen collisions, because clients often control the string.
func stringBucketKey(s string) bucketKey {
	sum := sha256.Sum256([]byte(s))
	var k bucketKey
	copy(k[:], sum[:16])
	k[0] = 0xff
	k[15] |= 1
	return k
}

// monoClock turns times into int64 nanoseconds since a fixed epoch. When
// both carry Go's monotonic clock reading (time.Now's do), t.Sub uses it
// alone, so stepping the wall clock (NTP, a resumed VM) moves nothing;
// t.UnixNano would drop it. Times without one (injected in tests) are
// compared by their wall readings.
type monoClock struct{ epoch time.Time }

func newMonoClock() monoClock { return monoClock{epoch: time.Now()} }

// nanos returns t as nanoseconds since the epoch (saturated at ±292 years).
func (c monoClock) nanos(t time.Time) int64 { return int64(t.Sub(c.epoch)) }

// limit allows burst requests at once, then one more per interval.
// A burst below 1 counts as 1 and an interval below 1ns as 1ns.
type limit struct {
	burst    int
	interval time.Duration
}

// params returns the GCRA emission interval t (ns), the burst, and the
// tolerance tau = (burst-1)*t, saturated at math.MaxInt64 (about 292 years)
// instead of overflowing.
func (l limit) params() (t, tau, burst int64) {
	t = max(int64(l.interval), 1)
	burst = max(int64(l.burst), 1)
	if burst-1 > math.MaxInt64/t {
		tau = math.MaxInt64
	} else {
		tau = (burst - 1) * t
	}
	return t, tau, burst
}

// decision is the outcome of one request.
type decision struct {
	allowed    bool
	remaining  int           // whole tokens left after this request (floor), 0..burst
	retryAfter time.Duration // when refused: time until one token is available (>0); when allowed: 0
	nextToken  time.Duration // time until the bucket gains its next whole token (0 if full)
}

// addSat returns a+b (b >= 0), saturated at math.MaxInt64.
func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// subSat returns a-b (b >= 0), saturated at math.MinInt64.
func subSat(a, b int64) int64 {
	if a < math.MinInt64+b {
		return math.MinInt64
	}
	return a - b
}

// The GCRA state of a bucket is allowAt: the earliest time at which its next
// request conforms. In the textbook formulation the state is the theoretical
// arrival time TAT, the time at which the bucket is full again, and a request
// at now conforms iff TAT-now <= tau; allowAt is TAT-tau. Under one fixed
// limit the two are the same algorithm; the difference shows when the limit
// changes, because l is passed per call and not stored: with allowAt, the
// tokens a client holds are min(burst, 1 + (now-allowAt)/t), so
//
//   - a client that is refused stays refused until allowAt, whatever the new
//     limit (an exhausted client is never let through by a reload);
//   - with the interval unchanged, a client keeps its tokens, capped at the
//     new burst (a shrunk bucket spills its excess, as a real one would);
//   - a reload that lowers the limits (burst not larger, interval not
//     shorter) never gives any client more tokens than it had, and one that
//     raises them never gives fewer.
//
// (Storing TAT would instead keep the time to full: a longer interval would
// then hand an exhausted client tokens back, e.g. burst 10 per 1s spent,
// then 10 per 2s leaves it 5.)
//
// A bucket is full (refilled) iff allowAt <= now-tau. A new key starts at
// allowAt = math.MinInt64: full under any limit.

// makeDecision derives the decision for a request at now from whether it was
// allowed and the bucket's allowAt after it (updated if allowed). All the
// arithmetic is exact integer nanoseconds and cannot overflow.
func makeDecision(allowed bool, allowAt, now, t, burst int64) decision {
	if allowAt > now {
		// Less than one token: the next one arrives at allowAt.
		wait := uint64(allowAt) - uint64(now) // exact: allowAt > now
		w := time.Duration(min(wait, math.MaxInt64))
		d := decision{allowed: allowed, nextToken: w}
		if !allowed {
			d.retryAfter = w
		}
		return d
	}
	// tokens = 1 + (now-allowAt)/t, capped at burst.
	diff := uint64(now) - uint64(allowAt) // exact: now >= allowAt
	k := diff / uint64(t)
	if k >= uint64(burst-1) {
		return decision{allowed: allowed, remaining: int(burst)}
	}
	return decision{
		allowed:   allowed,
		remaining: int(1 + k),
		nextToken: time.Duration(uint64(t) - diff%uint64(t)),
	}
}

const (
	shardBits = 6
	numShards = 1 << shardBits

	// evictScan is how many buckets, from the LRU tail, a full shard looks
	// at for one that has refilled before it evicts the least recently used.
	evictScan = 8
	// sweepChunk is how many entry slots sweep examines per lock hold.
	sweepChunk = 256
	// minEntries is the entry capacity a shard starts with (it then
	// doubles, up to its cap).
	minEntries = 16
	// maxShardCap bounds a shard's capacity: entry indices are uint32, 0 is
	// the LRU sentinel and freeSlot marks free slots.
	maxShardCap = 1 << 30

	freeSlot = ^uint32(0)
)

// entry is one bucket: 32 bytes including the key.
type entry struct {
	key     bucketKey
	allowAt int64  // GCRA state, ns on the caller's monotonic base
	prev    uint32 // more recently used neighbour (0: sentinel); freeSlot: slot is free
	next    uint32 // less recently used neighbour (0: sentinel); free list link when free
}

// shard is one lock's worth of the store.
type shard struct {
	mu    sync.Mutex
	cap   int // maximum live entries
	count int // live entries
	free  uint32
	// entries[0] is the sentinel of the circular LRU list:
	// entries[0].next is the most recently used entry, entries[0].prev the
	// least recently used one. Slots 1..len-1 are live or on the free list
	// (linked through next, starting at free; 0 ends it).
	entries []entry
	// table is an open-addressing (linear probing, load <= 3/4) index of
	// the live entries: 0 is empty, otherwise hash32<<32 | entry index,
	// where hash32 is the low 32 bits of the key's hash (home slot
	// hash32&mask, and a filter that spares most key comparisons).
	table []uint64
}

// paddedShard keeps neighbouring shards' hot fields off each other's cache
// lines.
type paddedShard struct {
	shard
	_ [128 - unsafe.Sizeof(shard{})%128]byte
}

// bucketStore maps bucket keys to GCRA buckets. It is safe for concurrent
// use. The limit is not stored: it is passed to every call, so one store
// should serve one limit setting (one store per rule), which may change
// across config reloads.
type bucketStore struct {
	seed   maphash.Seed // keyed hash: key bits choose shard and home slot
	shards [numShards]paddedShard
}

// newBucketStore returns a store holding at most maxKeys live buckets (at
// least one per shard; see shardCapFor). Memory is allocated lazily, as keys
// arrive.
func newBucketStore(maxKeys int) *bucketStore {
	s := &bucketStore{seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].cap = shardCapFor(maxKeys, i)
	}
	return s
}

// shardCapFor returns shard i's capacity for maxKeys: maxKeys split evenly,
// the first maxKeys%numShards shards taking one more (so each holds
// floor or ceil of maxKeys/numShards and the total is exactly maxKeys), and
// at least 1. The store thus never holds more than max(maxKeys, numShards)
// keys; because keys spread over shards unevenly, it may start evicting
// somewhat before maxKeys (a shard's count has a standard deviation of about
// sqrt(maxKeys/numShards): 1 to 3% below maxKeys at a million).
func shardCapFor(maxKeys, i int) int {
	c := maxKeys / numShards
	if i < maxKeys%numShards {
		c++
	}
	return min(max(c, 1), maxShardCap)
}

func (s *bucketStore) hash(key *bucketKey) uint64 {
	return maphash.Bytes(s.seed, key[:])
}

func (s *bucketStore) shardOf(h uint64) *shard {
	return &s.shards[h>>(64-shardBits)].shard
}

// allow decides a request by key at now (ns on a monotonic base, the same
// for every call on this store) under limit l. An allowed
// request costs one token; a refused one costs nothing. An unknown key starts
// as a full bucket (and this request spends a token from it).
func (s *bucketStore) allow(key bucketKey, l limit, now int64) decision {
	// allowAt saturates at math.MaxInt64, which must stay in the future.
	now = min(now, math.MaxInt64-1)
	t, tau, burst := l.params()
	lo := subSat(now, tau) // a bucket with allowAt <= lo is full
	h := s.hash(&key)
	h32 := uint32(h)
	sh := s.shardOf(h)

	sh.mu.Lock()
	i := sh.find(&key, h32)
	if i == 0 {
		i = sh.insert(s, &key, h32, lo)
	} else {
		sh.touch(i)
	}
	e := &sh.entries[i]
	a := max(e.allowAt, lo)
	allowed := a <= now
	if allowed {
		a = addSat(a, t)
		e.allowAt = a
	}
	sh.mu.Unlock()

	return makeDecision(allowed, a, now, t, burst)
}

// peek reports a client's bucket without spending from it, creating it, or
// touching its recency: for the RateLimit headers of answers that cost
// nothing (a refused origin, a wrong method, a preflight).
func (s *bucketStore) peek(key bucketKey, l limit, now int64) decision {
	now = min(now, math.MaxInt64-1)
	t, tau, burst := l.params()
	a := subSat(now, tau)
	h := s.hash(&key)
	sh := s.shardOf(h)
	sh.mu.Lock()
	if i := sh.find(&key, uint32(h)); i != 0 {
		a = max(sh.entries[i].allowAt, a)
	}
	sh.mu.Unlock()
	return makeDecision(a <= now, a, now, t, burst)
}

// setMaxKeys changes the bound to maxKeys live buckets (same rounding as
// newBucketStore). Shrinking evicts least recently used buckets down to the
// new bound and releases the memory beyond it.
func (s *bucketStore) setMaxKeys(maxKeys int) {
	for i := range s.shards {
		c := shardCapFor(maxKeys, i)
		sh := &s.shards[i].shard
		sh.mu.Lock()
		sh.cap = c
		for sh.count > c {
			sh.remove(s, sh.entries[0].prev)
		}
		if cap(sh.entries)-1 > c {
			sh.compact(s, max(minEntries, 2*sh.count))
		}
		sh.mu.Unlock()
	}
}

// len returns the number of live buckets.
func (s *bucketStore) len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i].shard
		sh.mu.Lock()
		n += sh.count
		sh.mu.Unlock()
	}
	return n
}

// sweep removes the buckets that are full under l at now (they carry no
// state: a new bucket would decide the same) and returns how many it removed.
// It holds a shard's lock for at most sweepChunk slots at a time (plus, when
// a shard has become mostly empty, one compaction of its live entries, which
// releases memory after a flood).
func (s *bucketStore) sweep(now int64, l limit) int {
	_, tau, _ := l.params()
	lo := subSat(min(now, math.MaxInt64-1), tau)
	removed := 0
	for si := range s.shards {
		sh := &s.shards[si].shard
		for start := 1; ; {
			sh.mu.Lock()
			n := len(sh.entries)
			if start >= n {
				sh.maybeShrink(s)
				sh.mu.Unlock()
				break
			}
			end := min(start+sweepChunk, n)
			for i := start; i < end; i++ {
				e := &sh.entries[i]
				if e.prev != freeSlot && e.allowAt <= lo {
					sh.remove(s, uint32(i))
					removed++
				}
			}
			sh.mu.Unlock()
			start = end
		}
	}
	return removed
}

// find returns the index of key's entry, or 0 if it has none.
func (sh *shard) find(key *bucketKey, h32 uint32) uint32 {
	if len(sh.table) == 0 {
		return 0
	}
	mask := uint32(len(sh.table) - 1)
	for pos := h32 & mask; ; pos = (pos + 1) & mask {
		sl := sh.table[pos]
		if sl == 0 {
			return 0
		}
		if uint32(sl>>32) == h32 {
			if i := uint32(sl); sh.entries[i].key == *key {
				return i
			}
		}
	}
}

// slotOf returns the table position holding entry i whose hash is h32.
func (sh *shard) slotOf(h32, i uint32) uint32 {
	mask := uint32(len(sh.table) - 1)
	want := uint64(h32)<<32 | uint64(i)
	for pos := h32 & mask; ; pos = (pos + 1) & mask {
		if sh.table[pos] == want {
			return pos
		}
	}
}

// place stores slot value sl (hash32<<32 | index) at the first free
// position of its probe sequence in table.
func place(table []uint64, sl uint64) {
	mask := uint32(len(table) - 1)
	pos := uint32(sl>>32) & mask
	for table[pos] != 0 {
		pos = (pos + 1) & mask
	}
	table[pos] = sl
}

// unplace empties table position pos, shifting later members of the probe
// run back so that every entry stays reachable from its home slot (no
// tombstones).
func (sh *shard) unplace(pos uint32) {
	mask := uint32(len(sh.table) - 1)
	hole := pos
	for j := (pos + 1) & mask; ; j = (j + 1) & mask {
		sl := sh.table[j]
		if sl == 0 {
			break
		}
		home := uint32(sl>>32) & mask
		// The entry at j may fill the hole iff the hole lies on its
		// probe path, i.e. home..j (cyclically) passes over hole.
		if (j-home)&mask >= (j-hole)&mask {
			sh.table[hole] = sl
			hole = j
		}
	}
	sh.table[hole] = 0
}

// tableSizeFor returns the table size for n entries: the smallest power of
// two, at least 2*minEntries, with load <= 3/4.
func tableSizeFor(n int) int {
	size := 2 * minEntries
	for size*3 < n*4 {
		size *= 2
	}
	return size
}

// insert adds key as a new full bucket and returns its index, first making
// room if the shard is full.
func (sh *shard) insert(s *bucketStore, key *bucketKey, h32 uint32, lo int64) uint32 {
	if sh.count >= sh.cap {
		sh.remove(s, sh.victim(lo))
	}
	if (sh.count+1)*4 > len(sh.table)*3 {
		nt := make([]uint64, tableSizeFor(sh.count+1))
		for _, sl := range sh.table {
			if sl != 0 {
				place(nt, sl)
			}
		}
		sh.table = nt
	}
	var i uint32
	if sh.free != 0 {
		i = sh.free
		sh.free = sh.entries[i].next
	} else {
		if len(sh.entries) == cap(sh.entries) {
			// No free slot, so every slot but the sentinel is live:
			// len-1 == count < cap, and there is room to grow.
			n := max(minEntries+1, 2*len(sh.entries))
			ne := make([]entry, len(sh.entries), min(n, sh.cap+1))
			copy(ne, sh.entries)
			sh.entries = ne
		}
		if len(sh.entries) == 0 {
			sh.entries = sh.entries[:1] // the sentinel: an empty list
		}
		i = uint32(len(sh.entries))
		sh.entries = sh.entries[:i+1]
	}
	sh.entries[i] = entry{key: *key, allowAt: math.MinInt64}
	sh.pushFront(i)
	place(sh.table, uint64(h32)<<32|uint64(i))
	sh.count++
	return i
}

// victim picks the entry to evict from a full shard: the first of the
// evictScan least recently used buckets that is full (allowAt <= lo), else
// the least recently used one.
func (sh *shard) victim(lo int64) uint32 {
	i := sh.entries[0].prev
	for n := 0; n < evictScan && i != 0; n++ {
		if sh.entries[i].allowAt <= lo {
			return i
		}
		i = sh.entries[i].prev
	}
	return sh.entries[0].prev
}

// remove deletes live entry i and puts its slot on the free list.
func (sh *shard) remove(s *bucketStore, i uint32) {
	e := &sh.entries[i]
	h32 := uint32(s.hash(&e.key))
	sh.unplace(sh.slotOf(h32, i))
	sh.entries[e.prev].next = e.next
	sh.entries[e.next].prev = e.prev
	*e = entry{prev: freeSlot, next: sh.free}
	sh.free = i
	sh.count--
}

// touch makes entry i the most recently used.
func (sh *shard) touch(i uint32) {
	if sh.entries[0].next == i {
		return
	}
	e := &sh.entries[i]
	sh.entries[e.prev].next = e.next
	sh.entries[e.next].prev = e.prev
	sh.pushFront(i)
}

func (sh *shard) pushFront(i uint32) {
	head := sh.entries[0].next
	e := &sh.entries[i]
	e.prev = 0
	e.next = head
	sh.entries[head].prev = i
	sh.entries[0].next = i
}

// maybeShrink compacts a shard whose entry slice is at most a quarter used.
func (sh *shard) maybeShrink(s *bucketStore) {
	if c := cap(sh.entries) - 1; c > 2*minEntries && sh.count*4 <= c {
		sh.compact(s, max(minEntries, 2*sh.count))
	}
}

// compact reallocates the shard to hold its live entries in room for slots
// entries (at least count, at most cap), keeping the LRU order. An empty
// shard releases its memory entirely. It costs O(count).
func (sh *shard) compact(s *bucketStore, slots int) {
	if sh.count == 0 {
		sh.entries, sh.table, sh.free = nil, nil, 0
		return
	}
	slots = min(max(slots, sh.count), sh.cap)
	ne := make([]entry, 1, slots+1)
	nt := make([]uint64, tableSizeFor(slots))
	for i := sh.entries[0].next; i != 0; i = sh.entries[i].next {
		n := uint32(len(ne))
		ne = append(ne, entry{
			key:     sh.entries[i].key,
			allowAt: sh.entries[i].allowAt,
			prev:    n - 1,
			next:    n + 1,
		})
		place(nt, uint64(uint32(s.hash(&ne[n].key)))<<32|uint64(n))
	}
	last := uint32(len(ne) - 1)
	ne[last].next = 0
	ne[0] = entry{prev: last, next: 1}
	sh.entries, sh.table, sh.free = ne, nt, 0
}

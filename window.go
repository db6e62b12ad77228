package chatkit

// The site-wide budget: an exact sliding window.
//
// `budget <n> <interval>` promises at most n sessions in ANY window of
// length interval. A token bucket cannot keep that promise (a full bucket of
// n refilled over the interval lets 2n−1 through in one interval), so the
// budget keeps a log of the times of the last admissions instead: a request
// at now is admitted iff fewer than n admissions lie in (now−interval, now],
// that is iff the n-th most recent admission is at least interval old. Any
// n+1 admissions then span at least interval, so no window of that length
// holds more than n. A refused request can retry exactly when the n-th most
// recent admission leaves the window.
//
// Memory: the log keeps the last n admissions, 8 bytes each (n is at most
// maxBudgetSessions), allocated as admissions arrive. Redis keeps the same
// log, under the same rule, in a list (redis.go).
//
// Handlers sharing a zone share its log, each applying its own n; with the
// same interval every one of them is exact (a reload that changes n keeps
// exactness too). A reload that lengthens the interval counts the
// admissions made before it only as far as the old log reached.

import (
	"sync"
	"time"
)

// maxBudgetSessions bounds n (checkBudgetSessions, validate.go): the log
// keeps one time per admission in the window, locally and in Redis.
const maxBudgetSessions = 1_000_000

// windowLimit admits n events in any window of length interval.
type windowLimit struct {
	n        int
	interval time.Duration
}

// admissionLog is the log of recent admissions of one budget. It is safe
// for concurrent use.
type admissionLog struct {
	mu sync.Mutex
	// ring holds count times (ns on the zone's monotonic base), oldest at
	// head, in order: a time is never older than the one before it.
	ring  []int64
	head  int
	count int
}

// at returns the i-th oldest logged time (0 <= i < count).
func (w *admissionLog) at(i int) int64 { return w.ring[(w.head+i)%len(w.ring)] }

// admit decides a request at now under l: admitted, or refused with the
// exact wait until the n-th most recent admission leaves the window.
// An admission is logged; a refusal costs nothing.
func (w *admissionLog) admit(l windowLimit, now int64) decision {
	n := max(l.n, 1)
	window := max(int64(l.interval), 1)
	w.mu.Lock()
	defer w.mu.Unlock()
	// A logged time later than now (a clock that went back: only injected
	// clocks can, in-process) counts as now, so the log stays in order and
	// a refusal never lasts longer than one window.
	for i := w.count - 1; i >= 0; i-- {
		p := &w.ring[(w.head+i)%len(w.ring)]
		if *p <= now {
			break
		}
		*p = now
	}
	if w.count >= n {
		nth := w.at(w.count - n)
		// nth <= now, so the subtraction cannot overflow; the sum may only
		// for absurd windows, where it saturates (refused "forever").
		if wait := addSat(nth, window) - now; wait > 0 {
			return decision{retryAfter: time.Duration(wait)}
		}
	}
	w.push(now)
	// Only the last n matter. (Admitted, fewer than n were in the window,
	// so what goes has left it: a handler sharing the log with a larger n
	// and the same interval still finds every admission it counts.)
	for w.count > n {
		w.head = (w.head + 1) % len(w.ring)
		w.count--
	}
	w.maybeShrink()
	return decision{allowed: true}
}

// push logs t as the newest admission, growing the ring as needed.
func (w *admissionLog) push(t int64) {
	if w.count == len(w.ring) {
		w.resize(max(8, 2*w.count))
	}
	w.ring[(w.head+w.count)%len(w.ring)] = t
	w.count++
}

// maybeShrink releases memory after a burst that a smaller setting (or a
// quiet period) no longer needs.
func (w *admissionLog) maybeShrink() {
	if len(w.ring) > 64 && w.count*4 <= len(w.ring) {
		w.resize(2 * w.count)
	}
}

// resize moves the log into a ring of size slots (>= count), oldest first.
func (w *admissionLog) resize(size int) {
	ring := make([]int64, max(size, w.count))
	for i := range w.count {
		ring[i] = w.at(i)
	}
	w.ring, w.head = ring, 0
}

// len returns how many admissions are logged.
func (w *admissionLog) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count
}

// windowMicros is the window in whole microseconds, Redis's clock
// resolution, rounded up so the Redis log is never more lenient, and at
// most 2^52 µs (142 years) so that Lua's doubles add it to a time exactly.
func windowMicros(d time.Duration) int64 {
	us := int64(d / time.Microsecond)
	if d%time.Microsecond != 0 {
		us++
	}
	return min(max(us, 1), 1<<52)
}

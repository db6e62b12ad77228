package chatkit

import (
	"math/rand"
	"sort"
	"strings"
	"testing"
	"time"
)

// refWindow is the budget's promise written out plainly: every admission
// kept, and a request at now admitted iff fewer than n admissions lie in
// (now-interval, now]; the wait is until the n-th most recent leaves.
type refWindow struct{ admitted []int64 }

func (r *refWindow) request(l windowLimit, now int64) decision {
	in := 0
	for i := len(r.admitted) - 1; i >= 0 && r.admitted[i] > now-int64(l.interval); i-- {
		in++
	}
	if in >= l.n {
		nth := r.admitted[len(r.admitted)-l.n]
		return decision{retryAfter: time.Duration(nth + int64(l.interval) - now)}
	}
	r.admitted = append(r.admitted, now)
	return decision{allowed: true}
}

// maxInAnyWindow is the most admissions any half-open window of length
// interval holds (the window starting at an admission is the fullest).
func maxInAnyWindow(times []int64, interval time.Duration) int {
	most := 0
	for i, start := range times {
		j := sort.Search(len(times), func(k int) bool { return times[k] >= start+int64(interval) })
		most = max(most, j-i)
	}
	return most
}

func TestWindowWorstCaseAcrossWindowEdge(t *testing.T) {
	const n = 5
	l := windowLimit{n: n, interval: time.Hour}
	ms := int64(time.Millisecond)
	edge := t0 + int64(time.Hour) // the end of one hour and the start of the next
	var w admissionLog
	var admitted []int64
	// n at the very end of one window...
	for i := range n {
		at := edge - int64(n-i)*ms
		if d := w.admit(l, at); !d.allowed {
			t.Fatalf("admission %d at the end of the window refused: %+v", i, d)
		}
		admitted = append(admitted, at)
	}
	// ...and n at the start of the next: all refused, each told exactly
	// when the oldest admission leaves the window.
	for i := range n {
		at := edge + int64(i)*ms
		d := w.admit(l, at)
		if d.allowed {
			t.Fatalf("request %d at the start of the next window admitted: %d in one hour", i, n+i+1)
		}
		if want := time.Duration(admitted[0] + int64(time.Hour) - at); d.retryAfter != want {
			t.Fatalf("request %d: retryAfter %v, want %v", i, d.retryAfter, want)
		}
	}
	// One nanosecond before the oldest leaves: still refused, for 1ns.
	leave := admitted[0] + int64(time.Hour)
	if d := w.admit(l, leave-1); d.allowed || d.retryAfter != 1 {
		t.Fatalf("1ns before the oldest leaves: %+v", d)
	}
	// When it leaves, exactly one more gets in, and the next waits for the
	// second oldest.
	if d := w.admit(l, leave); !d.allowed {
		t.Fatalf("refused when the oldest left the window: %+v", d)
	}
	admitted = append(admitted, leave)
	if d := w.admit(l, leave); d.allowed || d.retryAfter != time.Millisecond {
		t.Fatalf("second request when one left: %+v, want a wait of 1ms", d)
	}
	if got := maxInAnyWindow(admitted, time.Hour); got != n {
		t.Fatalf("%d admissions in one window, want at most %d", got, n)
	}
}

func TestWindowRefusesRefillWithinOneInterval(t *testing.T) {
	// n at once, then nothing for the whole interval (a bucket of n
	// refilled over the interval would let n-1 more in before it ends).
	l := windowLimit{n: 4, interval: 40 * time.Second}
	var w admissionLog
	for range 4 {
		if !w.admit(l, t0).allowed {
			t.Fatal("burst refused")
		}
	}
	for at := t0; at < t0+int64(l.interval); at += int64(time.Second) {
		d := w.admit(l, at)
		if d.allowed || d.retryAfter != time.Duration(t0+int64(l.interval)-at) {
			t.Fatalf("at +%v: %+v", time.Duration(at-t0), d)
		}
	}
	for i := range 4 {
		if !w.admit(l, t0+int64(l.interval)).allowed {
			t.Fatalf("after one interval, admission %d refused", i)
		}
	}
	if w.admit(l, t0+int64(l.interval)).allowed {
		t.Fatal("a fifth admission in the new window")
	}
}

func TestWindowMatchesReferenceModel(t *testing.T) {
	rng := rand.New(rand.NewSource(11))
	allowed, refused := 0, 0
	for trial := range 200 {
		interval := time.Duration(1+rng.Intn(1000)) * time.Millisecond
		// Handlers sharing a zone may set different n (same interval): the
		// log must serve each exactly.
		ns := []int{1 + rng.Intn(8), 1 + rng.Intn(30)}
		var w admissionLog
		var ref refWindow
		now := t0
		for step := range 400 {
			switch rng.Intn(4) {
			case 0: // the same instant
			case 1:
				now += rng.Int63n(int64(interval) / 4)
			case 2:
				now += rng.Int63n(int64(interval))
			default:
				now += rng.Int63n(3 * int64(interval))
			}
			l := windowLimit{n: ns[rng.Intn(len(ns))], interval: interval}
			got, want := w.admit(l, now), ref.request(l, now)
			if got != want {
				t.Fatalf("trial %d step %d (n %d, interval %v): got %+v, want %+v", trial, step, l.n, interval, got, want)
			}
			if got.allowed {
				allowed++
			} else {
				refused++
			}
			if most := max(ns[0], ns[1]); w.len() > most {
				t.Fatalf("trial %d: the log holds %d, more than n = %d", trial, w.len(), most)
			}
		}
		if got := maxInAnyWindow(ref.admitted, interval); got > max(ns[0], ns[1]) {
			t.Fatalf("trial %d: %d admissions in one window", trial, got)
		}
	}
	if allowed < 10_000 || refused < 10_000 {
		t.Fatalf("weak test: %d allowed, %d refused", allowed, refused)
	}
}

func TestWindowMemoryIsBounded(t *testing.T) {
	const n = 1000
	l := windowLimit{n: n, interval: time.Second}
	var w admissionLog
	now := t0
	// A steady flood, far over the budget.
	for range 100 * n {
		w.admit(l, now)
		now += int64(time.Millisecond) / 4
		if w.len() > n {
			t.Fatalf("the log holds %d, more than n", w.len())
		}
	}
	if cap(w.ring) > 2*n {
		t.Fatalf("ring of %d slots for n = %d", cap(w.ring), n)
	}
	// A reload down to a small budget: once the old admissions have left
	// the window, the memory goes with them.
	small := windowLimit{n: 3, interval: time.Second}
	now += int64(2 * time.Second)
	for range 3 {
		w.admit(small, now)
	}
	if w.len() != 3 || cap(w.ring) > 64 {
		t.Fatalf("after shrinking: %d logged in %d slots", w.len(), cap(w.ring))
	}
	if w.admit(small, now).allowed {
		t.Fatal("a fourth admission under n = 3")
	}
}

func TestWindowAllocatesNothingAtSteadyState(t *testing.T) {
	l := windowLimit{n: 100, interval: time.Second}
	var w admissionLog
	now := t0
	step := func() {
		w.admit(l, now)
		now += int64(time.Millisecond)
	}
	for range 1000 {
		step() // the ring reaches its size
	}
	if a := testing.AllocsPerRun(1000, step); a != 0 {
		t.Fatalf("%v allocations per decision", a)
	}
}

func TestWindowClockBackCountsAsNow(t *testing.T) {
	// Only injected clocks go back in-process, but the log must stay
	// ordered and a refusal must never outlast one window.
	l := windowLimit{n: 2, interval: time.Minute}
	var w admissionLog
	w.admit(l, t0)
	w.admit(l, t0)
	back := t0 - int64(time.Hour)
	if d := w.admit(l, back); d.allowed || d.retryAfter != time.Minute {
		t.Fatalf("after the clock went back an hour: %+v, want a wait of one window", d)
	}
	if d := w.admit(l, back+int64(time.Minute)); !d.allowed {
		t.Fatalf("one window later: %+v", d)
	}
}

// TestBudgetSessionsAreBounded: the log's bound is a config rule, with the
// same message from JSON and from the Caddyfile (with its line).
func TestBudgetSessionsAreBounded(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", cfCanaryKey)
	largest := `{"user":"u","workflow":{"id":"wf_1"},"budget":{"sessions":1000000,"interval":"1h"}}`
	if err := cfProvision(t, cfDecode(t, largest)); err != nil {
		t.Fatalf("the largest budget refused: %v", err)
	}
	const want = "budget sessions must be at most 1000000 (the budget keeps the time of each session in its window), got 1000001"
	jsonErr := cfProvision(t, cfDecode(t, `{"user":"u","workflow":{"id":"wf_1"},"budget":{"sessions":1000001,"interval":"1h"}}`))
	if jsonErr == nil || !strings.Contains(jsonErr.Error(), want) {
		t.Fatalf("JSON error %v, want %q", jsonErr, want)
	}
	_, cfErr := cfParse("chatkit {\n\tworkflow wf_1\n\tbudget 1000001 1h\n}")
	if cfErr == nil || cfErr.Error() != jsonErr.Error()+", at Testfile:3" {
		t.Fatalf("Caddyfile error %v, want the JSON one at line 3", cfErr)
	}
}

func TestWindowMicrosNeverMoreLenient(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want int64
	}{
		{time.Nanosecond, 1},
		{time.Microsecond, 1},
		{time.Microsecond + 1, 2},
		{time.Hour, 3_600_000_000},
		{1<<63 - 1, 1 << 52},
	} {
		if got := windowMicros(tc.in); got != tc.want {
			t.Errorf("windowMicros(%v) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

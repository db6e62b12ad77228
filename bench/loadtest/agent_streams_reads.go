package main

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// The reads of -agent-streams: while (a)'s streams are open, a few clients
// read the threads of other users, as visitors opening their history do,
// so the report shows what 1,000 open answers do to threads.list and
// threads.get_by_id.

// streamReadSet is the filled part of every (a) store: 20 users × 50
// threads × 20 items (1,000 threads, 20,000 items), enough that a list is
// a page of a longer history (has_more) and get_by_id picks among many
// threads, and quick to fill on PostgreSQL too. It is filled once per
// store kind and copied for each measurement.
func streamReadSet() readSet { return readSet{owners: 20, threads: 50, items: 20} }

// readSample is one read sent while the streams ran.
type readSample struct {
	due  int64 // unix ns when it was due
	get  bool  // threads.get_by_id (else threads.list)
	lat  time.Duration
	fail string // "" when it succeeded
}

// readClients is how many clients send rate reads a second: 2 a second
// each, as -agent-reads does.
func readClients(rate int) int { return max(rate/2, 1) }

// startStreamReads sends rate reads a second in all, open loop (each
// client on its own fixed schedule, the schedules interleaved; a read due
// while its client still waits for the previous answer is timed from when
// it was due), alternating threads.list (limit 20) and threads.get_by_id of
// a random thread of the client's user, until the returned stop is called;
// stop returns every read.
func startStreamReads(url string, set readSet, rate int) (stop func() []readSample) {
	ts := readTargets(url, set)
	n := readClients(rate)
	clients := newClients(n, [4]byte{10, 4, 0, 1})
	for i, c := range clients {
		c.user = readOwner(i % set.owners)
	}
	period := time.Duration(float64(time.Second) * float64(n) / float64(rate))
	begin := time.Now()
	done := make(chan struct{})
	outs := make([][]readSample, n)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			get := i%2 == 1
			var prevDone time.Time
			for due := begin.Add(time.Duration(i) * period / time.Duration(n)); ; due = due.Add(period) {
				select {
				case <-done:
					return
				case <-time.After(time.Until(due)):
				}
				from := time.Now()
				if prevDone.After(due) {
					from = due
				}
				t := ts["l"]
				if get {
					t = ts["g"]
				}
				status, body, _, err := do(c, t.newRequest(c))
				prevDone = time.Now()
				sm := readSample{due: due.UnixNano(), get: get, lat: prevDone.Sub(from)}
				if err != nil || !t.ok(status, body) {
					sm.fail = failureKey(status, err)
				}
				outs[i] = append(outs[i], sm)
				get = !get
			}
		}()
	}
	return func() []readSample {
		close(done)
		wg.Wait()
		closeClients(clients)
		return slices.Concat(outs...)
	}
}

// readResults are the reads due within a window.
type readResults struct {
	list, get []time.Duration // of the successful ones, sorted
	failures  map[string]int
	window    time.Duration
}

// inWindow keeps the reads due in [from, to] (unix ns).
func inWindow(samples []readSample, from, to int64) *readResults {
	r := &readResults{failures: map[string]int{}, window: time.Duration(to - from)}
	for _, sm := range samples {
		switch {
		case sm.due < from || sm.due > to:
		case sm.fail != "":
			r.failures[sm.fail]++
		case sm.get:
			r.get = append(r.get, sm.lat)
		default:
			r.list = append(r.list, sm.lat)
		}
	}
	slices.Sort(r.list)
	slices.Sort(r.get)
	return r
}

func (r *readResults) latencies(get bool) []time.Duration {
	if get {
		return r.get
	}
	return r.list
}

func (r *readResults) failed() (n int) {
	for _, v := range r.failures {
		n += v
	}
	return n
}

func (r *readResults) print() {
	fmt.Printf("    reads meanwhile: threads.list p50 %s p99 %s max %s (%d), threads.get_by_id p50 %s p99 %s max %s (%d), failed %d%s\n",
		fmtDur(pctOf(r.list, 0.5)), fmtDur(pctOf(r.list, 0.99)), fmtDur(pctOf(r.list, 1)), len(r.list),
		fmtDur(pctOf(r.get, 0.5)), fmtDur(pctOf(r.get, 0.99)), fmtDur(pctOf(r.get, 1)), len(r.get),
		r.failed(), failureList(r.failures))
}

// pctOf is the p-quantile of sorted durations (nearest rank), 0 for none.
func pctOf(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

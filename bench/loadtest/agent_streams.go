package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// runAgentStreams opens -streams concurrent answers (e.g. 10 and 1000) and
// measures, against the fake streaming a text delta every
// -stream-interval, with every delta stamped with the time the fake wrote
// it (fakeserver -stamp-deltas):
//
//   - (d) the fake's /v1/responses streams read directly: the delay from
//     the fake's write to the load generator's read of each delta, the
//     floor of this machine and harness;
//   - (a) the same number of threads.create streams through Caddy's agent:
//     the same delay for each ChatKit text_delta, so the difference is what
//     Caddy adds per event; and Caddy's memory per open stream: (RSS with
//     every stream open − RSS idle) / streams, and Go heap in use the same
//     way.
//
// (a) is measured on each store of -agent-store (SQLite, PostgreSQL), and
// while its streams are open, readers send threads.list and
// threads.get_by_id at -stream-reads-rate to a filled set of threads
// (streamReadSet), timed over the same window.
//
// Each (a) measurement gets a fresh Caddy and database. Delays and memory
// are taken over the steady window: from the moment every stream has its
// first delta to the moment the first one ends.
func runAgentStreams(s *servers) error {
	o := s.opts
	levels := parseInts(o.streamCounts)
	if len(levels) == 0 {
		return fmt.Errorf("-streams %q: no stream counts", o.streamCounts)
	}
	stores, err := parseStores(o.agentStore)
	if err != nil {
		return err
	}
	if o.streamWords < 10 || o.streamWords > 1300 {
		return errors.New("-stream-words must be 10 to 1300 (the agent's default max_input of 4,000 characters holds 1,300 two-letter words)")
	}
	if o.streamTLS {
		ft, err := newFakeTLS(s.work)
		if err != nil {
			return err
		}
		s.fakeTLS = ft
		defer func() { s.fakeTLS = nil }()
	}
	fake, err := s.startFake("-event-interval", o.streamInterval.String(), "-stamp-deltas")
	if err != nil {
		return err
	}
	defer fake.stop()
	s.streamFake = fake

	// One filled store per kind, copied for each measurement of (a).
	filled := map[string]*benchStore{}
	if strings.Contains(o.streamTargets, "a") {
		for _, kind := range stores {
			if filled[kind], err = s.newStore(kind, "streams_filled"); err != nil {
				return err
			}
			if o.streamReadsRate > 0 {
				if err := fillStore(filled[kind], streamReadSet()); err != nil {
					return err
				}
			}
		}
	}

	text := strings.TrimSpace(strings.Repeat("ab ", o.streamWords))
	want := o.streamWords + 2 // "You", " said:", then one delta a word
	fmt.Printf("streams: an answer of %d text deltas, one every %s (%.1f s each), fake on CPU %q, Caddy on CPU %q (GOMAXPROCS=%d)\n",
		want, o.streamInterval, (time.Duration(want) * o.streamInterval).Seconds(), o.fakeCPUs, o.serverCPUs, o.serverProcs)
	fmt.Printf("  (d) POST %s/v1/responses straight to the fake\n  (a) POST %s%s threads.create through Caddy's agent (a user per stream), on %s\n", s.fakeURL(), s.siteURL(), agentPath, strings.Join(stores, " and "))
	if o.streamReadsRate > 0 {
		fmt.Printf("  while (a)'s streams are open: %d reads a second, threads.list (limit 20) and threads.get_by_id in turn, from %d clients, on %d users × %d threads × %d items\n",
			o.streamReadsRate, readClients(o.streamReadsRate), streamReadSet().owners, streamReadSet().threads, streamReadSet().items)
	}
	fmt.Println()

	var runs []*streamRun
	// measure runs one measurement, again (up to -retry-noisy times) while
	// other processes used over 10% of a core in its window: a busy machine
	// puts its own stalls into Caddy's delays.
	measure := func(r int, m func() (*streamRun, error)) error {
		for attempt := 0; ; attempt++ {
			if o.quietWait > 0 {
				waitQuiet(o.quietWait)
			}
			run, err := m()
			if err != nil {
				return err
			}
			run.round = r + 1
			run.print()
			if run.others <= 0.10 || attempt >= o.retryNoisy {
				runs = append(runs, run)
				return nil
			}
			fmt.Printf("    (other processes used %.0f%% of a core: measuring again)\n", 100*run.others)
		}
	}
	for r := range o.rounds {
		for _, n := range levels {
			for _, k := range order(o.streamTargets, r) {
				switch k {
				case "d":
					err = measure(r, func() (*streamRun, error) { return directStreams(s, n, text, want) })
				case "p":
					err = measure(r, func() (*streamRun, error) { return proxyStreams(s, n, text, want) })
				default:
					for i := range stores {
						kind := stores[(i+r)%len(stores)] // the stores take turns at going first
						// Profiled once: the first round's largest count, first store.
						profile := o.agentProfile > 0 && r == 0 && i == 0 && n == slices.Max(levels)
						if err = measure(r, func() (*streamRun, error) { return caddyStreams(s, n, text, want, profile, filled[kind]) }); err != nil {
							break
						}
					}
				}
				if err != nil {
					return err
				}
			}
		}
	}
	summarizeStreams(levels, runs)
	if o.agentProfile > 0 {
		printStreamProfiles(s)
	}
	return nil
}

// streamRun is one measurement of n concurrent streams.
type streamRun struct {
	round  int
	target string // "d", "p" or "a"
	store  string // (a)'s store kind
	n      int

	completed, failed int
	failures          map[string]int
	deltas            int             // text deltas received in the window
	delays            []time.Duration // of those, sorted
	window            time.Duration
	from, to          int64         // the steady window, unix ns
	ramp              time.Duration // from the first request to every stream open
	others            float64       // share of a core used by processes not ours in the window
	dbShare           float64       // share of a core the PostgreSQL cluster used in the window

	// Caddy only.
	profile                   bool   // take CPU and heap profiles once every stream is open
	beforeStreams             func() // runs once Caddy is measured idle, before the streams start
	idleRSS, openRSS, peakRSS int64  // kB
	idleHeap, openHeap        float64
	// live: Go heap just after a forced collection plus goroutine stacks,
	// what the streams hold apart from the collector's headroom.
	idleLive, openLive   float64
	idleStack, openStack float64 // of which goroutine stacks
	idleGoroutines       int
	goroutines           int
	cpuPerDelta          time.Duration

	// (a): the reads sent while the streams were open, in the window.
	reads *readResults
}

// key tells the targets apart in the summary: (a) once per store.
func (r *streamRun) key() string {
	if r.store != "" {
		return r.target + ":" + r.store
	}
	return r.target
}

// targetName is the summary's name of a key.
func targetName(key string) string {
	switch key {
	case "d":
		return "(d) fake direct"
	case "p":
		return "(p) Caddy proxy"
	}
	name := "(a) Caddy agent"
	switch strings.TrimPrefix(key, "a:") {
	case storeSQLite:
		name += ", SQLite"
	case storePostgres:
		name += ", PostgreSQL"
	}
	return name
}

func (r *streamRun) pct(p float64) time.Duration {
	if len(r.delays) == 0 {
		return 0
	}
	i := int(p*float64(len(r.delays))+0.5) - 1
	return r.delays[min(max(i, 0), len(r.delays)-1)]
}

func (r *streamRun) perStreamKiB() float64 {
	return float64(r.openRSS-r.idleRSS) / float64(r.n)
}

func (r *streamRun) heapPerStreamKiB() float64 {
	return (r.openHeap - r.idleHeap) / 1024 / float64(r.n)
}

func (r *streamRun) livePerStreamKiB() float64 {
	return (r.openLive - r.idleLive) / 1024 / float64(r.n)
}

func (r *streamRun) stackPerStreamKiB() float64 {
	return (r.openStack - r.idleStack) / 1024 / float64(r.n)
}

func (r *streamRun) goroutinesPerStream() float64 {
	return float64(r.goroutines-r.idleGoroutines) / float64(r.n)
}

func (r *streamRun) print() {
	fmt.Printf("round %d %-28s %5d streams: delay p50 %-8s p99 %-8s p99.9 %-8s max %-8s (%d deltas in %s, ramp %s) completed %d failed %d%s\n",
		r.round, targetName(r.key()), r.n, fmtDur(r.pct(0.5)), fmtDur(r.pct(0.99)), fmtDur(r.pct(0.999)), fmtDur(r.pct(1)),
		r.deltas, r.window.Round(time.Millisecond), r.ramp.Round(time.Millisecond), r.completed, r.failed, failureList(r.failures))
	db := ""
	if r.store == storePostgres && r.dbShare > 0 {
		db = fmt.Sprintf("; the PostgreSQL cluster %.0f%%", 100*r.dbShare)
	}
	fmt.Printf("    other processes: %.0f%% of a core during the window%s\n", 100*r.others, db)
	if r.target != "d" {
		fmt.Printf("    Caddy: RSS idle %s, with the streams open %s (peak %s): %.1f KiB per stream; Go heap in use %.1f KiB per stream; live heap and stacks %.1f KiB per stream (stacks %.1f KiB); %d goroutines, %d idle (%.1f per stream); CPU %s per delta\n",
			fmtMB(r.idleRSS), fmtMB(r.openRSS), fmtMB(r.peakRSS), r.perStreamKiB(), r.heapPerStreamKiB(), r.livePerStreamKiB(), r.stackPerStreamKiB(), r.goroutines, r.idleGoroutines, r.goroutinesPerStream(), fmtDur(r.cpuPerDelta))
	}
	if r.reads != nil {
		r.reads.print()
	}
}

func failureList(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return " [" + strings.Join(parts, ", ") + "]"
}

// directStreams reads n of the fake's Responses streams at once.
func directStreams(s *servers, n int, text string, want int) (*streamRun, error) {
	body, _ := json.Marshal(map[string]any{
		"model": agentModel, "stream": true, "store": false,
		"input": []any{map[string]any{"type": "message", "role": "user", "content": []any{map[string]any{"type": "input_text", "text": text}}}},
	})
	url := s.fakeURL() + "/v1/responses"
	newReq := func(int) *http.Request {
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		req.Header["Authorization"] = []string{"Bearer " + apiKey}
		req.Header["Content-Type"] = []string{"application/json"}
		return req
	}
	run := &streamRun{target: "d", n: n}
	return run, readStreams(s, run, newReq, streamMarks{delta: []byte(`"type":"response.output_text.delta"`), end: []byte(`"type":"response.completed"`)}, want, nil)
}

// proxyStreams reads n of the fake's streams at once through Caddy's
// reverse_proxy, measured as the agent is.
func proxyStreams(s *servers, n int, text string, want int) (*streamRun, error) {
	caddy, err := s.startCaddy(s.streamProxyCaddyfile())
	if err != nil {
		return nil, err
	}
	defer caddy.stop()
	reqs := func(words string) func(int) *http.Request {
		body, _ := json.Marshal(map[string]any{
			"model": agentModel, "stream": true, "store": false,
			"input": []any{map[string]any{"type": "message", "role": "user", "content": []any{map[string]any{"type": "input_text", "text": words}}}},
		})
		return func(int) *http.Request {
			req, _ := http.NewRequest(http.MethodPost, s.siteURL()+"/v1/responses", bytes.NewReader(body))
			req.Header["Authorization"] = []string{"Bearer " + apiKey}
			req.Header["Content-Type"] = []string{"application/json"}
			return req
		}
	}
	marks := streamMarks{delta: []byte(`"type":"response.output_text.delta"`), end: []byte(`"type":"response.completed"`)}
	return measureCaddyStreams(s, caddy, &streamRun{target: "p", n: n}, text, reqs, marks, want)
}

// caddyStreams starts a fresh Caddy on a copy of filled, warms it up,
// measures it idle, then reads n threads.create streams at once, with the
// readers of -stream-reads-rate on filled's threads meanwhile.
func caddyStreams(s *servers, n int, text string, want int, profile bool, filled *benchStore) (*streamRun, error) {
	store, err := s.copyOf(filled, "streams")
	if err != nil {
		return nil, err
	}
	caddy, err := s.startAgentCaddy(store, false)
	if err != nil {
		return nil, err
	}
	defer caddy.stop()
	url := s.siteURL() + agentPath
	rate := s.opts.streamReadsRate
	if rate > 0 {
		if err := checkReads(url, streamReadSet()); err != nil {
			return nil, err
		}
	}
	reqs := func(words string) func(int) *http.Request {
		return func(i int) *http.Request {
			return agentRequest(url, fmt.Sprintf("bench-%d-%05d", len(words), i), "threads.create", map[string]any{"input": userInput(words)})
		}
	}
	marks := streamMarks{delta: []byte(`"type":"assistant_message.content_part.text_delta"`), end: []byte(`"type":"thread.item.done","item":{`)}
	run := &streamRun{target: "a", store: store.kind, n: n, profile: profile}
	var stopReads func() []readSample
	run.beforeStreams = func() {
		if rate > 0 {
			stopReads = startStreamReads(url, streamReadSet(), rate)
		}
	}
	run, err = measureCaddyStreams(s, caddy, run, text, reqs, marks, want)
	if stopReads != nil {
		samples := stopReads()
		if run != nil && err == nil {
			run.reads = inWindow(samples, run.from, run.to)
		}
	}
	return run, err
}

// measureCaddyStreams warms a fresh Caddy up with a few short answers to
// the end (so pools, the database and the runtime have their working
// size), measures it idle, then reads run.n streams of text at once.
func measureCaddyStreams(s *servers, caddy *proc, run *streamRun, text string, reqs func(words string) func(int) *http.Request, marks streamMarks, want int) (*streamRun, error) {
	warm := &streamRun{target: run.target, n: 20}
	if err := readStreams(s, warm, reqs(strings.TrimSpace(strings.Repeat("ab ", 20))), marks, 22, nil); err != nil {
		return nil, err
	}
	if warm.completed != warm.n {
		return nil, fmt.Errorf("warm-up: %d of %d streams through Caddy completed%s; see %s", warm.completed, warm.n, failureList(warm.failures), caddy.log)
	}
	time.Sleep(2 * time.Second)
	run.idleRSS, _, _ = memKB(caddy.pid())
	if m, err := metrics(s.adminURL()); err == nil {
		run.idleHeap = m["go_memstats_heap_inuse_bytes"]
	}
	run.idleGoroutines, _ = goroutines(s.adminURL())
	run.idleLive, run.idleStack = liveMemory(s.adminURL())
	if run.beforeStreams != nil {
		run.beforeStreams()
	}
	return run, readStreams(s, run, reqs(text), marks, want, caddy)
}

// liveMemory has Caddy collect its garbage (the admin API's heap profile
// with gc=1) and returns its heap then in use plus its goroutine stacks,
// and the stacks alone, in bytes; zeros when it cannot.
func liveMemory(adminURL string) (live, stacks float64) {
	if _, status, err := httpGet(adminURL + "/debug/pprof/heap?gc=1"); err != nil || status != http.StatusOK {
		return 0, 0
	}
	m, err := metrics(adminURL)
	if err != nil {
		return 0, 0
	}
	stacks = m["go_memstats_stack_inuse_bytes"]
	return m["go_memstats_heap_alloc_bytes"] + stacks, stacks
}

// sample is one reading while the streams run: Caddy's RSS and CPU (zero
// without Caddy), and the CPU every process and ours used so far.
type sample struct {
	at        time.Time
	rss       int64
	cpu       time.Duration
	busy, own time.Duration
	db        time.Duration // the throwaway PostgreSQL cluster's CPU
}

// streamMarks tell a stream's text deltas and its end apart.
type streamMarks struct{ delta, end []byte }

// readStreams runs n streams from newReq at once, reads every line, and
// times each stamped text delta. A stream succeeds when its end marker
// arrives after want deltas. With caddy set it samples Caddy's RSS and
// CPU, and once every stream is open its heap and goroutines.
func readStreams(s *servers, run *streamRun, newReq func(i int) *http.Request, marks streamMarks, want int, caddy *proc) error {
	n := run.n
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConnsPerHost: n,
		DisableCompression:  true,
	}
	if caddy == nil && s.fakeTLS != nil {
		// The fake directly: as Caddy reaches it, over TLS and HTTP/2.
		tr = s.fakeTLS.transport()
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Duration(want)*s.opts.streamInterval+2*time.Minute)
	defer cancel()

	type result struct {
		recv   []int64 // unix ns of each stamped delta's arrival
		delay  []time.Duration
		deltas int
		ended  bool
		err    string
	}
	results := make([]result, n)
	var opened atomic.Int64
	allOpen := make(chan struct{})
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := &results[i]
			res.recv = make([]int64, 0, want+4)
			res.delay = make([]time.Duration, 0, want+4)
			<-gate
			time.Sleep(time.Duration(i) * s.opts.streamInterval / time.Duration(n))
			req := newReq(i).WithContext(ctx)
			resp, err := hc.Do(req)
			if err != nil {
				res.err = "error: " + shortErr(err)
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
				res.err = fmt.Sprintf("status %d %s", resp.StatusCode, briefBody(b))
				return
			}
			br := bufio.NewReaderSize(resp.Body, 8<<10)
			for {
				line, err := br.ReadSlice('\n')
				if len(line) > 0 {
					if stamp, ok := findStamp(line); ok && bytes.Contains(line, marks.delta) {
						now := time.Now().UnixNano()
						res.recv = append(res.recv, now)
						res.delay = append(res.delay, time.Duration(now-stamp))
						if res.deltas++; res.deltas == 1 && opened.Add(1) == int64(n) {
							close(allOpen)
						}
					} else if bytes.Contains(line, marks.end) && res.deltas >= want {
						res.ended = true
					}
				}
				if errors.Is(err, bufio.ErrBufferFull) {
					continue // a long line (the final item): keep reading it
				}
				if err != nil {
					if err != io.EOF {
						res.err = "error: " + shortErr(err)
					}
					return
				}
			}
		}()
	}

	var samples []sample
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		snap := allOpen
		if caddy == nil {
			snap = nil
		}
		for {
			select {
			case <-stopSampling:
				return
			case <-snap:
				snap = nil
				// Half a second into the steady state.
				time.Sleep(500 * time.Millisecond)
				if m, err := metrics(s.adminURL()); err == nil {
					run.openHeap = m["go_memstats_heap_inuse_bytes"]
				}
				run.goroutines, _ = goroutines(s.adminURL())
				run.openLive, run.openStack = liveMemory(s.adminURL())
				if run.profile {
					go takeStreamProfiles(s, run.n)
				}
			case <-tick.C:
			}
			// The database the harness runs is its own too, not another's work.
			sm := sample{at: time.Now(), busy: systemBusy(), db: s.pg.cpu()}
			sm.own = selfCPU() + cpuTime(s.streamFake.pid()) + sm.db
			if caddy != nil {
				sm.rss, _, _ = memKB(caddy.pid())
				sm.cpu = cpuTime(caddy.pid())
				sm.own += sm.cpu
			}
			samples = append(samples, sm)
		}
	}()

	start := time.Now()
	close(gate) // the streams start spread over one event interval, not in lockstep
	wg.Wait()
	close(stopSampling)
	<-sampled

	// The steady window: every stream open, none ended yet.
	var first, last []int64
	run.failures = map[string]int{}
	for _, r := range results {
		switch {
		case r.err != "":
			run.failures[r.err]++
		case !r.ended || r.deltas != want:
			run.failures[fmt.Sprintf("ended after %d of %d deltas", r.deltas, want)]++
		default:
			run.completed++
		}
		if len(r.recv) > 0 {
			first = append(first, r.recv[0])
			last = append(last, r.recv[len(r.recv)-1])
		}
	}
	run.failed = n - run.completed
	if len(first) < n {
		return fmt.Errorf("%d of %d streams never got a delta%s", n-len(first), n, failureList(run.failures))
	}
	from, to := slices.Max(first), slices.Min(last)
	run.ramp = time.Duration(from - start.UnixNano())
	if from >= to {
		return fmt.Errorf("no steady window: the last stream opened %s after the first ended; use more -stream-words", time.Duration(from-to))
	}
	run.window = time.Duration(to - from)
	run.from, run.to = from, to
	for _, r := range results {
		for j, at := range r.recv {
			if at >= from && at <= to {
				run.delays = append(run.delays, r.delay[j])
			}
		}
	}
	run.deltas = len(run.delays)
	slices.Sort(run.delays)
	var inWindow []sample
	for _, sm := range samples {
		if at := sm.at.UnixNano(); at >= from && at <= to {
			inWindow = append(inWindow, sm)
		}
	}
	if len(inWindow) >= 2 {
		a, b := inWindow[0], inWindow[len(inWindow)-1]
		run.others = max((b.busy-a.busy)-(b.own-a.own), 0).Seconds() / b.at.Sub(a.at).Seconds()
		run.dbShare = (b.db - a.db).Seconds() / b.at.Sub(a.at).Seconds()
	}

	if caddy != nil {
		var rss []float64
		var c0, c1 time.Duration
		var t0, t1 time.Time
		for _, sm := range samples {
			at := sm.at.UnixNano()
			if at < from || at > to {
				continue
			}
			rss = append(rss, float64(sm.rss))
			run.peakRSS = max(run.peakRSS, sm.rss)
			if t0.IsZero() {
				t0, c0 = sm.at, sm.cpu
			}
			t1, c1 = sm.at, sm.cpu
		}
		if len(rss) == 0 {
			return errors.New("no memory sample in the steady window")
		}
		run.openRSS = int64(median(rss))
		// CPU over the sampled part of the window, per delta received in it.
		inSpan := 0
		for _, r := range results {
			for _, at := range r.recv {
				if at >= t0.UnixNano() && at <= t1.UnixNano() {
					inSpan++
				}
			}
		}
		if inSpan > 0 {
			run.cpuPerDelta = (c1 - c0) / time.Duration(inSpan)
		}
	}
	return nil
}

// Where -agent-profile keeps the streams' profiles, in the work directory.
const (
	streamCPUProfile  = "streams-cpu.pprof"
	streamHeapProfile = "streams-heap.pprof"
)

// takeStreamProfiles fetches Caddy's heap in use now and a CPU profile of
// the next -agent-profile seconds.
func takeStreamProfiles(s *servers, n int) {
	fmt.Printf("    (profiling Caddy with %d streams open: heap now, CPU for %ds)\n", n, s.opts.agentProfile)
	fetchProfile(s, "/debug/pprof/heap", streamHeapProfile)
	fetchProfile(s, "/debug/pprof/profile?seconds="+strconv.Itoa(s.opts.agentProfile), streamCPUProfile)
}

// printStreamProfiles prints the top of the profiles takeStreamProfiles kept.
func printStreamProfiles(s *servers) {
	cpu, heap := filepath.Join(s.work, streamCPUProfile), filepath.Join(s.work, streamHeapProfile)
	printPprof(s, "CPU with every stream open, top 25 by flat time", "-top", "-nodecount=25", cpu)
	printPprof(s, "CPU with every stream open, top 25 by cumulative time", "-top", "-cum", "-nodecount=25", cpu)
	printPprof(s, "heap in use with every stream open, top 25", "-top", "-nodecount=25", "-sample_index=inuse_space", heap)
	fmt.Printf("\nprofiles kept in %s\n", s.work)
}

// findStamp reads the "~<unix ns>~" a stamped delta starts with.
func findStamp(line []byte) (int64, bool) {
	i := bytes.IndexByte(line, '~')
	if i < 0 {
		return 0, false
	}
	j := bytes.IndexByte(line[i+1:], '~')
	if j < 1 {
		return 0, false
	}
	v, err := strconv.ParseInt(string(line[i+1:i+1+j]), 10, 64)
	return v, err == nil
}

func shortErr(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}

func summarizeStreams(levels []int, runs []*streamRun) {
	// The rows: (d), (p), then (a) per store in the order measured.
	keys := []string{"d", "p"}
	for _, r := range runs {
		if !slices.Contains(keys, r.key()) {
			keys = append(keys, r.key())
		}
	}
	fmt.Printf("\nmedians over the rounds:\n")
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "streams\ttarget\tdelay p50\tp99\tp99.9\tCaddy adds p50\tp99\tRSS/stream\theap/stream\tlive/stream\tgoroutines/stream\tCaddy CPU/delta\tlist p99\tget_by_id p99\tfailed\tothers (max)\t")
	for _, n := range levels {
		of := func(k string) (rs []*streamRun) {
			for _, r := range runs {
				if r.n == n && r.key() == k {
					rs = append(rs, r)
				}
			}
			return rs
		}
		stat := func(k string, f func(*streamRun) float64) float64 {
			var xs []float64
			for _, r := range of(k) {
				xs = append(xs, f(r))
			}
			return median(xs)
		}
		others := func(k string) (m float64) {
			for _, r := range of(k) {
				m = max(m, r.others)
			}
			return 100 * m
		}
		failed := func(k string) (f int) {
			for _, r := range of(k) {
				f += r.failed
				if r.reads != nil {
					f += r.reads.failed()
				}
			}
			return f
		}
		p := func(q float64) func(*streamRun) float64 {
			return func(r *streamRun) float64 { return float64(r.pct(q)) }
		}
		readP99 := func(k string, get bool) string {
			var xs []float64
			for _, r := range of(k) {
				if r.reads != nil {
					xs = append(xs, float64(pctOf(r.reads.latencies(get), 0.99)))
				}
			}
			if len(xs) == 0 {
				return ""
			}
			return fmtDur(time.Duration(median(xs)))
		}
		d50, d99 := stat("d", p(0.5)), stat("d", p(0.99))
		for _, k := range keys {
			if len(of(k)) == 0 {
				continue
			}
			k50, k99, k999 := stat(k, p(0.5)), stat(k, p(0.99)), stat(k, p(0.999))
			if k == "d" {
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t\t\t\t\t\t\t\t\t\t%d\t%.0f%%\t\n", n, targetName(k), fmtDur(time.Duration(k50)), fmtDur(time.Duration(k99)), fmtDur(time.Duration(k999)), failed(k), others(k))
				continue
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f KiB\t%.1f KiB\t%.1f KiB\t%.1f\t%s\t%s\t%s\t%d\t%.0f%%\t\n", n, targetName(k),
				fmtDur(time.Duration(k50)), fmtDur(time.Duration(k99)), fmtDur(time.Duration(k999)),
				fmtSigned(time.Duration(k50-d50)), fmtSigned(time.Duration(k99-d99)),
				stat(k, (*streamRun).perStreamKiB), stat(k, (*streamRun).heapPerStreamKiB), stat(k, (*streamRun).livePerStreamKiB),
				stat(k, (*streamRun).goroutinesPerStream),
				fmtDur(time.Duration(stat(k, func(r *streamRun) float64 { return float64(r.cpuPerDelta) }))),
				readP99(k, false), readP99(k, true), failed(k), others(k))
		}
	}
	w.Flush()
	verdict := func(ok bool) string {
		if ok {
			return "MET"
		}
		return "NOT MET"
	}
	for _, n := range levels {
		var d99 []float64
		for _, r := range runs {
			if r.n == n && r.target == "d" {
				d99 = append(d99, float64(r.pct(0.99)))
			}
		}
		for _, k := range keys {
			if k[0] != 'a' {
				continue
			}
			var mem, a99 []float64
			for _, r := range runs {
				if r.n == n && r.key() == k {
					mem = append(mem, r.perStreamKiB())
					a99 = append(a99, float64(r.pct(0.99)))
				}
			}
			if len(mem) == 0 {
				continue
			}
			add := time.Duration(median(a99) - median(d99))
			fmt.Printf("%d streams, %s: memory per open stream %.1f KiB (target < 32 KiB: %s); Caddy adds %s at p99 per event (target < 2 ms: %s)\n",
				n, targetName(k), median(mem), verdict(median(mem) < 32), fmtSigned(add), verdict(add < 2*time.Millisecond))
		}
	}
}

// fmtSigned is fmtDur for a difference, which may be negative or zero.
func fmtSigned(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + fmtDur(-d)
	case d == 0:
		return "0"
	}
	return "+" + fmtDur(d)
}

package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// runSoak drives start at a steady rate (open loop: requests are sent on
// schedule whatever the answers' latency) while reloading the config
// through the admin API, alternating session_ttl.
func runSoak(s *servers) error {
	o := s.opts
	ttls := []string{"5m", "6m"}
	if o.quietWait > 0 {
		waitQuiet(o.quietWait)
	}
	conf := benchConf
	conf.sessionTTL = ttls[0]
	fake, caddy, err := s.startStack(conf)
	if err != nil {
		return err
	}
	defer fake.stop()
	defer caddy.stop()

	ts := targets(s)
	t := ts["a"]
	clients := newClients(o.concurrency, [4]byte{10, 2, 0, 1})
	defer closeClients(clients)
	if err := prime(clients, t); err != nil {
		return err
	}
	fmt.Printf("soak: %s at %d req/s to (a) %s from %d keep-alive clients; POST /load every %s alternating session_ttl %v\n\n",
		o.soakDuration, o.soakRate, startPath, len(clients), o.soakReload, ttls)

	// Warm up for a few seconds so the first sample is steady state.
	warm := closedLoopFor(clients, t, 3*time.Second)
	fmt.Printf("warm-up: %d requests\n", warm)

	type sampleT struct {
		at         time.Duration
		rssKB      int64
		goroutines int
		sent       int64
	}
	var (
		mu       sync.Mutex
		samples  []sampleT
		failures = map[string]int64{}
		okCount  atomic.Int64
		sent     atomic.Int64
		late     atomic.Int64
		retried  atomic.Int64
		lastDone atomic.Int64
		maxGap   atomic.Int64
		gapAt    atomic.Int64
		lat      []time.Duration
		reloads  []string
	)
	takeSample := func(t0 time.Time) sampleT {
		rss, _, _ := memKB(caddy.pid())
		g, err := goroutines(s.adminURL())
		for try := 0; err != nil && try < 3; try++ {
			time.Sleep(200 * time.Millisecond)
			g, err = goroutines(s.adminURL())
		}
		if err != nil {
			g = -1
		}
		return sampleT{at: time.Since(t0), rssKB: rss, goroutines: g, sent: sent.Load()}
	}

	// Idle baseline: the clients' connections closed, Caddy left alone.
	closeClients(clients)
	time.Sleep(time.Second)
	idle0 := takeSample(time.Now())

	creates0, err := fakeCreates(s)
	if err != nil {
		return err
	}
	t0 := time.Now()
	b0, self0 := systemBusy(), selfCPU()
	caddy0, fake0 := cpuTime(caddy.pid()), cpuTime(fake.pid())
	lastDone.Store(t0.UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), o.soakDuration)
	defer cancel()

	// Workers take tickets from the scheduler; a ticket that finds no idle
	// worker waits in the channel (counted as late if it waited > 100 ms).
	tickets := make(chan time.Time, 4*o.soakRate)
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			for due := range tickets {
				if time.Since(due) > 100*time.Millisecond {
					late.Add(1)
				}
				t1 := time.Now()
				status, body, reused, answered, err := doTraced(c, t.newRequest(c))
				if err != nil && reused && !answered && o.soakResend {
					// The server closed this idle keep-alive connection
					// (a reload replaces the server) as the request went
					// out; it was never processed. Browsers resend such
					// requests, so the harness does too, once.
					retried.Add(1)
					status, body, _, _, err = doTraced(c, t.newRequest(c))
				}
				d := time.Since(t1)
				lastDone.Store(time.Now().UnixNano())
				if err == nil && success(status, body) {
					okCount.Add(1)
					local = append(local, d)
					continue
				}
				mu.Lock()
				failures[fmt.Sprintf("t=%.1fs %s", time.Since(t0).Seconds(), failureKey(status, err))]++
				mu.Unlock()
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}

	// Reloader.
	var rwg sync.WaitGroup
	rwg.Add(1)
	go func() {
		defer rwg.Done()
		tick := time.NewTicker(o.soakReload)
		defer tick.Stop()
		for i := 1; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			c := benchConf
			c.sessionTTL = ttls[i%len(ttls)]
			d, err := s.reload(context.Background(), s.caddyfile(c))
			line := fmt.Sprintf("t=%5.1fs reload %d (session_ttl %s): %s", time.Since(t0).Seconds(), i, c.sessionTTL, d.Round(time.Millisecond))
			if err != nil {
				line += " FAILED: " + err.Error()
			}
			mu.Lock()
			reloads = append(reloads, line)
			mu.Unlock()
		}
	}()

	// Stall watch: the longest time without any request completing.
	rwg.Add(1)
	go func() {
		defer rwg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				if gap := now.UnixNano() - lastDone.Load(); gap > maxGap.Load() {
					maxGap.Store(gap)
					gapAt.Store(int64(now.Sub(t0)))
				}
			}
		}
	}()

	// Sampler: RSS and goroutines twice per reload interval, a quarter of
	// an interval away from every reload (the admin endpoint restarts
	// with each /load).
	rwg.Add(1)
	go func() {
		defer rwg.Done()
		period := o.soakReload / 2
		select {
		case <-ctx.Done():
			return
		case <-time.After(period / 2):
		}
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			sm := takeSample(t0)
			mu.Lock()
			samples = append(samples, sm)
			mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()

	// Scheduler: one ticket every 1/rate.
	interval := time.Second / time.Duration(o.soakRate)
	next := time.Now()
sched:
	for {
		next = next.Add(interval)
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
				break sched
			case <-time.After(d):
			}
		}
		select {
		case tickets <- next:
			sent.Add(1)
		default:
			mu.Lock()
			failures["dropped: no worker free and the queue full"]++
			mu.Unlock()
		}
	}
	close(tickets)
	wg.Wait()
	rwg.Wait()
	elapsed := time.Since(t0)
	other := max((systemBusy()-b0)-(selfCPU()-self0)-(cpuTime(caddy.pid())-caddy0)-(cpuTime(fake.pid())-fake0), 0)
	creates1, err := fakeCreates(s)
	if err != nil {
		return err
	}
	closeClients(clients)
	time.Sleep(2 * time.Second)
	idle := takeSample(t0)
	_, hwm, _ := memKB(caddy.pid())

	// Report.
	var failed int64
	for _, v := range failures {
		failed += v
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	fmt.Printf("soak: %d requests in %s (%.1f req/s), %d succeeded, %d failed, %d started >100 ms late; p50 %s, p99 %s, max %s\n",
		sent.Load(), elapsed.Round(time.Millisecond), float64(sent.Load())/elapsed.Seconds(), okCount.Load(), failed, late.Load(),
		fmtDur(pct(0.5)), fmtDur(pct(0.99)), fmtDur(pct(1)))
	for k, v := range failures {
		fmt.Printf("  failure: %s ×%d\n", k, v)
	}
	fmt.Printf("  resent once after the server closed an idle keep-alive connection under them (reloads): %d\n", retried.Load())
	fmt.Printf("  longest time without a completed request: %s (at t=%.1fs); other processes used %.0f%% of a core\n",
		fmtDur(time.Duration(maxGap.Load())), time.Duration(gapAt.Load()).Seconds(), 100*other.Seconds()/elapsed.Seconds())
	fmt.Println("\nreloads:")
	reloadFailed := 0
	for _, r := range reloads {
		fmt.Println("  " + r)
		if strings.Contains(r, "FAILED") {
			reloadFailed++
		}
	}
	fmt.Println("\nCaddy over time (RSS = VmRSS; goroutines from /debug/pprof/goroutine?debug=1):")
	fmt.Printf("  %-14s %10s %10s %10s\n", "t", "requests", "RSS", "goroutines")
	fmt.Printf("  %-14s %10s %10s %10s\n", "before (idle)", "-", fmtMB(idle0.rssKB), fmtInt(idle0.goroutines))
	for _, sm := range samples {
		fmt.Printf("  %-14s %10d %10s %10s\n", fmt.Sprintf("%.1fs", sm.at.Seconds()), sm.sent, fmtMB(sm.rssKB), fmtInt(sm.goroutines))
	}
	fmt.Printf("  %-14s %10d %10s %10s\n", "after (idle)", idle.sent, fmtMB(idle.rssKB), fmtInt(idle.goroutines))
	fmt.Printf("  peak RSS (VmHWM) %s\n", fmtMB(hwm))

	// Steady state: compare the second sample (after 5 s of soak) with the
	// last one under load; the first sample is taken before any reload.
	fmt.Println("\nchecks:")
	pass := true
	check := func(ok bool, format string, args ...any) {
		v := "PASS"
		if !ok {
			v, pass = "FAIL", false
		}
		fmt.Printf("  %s  %s\n", v, fmt.Sprintf(format, args...))
	}
	check(failed == 0, "zero failed requests (%d of %d)", failed, sent.Load())
	check(creates1-creates0 == okCount.Load(), "one upstream session per success, none for a resent request: the fake created %d sessions for %d successes",
		creates1-creates0, okCount.Load())
	check(reloadFailed == 0 && len(reloads) > 0, "every reload succeeded (%d reloads)", len(reloads))
	if len(samples) >= 2 {
		first, last := samples[0], samples[len(samples)-1]
		growth := float64(last.rssKB-first.rssKB) / float64(first.rssKB)
		check(growth < 0.10, "flat memory: RSS %s at t=%.1fs → %s at t=%.1fs (%+.1f%%, < 10%%)", fmtMB(first.rssKB), first.at.Seconds(), fmtMB(last.rssKB), last.at.Seconds(), 100*growth)
		check(first.goroutines > 0 && last.goroutines > 0 && last.goroutines <= first.goroutines+10,
			"no goroutine growth under load: %d at t=%.1fs → %d at t=%.1fs", first.goroutines, first.at.Seconds(), last.goroutines, last.at.Seconds())
	}
	check(idle.goroutines > 0 && idle.goroutines <= idle0.goroutines+5,
		"no goroutine growth at rest: %d idle before the soak, %d idle after it", idle0.goroutines, idle.goroutines)
	if !pass {
		fmt.Println("\nsoak: some checks FAILED")
	}
	return nil
}

// closedLoopFor runs t back to back from every client for d and returns
// how many requests were sent.
// fakeCreates is how many create requests the fake has received.
func fakeCreates(s *servers) (int64, error) {
	b, _, err := httpGet(s.fakeURL() + "/bench/count")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// doTraced is do that also reports whether the connection was reused and
// whether any byte of an answer arrived.
func doTraced(c *vclient, req *http.Request) (status int, body []byte, reused, answered bool, err error) {
	trace := &httptrace.ClientTrace{
		GotConn:              func(i httptrace.GotConnInfo) { reused = i.Reused },
		GotFirstResponseByte: func() { answered = true },
	}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	status, body, _, err = do(c, req)
	return status, body, reused, answered, err
}

func closedLoopFor(clients []*vclient, t *target, d time.Duration) int64 {
	r := closedLoop(clients, t, 0, d, nil, nil)
	return r.ok + r.failed()
}

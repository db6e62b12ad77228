package main

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// floodBase is where the flood's client addresses start: 100.64.0.0/10
// (shared address space) holds 4M of them. They only ever appear in
// X-Forwarded-For on loopback.
var floodBase = [4]byte{100, 64, 0, 0}

// paced sends one request of mk every 1/rate seconds from c and counts the
// answers per phase and per second.
type paced struct {
	name string
	c    *vclient
	rate float64

	mu       sync.Mutex
	byPhase  map[string]map[int]int // phase -> status -> count
	perSec   map[int64][2]int       // unix second -> [200s, 429s] during the flood
	errs     int
	phase    string
	inFlood  bool
	firstErr string
}

func newPaced(name, ip string, rate float64) *paced {
	return &paced{name: name, c: newClient(ip), rate: rate, byPhase: map[string]map[int]int{}, perSec: map[int64][2]int{}}
}

func (p *paced) setPhase(ph string, flood bool) {
	p.mu.Lock()
	p.phase, p.inFlood = ph, flood
	p.mu.Unlock()
}

func (p *paced) run(stop <-chan struct{}, mk func(c *vclient) *http.Request, wg *sync.WaitGroup) {
	defer wg.Done()
	tick := time.NewTicker(time.Duration(float64(time.Second) / p.rate))
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		status, _, ck, err := do(p.c, mk(p.c))
		if ck != "" {
			p.c.cookie, p.c.user = ck, userFromCookie(ck)
		}
		p.mu.Lock()
		if err != nil {
			p.errs++
			if p.firstErr == "" {
				p.firstErr = err.Error()
			}
		} else {
			m := p.byPhase[p.phase]
			if m == nil {
				m = map[int]int{}
				p.byPhase[p.phase] = m
			}
			m[status]++
			if p.inFlood {
				sec := time.Now().Unix()
				v := p.perSec[sec]
				switch status {
				case http.StatusOK:
					v[0]++
				case http.StatusTooManyRequests:
					v[1]++
				}
				p.perSec[sec] = v
			}
		}
		p.mu.Unlock()
	}
}

func (p *paced) counts(phase string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.byPhase[phase]
	if len(m) == 0 {
		return "no answers"
	}
	var parts []string
	for _, st := range []int{200, 429} {
		if n := m[st]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d×%d", n, st))
		}
	}
	for st, n := range m {
		if st != 200 && st != 429 {
			parts = append(parts, fmt.Sprintf("%d×%d", n, st))
		}
	}
	return strings.Join(parts, ", ")
}

type rssSample struct {
	at         time.Duration
	sent       int64
	rssKB      int64
	keys       float64
	goroutines int
}

func parseLimit(s string) (burst int, interval time.Duration, err error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("-flood-limit wants <burst> <interval>, got %q", s)
	}
	if burst, err = strconv.Atoi(f[0]); err != nil {
		return 0, 0, err
	}
	interval, err = time.ParseDuration(f[1])
	return burst, interval, err
}

func runFlood(s *servers) error {
	o := s.opts
	burst, interval, err := parseLimit(o.floodLimit)
	if err != nil {
		return err
	}
	perSec := float64(time.Second) / float64(interval)
	conf := caddyConf{rateLimit: o.floodLimit, maxKeys: o.floodMaxKeys}
	fmt.Printf("flood: %d distinct client addresses (X-Forwarded-For %s and up, one request each, body %q) over %d connections\n",
		o.floodKeys, addIP(floodBase, 0), o.floodBody, o.floodConc)
	fmt.Printf("       rate_limit %s { max_keys %d } (sustained %.0f/s per client), trusted_proxies static 127.0.0.1/32\n", o.floodLimit, o.floodMaxKeys, perSec)

	if o.quietWait > 0 {
		waitQuiet(o.quietWait)
	}
	fake, caddy, err := s.startStack(conf)
	if err != nil {
		return err
	}
	defer fake.stop()
	defer caddy.stop()

	ts := targets(s)
	start := ts["a"].newRequest
	legit := newPaced("legitimate", "192.0.2.10", perSec/2)
	abuser := newPaced("over-limit", "192.0.2.66", perSec*4)
	fmt.Printf("       legitimate client %s at %.0f req/s (half its limit), over-limit client %s at %.0f req/s (4× its limit)\n\n",
		legit.c.ip, legit.rate, abuser.c.ip, abuser.rate)

	// Samples RSS all along, keys and goroutines less often (scrapes cost).
	var sent atomic.Int64
	var samplesMu sync.Mutex
	var samples []rssSample
	t0 := time.Now()
	sample := func(full bool) rssSample {
		rss, _, _ := memKB(caddy.pid())
		sm := rssSample{at: time.Since(t0), sent: sent.Load(), rssKB: rss, keys: -1, goroutines: -1}
		if full {
			if m, err := metrics(s.adminURL()); err == nil {
				if v, ok := m[`caddy_chatkit_ratelimit_keys{zone="workflow:`+workflowID+`"}`]; ok {
					sm.keys = v
				}
			}
			if n, err := goroutines(s.adminURL()); err == nil {
				sm.goroutines = n
			}
		}
		samplesMu.Lock()
		samples = append(samples, sm)
		samplesMu.Unlock()
		return sm
	}
	stopSampler := make(chan struct{})
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for i := 1; ; i++ {
			select {
			case <-stopSampler:
				return
			case <-tick.C:
				sample(i%8 == 0)
			}
		}
	}()

	var pwg sync.WaitGroup
	stopPaced := make(chan struct{})
	for _, p := range []*paced{legit, abuser} {
		p.setPhase("before", false)
		pwg.Add(1)
		go p.run(stopPaced, start, &pwg)
	}
	time.Sleep(5 * time.Second)
	before := sample(true)
	_, hwmBefore, _ := memKB(caddy.pid())

	// The flood.
	for _, p := range []*paced{legit, abuser} {
		p.setPhase("during", true)
	}
	var next atomic.Int64
	var fwg sync.WaitGroup
	statusMu := sync.Mutex{}
	floodStatus := map[string]int64{}
	deadline := time.Now().Add(o.floodTimeout)
	floodStart := time.Now()
	b0, self0, caddy0, fake0 := systemBusy(), selfCPU(), cpuTime(caddy.pid()), cpuTime(fake.pid())
	var mid rssSample
	var midOnce sync.Once
	for range o.floodConc {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			c := newClient("")
			defer c.tr.CloseIdleConnections()
			local := map[string]int64{}
			defer func() {
				statusMu.Lock()
				for k, v := range local {
					floodStatus[k] += v
				}
				statusMu.Unlock()
			}()
			for {
				i := next.Add(1) - 1
				if i >= int64(o.floodKeys) || time.Now().After(deadline) {
					return
				}
				c.ip = addIP(floodBase, int(i))
				req := start(c)
				if o.floodBody == "bad" {
					req.Body = http.NoBody
					req = withBody(req, "not json")
				}
				status, _, _, err := do(c, req)
				if err != nil {
					local[failureKey(0, err)]++
				} else {
					local[strconv.Itoa(status)]++
				}
				if n := sent.Add(1); n == int64(o.floodKeys/2) {
					midOnce.Do(func() { mid = sample(true) })
				}
			}
		}()
	}
	fwg.Wait()
	floodDur := time.Since(floodStart)
	caddyCPU := cpuTime(caddy.pid()) - caddy0
	other := max((systemBusy()-b0)-(selfCPU()-self0)-caddyCPU-(cpuTime(fake.pid())-fake0), 0)
	end := sample(true)
	_, hwmFlood, _ := memKB(caddy.pid())

	for _, p := range []*paced{legit, abuser} {
		p.setPhase("after", false)
	}
	time.Sleep(5 * time.Second)
	after := sample(true)
	close(stopPaced)
	pwg.Wait()
	close(stopSampler)
	<-samplerDone
	_, hwmEnd, _ := memKB(caddy.pid())

	// Report.
	done := sent.Load()
	fmt.Printf("flood: %d requests in %s (%.0f req/s); answers: %s\n", done, floodDur.Round(time.Millisecond), float64(done)/floodDur.Seconds(), fmtCounts(floodStatus))
	fmt.Printf("       Caddy CPU %s per flood request; other processes used %.0f%% of a core meanwhile\n",
		fmtDur(caddyCPU/time.Duration(max(done, 1))), 100*other.Seconds()/floodDur.Seconds())
	if done < int64(o.floodKeys) {
		fmt.Printf("WARNING: -flood-timeout %s reached after %d of %d addresses\n", o.floodTimeout, done, o.floodKeys)
	}
	fmt.Println("\nCaddy memory (VmRSS; rate-limit buckets from caddy_chatkit_ratelimit_keys; goroutines from /debug/pprof/goroutine):")
	fmt.Printf("  %-30s %10s %10s %10s\n", "when", "RSS", "keys", "goroutines")
	row := func(name string, sm rssSample) {
		fmt.Printf("  %-30s %10s %10s %10s\n", name, fmtMB(sm.rssKB), fmtKeys(sm.keys), fmtInt(sm.goroutines))
	}
	row("before the flood", before)
	if mid.rssKB > 0 {
		row(fmt.Sprintf("after %d addresses", mid.sent), mid)
	}
	row(fmt.Sprintf("after %d addresses", end.sent), end)
	row("5 s after the flood", after)
	fmt.Printf("  peak RSS (VmHWM): %s before the flood, %s at its end, %s at the end of the run\n", fmtMB(hwmBefore), fmtMB(hwmFlood), fmtMB(hwmEnd))

	samplesMu.Lock()
	maxKeys := -1.0
	fmt.Println("\n  RSS over time (every 10th sample):")
	for i, sm := range samples {
		maxKeys = max(maxKeys, sm.keys)
		if i%10 == 0 {
			fmt.Printf("    t=%5.1fs  sent %8d  RSS %s\n", sm.at.Seconds(), sm.sent, fmtMB(sm.rssKB))
		}
	}
	samplesMu.Unlock()

	fmt.Printf("\nlegitimate client %s (%.0f req/s): before %s; during %s; after %s; transport errors %d\n",
		legit.c.ip, legit.rate, legit.counts("before"), legit.counts("during"), legit.counts("after"), legit.errs)
	fmt.Printf("over-limit client %s (%.0f req/s): before %s; during %s; after %s; transport errors %d\n",
		abuser.c.ip, abuser.rate, abuser.counts("before"), abuser.counts("during"), abuser.counts("after"), abuser.errs)

	// Verdicts.
	fmt.Println()
	pass := true
	check := func(ok bool, format string, args ...any) {
		v := "PASS"
		if !ok {
			v, pass = "FAIL", false
		}
		fmt.Printf("  %s  %s\n", v, fmt.Sprintf(format, args...))
	}
	fmt.Println("checks:")
	if maxKeys >= 0 {
		check(maxKeys <= float64(o.floodMaxKeys), "rate-limit buckets stayed within max_keys: at most %.0f ≤ %d", maxKeys, o.floodMaxKeys)
	}
	if mid.rssKB > 0 {
		growth := float64(end.rssKB-mid.rssKB) / float64(mid.rssKB)
		check(growth < 0.10, "RSS flat over the second half of the flood: %s → %s (%+.1f%%)", fmtMB(mid.rssKB), fmtMB(end.rssKB), 100*growth)
	}
	// An unbounded store would hold every address: 1M map entries of a
	// 16-byte key and an int64 are ~40 MB on their own.
	check(hwmFlood-hwmBefore < 32*1024, "peak RSS grew by %s during the flood (< 32 MB)", fmtMB(max(hwmFlood-hwmBefore, 1)))

	legit.mu.Lock()
	lDuring := legit.byPhase["during"]
	lOK, lTotal := lDuring[200], 0
	for _, n := range lDuring {
		lTotal += n
	}
	legit.mu.Unlock()
	check(lTotal > 0 && lOK == lTotal && legit.errs == 0, "legitimate client got 200 to every request during the flood (%d/%d)", lOK, lTotal)

	abuser.mu.Lock()
	aDuring := abuser.byPhase["during"]
	allowed := float64(burst) + floodDur.Seconds()*perSec
	windows, windowsWith429 := 0, 0
	for sec, v := range abuser.perSec {
		// Whole seconds inside the flood only.
		if sec > floodStart.Unix() && sec < floodStart.Add(floodDur).Unix() {
			windows++
			if v[1] > 0 {
				windowsWith429++
			}
		}
	}
	abuser.mu.Unlock()
	check(float64(aDuring[200]) <= allowed*1.05+1, "over-limit client got no more 200s than its limit allows during the flood (%d ≤ %.0f = burst %d + %.1fs × %.0f/s)",
		aDuring[200], allowed, burst, floodDur.Seconds(), perSec)
	check(windows > 0 && windowsWith429 == windows, "over-limit client got 429s in every second of the flood (%d/%d seconds)", windowsWith429, windows)
	if !pass {
		fmt.Println("\nflood: some checks FAILED")
	}
	return nil
}

func withBody(req *http.Request, body string) *http.Request {
	r, _ := http.NewRequest(req.Method, req.URL.String(), strings.NewReader(body))
	r.Header = req.Header
	r.Header["Content-Type"] = []string{"application/json"}
	return r
}

func fmtCounts(m map[string]int64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func fmtKeys(v float64) string {
	if v < 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func fmtInt(v int) string {
	if v < 0 {
		return "-"
	}
	return strconv.Itoa(v)
}

package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// benchConf is the comparison config: rate limiting on and keyed by client
// address as usual, with a limit the load never reaches (a million at once,
// then one more per millisecond per client).
var benchConf = caddyConf{rateLimit: "1000000 1ms"}

// segment is one target measured once.
type segment struct {
	round  int
	target *target
	res    *loadResult

	caddyHWM, fakeHWM int64         // kB
	caddyCPU, fakeCPU time.Duration // during the window
	mallocs, allocB   float64       // Caddy, during the window
	otherCPU          time.Duration // CPU used by processes not ours during the window
}

func (g *segment) otherShare() float64 { return g.otherCPU.Seconds() / g.res.window.Seconds() }

// noisy reports whether other processes used over 10% of a core while g
// was measured.
func (g *segment) noisy() bool { return g.otherShare() > 0.10 }

func (g *segment) requests() float64 { return float64(g.res.ok + g.res.failed()) }

func (g *segment) cpuPerReq(d time.Duration) time.Duration {
	n := g.requests()
	if n == 0 {
		return 0
	}
	return time.Duration(float64(d) / n)
}

// order is the target sequence of round r: forward on even rounds,
// backward on odd ones (a b c, c b a, a b c, …).
func order(keys string, r int) []string {
	out := strings.Split(keys, "")
	if r%2 == 1 {
		slices.Reverse(out)
	}
	return out
}

func runCompare(s *servers) error {
	o := s.opts
	ts := targets(s)
	for _, k := range o.targets {
		if ts[string(k)] == nil {
			return fmt.Errorf("unknown target %q in -targets", k)
		}
	}
	clients := newClients(o.concurrency, [4]byte{10, 1, 0, 1})
	defer closeClients(clients)

	fmt.Printf("targets, %d keep-alive clients each, %s warm-up + %s measured, %d rounds:\n", o.concurrency, o.warmup, o.duration, o.rounds)
	logNote := "its per-request log line on"
	if !o.moduleLog {
		logNote = "its per-request log line excluded from the log"
	}
	fmt.Printf("  (a) POST %s%s  chatkit (anonymous cookie, client address from X-Forwarded-For, rate_limit %s, %s)\n", s.siteURL(), startPath, benchConf.rateLimit, logNote)
	fmt.Printf("  (b) POST %s%s  reverse_proxy to the fake's %s with the module's headers and body\n", s.siteURL(), proxyPath, fakeSessions)
	fmt.Printf("  (c) POST %s%s  the fake directly, the module's headers and body\n\n", s.fakeURL(), fakeSessions)

	if err := checkTargets(s, clients, ts); err != nil {
		return err
	}

	var segs []*segment
	for r := range o.rounds {
		for _, k := range order(o.targets, r) {
			for try := 0; ; try++ {
				g, err := measure(s, clients, ts[k], r+1)
				if err != nil {
					return err
				}
				printSegment(g)
				if g.noisy() && try < o.retryNoisy {
					fmt.Printf("    (other processes used %.0f%% of a core: measuring again)\n", 100*g.otherShare())
					continue
				}
				segs = append(segs, g)
				break
			}
		}
	}
	summarize(o, segs)
	return nil
}

// checkTargets primes the clients' cookies and shows that (a), (b) and
// (c) make the same upstream call and succeed.
func checkTargets(s *servers, clients []*vclient, ts map[string]*target) error {
	fake, caddy, err := s.startStack(benchConf)
	if err != nil {
		return err
	}
	defer fake.stop()
	defer caddy.stop()
	if err := prime(clients, ts["a"]); err != nil {
		return err
	}
	calls := map[string]*capturedCall{}
	for _, k := range []string{"a", "b", "c"} {
		call, status, body, err := captureCall(s, clients[0], ts[k])
		if err != nil {
			return fmt.Errorf("(%s): %w", k, err)
		}
		if !success(status, body) {
			return fmt.Errorf("(%s) %s answered %d: %s", k, ts[k].name, status, body)
		}
		if call == nil || call.Status != http.StatusOK {
			return fmt.Errorf("(%s): the fake did not answer 200 to the upstream call: %+v", k, call)
		}
		calls[k] = call
	}
	fmt.Println("upstream call check (what the fake received from one request of client 0):")
	for _, k := range []string{"a", "b", "c"} {
		c := calls[k]
		fmt.Printf("  (%s) %s %s -> %d  body %s\n      headers %s\n", k, c.Method, c.Path, c.Status, c.Body, c.headerList())
	}
	diff := diffCalls(calls["a"], calls["b"])
	if diff == "" {
		fmt.Println("  (a) and (b): same method, path, headers and body")
	} else {
		fmt.Println("  (a) vs (b) differ in:", diff)
	}
	fmt.Println()
	return nil
}

type capturedCall struct {
	Method string      `json:"method"`
	Path   string      `json:"path"`
	Status int         `json:"status"`
	Header http.Header `json:"header"`
	Body   string      `json:"body"`
}

// ignoredHeaders differ by construction (Go's client adds them).
var ignoredHeaders = map[string]bool{"Content-Length": true, "Accept-Encoding": true}

func (c *capturedCall) headerList() string {
	keys := slices.Sorted(maps.Keys(c.Header))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		v := strings.Join(c.Header[k], ", ")
		if k == "Authorization" {
			v = "Bearer sk-…"
		}
		parts = append(parts, k+": "+v)
	}
	return strings.Join(parts, "; ")
}

func diffCalls(a, b *capturedCall) string {
	var d []string
	if a.Method != b.Method || a.Path != b.Path {
		d = append(d, fmt.Sprintf("request line %s %s vs %s %s", a.Method, a.Path, b.Method, b.Path))
	}
	keys := map[string]bool{}
	for k := range a.Header {
		keys[k] = true
	}
	for k := range b.Header {
		keys[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if ignoredHeaders[k] {
			continue
		}
		if strings.Join(a.Header[k], ",") != strings.Join(b.Header[k], ",") {
			d = append(d, fmt.Sprintf("header %s %q vs %q", k, a.Header[k], b.Header[k]))
		}
	}
	if a.Body != b.Body {
		d = append(d, fmt.Sprintf("body %s vs %s", a.Body, b.Body))
	}
	return strings.Join(d, "; ")
}

// captureCall arms the fake's capture, sends one request of t and returns
// what the fake received.
func captureCall(s *servers, c *vclient, t *target) (*capturedCall, int, []byte, error) {
	if _, _, err := httpPost(s.fakeURL()+"/bench/arm", "text/plain", nil); err != nil {
		return nil, 0, nil, err
	}
	status, body, _, err := do(c, t.newRequest(c))
	if err != nil {
		return nil, 0, nil, err
	}
	b, _, err := httpGet(s.fakeURL() + "/bench/last")
	if err != nil {
		return nil, 0, nil, err
	}
	var call *capturedCall
	if err := json.Unmarshal(b, &call); err != nil {
		return nil, 0, nil, err
	}
	return call, status, body, nil
}

// measure runs one target with fresh server processes.
func measure(s *servers, clients []*vclient, t *target, round int) (*segment, error) {
	g := &segment{round: round, target: t}
	fake, err := s.startFake()
	if err != nil {
		return nil, err
	}
	defer fake.stop()
	var caddy *proc
	if t.caddy {
		if caddy, err = s.startCaddy(s.caddyfile(benchConf)); err != nil {
			return nil, err
		}
		defer caddy.stop()
	}
	var c0, f0, b0 time.Duration
	var m0, m1 map[string]float64
	if s.opts.quietWait > 0 {
		waitQuiet(s.opts.quietWait)
	}
	g.res = closedLoop(clients, t, s.opts.warmup, s.opts.duration,
		func() {
			b0 = systemBusy()
			f0 = cpuTime(fake.pid())
			if caddy != nil {
				c0 = cpuTime(caddy.pid())
				m0, _ = metrics(s.adminURL())
			}
		},
		func() {
			busy := systemBusy() - b0
			g.fakeCPU = cpuTime(fake.pid()) - f0
			if caddy != nil {
				g.caddyCPU = cpuTime(caddy.pid()) - c0
				m1, _ = metrics(s.adminURL())
			}
			g.otherCPU = max(busy-g.fakeCPU-g.caddyCPU, 0)
		})
	// The harness's own CPU is measured over the same window.
	g.otherCPU = max(g.otherCPU-g.res.loadCPU, 0)
	closeClients(clients)
	if m0 != nil && m1 != nil && g.requests() > 0 {
		g.mallocs = (m1["go_memstats_mallocs_total"] - m0["go_memstats_mallocs_total"]) / g.requests()
		g.allocB = (m1["go_memstats_alloc_bytes_total"] - m0["go_memstats_alloc_bytes_total"]) / g.requests()
	}
	if caddy != nil {
		if _, hwm, err := memKB(caddy.pid()); err == nil {
			g.caddyHWM = hwm
		}
	}
	if _, hwm, err := memKB(fake.pid()); err == nil {
		g.fakeHWM = hwm
	}
	return g, nil
}

func printSegment(g *segment) {
	r := g.res
	caddy := "-"
	if g.target.caddy {
		caddy = fmt.Sprintf("peak RSS %s, CPU %s/req, %.0f allocs/req (%.1f KB)", fmtMB(g.caddyHWM), fmtDur(g.cpuPerReq(g.caddyCPU)), g.mallocs, g.allocB/1024)
	}
	fmt.Printf("round %d (%s) %-14s %8.0f req/s  p50 %-8s p99 %-8s ok %-7d failed %d [%s]\n    caddy: %s; fake: peak RSS %s, CPU %s/req; load generator CPU %.0f%%; other processes %.0f%% of a core\n",
		g.round, g.target.key, g.target.name, r.rps(), fmtDur(r.pct(0.50)), fmtDur(r.pct(0.99)), r.ok, r.failed(), r.failureSummary(),
		caddy, fmtMB(g.fakeHWM), fmtDur(g.cpuPerReq(g.fakeCPU)), 100*r.loadCPU.Seconds()/r.window.Seconds(), 100*g.otherCPU.Seconds()/r.window.Seconds())
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// stat collects one number per round for each target.
type stat map[string][]float64

func (st stat) med(k string) float64 { return median(st[k]) }

func summarize(o *options, segs []*segment) {
	rps, p50, p99, chwm, fhwm, ccpu, fcpu, allocs, allocB, lcpu := stat{}, stat{}, stat{}, stat{}, stat{}, stat{}, stat{}, stat{}, stat{}, stat{}
	failed := map[string]int64{}
	total := map[string]int64{}
	noisy := 0
	byRound := map[int]map[string]*segment{}
	for _, g := range segs {
		k := g.target.key
		rps[k] = append(rps[k], g.res.rps())
		p50[k] = append(p50[k], float64(g.res.pct(0.50)))
		p99[k] = append(p99[k], float64(g.res.pct(0.99)))
		chwm[k] = append(chwm[k], float64(g.caddyHWM))
		fhwm[k] = append(fhwm[k], float64(g.fakeHWM))
		ccpu[k] = append(ccpu[k], float64(g.cpuPerReq(g.caddyCPU)))
		fcpu[k] = append(fcpu[k], float64(g.cpuPerReq(g.fakeCPU)))
		allocs[k] = append(allocs[k], g.mallocs)
		allocB[k] = append(allocB[k], g.allocB)
		lcpu[k] = append(lcpu[k], g.res.loadCPU.Seconds()/g.res.window.Seconds())
		if g.noisy() {
			noisy++
		}
		failed[k] += g.res.failed()
		total[k] += g.res.ok + g.res.failed()
		if byRound[g.round] == nil {
			byRound[g.round] = map[string]*segment{}
		}
		byRound[g.round][k] = g
	}

	fmt.Printf("\nevery measurement kept, in run order:\n")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\ttarget\treq/s\tp50\tp99\tfailed\tCaddy peak RSS\tCaddy CPU/req\tother processes\t")
	for _, g := range segs {
		fmt.Fprintf(tw, "%d\t(%s)\t%.0f\t%s\t%s\t%d\t%s\t%s\t%.0f%%\t\n", g.round, g.target.key, g.res.rps(), fmtDur(g.res.pct(0.5)), fmtDur(g.res.pct(0.99)),
			g.res.failed(), fmtMB(g.caddyHWM), fmtDur(g.cpuPerReq(g.caddyCPU)), 100*g.otherShare())
	}
	tw.Flush()

	fmt.Printf("\nmedians over %d rounds (c=%d, %s each):\n", o.rounds, o.concurrency, o.duration)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "target\treq/s\tp50\tp99\tfailed/total\tCaddy peak RSS\tfake peak RSS\tCaddy CPU/req\tfake CPU/req\tCaddy allocs/req\tCaddy B/req\tloadgen CPU\t")
	for _, k := range o.targets {
		k := string(k)
		name := "(" + k + ") " + targets(&servers{opts: o})[k].name
		caddyRSS, caddyCPU, caddyAllocs, caddyBytes := "-", "-", "-", "-"
		if k != "c" {
			caddyRSS = fmtMB(int64(chwm.med(k)))
			caddyCPU = fmtDur(time.Duration(ccpu.med(k)))
			caddyAllocs = fmt.Sprintf("%.0f", allocs.med(k))
			caddyBytes = fmt.Sprintf("%.0f", allocB.med(k))
		}
		fmt.Fprintf(w, "%s\t%.0f\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f%%\t\n", name, rps.med(k),
			fmtDur(time.Duration(p50.med(k))), fmtDur(time.Duration(p99.med(k))), failed[k], total[k],
			caddyRSS, fmtMB(int64(fhwm.med(k))), caddyCPU, fmtDur(time.Duration(fcpu.med(k))), caddyAllocs, caddyBytes, 100*lcpu.med(k))
	}
	w.Flush()

	ratio := func(x, y string) {
		if rps[x] == nil || rps[y] == nil {
			return
		}
		var pr, pp []float64
		ahead, lower := 0, 0
		var list []string
		for r := 1; r <= len(byRound); r++ {
			rs := byRound[r]
			if gx, gy := rs[x], rs[y]; gx != nil && gy != nil {
				ratio := gx.res.rps() / gy.res.rps()
				pr = append(pr, ratio)
				pp = append(pp, float64(gx.res.pct(0.99))/float64(gy.res.pct(0.99)))
				list = append(list, fmt.Sprintf("%.2f", ratio))
				if ratio >= 1 {
					ahead++
				}
				if gx.res.pct(0.99) <= gy.res.pct(0.99) {
					lower++
				}
			}
		}
		defer fmt.Printf("      per round %s/%s throughput: %s; %s ahead in %d of %d rounds, p99 no worse in %d of %d\n",
			x, y, strings.Join(list, " "), x, ahead, len(pr), lower, len(pp))
		fmt.Printf("  %s/%s: throughput %.2f× (median of per-round ratios %.2f×), p99 %.2f× (per-round %.2f×), p50 %.2f×",
			x, y, rps.med(x)/rps.med(y), median(pr), p99.med(x)/p99.med(y), median(pp), p50.med(x)/p50.med(y))
		if x != "c" && y != "c" && ccpu.med(y) > 0 {
			fmt.Printf(", Caddy CPU/req %.2f×", ccpu.med(x)/ccpu.med(y))
		}
		fmt.Println()
	}
	fmt.Println("\nratios (same run; p99 below 1.0× is better):")
	ratio("a", "b")
	ratio("a", "c")
	ratio("b", "c")
	if rps["a"] != nil && rps["b"] != nil {
		okT := rps.med("a") >= rps.med("b")
		okP := p99.med("a") <= p99.med("b")
		verdict := "MET"
		if !okT || !okP {
			verdict = "NOT MET"
		}
		fmt.Printf("\nStep 7 target (a/b ≥ 1.0× throughput, p99 no worse): %s (throughput %v, p99 %v)\n", verdict, okT, okP)
	}
	for k, f := range failed {
		if f > 0 {
			fmt.Printf("WARNING: target (%s) had %d failed requests\n", k, f)
		}
	}
	if noisy > 0 {
		fmt.Printf("WARNING: in %d of %d measurements other processes used over 10%% of a core: rerun on a quiet machine\n", noisy, len(segs))
	}
	if lcpu.med("c") > 0.9 || lcpu.med("a") > 0.9 || lcpu.med("b") > 0.9 {
		fmt.Println("WARNING: the load generator used over 90% of its core: it may be the bottleneck")
	}
}

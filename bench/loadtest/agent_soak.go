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
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// runAgentSoak is the agent's soak (issue 14): two Caddy instances (their
// own site and admin ports, one fake upstream) share one thread store;
// conversation turns arrive at -agent-soak-rate a second, open loop, each
// sent to the next instance that is up, as a load balancer would; every
// -agent-soak-reload one instance (in turn) loads a changed config; at
// -agent-soak-restart-at the second instance is killed (SIGKILL, as a crash)
// and started again. The client keeps every item the server acknowledged
// (each thread.item.done it saw); afterwards the harness reads every thread
// back from the database and checks that each acknowledged item is there
// exactly once. A turn cut by the kill is an error the client saw, counted
// apart from losses. Loss or duplication fails the run.
func runAgentSoak(s *servers) error {
	o := s.opts
	kinds, err := parseStores(o.agentStore)
	if err != nil {
		return err
	}
	if len(kinds) != 1 {
		return errors.New("-agent-soak: -agent-store names the one store both instances share")
	}
	if o.agentSoakRate < 1 || o.agentSoakD <= 0 || o.agentSoakReload <= 0 {
		return errors.New("-agent-soak: -agent-soak-rate, -agent-soak-d and -agent-soak-reload must be positive")
	}
	if o.agentSoakWords < 1 || o.agentSoakWords > 1000 {
		return errors.New("-agent-soak-words must be 1 to 1000")
	}
	killAt := o.agentSoakKillAt
	if killAt == 0 {
		// Half-way, between two reloads.
		killAt = o.agentSoakD/2 + o.agentSoakReload/2
	}
	if o.streamTLS {
		ft, err := newFakeTLS(s.work)
		if err != nil {
			return err
		}
		s.fakeTLS = ft
		defer func() { s.fakeTLS = nil }()
	}
	if o.quietWait > 0 {
		waitQuiet(o.quietWait)
	}
	fake, err := s.startFake("-event-interval", o.streamInterval.String())
	if err != nil {
		return err
	}
	defer fake.stop()
	store, err := s.newStore(kinds[0], "soak")
	if err != nil {
		return err
	}

	// The second instance: the same layout on ports of its own.
	s2 := *s
	for _, p := range []*int{&s2.sitePort, &s2.adminPort} {
		if *p, err = freePort(); err != nil {
			return err
		}
	}
	soak := &agentSoak{s: s, fake: fake, store: store, words: o.agentSoakWords, started: time.Now()}
	soak.insts = []*soakInstance{{name: "A", srv: s}, {name: "B", srv: &s2}}
	for _, in := range soak.insts {
		if err := soak.start(in); err != nil {
			return err
		}
		defer func() {
			if p := in.current(); p != nil {
				p.stop()
			}
		}()
	}
	fmt.Printf("agent soak: %s at %d turns/s (open loop) over instances A (%s) and B (%s), sharing %s\n",
		o.agentSoakD, o.agentSoakRate, s.siteURL(), s2.siteURL(), store)
	fmt.Printf("  a turn: threads.create, or threads.add_user_message to a thread of fewer than %d turns, of %d words (an answer of %d deltas, one every %s)\n",
		soakTurnsPerThread, o.agentSoakWords, o.agentSoakWords+2, o.streamInterval)
	restart := "none"
	if killAt > 0 {
		restart = fmt.Sprintf("B killed (SIGKILL) at t=%s and started again", killAt)
	}
	fmt.Printf("  a config reload (POST /load, history 30 ↔ 29) every %s on A and B in turn; restart: %s\n\n", o.agentSoakReload, restart)
	return soak.run(o.agentSoakD, o.agentSoakRate, o.agentSoakReload, killAt)
}

// soakTurnsPerThread is how many turns a thread gets before a new thread
// takes its place (the fake's history grows with each).
const soakTurnsPerThread = 8

// agentSoak is one soak run's state.
type agentSoak struct {
	s       *servers
	fake    *proc
	store   *benchStore
	words   int
	insts   []*soakInstance
	started time.Time
	hc      *http.Client

	mu       sync.Mutex
	acks     []soakAck         // every item the client saw done
	threads  map[string]string // thread id -> owner, of every thread.created seen
	errs     map[string]int    // by kind
	cut      int               // turns cut by the kill
	turnLat  []time.Duration   // of the turns that completed
	events   []string          // reloads, the kill, the restart
	samples  []soakSample
	others   float64 // share of a core used by processes not the run's
	finished atomic.Int64
	next     atomic.Int64 // round-robin over the instances
	turns    atomic.Int64 // numbers the turns (the marker in each message)
	free     chan *soakThread
	// killedCPU is the CPU time of the instance killed, taken just before.
	killedCPU atomic.Int64
}

// ownCPU is the CPU time the run's own processes have used: the harness,
// the fake, the PostgreSQL cluster and both instances (with the killed one).
func (a *agentSoak) ownCPU() time.Duration {
	t := selfCPU() + cpuTime(a.fake.pid()) + a.s.pg.cpu() + time.Duration(a.killedCPU.Load())
	for _, in := range a.insts {
		if p := in.current(); p != nil {
			t += cpuTime(p.pid())
		}
	}
	return t
}

// soakInstance is one of the two Caddy instances; gen counts its kills.
type soakInstance struct {
	name string
	srv  *servers
	mu   sync.Mutex
	proc *proc
	up   bool
	gen  int
	conf int // reloads so far (the history it runs)
}

func (in *soakInstance) current() *proc {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.proc
}

// soakAck is an item the server said was done and saved.
type soakAck struct {
	thread, owner, id, typ string
	turn                   int64 // the turn's number, in its user message
}

// soakThread is a conversation the client may add to.
type soakThread struct {
	id, owner string
	turns     int
}

// soakSample is one reading of an instance.
type soakSample struct {
	at         time.Duration
	inst       string
	gen        int
	rssKB      int64
	goroutines int
}

func (a *agentSoak) since() time.Duration { return time.Since(a.started) }

// config is in's Caddyfile: its reloads alternate history 30 and 29.
func (a *agentSoak) config(in *soakInstance) string {
	in.mu.Lock()
	history := 30 - in.conf%2
	in.mu.Unlock()
	return in.srv.agentCaddyfile(a.store, false, fmt.Sprintf("history %d", history))
}

// start runs a fresh Caddy for in (at first, and after the kill).
func (a *agentSoak) start(in *soakInstance) error {
	p, err := in.srv.startCaddy(a.config(in))
	if err != nil {
		return err
	}
	in.mu.Lock()
	in.proc, in.up = p, true
	in.mu.Unlock()
	return nil
}

func (a *agentSoak) event(format string, args ...any) {
	line := fmt.Sprintf("t=%6.1fs ", a.since().Seconds()) + fmt.Sprintf(format, args...)
	a.mu.Lock()
	a.events = append(a.events, line)
	a.mu.Unlock()
	fmt.Println("  " + line)
}

func (a *agentSoak) run(dur time.Duration, rate int, reloadEvery, killAt time.Duration) error {
	a.threads = map[string]string{}
	a.errs = map[string]int{}
	a.free = make(chan *soakThread, rate*int(dur/time.Second+1))
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	a.hc = &http.Client{Transport: tr}
	a.started = time.Now()
	busy0, own0 := systemBusy(), a.ownCPU()
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()

	var bg sync.WaitGroup
	bg.Add(3)
	go func() { defer bg.Done(); a.reloads(ctx, reloadEvery) }()
	go func() { defer bg.Done(); a.sample(ctx, 5*time.Second) }()
	go func() {
		defer bg.Done()
		if killAt <= 0 || killAt >= dur {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(a.started.Add(killAt))):
			a.restart(a.insts[1])
		}
	}()

	// The schedule: a turn every 1/rate, each in its own goroutine, so a
	// slow answer delays nothing after it.
	var turns sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	sent := 0
	for due := a.started; ; due = due.Add(interval) {
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(due)):
			turns.Add(1)
			sent++
			go func() { defer turns.Done(); a.turn() }()
			continue
		}
		break
	}
	turns.Wait()
	bg.Wait()
	elapsed := a.since()
	a.others = max((systemBusy()-busy0)-(a.ownCPU()-own0), 0).Seconds() / elapsed.Seconds()
	a.sampleOnce() // the last reading, with the load gone
	for _, in := range a.insts {
		if p := in.current(); p != nil {
			p.stop() // graceful: whatever the instances hold reaches the store
		}
	}
	return a.report(sent, elapsed)
}

// pick is the next instance that is up, round robin.
func (a *agentSoak) pick() (*soakInstance, int) {
	var in *soakInstance
	for range a.insts {
		in = a.insts[int(a.next.Add(1))%len(a.insts)]
		in.mu.Lock()
		up, gen := in.up, in.gen
		in.mu.Unlock()
		if up {
			return in, gen
		}
	}
	// None up: the turn goes to the last tried, fails and says so.
	in.mu.Lock()
	defer in.mu.Unlock()
	return in, in.gen
}

var soakMarker = regexp.MustCompile(`soak-(\d{7})`)

// turn sends one turn and keeps what the server acknowledged.
func (a *agentSoak) turn() {
	n := a.turns.Add(1)
	text := fmt.Sprintf("soak-%07d", n) + strings.Repeat(" ab", a.words-1)
	var th *soakThread
	select {
	case th = <-a.free:
	default:
	}
	in, gen := a.pick()
	url := in.srv.siteURL() + agentPath
	var req *http.Request
	if th == nil {
		user := fmt.Sprintf("soak-%07d", n)
		th = &soakThread{owner: "user:" + user}
		req = agentRequest(url, user, "threads.create", map[string]any{"input": userInput(text)})
	} else {
		req = agentRequest(url, strings.TrimPrefix(th.owner, "user:"), "threads.add_user_message", map[string]any{"thread_id": th.id, "input": userInput(text)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	answered, kind := a.stream(req.WithContext(ctx), th, n)
	a.mu.Lock()
	defer a.mu.Unlock()
	if answered {
		a.turnLat = append(a.turnLat, time.Since(t0))
		a.finished.Add(1)
		if th.turns++; th.turns < soakTurnsPerThread {
			a.free <- th
		}
		return
	}
	// A thread whose turn failed is not used again: its state is the
	// server's to settle, and the next turn must not depend on it.
	in.mu.Lock()
	killed := in.gen != gen
	in.mu.Unlock()
	if killed {
		a.cut++
		kind = "cut by the kill of " + in.name + ": " + kind
	}
	a.errs[kind]++
}

// stream reads one turn's event stream, keeping each acknowledged item;
// it reports whether the assistant's answer was done, or else what went
// wrong.
func (a *agentSoak) stream(req *http.Request, th *soakThread, turn int64) (bool, string) {
	resp, err := a.hc.Do(req)
	if err != nil {
		return false, "error: " + shortErr(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return false, fmt.Sprintf("status %d %s", resp.StatusCode, briefBody(b))
	}
	var frame struct {
		Type   string `json:"type"`
		Code   string `json:"code"`
		Thread struct {
			ID string `json:"id"`
		} `json:"thread"`
		Item struct {
			ID       string `json:"id"`
			ThreadID string `json:"thread_id"`
			Type     string `json:"type"`
		} `json:"item"`
	}
	br := bufio.NewReaderSize(resp.Body, 16<<10)
	answered := false
	for {
		line, err := br.ReadBytes('\n')
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		// Only the frames that matter are decoded, not the text deltas.
		if ok && (bytes.HasPrefix(data, []byte(`{"type":"thread.created"`)) || bytes.HasPrefix(data, []byte(`{"type":"thread.item.done"`)) || bytes.HasPrefix(data, []byte(`{"type":"error"`))) {
			frame.Item.ID, frame.Item.Type, frame.Code = "", "", ""
			if jerr := json.Unmarshal(data, &frame); jerr != nil {
				return false, "undecodable frame: " + jerr.Error()
			}
			switch frame.Type {
			case "thread.created":
				th.id = frame.Thread.ID
				a.mu.Lock()
				a.threads[th.id] = th.owner
				a.mu.Unlock()
			case "thread.item.done":
				a.mu.Lock()
				a.acks = append(a.acks, soakAck{thread: frame.Item.ThreadID, owner: th.owner, id: frame.Item.ID, typ: frame.Item.Type, turn: turn})
				a.mu.Unlock()
				if frame.Item.Type == "assistant_message" {
					answered = true
				}
			case "error":
				return false, "error event " + frame.Code
			}
		}
		if err != nil {
			if err == io.EOF && answered {
				return true, ""
			}
			if err == io.EOF {
				return false, "stream ended before the answer was done"
			}
			return false, "error: " + shortErr(err)
		}
	}
}

// reloads loads a changed config into A and B in turn, every interval.
func (a *agentSoak) reloads(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if ctx.Err() != nil {
			return // the run ended as the tick came
		}
		in := a.insts[i%len(a.insts)]
		in.mu.Lock()
		up := in.up
		if up {
			in.conf++
		}
		in.mu.Unlock()
		if !up {
			a.event("reload of %s skipped: it is down", in.name)
			continue
		}
		rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		d, err := in.srv.reload(rctx, a.config(in))
		cancel()
		if err != nil {
			a.mu.Lock()
			a.errs["reload failed: "+err.Error()]++
			a.mu.Unlock()
			a.event("reload of %s FAILED: %v", in.name, err)
			continue
		}
		a.event("reload of %s: %s", in.name, d.Round(time.Millisecond))
	}
}

// restart kills in (no chance to finish anything: a crash) and starts it
// again; turns go to the other instance meanwhile.
func (a *agentSoak) restart(in *soakInstance) {
	in.mu.Lock()
	p := in.proc
	in.up = false
	in.gen++
	in.mu.Unlock()
	a.killedCPU.Add(int64(cpuTime(p.pid())))
	p.kill()
	a.event("%s killed (SIGKILL, pid %d)", in.name, p.pid())
	t := time.Now()
	if err := a.start(in); err != nil {
		a.mu.Lock()
		a.errs["restart failed: "+err.Error()]++
		a.mu.Unlock()
		a.event("%s did not start again: %v", in.name, err)
		return
	}
	a.event("%s started again (pid %d) in %s", in.name, in.current().pid(), time.Since(t).Round(time.Millisecond))
}

// sample reads each instance's RSS and goroutines every period.
func (a *agentSoak) sample(ctx context.Context, period time.Duration) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		a.sampleOnce()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (a *agentSoak) sampleOnce() {
	for _, in := range a.insts {
		in.mu.Lock()
		p, up, gen := in.proc, in.up, in.gen
		in.mu.Unlock()
		if !up {
			continue
		}
		rss, _, err := memKB(p.pid())
		if err != nil {
			continue
		}
		g, err := goroutines(in.srv.adminURL())
		if err != nil {
			g = -1 // the admin endpoint restarts with each reload
		}
		a.mu.Lock()
		a.samples = append(a.samples, soakSample{at: a.since(), inst: in.name, gen: gen, rssKB: rss, goroutines: g})
		a.mu.Unlock()
	}
}

// readBack is what the store holds of the soak's threads.
type readBack struct {
	items      map[string]int   // "thread/item" -> times listed
	userTurns  map[int64]int    // turn marker -> user messages holding it
	unacked    int              // items listed that no thread.item.done announced
	readErrors map[string]error // thread -> why it could not be read
}

// readStore lists every item of every thread the client saw, from the
// database itself, once Caddy has stopped.
func (a *agentSoak) readStore(acked map[string]bool) (*readBack, error) {
	ctx := context.Background()
	st, err := a.store.open(ctx)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	rb := &readBack{items: map[string]int{}, userTurns: map[int64]int{}, readErrors: map[string]error{}}
	for thread, owner := range a.threads {
		after := ""
		for {
			page, err := st.ListItems(ctx, owner, thread, after, threadstore.MaxPageLimit, threadstore.Asc)
			if err != nil {
				rb.readErrors[thread] = err
				break
			}
			for _, it := range page.Data {
				key := thread + "/" + it.ID
				rb.items[key]++
				if !acked[key] {
					rb.unacked++
				}
				if it.Type == "user_message" {
					if m := soakMarker.FindSubmatch(it.Data); m != nil {
						n, _ := strconv.ParseInt(string(m[1]), 10, 64)
						rb.userTurns[n]++
					}
				}
			}
			if !page.HasMore || len(page.Data) == 0 {
				break
			}
			after = page.Data[len(page.Data)-1].ID
		}
	}
	return rb, nil
}

func (a *agentSoak) report(sent int, elapsed time.Duration) error {
	acked := map[string]bool{}
	for _, ak := range a.acks {
		acked[ak.thread+"/"+ak.id] = true
	}
	rb, err := a.readStore(acked)
	if err != nil {
		return fmt.Errorf("reading the store back: %w", err)
	}
	lost, dup, dupTurns := 0, 0, 0
	var lostExamples []string
	for _, ak := range a.acks {
		switch c := rb.items[ak.thread+"/"+ak.id]; {
		case c == 0:
			lost++
			if len(lostExamples) < 5 {
				lostExamples = append(lostExamples, fmt.Sprintf("%s %s of turn %d in %s", ak.typ, ak.id, ak.turn, ak.thread))
			}
		case c > 1:
			dup++
		}
		if ak.typ == "user_message" && rb.userTurns[ak.turn] > 1 {
			dupTurns++
		}
	}

	slices.Sort(a.turnLat)
	fmt.Printf("\nagent soak: %d turns sent in %s (%.1f/s), %d answered; turn (request to the answer's thread.item.done) p50 %s, p99 %s, max %s\n",
		sent, elapsed.Round(time.Millisecond), float64(sent)/elapsed.Seconds(), a.finished.Load(),
		fmtDur(pctOf(a.turnLat, 0.5)), fmtDur(pctOf(a.turnLat, 0.99)), fmtDur(pctOf(a.turnLat, 1)))
	fmt.Printf("other processes used %.0f%% of a core over the run\n", 100*a.others)
	fmt.Printf("errors the client saw: %d%s\n", sumCounts(a.errs), failureList(a.errs))
	fmt.Printf("  of which turns cut by the kill: %d\n", a.cut)
	fmt.Printf("acknowledged items (thread.item.done seen): %d in %d threads; in the database afterwards: %d exactly once, %d lost, %d listed more than once; user messages saved twice: %d\n",
		len(a.acks), len(a.threads), len(a.acks)-lost-dup, lost, dup, dupTurns)
	fmt.Printf("items in the database that no thread.item.done announced (turns cut before their acknowledgement): %d\n", rb.unacked)
	for _, ex := range lostExamples {
		fmt.Println("  lost: " + ex)
	}
	for th, err := range rb.readErrors {
		fmt.Printf("  thread %s could not be read: %v\n", th, err)
	}

	fmt.Println("\nevents:")
	for _, e := range a.events {
		fmt.Println("  " + e)
	}
	fmt.Println("\nmemory (VmRSS, sampled every 5 s; goroutines from the admin API):")
	flat := a.memoryReport()

	fmt.Println("\nchecks:")
	check := func(ok bool, format string, args ...any) {
		v := "PASS"
		if !ok {
			v = "FAIL"
		}
		fmt.Printf("  %s  %s\n", v, fmt.Sprintf(format, args...))
	}
	check(lost == 0 && len(rb.readErrors) == 0, "zero lost items: %d of %d acknowledged items missing from the database (%d threads unreadable)", lost, len(a.acks), len(rb.readErrors))
	check(dup == 0 && dupTurns == 0, "no duplicates: %d acknowledged items listed more than once, %d user messages saved twice", dup, dupTurns)
	check(sumCounts(a.errs) == a.cut, "no errors but the turns cut by the kill (%d errors, %d cut)", sumCounts(a.errs), a.cut)
	check(flat, "flat memory: each instance's RSS at the end within 20%% of its RSS a minute into the run (see above)")
	if lost > 0 || dup > 0 || dupTurns > 0 || len(rb.readErrors) > 0 {
		return fmt.Errorf("agent soak: %d acknowledged items lost, %d duplicated, %d threads unreadable", lost, dup+dupTurns, len(rb.readErrors))
	}
	return nil
}

// memoryReport prints each instance's RSS per life (B has two with the
// restart) and says whether each life's RSS stayed flat: the last sample
// within 20% of the first taken a minute or more into the run and life.
func (a *agentSoak) memoryReport() bool {
	flat := true
	for _, in := range a.insts {
		for gen := 0; gen <= in.gen; gen++ {
			var life []soakSample
			for _, sm := range a.samples {
				if sm.inst == in.name && sm.gen == gen {
					life = append(life, sm)
				}
			}
			if len(life) == 0 {
				continue
			}
			first, last := life[0], life[len(life)-1]
			var peak int64
			for _, sm := range life {
				peak = max(peak, sm.rssKB)
			}
			// Settled: the first sample a minute into both the run and the
			// life, when caches and pools have their working size.
			settled := last
			for _, sm := range life {
				if sm.at-first.at >= time.Minute && sm.at >= time.Minute {
					settled = sm
					break
				}
			}
			growth := float64(last.rssKB-settled.rssKB) / float64(settled.rssKB)
			judged := last.at-settled.at >= time.Minute // else too short a life to judge
			flat = flat && (!judged || growth < 0.20)
			fmt.Printf("  %s (life %d, t=%.0fs–%.0fs, %d samples): RSS first %s, at t=%.0fs %s, last %s (%+.1f%% since t=%.0fs), max %s; goroutines first %s, last %s\n",
				in.name, gen+1, first.at.Seconds(), last.at.Seconds(), len(life), fmtMB(first.rssKB), settled.at.Seconds(), fmtMB(settled.rssKB),
				fmtMB(last.rssKB), 100*growth, settled.at.Seconds(), fmtMB(peak), fmtInt(first.goroutines), fmtInt(last.goroutines))
		}
	}
	return flat
}

func sumCounts(m map[string]int) (n int) {
	for _, v := range m {
		n += v
	}
	return n
}

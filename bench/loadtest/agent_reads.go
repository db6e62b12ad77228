package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// runAgentReads measures threads.list and threads.get_by_id through Caddy
// on a database of -reads-owners × -reads-threads threads with
// -reads-items items each (default 100 × 100 × 20: 10,000 threads and
// 200,000 items), filled before Caddy starts through the thread store's
// own API, with the item JSON the agent writes. The load is an open loop at
// each -reads-rate, from many clients with an address and a user each,
// under the default limits (so the agent's read bucket is in the path).
// Caddy's CPU per request is net of what it uses idle.
func runAgentReads(s *servers) error {
	o := s.opts
	set := readSet{o.readsOwners, o.readsThreads, o.readsItems}
	db := o.readsDB
	if db == "" {
		db = s.freshDB("reads")
	}
	store := &benchStore{kind: storeSQLite, path: db}
	if _, err := os.Stat(db); err != nil {
		if err := fillStore(store, set); err != nil {
			return err
		}
	} else {
		fmt.Printf("reusing %s\n", db)
	}
	if fi, err := os.Stat(db); err == nil {
		fmt.Printf("database: %s (%.1f MB)\n\n", db, float64(fi.Size())/(1<<20))
	}

	fake, err := s.startFake()
	if err != nil {
		return err
	}
	defer fake.stop()
	caddy, err := s.startAgentCaddy(store, true)
	if err != nil {
		return err
	}
	defer caddy.stop()
	url := s.siteURL() + agentPath
	if err := checkReads(url, set); err != nil {
		return err
	}

	ts := readTargets(url, set)
	// Caddy's own CPU with nothing to do, taken off the per-request figure.
	c0 := cpuTime(caddy.pid())
	time.Sleep(3 * time.Second)
	idleCPU := float64(cpuTime(caddy.pid())-c0) / 3 // per second
	fmt.Printf("Caddy idle: %.1f%% of a core\n\n", 100*idleCPU/float64(time.Second))
	rates := parseInts(o.readsRate)
	var profiled []string
	for _, rate := range rates {
		// Each client stays at 2 requests a second, under the agent's read
		// bucket (a burst of 60, then 4 a second per client).
		clients := newClients(max(rate/2, 10), [4]byte{10, 3, 0, 1})
		for i, cl := range clients {
			cl.user = readOwner(i % o.readsOwners)
		}
		fmt.Printf("%d requests/s (open loop) from %d clients, each its own address and user (%s, %s, …), %s warm-up + %s measured per target, %d rounds:\n",
			rate, len(clients), clients[0].user, clients[1%len(clients)].user, o.warmup, o.duration, o.rounds)
		type row struct {
			t    *target
			res  *loadResult
			cpu  time.Duration
			late time.Duration
			// others is the share of a core processes not ours used.
			others float64
		}
		var rows []row
		for r := range o.rounds {
			for _, k := range order("lgk", r) {
				t := ts[k]
				if o.quietWait > 0 {
					waitQuiet(o.quietWait)
				}
				profile := o.agentProfile > 0 && r == 0 && rate == slices.Max(rates)
				var c0, c1, b0, b1, own0, own1 time.Duration
				ownCPU := func() time.Duration { return selfCPU() + cpuTime(caddy.pid()) + cpuTime(fake.pid()) }
				res, late := openLoop(clients, t, rate, o.warmup, o.duration,
					func() {
						b0, own0 = systemBusy(), ownCPU()
						c0 = cpuTime(caddy.pid())
						if profile {
							file := "reads-" + t.key + "-cpu.pprof"
							profiled = append(profiled, file)
							go fetchProfile(s, "/debug/pprof/profile?seconds="+strconv.Itoa(min(o.agentProfile, int(o.duration/time.Second))), file)
						}
					}, func() {
						c1 = cpuTime(caddy.pid())
						b1, own1 = systemBusy(), ownCPU()
					})
				cpu := max(c1-c0-time.Duration(idleCPU*o.duration.Seconds()), 0)
				others := max((b1-b0)-(own1-own0), 0).Seconds() / o.duration.Seconds()
				rows = append(rows, row{t, res, cpu, late, others})
				fmt.Printf("  round %d %-38s %6.0f req/s  p50 %-8s p99 %-8s p99.9 %-8s ok %-7d failed %d [%s]; generator late p99 %s; other processes %.0f%% of a core\n",
					r+1, t.name, res.rps(), fmtDur(res.pct(0.50)), fmtDur(res.pct(0.99)), fmtDur(res.pct(0.999)), res.ok, res.failed(), res.failureSummary(), fmtDur(late), 100*others)
			}
		}
		closeClients(clients)
		fmt.Printf("\nmedians over %d rounds at %d requests/s:\n", o.rounds, rate)
		w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(w, "request\treq/s\tp50\tp99\tp99.9\tfailed/total\tCaddy CPU/req\tgenerator late p99\t")
		for _, k := range []string{"l", "k", "g"} {
			var rps, p50, p99, p999, cpu, late []float64
			var failed, total int64
			for _, rw := range rows {
				if rw.t.key != k {
					continue
				}
				rps = append(rps, rw.res.rps())
				p50 = append(p50, float64(rw.res.pct(0.50)))
				p99 = append(p99, float64(rw.res.pct(0.99)))
				p999 = append(p999, float64(rw.res.pct(0.999)))
				late = append(late, float64(rw.late))
				if n := rw.res.ok + rw.res.failed(); n > 0 {
					cpu = append(cpu, float64(rw.cpu)/float64(n))
				}
				failed += rw.res.failed()
				total += rw.res.ok + rw.res.failed()
			}
			fmt.Fprintf(w, "%s\t%.0f\t%s\t%s\t%s\t%d/%d\t%s\t%s\t\n", ts[k].name, median(rps), fmtDur(time.Duration(median(p50))),
				fmtDur(time.Duration(median(p99))), fmtDur(time.Duration(median(p999))), failed, total, fmtDur(time.Duration(median(cpu))), fmtDur(time.Duration(median(late))))
		}
		w.Flush()
		var worst float64
		for _, rw := range rows {
			worst = max(worst, float64(rw.res.pct(0.99)))
		}
		verdict := "MET"
		if time.Duration(worst) >= 5*time.Millisecond {
			verdict = "NOT MET"
		}
		fmt.Printf("target p99 < 5 ms at %d requests/s (worst p99 of any round and request): %s (%s)\n\n", rate, verdict, fmtDur(time.Duration(worst)))
	}
	if _, hwm, err := memKB(caddy.pid()); err == nil {
		fmt.Printf("Caddy peak RSS over the run: %s\n", fmtMB(hwm))
	}
	time.Sleep(time.Duration(o.agentProfile) * time.Second) // a profile may still be coming
	for _, f := range profiled {
		printPprof(s, f+", top 30 by cumulative time", "-top", "-cum", "-nodecount=30", filepath.Join(s.work, f))
	}
	return nil
}

// openLoop sends t's requests at rate per second in all, each client on its
// own fixed schedule (rate/len(clients) a second, the clients' schedules
// interleaved), whatever the answers' latency. A request that finds its
// client still waiting for the previous answer goes out late, and its
// latency runs from when it was due, so a server that falls behind shows
// it; otherwise latency runs from when it was sent, and the load
// generator's own lateness (timers waking late) is returned as its p99.
// onStart and onEnd run at the measured window's edges.
func openLoop(clients []*vclient, t *target, rate int, warmup, dur time.Duration, onStart, onEnd func()) (*loadResult, time.Duration) {
	n := len(clients)
	period := time.Duration(float64(time.Second) * float64(n) / float64(rate))
	begin := time.Now().Add(50 * time.Millisecond)
	measureFrom, measureTo := begin.Add(warmup), begin.Add(warmup+dur)
	type out struct {
		ok   int64
		fail map[string]int64
		lat  []time.Duration
		late []time.Duration
	}
	outs := make([]out, n)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &outs[i]
			o.fail = map[string]int64{}
			var prevDone time.Time
			for due := begin.Add(time.Duration(i) * period / time.Duration(n)); due.Before(measureTo); due = due.Add(period) {
				time.Sleep(time.Until(due))
				sent := time.Now()
				from, busy := due, prevDone.After(due)
				if !busy {
					from = sent
				}
				status, body, _, err := do(c, t.newRequest(c))
				prevDone = time.Now()
				if due.Before(measureFrom) {
					continue
				}
				if !busy {
					o.late = append(o.late, sent.Sub(due))
				}
				if err == nil && t.ok(status, body) {
					o.ok++
					o.lat = append(o.lat, prevDone.Sub(from))
				} else {
					o.fail[failureKey(status, err)]++
				}
			}
		}()
	}
	time.Sleep(time.Until(measureFrom))
	cpu0 := selfCPU()
	if onStart != nil {
		onStart()
	}
	time.Sleep(time.Until(measureTo))
	cpu1 := selfCPU()
	if onEnd != nil {
		onEnd()
	}
	wg.Wait()
	res := &loadResult{failures: map[string]int64{}, window: dur, loadCPU: cpu1 - cpu0}
	var late []time.Duration
	for _, o := range outs {
		res.ok += o.ok
		for k, v := range o.fail {
			res.failures[k] += v
		}
		res.lat = append(res.lat, o.lat...)
		late = append(late, o.late...)
	}
	slices.Sort(res.lat)
	slices.Sort(late)
	var lateP99 time.Duration
	if len(late) > 0 {
		lateP99 = late[min(len(late)*99/100, len(late)-1)]
	}
	return res, lateP99
}

// readTargets: threads.list as the demo page asks (20, newest first), as
// the web component asks (limit 9999, clamped by the module), and
// threads.get_by_id of a random thread of the client's user.
func readTargets(url string, set readSet) map[string]*target {
	withAddr := func(c *vclient, req *http.Request) *http.Request {
		req.Header["X-Forwarded-For"] = []string{c.ip}
		return req
	}
	list := func(limit int) func(c *vclient) *http.Request {
		return func(c *vclient) *http.Request {
			return withAddr(c, agentRequest(url, c.user, "threads.list", map[string]any{"limit": limit, "order": "desc"}))
		}
	}
	owners := make(map[string]int, set.owners)
	for i := range set.owners {
		owners[readOwner(i)] = i
	}
	get := func(c *vclient) *http.Request {
		th := readThreadID(owners[c.user], rand.IntN(set.threads))
		return withAddr(c, agentRequest(url, c.user, "threads.get_by_id", map[string]any{"thread_id": th}))
	}
	return map[string]*target{
		"l": {key: "l", name: "threads.list (limit 20)", newRequest: list(20), caddy: true, check: jsonHas(`"data":[{`, `"has_more":true`)},
		"k": {key: "k", name: "threads.list (limit 9999, as ChatKit)", newRequest: list(9999), caddy: true, check: jsonHas(`"data":[{`)},
		"g": {key: "g", name: "threads.get_by_id", newRequest: get, caddy: true, check: jsonHas(`"items":{"data":[{`)},
	}
}

// checkReads shows that Caddy sees the seeded threads as the users' own:
// the first user lists all of theirs and opens one with all its items, and
// the second cannot open the first's.
func checkReads(url string, set readSet) error {
	hc := &http.Client{Timeout: 30 * time.Second}
	call := func(user, typ string, params any, into any) (int, error) {
		resp, err := hc.Do(agentRequest(url, user, typ, params))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, err
		}
		if resp.StatusCode == http.StatusOK && into != nil {
			if err := json.Unmarshal(b, into); err != nil {
				return resp.StatusCode, fmt.Errorf("%s: %v in %s", typ, err, briefBody(b))
			}
		}
		return resp.StatusCode, nil
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
		HasMore bool `json:"has_more"`
	}
	limit := min(set.threads, threadstore.MaxPageLimit)
	status, err := call(readOwner(0), "threads.list", map[string]any{"limit": limit, "order": "desc"}, &list)
	if err != nil {
		return err
	}
	if status != http.StatusOK || len(list.Data) != limit || list.Data[0].ID != readThreadID(0, set.threads-1) {
		return fmt.Errorf("threads.list for %s: status %d, %d threads (want %d, newest %s first): the seeded owner ids are not the ones the module derives from user {http.request.header.%s}",
			readOwner(0), status, len(list.Data), limit, readThreadID(0, set.threads-1), benchUserHd)
	}
	var thread struct {
		ID    string `json:"id"`
		Items struct {
			Data []json.RawMessage `json:"data"`
		} `json:"items"`
	}
	if status, err = call(readOwner(0), "threads.get_by_id", map[string]any{"thread_id": readThreadID(0, 0)}, &thread); err != nil {
		return err
	}
	if want := min(set.items, 20); status != http.StatusOK || thread.ID != readThreadID(0, 0) || len(thread.Items.Data) != want {
		return fmt.Errorf("threads.get_by_id %s: status %d, id %q, %d items (want %d)", readThreadID(0, 0), status, thread.ID, len(thread.Items.Data), want)
	}
	if set.owners > 1 {
		if status, err = call(readOwner(1), "threads.get_by_id", map[string]any{"thread_id": readThreadID(0, 0)}, nil); err != nil {
			return err
		}
		if status != http.StatusNotFound {
			return fmt.Errorf("%s opened %s's thread: status %d", readOwner(1), readOwner(0), status)
		}
	}
	fmt.Printf("check: %s lists %d of its threads (newest first) and opens one with %d items; %s gets 404 for it\n\n",
		readOwner(0), len(list.Data), len(thread.Items.Data), readOwner(1))
	return nil
}

func readOwner(i int) string { return fmt.Sprintf("bench-r%03d", i) }

// readThreadID is thread th of owner o: random-looking, 64 bits, as the
// module's own.
func readThreadID(o, th int) string {
	x := uint64(o)<<32 | uint64(th)
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return fmt.Sprintf("thr_%016x", x)
}

// readSet is the shape of a filled store: owners × threads × items.
type readSet struct{ owners, threads, items int }

// fillStore fills an empty store with set, saying so.
func fillStore(store *benchStore, set readSet) error {
	fmt.Printf("filling %s: %d owners × %d threads × %d items…\n", store, set.owners, set.threads, set.items)
	took, err := seedReads(store, set.owners, set.threads, set.items)
	if err != nil {
		return err
	}
	fmt.Printf("filled %d threads and %d items in %s\n", set.owners*set.threads, set.owners*set.threads*set.items, took.Round(time.Millisecond))
	return nil
}

// seedReads fills an empty store through its API: each owner's threads
// created one after another, each with items alternating a user message
// and an assistant answer, in the JSON the agent stores.
func seedReads(store *benchStore, owners, threads, items int) (time.Duration, error) {
	start := time.Now()
	ctx := context.Background()
	st, err := store.open(ctx)
	if err != nil {
		return 0, err
	}
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	const question = "Could you tell me what the opening hours are on public holidays, and whether I need to book ahead?"
	const answer = "On public holidays we open from 10:00 to 16:00. Booking ahead is not required, but groups of more than six people should call us first so we can keep a table free."
	for o := range owners {
		owner := "user:" + readOwner(o)
		for th := range threads {
			id := readThreadID(o, th)
			at = at.Add(time.Second)
			if _, err := st.CreateThread(ctx, threadstore.Thread{ID: id, Owner: owner, Title: fmt.Sprintf("Opening hours, question %d", th), CreatedAt: at}); err != nil {
				st.Close()
				return 0, err
			}
			for i := range items {
				at = at.Add(time.Millisecond)
				itemID := fmt.Sprintf("msg_%s%04x", id[4:], i)
				typ, data := "user_message", userItemJSON(itemID, id, at, question)
				if i%2 == 1 {
					typ, data = "assistant_message", assistantItemJSON(itemID, id, at, answer)
				}
				if _, err := st.AddItem(ctx, owner, threadstore.Item{ID: itemID, ThreadID: id, CreatedAt: at, Type: typ, Data: data}); err != nil {
					st.Close()
					return 0, err
				}
			}
		}
	}
	return time.Since(start), st.Close()
}

const agentTimeLayout = "2006-01-02T15:04:05.000000Z07:00" // as the module writes created_at

// The item shapes, in the field order the module writes them.
type (
	itemText struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	outputText struct {
		Annotations []any  `json:"annotations"`
		Text        string `json:"text"`
		Type        string `json:"type"`
	}
	userItem struct {
		ID               string     `json:"id"`
		ThreadID         string     `json:"thread_id"`
		CreatedAt        string     `json:"created_at"`
		Type             string     `json:"type"`
		Content          []itemText `json:"content"`
		Attachments      []any      `json:"attachments"`
		InferenceOptions struct{}   `json:"inference_options"`
	}
	assistantItem struct {
		ID        string       `json:"id"`
		ThreadID  string       `json:"thread_id"`
		CreatedAt string       `json:"created_at"`
		Type      string       `json:"type"`
		Content   []outputText `json:"content"`
	}
)

func userItemJSON(id, thread string, at time.Time, text string) json.RawMessage {
	b, _ := json.Marshal(userItem{ID: id, ThreadID: thread, CreatedAt: at.Format(agentTimeLayout), Type: "user_message",
		Content: []itemText{{"input_text", text}}, Attachments: []any{}})
	return b
}

func assistantItemJSON(id, thread string, at time.Time, text string) json.RawMessage {
	b, _ := json.Marshal(assistantItem{ID: id, ThreadID: thread, CreatedAt: at.Format(agentTimeLayout), Type: "assistant_message",
		Content: []outputText{{Annotations: []any{}, Text: text, Type: "output_text"}}})
	return b
}

// parseInts reads a comma-separated list of positive integers.
func parseInts(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if _, err := fmt.Sscanf(strings.TrimSpace(f), "%d", &n); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

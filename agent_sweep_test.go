package chatkit

import (
	"context"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// fakeSweepClock is a sweep clock the test moves: After's channels fire
// when set passes their time.
type fakeSweepClock struct {
	mu       sync.Mutex
	now      time.Time
	waits    []fakeSweepWait
	afters   int           // After calls so far
	lastWait time.Duration // what the latest After call waits
}

type fakeSweepWait struct {
	at time.Time
	ch chan time.Time
}

func newFakeSweepClock(now time.Time) *fakeSweepClock { return &fakeSweepClock{now: now} }

func (c *fakeSweepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeSweepClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.afters++
	c.lastWait = d
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waits = append(c.waits, fakeSweepWait{c.now.Add(d), ch})
	return ch
}

// set moves the clock to now and fires what is due.
func (c *fakeSweepClock) set(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = now
	kept := c.waits[:0]
	for _, w := range c.waits {
		if w.at.After(now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- now
	}
	c.waits = kept
}

// waitFor polls the clock until cond holds on it (the loop runs on its own
// goroutine).
func (c *fakeSweepClock) waitFor(t *testing.T, what string, cond func(afters int, lastWait time.Duration) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		ok := cond(c.afters, c.lastWait)
		afters, last := c.afters, c.lastWait
		c.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sweep loop never %s (After called %d times, last for %v)", what, afters, last)
		}
		time.Sleep(time.Millisecond)
	}
}

// calls is how many times the loop called After.
func (c *fakeSweepClock) calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.afters
}

func TestAgentSweepInterval(t *testing.T) {
	for retention, want := range map[time.Duration]time.Duration{
		0: time.Hour, time.Hour: 6 * time.Minute, 2 * time.Hour: 12 * time.Minute,
		10 * time.Hour: time.Hour, 30 * 24 * time.Hour: time.Hour,
	} {
		if got := agentSweepInterval(retention); got != want {
			t.Errorf("agentSweepInterval(%v) = %v, want %v", retention, got, want)
		}
	}
}

// TestAgentSweeperRetention: the shortest retention of the handlers sharing
// a store wins, a handler without one asks for none, the next sweep is
// planned from the last one (a reload never puts it off), and a withdrawn
// retention deletes nothing more.
func TestAgentSweeperRetention(t *testing.T) {
	db := filepath.Join(t.TempDir(), "threads.db")
	start := time.Now()
	clock := newFakeSweepClock(start)
	hd := newAgentStoreHandle(db, openSQLiteStore(db)).startSweeperWith(zap.NewNop(), clock)
	defer hd.Destruct()
	clock.waitFor(t, "planned the first sweep an hour out", func(n int, d time.Duration) bool { return n == 1 && d == time.Hour })

	month, short, none := &agentRuntime{}, &agentRuntime{}, &agentRuntime{}
	hd.retain(none, 0)
	hd.retain(month, 30*24*time.Hour)
	clock.waitFor(t, "kept hourly sweeps under a month's retention", func(n int, d time.Duration) bool { return n == 2 && d == time.Hour })
	hd.retain(short, 2*time.Hour)
	clock.waitFor(t, "planned a sweep a tenth of the shortest retention out", func(n int, d time.Duration) bool { return n == 3 && d == 12*time.Minute })
	if got := hd.sweeper.retention(); got != 2*time.Hour {
		t.Fatalf("retention = %v, want the shortest, 2h", got)
	}
	// Ten minutes on, a reload re-registers: the sweep is still due at 12m.
	clock.set(start.Add(10 * time.Minute))
	hd.retain(short, 0)
	hd.retain(short, 2*time.Hour)
	clock.waitFor(t, "kept the sweep planned from the start", func(n int, d time.Duration) bool { return n >= 4 && d == 2*time.Minute })

	// A thread idle for three hours goes at the next sweep.
	st, release, err := hd.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateThread(context.Background(), threadstore.Thread{ID: "thr_old", Owner: "user:a", CreatedAt: start.Add(-3 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateThread(context.Background(), threadstore.Thread{ID: "thr_new", Owner: "user:a", CreatedAt: start}); err != nil {
		t.Fatal(err)
	}
	before := clock.calls()
	clock.set(start.Add(12 * time.Minute))
	clock.waitFor(t, "swept and planned again", func(n int, d time.Duration) bool { return n > before && d == 12*time.Minute })
	if _, err := st.Thread(context.Background(), "user:a", "thr_old"); err == nil {
		t.Fatal("the idle thread survived the sweep")
	}
	if _, err := st.Thread(context.Background(), "user:a", "thr_new"); err != nil {
		t.Fatalf("the fresh thread: %v", err)
	}

	// Retention withdrawn by every handler: the hourly sweep deletes no thread.
	hd.retain(short, 0)
	hd.retain(month, 0)
	if got := hd.sweeper.retention(); got != 0 {
		t.Fatalf("retention after every handler left = %v", got)
	}
	clock.waitFor(t, "went back to hourly sweeps", func(_ int, d time.Duration) bool { return d == time.Hour })
	before = clock.calls()
	clock.set(start.Add(100 * time.Hour))
	clock.waitFor(t, "swept without retention", func(n int, d time.Duration) bool { return n > before && d == time.Hour })
	if _, err := st.Thread(context.Background(), "user:a", "thr_new"); err != nil {
		t.Fatalf("a sweep without retention deleted a thread: %v", err)
	}
	release()
}

// TestAgentRetentionSweep runs retention through a real Caddy: the threads
// nobody touched go with their items and files at the sweep, a renamed one
// stays, and the log and the metrics count what went. The test's handle on
// the database goes into the store pool first, with its clock: the agent's
// config then uses it.
func TestAgentRetentionSweep(t *testing.T) {
	fake := newFake(t)
	db := filepath.Join(t.TempDir(), "threads.db")
	clock := newFakeSweepClock(time.Now())
	core, logs := observer.New(zap.InfoLevel)
	key := agentStoreSQLite + ":" + filepath.Clean(db)
	if _, loaded, err := agentStores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newAgentStoreHandle(db, openSQLiteStore(db)).startSweeperWith(zap.New(core), clock), nil
	}); err != nil || loaded {
		t.Fatalf("seeding the store pool: loaded=%v, %v", loaded, err)
	}
	t.Cleanup(func() { _, _ = agentStores.Delete(key) })

	startAgent(t, fake, db, "user {http.request.header.X-Test-User}", "retention 1h\n\t\t\tattachments on")
	alice := &userClient{t: t, c: client(t), user: "alice"}
	bob := &userClient{t: t, c: client(t), user: "bob"}
	file := decodeAttachment(t, alice.post(createAttachmentBody("a.png", len(testPNG), "image/png")))
	if r := uploadMultipart(t, file.UploadDescriptor.URL, testPNG); r.status != http.StatusOK {
		t.Fatal(r.body)
	}
	old := alice.stream(createWith("an old question", file.ID)).threadID(t)
	kept := alice.stream(createBody("a question kept")).threadID(t)
	bobs := bob.stream(createBody("bob's old question")).threadID(t)

	// The cutoff falls after every write so far; then the rename touches kept.
	st := openTestStore(t, db)
	ctx := context.Background()
	var cutoff time.Time
	wantItems := int64(0)
	for _, c := range []struct{ owner, id string }{{"user:alice", old}, {"user:alice", kept}, {"user:bob", bobs}} {
		th, err := st.Thread(ctx, c.owner, c.id)
		if err != nil {
			t.Fatal(err)
		}
		cutoff = maxTime(cutoff, th.UpdatedAt)
		if c.id != kept {
			p, err := st.ListItems(ctx, c.owner, c.id, "", threadstore.MaxPageLimit, threadstore.Asc)
			if err != nil {
				t.Fatal(err)
			}
			wantItems += int64(len(p.Data))
		}
	}
	cutoff = cutoff.Add(time.Microsecond)
	for {
		if r := alice.post(`{"type":"threads.update","params":{"thread_id":"` + kept + `","title":"Renamed"}}`); r.status != http.StatusOK {
			t.Fatalf("rename: %d %s", r.status, r.body)
		}
		if th, err := st.Thread(ctx, "user:alice", kept); err != nil || !th.UpdatedAt.Before(cutoff) {
			break
		}
	}
	if wantItems < 4 {
		t.Fatalf("only %d items in the idle threads", wantItems)
	}

	series := func(kind string) string { return `caddy_chatkit_agent_retention_deleted_total{kind="` + kind + `"}` }
	before := map[string]float64{}
	for _, k := range []string{"threads", "items", "attachments"} {
		before[k] = scrapeCounter(t, series(k))
	}
	sweepsOK := scrapeCounter(t, `caddy_chatkit_agent_retention_sweeps_total{outcome="ok"}`)

	// The config's retention planned the sweep a tenth of an hour out; an
	// hour after the cutoff it runs.
	clock.waitFor(t, "planned a sweep 6m out", func(_ int, d time.Duration) bool { return d == 6*time.Minute })
	clock.set(cutoff.Add(time.Hour))
	deadline := time.Now().Add(10 * time.Second)
	for logs.FilterMessage("removed the threads idle for longer than retention").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no sweep log; logs: %v", logs.All())
		}
		time.Sleep(time.Millisecond)
	}

	entry := logs.FilterMessage("removed the threads idle for longer than retention").All()[0]
	fields := entry.ContextMap()
	if fields["threads"] != int64(2) || fields["items"] != wantItems || fields["attachments"] != int64(1) || fields["retention"] != time.Hour {
		t.Fatalf("sweep log fields %v; want 2 threads, %d items, 1 attachment", fields, wantItems)
	}
	for k, want := range map[string]float64{"threads": 2, "items": float64(wantItems), "attachments": 1} {
		if got := scrapeCounter(t, series(k)) - before[k]; got != want {
			t.Errorf("%s went up by %v, want %v", series(k), got, want)
		}
	}
	if got := scrapeCounter(t, `caddy_chatkit_agent_retention_sweeps_total{outcome="ok"}`); got != sweepsOK+1 {
		t.Errorf("ok sweeps = %v, want %v", got, sweepsOK+1)
	}

	expectError(t, alice.post(threadBody("threads.get_by_id", old)), http.StatusNotFound, "not_found")
	expectError(t, bob.post(threadBody("threads.get_by_id", bobs)), http.StatusNotFound, "not_found")
	if r := alice.post(threadBody("threads.get_by_id", kept)); r.status != http.StatusOK || r.json["title"] != "Renamed" {
		t.Fatalf("the renamed thread: %d %s", r.status, r.body)
	}
	expectError(t, do(t, plainClient(t), "GET", sitePath(t, file.PreviewURL), ""), http.StatusNotFound, "not_found")
	if _, err := st.Attachment(ctx, "user:alice", file.ID); err == nil {
		t.Fatal("the idle thread's file is still stored")
	}
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

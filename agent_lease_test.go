package chatkit

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// storedItemIDs reads every item id of the thread straight from the file,
// hidden items included, in thread order.
func storedItemIDs(t *testing.T, db, threadID string) []string {
	t.Helper()
	raw := agentRawDB(t, db)
	rows, err := raw.Query(`SELECT id FROM items WHERE thread_id = ? ORDER BY created_at, seq`, threadID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// agentRawDB opens the agent's database file as another program would.
func agentRawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

// expectOnce checks that every acknowledged item (a thread.item.done the
// browser saw) is stored, and that no stored id appears twice.
func expectOnce(t *testing.T, stored []string, acknowledged ...[]agentTestItem) {
	t.Helper()
	count := map[string]int{}
	for _, id := range stored {
		count[id]++
		if count[id] > 1 {
			t.Fatalf("item %s stored twice: %v", id, stored)
		}
	}
	for _, items := range acknowledged {
		for _, it := range items {
			if count[it.ID] != 1 {
				t.Fatalf("acknowledged item %s (%s %q) is not stored: %v", it.ID, it.Type, it.text(), stored)
			}
		}
	}
}

// TestAgentConcurrentTurnsOneThread: two turns sent at once on one thread
// through Caddy: exactly one streams, the other is 409 thread_busy before
// the model is called or its message saved; once the first ends the thread
// takes a new turn, and every acknowledged item is stored exactly once.
func TestAgentConcurrentTurnsOneThread(t *testing.T) {
	fake := newFake(t)
	site := startAgent(t, fake, "", "", "")
	alice := client(t)
	checkConcurrentTurns(t, fake, func(body string) rawReply { return rawAgentPost(alice, body) },
		func(threadID string) []string { return storedItemIDs(t, site.db, threadID) })
}

// checkConcurrentTurns runs the concurrent turns test on any store: send
// posts a request as one visitor, stored reads a thread's item ids from
// the database.
func checkConcurrentTurns(t *testing.T, fake *fakeopenai.Server, send func(body string) rawReply, stored func(threadID string) []string) {
	t.Helper()
	stream := func(what string, r rawReply) agentStream {
		t.Helper()
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("%s: %d %s %v", what, r.status, r.body, r.err)
		}
		s := agentStream{status: r.status, header: r.header, body: r.body, frames: agentParseStream(t, r.body)}
		if e := s.errorFrame(); e != nil {
			t.Fatalf("%s: the stream failed: %s", what, e.raw)
		}
		return s
	}
	first := stream("create", send(createBody("q")))
	th := first.threadID(t)
	acked := first.doneItems(t)

	for round := range 3 {
		// Slow enough that the loser arrives while the winner streams; a
		// second model call would show in the count.
		fake.ScriptResponse(fakeopenai.ResponseScript{Text: "a slow answer in parts", DeltaDelay: 200 * time.Millisecond})
		calls := fake.ResponsesCount()
		texts := []string{fmt.Sprintf("left %d", round), fmt.Sprintf("right %d", round)}
		replies := make([]rawReply, 2)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range replies {
			wg.Go(func() {
				<-start
				replies[i] = send(addBody(th, texts[i]))
			})
		}
		close(start)
		wg.Wait()

		winner := -1
		for i, r := range replies {
			switch {
			case r.err == nil && r.status == http.StatusOK:
				if winner >= 0 {
					t.Fatalf("round %d: both turns streamed", round)
				}
				winner = i
			case r.err == nil && r.status == http.StatusConflict:
				var body map[string]any
				if err := json.Unmarshal([]byte(r.body), &body); err != nil {
					t.Fatalf("round %d: 409 body %q: %v", round, r.body, err)
				}
				expectError(t, reply{status: r.status, header: r.header, body: r.body, json: body}, http.StatusConflict, "thread_busy")
			default:
				t.Fatalf("round %d: turn %q answered %d %s %v", round, texts[i], r.status, r.body, r.err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no turn streamed", round)
		}
		done := stream(fmt.Sprintf("round %d", round), replies[winner]).doneItems(t)
		if got := fake.ResponsesCount(); got != calls+1 {
			t.Fatalf("round %d: %d model calls, want 1", round, got-calls)
		}
		if len(done) != 2 || done[0].text() != texts[winner] || done[1].text() != "a slow answer in parts" {
			t.Fatalf("round %d: acknowledged %+v", round, done)
		}
		acked = append(acked, done...)
		// The refused turn saved nothing: two more items, the winner's.
		if ids := stored(th); len(ids) != len(acked) {
			t.Fatalf("round %d: %d items stored, %d acknowledged: %v", round, len(ids), len(acked), ids)
		}
	}

	// The thread is free again: a new turn streams.
	after := stream("a turn after the others", send(addBody(th, "later")))
	ids := stored(th)
	expectOnce(t, ids, acked, after.doneItems(t))
	if len(ids) != 2*5 {
		t.Fatalf("%d items stored, want 10 (five turns of two): %v", len(ids), ids)
	}
}

// rawReply is an answer read off the test goroutine (no t.Fatal there).
type rawReply struct {
	status int
	header http.Header
	body   string
	err    error
}

// rawAgentPost sends a ChatKit request with the headers (name, value, ...)
// and reads the whole answer.
func rawAgentPost(c *http.Client, body string, headers ...string) rawReply {
	req, err := http.NewRequest("POST", siteURL+agentPath, strings.NewReader(body))
	if err != nil {
		return rawReply{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return rawReply{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return rawReply{status: resp.StatusCode, header: resp.Header, body: string(b), err: err}
}

// TestAgentLeaseAcrossProcesses: a claim made by another process on the
// same database file (another Caddy) makes every model-running request and
// the delete on that thread 409 thread_busy, before the model is called
// and with nothing saved; released, the thread answers again.
func TestAgentLeaseAcrossProcesses(t *testing.T) {
	fake := newFake(t)
	site := startAgent(t, fake, "", "", "")
	alice := client(t)
	created := agentStreamPost(t, alice, createBody("q"))
	th := created.threadID(t)
	userItem := created.doneItems(t)[0].ID

	other, err := threadstore.OpenSQLite(context.Background(), site.db, threadstore.SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l, err := other.ClaimThread(context.Background(), th, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	before := storedItemIDs(t, site.db, th)
	calls := fake.ResponsesCount()
	for name, body := range map[string]string{
		"add_user_message": addBody(th, "while busy"),
		"retry_after_item": retryBody(th, userItem),
		"delete":           threadBody("threads.delete", th),
	} {
		expectError(t, agentPost(t, alice, body), http.StatusConflict, "thread_busy")
		if got := storedItemIDs(t, site.db, th); len(got) != len(before) {
			t.Fatalf("%s while another process holds the thread changed its items: %v, had %v", name, got, before)
		}
	}
	if fake.ResponsesCount() != calls {
		t.Fatal("a turn on a thread held elsewhere called OpenAI")
	}
	// Another thread is free meanwhile.
	if s := agentStreamPost(t, alice, createBody("elsewhere")); s.status != http.StatusOK || s.errorFrame() != nil {
		t.Fatalf("another thread: %d %s", s.status, s.body)
	}

	if err := l.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	next := agentStreamPost(t, alice, addBody(th, "now"))
	if next.status != http.StatusOK || next.errorFrame() != nil {
		t.Fatalf("after the other process released: %d %s", next.status, next.body)
	}
	// And while this Caddy answers, the other process cannot claim it.
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "a long answer", Fault: fakeopenai.StreamFaultStall, After: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := openStream(t, ctx, alice, addBody(th, "stalled"))
	readFrames(t, bufio.NewReader(resp.Body), func(f agentFrame) bool {
		return f.Update.Type == "assistant_message.content_part.text_delta"
	})
	if _, err := other.ClaimThread(context.Background(), th, time.Minute); !errors.Is(err, threadstore.ErrBusy) {
		t.Fatalf("the other process's claim while Caddy answers: %v, want ErrBusy", err)
	}
	cancel()
	// The turn's end releases its claim (the partial answer saved first).
	agentWaitUntil(t, "Caddy to release the thread", func() bool {
		l, err := other.ClaimThread(context.Background(), th, time.Minute)
		if err == nil {
			l.Release(context.Background())
		}
		return err == nil
	})
	expectOnce(t, storedItemIDs(t, site.db, th), created.doneItems(t), next.doneItems(t))
}

// TestAgentLeaseLostStopsTurn: when another instance takes the thread from
// a running turn (its claim overwritten, as after renewals failed), the
// turn's next renewal finds out and the stream ends with an error event:
// the model is stopped, nothing more is saved into a thread that another
// turn answers, and what was acknowledged before stays.
func TestAgentLeaseLostStopsTurn(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a lease renewal (5s)")
	}
	fake := newFake(t)
	site := startAgent(t, fake, "", "", "")
	alice := client(t)
	created := agentStreamPost(t, alice, createBody("q"))
	th := created.threadID(t)

	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "never finished", Fault: fakeopenai.StreamFaultStall, After: 1})
	ctx, cancel := context.WithTimeout(context.Background(), agentLeaseTTL)
	defer cancel()
	resp := openStream(t, ctx, alice, addBody(th, "stalled"))
	rd := bufio.NewReader(resp.Body)
	frames := readFrames(t, rd, func(f agentFrame) bool {
		return f.Update.Type == "assistant_message.content_part.text_delta"
	})
	// Another instance took the thread: its claim replaces this one's.
	raw := agentRawDB(t, site.db)
	res, err := raw.Exec(`UPDATE leases SET holder = 'elsewhere', expires_at = ? WHERE thread_id = ?`,
		time.Now().Add(time.Hour).UnixMicro(), th)
	if n, _ := res.RowsAffected(); err != nil || n != 1 {
		t.Fatalf("taking the lease: %d rows, %v", n, err)
	}
	frames = append(frames, readFrames(t, rd, func(f agentFrame) bool { return f.Type == "error" })...)
	if e := frames[len(frames)-1]; e.Code != "stream.error" || e.AllowRetry == nil || !*e.AllowRetry {
		t.Fatalf("the lost turn's error event: %s", e.raw)
	}
	if rest, err := io.ReadAll(rd); err != nil || strings.TrimSpace(string(rest)) != "" {
		t.Fatalf("after the error event: %q, %v; want the end of the stream", rest, err)
	}
	stream := agentStream{frames: frames}
	acked := stream.doneItems(t)
	if len(acked) != 1 || acked[0].text() != "stalled" {
		t.Fatalf("acknowledged %+v, want the user message", acked)
	}
	stored := storedItemIDs(t, site.db, th)
	expectOnce(t, stored, created.doneItems(t), acked)
	if len(stored) != 3 {
		t.Fatalf("stored %v: the lost turn saved its partial answer", stored)
	}
	// The other instance's claim stands: not released by the lost turn.
	expectError(t, agentPost(t, alice, addBody(th, "mine?")), http.StatusConflict, "thread_busy")
	if _, err := raw.Exec(`DELETE FROM leases WHERE thread_id = ?`, th); err != nil {
		t.Fatal(err)
	}
	if s := agentStreamPost(t, alice, addBody(th, "again")); s.status != http.StatusOK || s.errorFrame() != nil {
		t.Fatalf("after the other instance let go: %d %s", s.status, s.body)
	}
}

// TestAgentLeaseStoreFailure: a claim the store cannot write is 503
// store_unavailable, not thread_busy, and calls nothing.
func TestAgentLeaseStoreFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for SQLite's busy timeout (5s)")
	}
	fake := newFake(t)
	site := startAgent(t, fake, "", "", "")
	alice := client(t)
	th := agentStreamPost(t, alice, createBody("q")).threadID(t)
	before := storedItemIDs(t, site.db, th)

	// Another program holds the file's write lock past the busy timeout.
	raw := agentRawDB(t, site.db)
	conn, err := raw.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(context.Background(), `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	calls := fake.ResponsesCount()
	r := agentPost(t, alice, addBody(th, "locked out"))
	expectError(t, r, http.StatusServiceUnavailable, "store_unavailable")
	if r.header.Get("Retry-After") == "" {
		t.Error("store_unavailable without Retry-After")
	}
	if _, err := conn.ExecContext(context.Background(), `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	if fake.ResponsesCount() != calls {
		t.Fatal("a turn whose claim failed called OpenAI")
	}
	if got := storedItemIDs(t, site.db, th); len(got) != len(before) {
		t.Fatalf("a turn whose claim failed saved %v", got)
	}
	if s := agentStreamPost(t, alice, addBody(th, "unlocked")); s.status != http.StatusOK || s.errorFrame() != nil {
		t.Fatalf("after the lock: %d %s", s.status, s.body)
	}
}

// ---------------------------------------------------------------- keeper

// leaseClock is the store's clock in the keeper's tests.
type leaseClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *leaseClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *leaseClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func openLeaseStore(t *testing.T, path string, clock *leaseClock) *threadstore.SQLiteStore {
	t.Helper()
	s, err := threadstore.OpenSQLite(context.Background(), path, threadstore.SQLiteOptions{Now: clock.Now, BusyTimeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitCause waits for ctx to end and returns its cause.
func waitCause(t *testing.T, ctx context.Context) error {
	t.Helper()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-time.After(10 * time.Second):
		t.Fatal("the keeper never gave up the lease")
		return nil
	}
}

// TestAgentLeaseKeeper runs the keeper on a real SQLite store whose clock
// the test moves, with short real-time periods.
func TestAgentLeaseKeeper(t *testing.T) {
	ctx := context.Background()
	const ttl, every = 600 * time.Millisecond, 60 * time.Millisecond

	t.Run("renews", func(t *testing.T) {
		clock := &leaseClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
		path := filepath.Join(t.TempDir(), "threads.db")
		s, other := openLeaseStore(t, path, clock), openLeaseStore(t, path, clock)
		l, err := s.ClaimThread(ctx, "thr", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		run, stop := context.WithCancelCause(ctx)
		defer stop(nil)
		k := startAgentLeaseKeeper(l, time.Now(), ttl, every, stop)
		// Past the store's ttl many times over: each time a renewal comes
		// (the claim ends after the store's now again), and the other
		// process stays out.
		for range 5 {
			clock.advance(2 * time.Minute)
			agentWaitUntil(t, "a renewal", func() bool {
				expires := leaseExpiry(t, path)
				return expires.After(clock.Now())
			})
			if _, err := other.ClaimThread(ctx, "thr", time.Minute); !errors.Is(err, threadstore.ErrBusy) {
				t.Fatalf("claim past the first ttl, renewed: %v", err)
			}
		}
		k.halt()
		if run.Err() != nil {
			t.Fatalf("a renewed lease was given up: %v", context.Cause(run))
		}
	})
	t.Run("lost to another claim", func(t *testing.T) {
		clock := &leaseClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
		path := filepath.Join(t.TempDir(), "threads.db")
		s, other := openLeaseStore(t, path, clock), openLeaseStore(t, path, clock)
		l, err := s.ClaimThread(ctx, "thr", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		run, stop := context.WithCancelCause(ctx)
		defer stop(nil)
		// The store's clock passes the claim's end before the first renewal
		// (a stalled process), and another process takes the thread.
		clock.advance(2 * time.Minute)
		if _, err := other.ClaimThread(ctx, "thr", time.Minute); err != nil {
			t.Fatal(err)
		}
		k := startAgentLeaseKeeper(l, time.Now(), ttl, every, stop)
		defer k.halt()
		if cause := waitCause(t, run); !errors.Is(cause, errAgentLeaseLost) {
			t.Fatalf("cause %v, want errAgentLeaseLost", cause)
		}
	})
	t.Run("renewals fail", func(t *testing.T) {
		// Another program holds the write lock: every renewal fails busy.
		_, _, l, conn := claimUnderWriteLock(t)
		run, stop := context.WithCancelCause(ctx)
		defer stop(nil)
		claimed := time.Now()
		k := startAgentLeaseKeeper(l, claimed, ttl, every, stop)
		defer k.halt()
		cause := waitCause(t, run)
		if !errors.Is(cause, errAgentLeaseUnrenewed) || !errors.Is(cause, threadstore.ErrUnavailable) {
			t.Fatalf("cause %v, want errAgentLeaseUnrenewed with the store's error", cause)
		}
		// Given up while the claim still held, not after it lapsed.
		if took := time.Since(claimed); took >= ttl {
			t.Fatalf("gave up %s after the claim, its ttl %s", took, ttl)
		}
		conn.ExecContext(ctx, `ROLLBACK`)
	})
	t.Run("a failed renewal is retried", func(t *testing.T) {
		clock, path, l, conn := claimUnderWriteLock(t)
		run, stop := context.WithCancelCause(ctx)
		defer stop(nil)
		k := startAgentLeaseKeeper(l, time.Now(), time.Hour, every, stop)
		defer k.halt()
		// Held for several periods: those renewals fail (the expiry stays
		// where the claim put it, behind the store's clock), and the keeper
		// carries on while the claim cannot lapse.
		var claimedUntil int64
		if err := conn.QueryRowContext(ctx, `SELECT expires_at FROM leases WHERE thread_id = 'thr'`).Scan(&claimedUntil); err != nil {
			t.Fatal(err)
		}
		clock.advance(time.Hour)
		time.Sleep(5 * every)
		var until int64
		if err := conn.QueryRowContext(ctx, `SELECT expires_at FROM leases WHERE thread_id = 'thr'`).Scan(&until); err != nil || until != claimedUntil {
			t.Fatalf("expiry %d, %v while the file was locked; want the claim's %d", until, err, claimedUntil)
		}
		if _, err := conn.ExecContext(ctx, `ROLLBACK`); err != nil {
			t.Fatal(err)
		}
		agentWaitUntil(t, "a renewal after the lock", func() bool {
			return leaseExpiry(t, path).After(clock.Now())
		})
		if run.Err() != nil {
			t.Fatalf("the keeper gave up after a transient failure: %v", context.Cause(run))
		}
	})
}

// claimUnderWriteLock claims thread "thr" on a new file, then holds the
// file's write lock from another connection (another program writing), so
// that the claim's renewals fail busy until the test rolls conn back.
func claimUnderWriteLock(t *testing.T) (*leaseClock, string, threadstore.Lease, *sql.Conn) {
	t.Helper()
	ctx := context.Background()
	clock := &leaseClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "threads.db")
	l, err := openLeaseStore(t, path, clock).ClaimThread(ctx, "thr", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := agentRawDB(t, path).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	return clock, path, l, conn
}

// leaseExpiry reads the thread's lease expiry from the file.
func leaseExpiry(t *testing.T, path string) time.Time {
	t.Helper()
	var us int64
	if err := agentRawDB(t, path).QueryRow(`SELECT expires_at FROM leases WHERE thread_id = 'thr'`).Scan(&us); err != nil {
		t.Fatal(err)
	}
	return time.UnixMicro(us)
}

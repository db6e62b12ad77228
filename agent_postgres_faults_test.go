package chatkit

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
	"github.com/caddy-chatkit/caddy-chatkit/internal/pgtest"
)

// The agent on a PostgreSQL server of the test's own that it stops, stalls
// and restarts under a running Caddy. Timings are bounds against a hang,
// with room for a loaded machine, not measurements.

const (
	// pgFaultQueryTimeout is the configs' query_timeout.
	pgFaultQueryTimeout = time.Second
	// pgFaultSlack is what a 503 may take beyond query_timeout (the
	// request's own handling, a loaded machine under -race).
	pgFaultSlack = time.Second
	// pgResumeWithin is the bound on coming back.
	pgResumeWithin = 15 * time.Second
)

// pgFaultStore is the store block of the fault configs.
var pgFaultStore = "{\n\t\t\t\tquery_timeout " + pgFaultQueryTimeout.String() + "\n\t\t\t}"

// pgTimedPost posts a request and says how long the answer took.
func pgTimedPost(u *userClient, body string) (reply, time.Duration) {
	u.t.Helper()
	start := time.Now()
	r := u.post(body)
	return r, time.Since(start)
}

// expectPGUnavailable checks that each read is 503 store_unavailable JSON
// within query_timeout (and the slack), and that none called the model.
func expectPGUnavailable(t *testing.T, u *userClient, fake *fakeopenai.Server, bodies ...string) {
	t.Helper()
	calls := fake.ResponsesCount()
	for _, body := range bodies {
		r, took := pgTimedPost(u, body)
		expectError(t, r, http.StatusServiceUnavailable, "store_unavailable")
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s: store_unavailable without Retry-After", body)
		}
		if took > pgFaultQueryTimeout+pgFaultSlack {
			t.Errorf("%s: the 503 took %v, query_timeout is %v", body, took, pgFaultQueryTimeout)
		}
	}
	if got := fake.ResponsesCount(); got != calls {
		t.Fatalf("the model was called %d times while the store was down", got-calls)
	}
}

// pgWaitServed polls threads.list until it answers 200, failing past
// pgResumeWithin from since; it returns how long that took.
func pgWaitServed(t *testing.T, u *userClient, since time.Time) time.Duration {
	t.Helper()
	for {
		r := u.post(`{"type":"threads.list","params":{}}`)
		if r.status == http.StatusOK {
			took := time.Since(since)
			t.Logf("served again %v after the database came back", took.Round(time.Millisecond))
			return took
		}
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("while coming back: %d %s", r.status, r.body)
		}
		if time.Since(since) > pgResumeWithin {
			t.Fatalf("still %d %s %v after the database came back", r.status, r.body, pgResumeWithin)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pgItemIDs lists a thread's item ids, oldest first.
func pgItemIDs(t *testing.T, u *userClient, threadID string) []string {
	t.Helper()
	r := u.post(listBody("items.list", threadID, 100, "asc", ""))
	if r.status != http.StatusOK {
		t.Fatalf("items.list: %d %s", r.status, r.body)
	}
	return pageIDs(t, decodePage(t, r))
}

// expectAcknowledged checks that every acknowledged item is stored, once.
func expectAcknowledged(t *testing.T, u *userClient, threadID string, acked []string) {
	t.Helper()
	ids := pgItemIDs(t, u, threadID)
	for _, id := range acked {
		if n := strings.Count(strings.Join(ids, " "), id); n != 1 {
			t.Fatalf("acknowledged item %s stored %d times; stored %v", id, n, ids)
		}
	}
}

func ackedIDs(t *testing.T, frames []agentFrame) []string {
	t.Helper()
	var ids []string
	for _, f := range frames {
		if f.Type == "thread.item.done" {
			ids = append(ids, agentDecodeItem(t, f.Item).ID)
		}
	}
	return ids
}

// TestAgentPostgresDownAtStartup: a database that is down when Caddy starts
// fails nothing but the agent, which answers 503 JSON, logs why without the
// password, never calls the model, and serves by itself once the database
// is up.
func TestAgentPostgresDownAtStartup(t *testing.T) {
	c := pgtest.NewCluster(t, agentStoreSecret)
	t.Setenv(pgAgentEnv, c.DSN(agentStoreSecret))
	fake := newFake(t)
	site := startPGAgent(t, fake, "", pgFaultStore, "")
	if r := do(t, plainClient(t), "GET", "/", ""); r.status != http.StatusOK || r.body != "the next handler" {
		t.Fatalf("the rest of the site: %d %s", r.status, r.body)
	}
	// Said at startup, before any visitor came.
	agentWaitUntil(t, "the startup log line", func() bool {
		return strings.Contains(site.logLines(t), "the agent's thread store cannot be opened yet")
	})
	alice := &userClient{t: t, c: client(t), user: "alice"}
	expectPGUnavailable(t, alice, fake, `{"type":"threads.list","params":{}}`, createBody("Hi"))
	logs := site.logLines(t)
	if !strings.Contains(logs, "the agent's thread store is unavailable") || !strings.Contains(logs, "127.0.0.1:") {
		t.Fatalf("the log does not say what is wrong: %s", logs)
	}
	if strings.Contains(logs, agentStoreSecret) {
		t.Fatal("the password is in the log")
	}

	c.Start()
	pgWaitServed(t, alice, time.Now())
	if s := alice.stream(createBody("up now")); s.status != http.StatusOK || s.errorFrame() != nil {
		t.Fatalf("a turn once up: %d %s", s.status, s.body)
	}
}

// TestAgentPostgresRefusedPassword: a server that refuses the password is
// the same: 503, the reason logged without the password, and service once
// the role's password is what the DSN says.
func TestAgentPostgresRefusedPassword(t *testing.T) {
	const current = "the-old-password"
	c := pgtest.StartCluster(t, current)
	t.Setenv(pgAgentEnv, c.DSN(agentStoreSecret))
	fake := newFake(t)
	site := startPGAgent(t, fake, "", pgFaultStore, "")
	alice := &userClient{t: t, c: client(t), user: "alice"}
	expectPGUnavailable(t, alice, fake, `{"type":"threads.list","params":{}}`, createBody("Hi"))
	logs := site.logLines(t)
	if !strings.Contains(logs, "password authentication failed") {
		t.Fatalf("the log does not say the password was refused: %s", logs)
	}
	if strings.Contains(logs, agentStoreSecret) || strings.Contains(logs, current) {
		t.Fatal("a password is in the log")
	}

	c.Exec(current, "ALTER ROLE postgres PASSWORD '"+agentStoreSecret+"'")
	pgWaitServed(t, alice, time.Now())
}

// TestAgentPostgresStopAndStall: the database stopped, then stalled, under
// a Caddy that served from it: reads and turns answer 503 JSON within
// query_timeout without calling the model, nothing acknowledged is lost,
// and service resumes by itself once it is back.
func TestAgentPostgresStopAndStall(t *testing.T) {
	c := pgtest.StartCluster(t, agentStoreSecret)
	t.Setenv(pgAgentEnv, c.DSN(agentStoreSecret))
	fake := newFake(t)
	site := startPGAgent(t, fake, "", pgFaultStore, "")
	alice := &userClient{t: t, c: client(t), user: "alice"}
	s := alice.stream(createBody("before the fault"))
	if s.errorFrame() != nil {
		t.Fatal(s.body)
	}
	th := s.threadID(t)
	acked := ackedIDs(t, s.frames)
	reads := []string{
		`{"type":"threads.list","params":{}}`,
		threadBody("threads.get_by_id", th),
		listBody("items.list", th, 20, "asc", ""),
		addBody(th, "while it is down"),
	}

	for _, fault := range []struct {
		name        string
		break_, fix func()
	}{
		{"stopped", c.Stop, c.Start},
		{"stalled", c.Stall, c.Resume},
	} {
		fault.break_()
		expectPGUnavailable(t, alice, fake, reads...)
		fault.fix()
		pgWaitServed(t, alice, time.Now())
		s := alice.stream(addBody(th, "after "+fault.name))
		if s.status != http.StatusOK || s.errorFrame() != nil {
			t.Fatalf("a turn after %s: %d %s", fault.name, s.status, s.body)
		}
		acked = append(acked, ackedIDs(t, s.frames)...)
		expectAcknowledged(t, alice, th, acked)
	}
	if got := len(pgItemIDs(t, alice, th)); got != len(acked) {
		t.Fatalf("%d items stored, %d acknowledged", got, len(acked))
	}
	if strings.Contains(site.logLines(t), agentStoreSecret) {
		t.Fatal("the password is in the log")
	}
}

// TestAgentPostgresStreamSaveFails: the database stops (then stalls) while
// the model answers: the stream ends with an error event, and what it
// acknowledged before is stored once the database is back.
func TestAgentPostgresStreamSaveFails(t *testing.T) {
	c := pgtest.StartCluster(t, agentStoreSecret)
	t.Setenv(pgAgentEnv, c.DSN(agentStoreSecret))
	fake := newFake(t)
	startPGAgent(t, fake, "", pgFaultStore, "")
	alice := &userClient{t: t, c: client(t), user: "alice"}
	th := alice.stream(createBody("a thread")).threadID(t)

	for _, fault := range []struct {
		name        string
		break_, fix func()
	}{
		{"stopped", c.Stop, c.Start},
		{"stalled", c.Stall, c.Resume},
	} {
		// The answer comes slowly enough for the fault to fall inside it.
		fake.ScriptResponse(fakeopenai.ResponseScript{Text: "one two three four five six", DeltaDelay: 100 * time.Millisecond})
		rd := pgOpenStream(t, alice, addBody(th, "while "+fault.name), time.Now())
		frames := readFrames(t, rd, func(f agentFrame) bool { return f.Type == "thread.item.updated" })
		fault.break_()
		start := time.Now()
		frames = append(frames, readFrames(t, rd, func(f agentFrame) bool { return f.Type == "error" })...)
		if took := time.Since(start); took > pgFaultQueryTimeout+pgFaultSlack+time.Second { // the answer's remaining deltas
			t.Errorf("%s: the error event came %v after the fault", fault.name, took)
		}
		if rest, err := io.ReadAll(rd); err != nil || strings.TrimSpace(string(rest)) != "" {
			t.Fatalf("%s: the stream went on after its error event: %q %v", fault.name, rest, err)
		}
		acked := ackedIDs(t, frames)
		var answer string
		for _, f := range frames {
			if f.Type == "thread.item.added" {
				answer = agentDecodeItem(t, f.Item).ID
			}
		}
		if answer == "" || slices.Contains(acked, answer) {
			t.Fatalf("%s: the answer that could not be saved (%q) was acknowledged: %v", fault.name, answer, acked)
		}
		if len(acked) == 0 {
			t.Fatalf("%s: nothing was acknowledged before the fault: %v", fault.name, frames)
		}
		fault.fix()
		pgWaitServed(t, alice, time.Now())
		expectAcknowledged(t, alice, th, acked)
		if got := pgItemIDs(t, alice, th); !slices.Contains(got, acked[len(acked)-1]) {
			t.Fatalf("%s: the last acknowledged item is missing from %v", fault.name, got)
		}
	}
}

// pgOpenStream starts a streaming request as u and returns the open stream.
// A thread still held by a turn the fault ended (its lease could not be let
// go while the database was away) may answer 409 thread_busy until the
// lease expires: that is retried until pgResumeWithin after since.
func pgOpenStream(t *testing.T, u *userClient, body string, since time.Time) *bufio.Reader {
	t.Helper()
	c := &http.Client{Transport: u.c.Transport, Jar: u.c.Jar} // no client timeout: the stream is read as it comes
	for {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		req, err := http.NewRequestWithContext(ctx, "POST", siteURL+agentPath, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Test-User", u.user)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusOK {
			t.Cleanup(func() { resp.Body.Close() })
			return bufio.NewReader(resp.Body)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusConflict || !strings.Contains(string(raw), `"thread_busy"`) || time.Since(since) > pgResumeWithin {
			t.Fatalf("status %d %s", resp.StatusCode, raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

package chatkit

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// threadItems lists a thread's items oldest first, as the client sees them.
func threadItems(t *testing.T, c *http.Client, threadID string) []agentTestItem {
	t.Helper()
	p := decodePage(t, agentPost(t, c, listBody("items.list", threadID, 100, "asc", "")))
	items := make([]agentTestItem, len(p.Data))
	for i, d := range p.Data {
		items[i] = agentDecodeItem(t, d)
	}
	return items
}

func itemSummary(items []agentTestItem) string {
	var parts []string
	for _, it := range items {
		parts = append(parts, strings.TrimSuffix(it.Type, "_message")+"="+it.text())
	}
	return strings.Join(parts, " | ")
}

func TestAgentCancelSavesPartialAndStopsUpstream(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "")
	browser := client(t)
	th := agentStreamPost(t, browser, createBody("first")).threadID(t)

	// Two words, then the model would go on; the stop button aborts the fetch.
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "Once upon a time", Fault: fakeopenai.StreamFaultStall, After: 2})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := openStream(t, ctx, browser, addBody(th, "tell me a story"))
	deltas := 0
	frames := readFrames(t, bufio.NewReader(resp.Body), func(f agentFrame) bool {
		if f.Update.Type == "assistant_message.content_part.text_delta" {
			deltas++
		}
		return deltas == 2
	})
	var answerID string
	for _, f := range frames {
		if f.Type == "thread.item.added" {
			answerID = agentDecodeItem(t, f.Item).ID
		}
	}
	cancel()

	// The upstream request is cancelled at once.
	waitCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	if err := fake.WaitClientsGone(waitCtx, 1); err != nil {
		t.Fatalf("the upstream request was not cancelled: %v", err)
	}
	// The partial answer is saved, under the id the stream announced.
	agentWaitUntil(t, "the partial answer saved", func() bool {
		items := threadItems(t, browser, th)
		return len(items) == 4 && items[3].ID == answerID
	})
	items := threadItems(t, browser, th)
	if got := itemSummary(items); got != "user=first | assistant=You said: first | user=tell me a story | assistant=Once upon" {
		t.Fatalf("thread = %s", got)
	}

	// The next turn tells the model the answer was cut off (the note itself
	// is never shown to the client).
	agentStreamPost(t, browser, addBody(th, "go on"))
	in := fake.LastResponses().Input
	var texts []string
	for _, it := range in {
		texts = append(texts, it.Role+": "+it.Text)
	}
	joined := strings.Join(texts, "\n")
	if !strings.Contains(joined, "assistant: Once upon\nuser: Hidden context") || !strings.Contains(joined, "stopped the previous answer") {
		t.Fatalf("history after a cancel:\n%s", joined)
	}
	if got := len(threadItems(t, browser, th)); got != 6 {
		t.Fatalf("the client sees %d items, want 6 (the note is hidden)", got)
	}
}

// TestAgentStoppedFirstAnswerStillTitlesThread: a thread whose first answer
// was stopped is titled after its first message, as one that was answered.
func TestAgentStoppedFirstAnswerStillTitlesThread(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "")
	browser := client(t)
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "Once upon a time", Fault: fakeopenai.StreamFaultStall, After: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := openStream(t, ctx, browser, createBody("tell me a story about a lighthouse"))
	frames := readFrames(t, bufio.NewReader(resp.Body), func(f agentFrame) bool {
		return f.Update.Type == "assistant_message.content_part.text_delta"
	})
	cancel()
	th := agentStream{frames: frames}.threadID(t)
	agentWaitUntil(t, "the stopped thread titled", func() bool {
		r := agentPost(t, browser, threadBody("threads.get_by_id", th))
		return r.json["title"] == "tell me a story about a lighthouse"
	})
}

// TestAgentFaults drives every upstream failure through a real stream: the
// user's message is always kept, a partial answer too, and the person gets
// an error event that says whether trying again can help.
func TestAgentFaults(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "retries 0\n\t\ttimeout 1s\n\t\terror_cache off", "idle_timeout 1s")
	browser := client(t)
	for _, tc := range []struct {
		name   string
		script fakeopenai.ResponseScript
		// code and message of the error event ("" for none), allow_retry
		code, message string
		retry         bool
		saved         string // the thread afterwards
		clientGone    bool   // the fake saw its request cancelled
	}{
		{
			name:   "5xx before the stream",
			script: fakeopenai.ResponseScript{Status: 500},
			code:   "stream.error", retry: true, saved: "user=q",
		},
		{
			name:   "429 with Retry-After",
			script: fakeopenai.ResponseScript{Status: 429, Header: map[string]string{"Retry-After": "7"}},
			code:   "custom", message: "The assistant is busy right now. Try again in 7 seconds.", retry: true, saved: "user=q",
		},
		{
			name:   "401: misconfigured",
			script: fakeopenai.ResponseScript{Status: 401},
			code:   "stream.error", retry: false, saved: "user=q",
		},
		{
			name:   "response.failed mid-stream",
			script: fakeopenai.ResponseScript{Text: "alpha beta gamma", Fault: fakeopenai.StreamFaultFailed, After: 2},
			code:   "stream.error", retry: true, saved: "user=q | assistant=alpha beta",
		},
		{
			name:   "error event mid-stream",
			script: fakeopenai.ResponseScript{Text: "alpha beta gamma", Fault: fakeopenai.StreamFaultErrorEvent, After: 1, ErrorCode: "rate_limit_exceeded"},
			code:   "custom", message: "The assistant is busy right now. Try again in a moment.", retry: true, saved: "user=q | assistant=alpha",
		},
		{
			name:   "stall: idle_timeout",
			script: fakeopenai.ResponseScript{Text: "alpha beta gamma", Fault: fakeopenai.StreamFaultStall, After: 1},
			code:   "custom", message: "The assistant took too long to answer. Try again.", retry: true, saved: "user=q | assistant=alpha", clientGone: true,
		},
		{
			name:   "connection reset mid-stream",
			script: fakeopenai.ResponseScript{Text: "alpha beta gamma", Fault: fakeopenai.StreamFaultReset, After: 2},
			code:   "stream.error", retry: true, saved: "user=q | assistant=alpha beta",
		},
		{
			name:   "no first byte within timeout",
			script: fakeopenai.ResponseScript{Delay: 3 * time.Second},
			code:   "custom", message: "The assistant took too long to answer. Try again.", retry: true, saved: "user=q", clientGone: true,
		},
		{
			// 1.25s in all, longer than idle_timeout: the bound is between events.
			name:   "slow deltas within idle_timeout",
			script: fakeopenai.ResponseScript{Text: "slow but steady answer, still", DeltaDelay: 250 * time.Millisecond},
			saved:  "user=q | assistant=slow but steady answer, still",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gone := fake.ClientsGone()
			fake.ScriptResponse(tc.script)
			s := agentStreamPost(t, browser, createBody("q"))
			expectStreamHeaders(t, s)
			types := s.types()
			if len(types) < 3 || types[0] != "thread.created" || types[1] != "thread.item.done" || types[2] != "stream_options" {
				t.Fatalf("the stream must open with the thread and the saved message: %v", types)
			}
			e := s.errorFrame()
			switch {
			case tc.code == "" && e != nil:
				t.Fatalf("unexpected error event %s", e.raw)
			case tc.code != "" && e == nil:
				t.Fatalf("no error event in %v", types)
			case e != nil:
				if e.Code != tc.code || e.Message != tc.message || e.AllowRetry == nil || *e.AllowRetry != tc.retry {
					t.Fatalf("error event %s, want code %q message %q allow_retry %v", e.raw, tc.code, tc.message, tc.retry)
				}
				if s.frames[len(s.frames)-1].Type != "error" {
					t.Fatalf("the stream goes on after the error: %v", types)
				}
				if strings.Contains(s.body, "server had an error") || strings.Contains(s.body, fakeopenai.DefaultAPIKey) {
					t.Fatalf("the upstream's words reached the browser: %s", s.body)
				}
			}
			if got := itemSummary(threadItems(t, browser, s.threadID(t))); got != tc.saved {
				t.Fatalf("saved %q, want %q", got, tc.saved)
			}
			if tc.clientGone {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := fake.WaitClientsGone(ctx, gone+1); err != nil {
					t.Fatal("the upstream request was left running")
				}
			}
		})
	}
}

// TestAgentFailedMidStreamGolden pins the event order of an answer that
// fails half-way: the partial item is closed and saved, then the error.
func TestAgentFailedMidStreamGolden(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "")
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "alpha beta gamma", Fault: fakeopenai.StreamFaultFailed, After: 2})
	s := agentStreamPost(t, client(t), createBody("q"))
	checkAgentGolden(t, "http_failed", newAgentNormalizer().normalize(s.body))
}

func TestAgentRetriesOnlyBeforeTheAnswer(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "")
	browser := client(t)

	before := fake.ResponsesCount()
	fake.ScriptResponse(fakeopenai.ResponseScript{Status: 503})
	s := agentStreamPost(t, browser, createBody("q"))
	if e := s.errorFrame(); e != nil || fake.ResponsesCount() != before+2 {
		t.Fatalf("a 503 before the stream is retried: %d calls, error %v", fake.ResponsesCount()-before, e)
	}

	before = fake.ResponsesCount()
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "alpha beta", Fault: fakeopenai.StreamFaultReset, After: 1})
	s = agentStreamPost(t, browser, createBody("q"))
	if e := s.errorFrame(); e == nil || fake.ResponsesCount() != before+1 {
		t.Fatalf("a stream that broke after its first byte must not be retried: %d calls, error %v", fake.ResponsesCount()-before, e)
	}
}

func TestAgentCircuitBreakerRefusesBeforeSaving(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "retries 0\n\t\tcircuit_breaker 1 1h", "")
	browser := client(t)
	fake.ScriptResponse(fakeopenai.ResponseScript{Status: 500})
	agentStreamPost(t, browser, createBody("q"))
	threadsBefore := len(decodePage(t, agentPost(t, browser, `{"type":"threads.list","params":{}}`)).Data)
	calls := fake.ResponsesCount()

	s := agentStreamPost(t, browser, createBody("q"))
	expectRefusal(t, s, "The assistant is unavailable right now. Try again in ")
	if fake.ResponsesCount() != calls {
		t.Fatal("the open breaker let a call through")
	}
	if n := len(decodePage(t, agentPost(t, browser, `{"type":"threads.list","params":{}}`)).Data); n != threadsBefore {
		t.Fatalf("a refused run saved a thread: %d threads, want %d", n, threadsBefore)
	}
}

// expectRefusal checks a refused model run: a 200 event stream whose only
// event is a custom error saying what happened and when to try again, with
// Retry-After set.
func expectRefusal(t *testing.T, s agentStream, messagePrefix string) {
	t.Helper()
	expectStreamHeaders(t, s)
	if len(s.frames) != 1 || s.frames[0].Type != "error" {
		t.Fatalf("refusal = %v (%s), want one error event", s.types(), s.body)
	}
	e := s.frames[0]
	if e.Code != "custom" || !strings.HasPrefix(e.Message, messagePrefix) || !strings.HasSuffix(e.Message, ".") || e.AllowRetry == nil || !*e.AllowRetry {
		t.Fatalf("refusal event %s, want a custom message starting %q", e.raw, messagePrefix)
	}
	secs, err := strconv.Atoi(s.header.Get("Retry-After"))
	if err != nil || secs < 1 {
		t.Fatalf("Retry-After = %q", s.header.Get("Retry-After"))
	}
}

func TestAgentRateLimitRefusedAsEvent(t *testing.T) {
	fake := newFake(t)
	// A zone of this run's own: the buckets of an earlier config with the
	// same limits (kept across reloads) would have spent the one run.
	startAgent(t, fake, "", "rate_limit 1 1h {\n\t\t\tzone "+agentNewID("refused_event_test")+"\n\t\t}", "")
	browser := client(t)
	th := agentStreamPost(t, browser, createBody("q")).threadID(t)
	calls := fake.ResponsesCount()
	series := `caddy_chatkit_requests_total{endpoint="agent",outcome="rate_limited"}`
	before := scrapeCounter(t, series)

	s := agentStreamPost(t, browser, addBody(th, "again"))
	expectRefusal(t, s, "You are sending messages faster than this site allows. Try again in 60 minutes.")
	if secs, _ := strconv.Atoi(s.header.Get("Retry-After")); secs < 3500 {
		t.Fatalf("Retry-After = %d, want about an hour", secs)
	}
	if got := scrapeCounter(t, series); got != before+1 {
		t.Fatalf("%s = %v, want %v", series, got, before+1)
	}
	if fake.ResponsesCount() != calls {
		t.Fatal("a refused run called OpenAI")
	}
	if got := itemSummary(threadItems(t, browser, th)); got != "user=q | assistant=You said: q" {
		t.Fatalf("a refused run saved something: %s", got)
	}
	// Probing with malformed bodies is not free either.
	expectError(t, agentPost(t, browser, `{"type":"threads.create"}`), http.StatusTooManyRequests, "rate_limit_exceeded")
}

func TestAgentBudgetSharedWithMinting(t *testing.T) {
	fake := newFake(t)
	// One model run an hour for the whole block, minting included.
	startAgent(t, fake, "", "workflow wf_test\n\t\tbudget 1 1h", "")
	expectSecret(t, do(t, client(t), "POST", "/api/chatkit/start", ""), fake)
	calls := fake.ResponsesCount()
	s := agentStreamPost(t, client(t), createBody("q"))
	expectRefusal(t, s, "The assistant has answered as many messages as this site allows for now. Try again in ")
	if fake.ResponsesCount() != calls {
		t.Fatal("a run over budget called OpenAI")
	}
	if n := len(decodePage(t, agentPost(t, client(t), `{"type":"threads.list","params":{}}`)).Data); n != 0 {
		t.Fatal("a refused run saved a thread")
	}
}

func TestAgentTokenBudgets(t *testing.T) {
	fake := newFake(t)
	cost := &fakeopenai.Usage{InputTokens: 15, OutputTokens: 10} // 25 a turn
	series := `caddy_chatkit_requests_total{endpoint="agent",outcome="token_budget_exhausted"}`

	t.Run("user", func(t *testing.T) {
		startAgent(t, fake, "", "rate_limit 100 1s {\n\t\t\tzone tokens-user\n\t\t}", "token_budget user 20 1h")
		alice, bob := client(t), client(t)
		before := scrapeCounter(t, series)
		fake.ScriptResponse(fakeopenai.ResponseScript{Usage: cost})
		th := agentStreamPost(t, alice, createBody("q")).threadID(t)
		// Admitted under the budget, the turn finished over it: the next
		// one is refused, before anything is saved.
		s := agentStreamPost(t, alice, addBody(th, "more"))
		expectRefusal(t, s, "You have used your share of the assistant for now. Try again in ")
		if got := itemSummary(threadItems(t, alice, th)); got != "user=q | assistant=You said: q" {
			t.Fatalf("refused turn saved: %s", got)
		}
		// Another user has a budget of their own.
		fake.ScriptResponse(fakeopenai.ResponseScript{Usage: cost})
		if e := agentStreamPost(t, bob, createBody("q")).errorFrame(); e != nil {
			t.Fatalf("bob refused: %s", e.raw)
		}
		if got := scrapeCounter(t, series); got != before+1 {
			t.Fatalf("%s = %v, want %v", series, got, before+1)
		}
	})
	t.Run("site", func(t *testing.T) {
		startAgent(t, fake, "", "rate_limit 100 1s {\n\t\t\tzone tokens-site\n\t\t}", "token_budget site 30 1h")
		fake.ScriptResponse(fakeopenai.ResponseScript{Usage: cost, Times: 2})
		agentStreamPost(t, client(t), createBody("q")) // 25 < 30: admitted
		agentStreamPost(t, client(t), createBody("q")) // 25 < 30: admitted, 50 now
		calls := fake.ResponsesCount()
		s := agentStreamPost(t, client(t), createBody("q"))
		expectRefusal(t, s, "The assistant has used this site's allowance for now. Try again in ")
		if fake.ResponsesCount() != calls {
			t.Fatal("a run over the site's token budget called OpenAI")
		}
	})
}

func TestAgentOneTurnPerThread(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "")
	alice, mallory := client(t), client(t)
	th := agentStreamPost(t, alice, createBody("q")).threadID(t)

	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "a long answer", Fault: fakeopenai.StreamFaultStall, After: 1})
	ctx, cancel := context.WithCancel(context.Background())
	resp := openStream(t, ctx, alice, addBody(th, "first"))
	readFrames(t, bufio.NewReader(resp.Body), func(f agentFrame) bool {
		return f.Update.Type == "assistant_message.content_part.text_delta"
	})

	calls := fake.ResponsesCount()
	expectError(t, agentPost(t, alice, addBody(th, "second")), http.StatusConflict, "thread_busy")
	expectError(t, agentPost(t, alice, threadBody("threads.delete", th)), http.StatusConflict, "thread_busy")
	// Someone else learns nothing, not even that it is busy.
	expectError(t, agentPost(t, mallory, addBody(th, "x")), http.StatusNotFound, "not_found")
	// Another thread of the same user is free.
	if e := agentStreamPost(t, alice, createBody("elsewhere")).errorFrame(); e != nil {
		t.Fatalf("another thread refused: %s", e.raw)
	}
	if fake.ResponsesCount() != calls+1 {
		t.Fatal("a busy thread's second turn called OpenAI")
	}

	cancel()
	agentWaitUntil(t, "the thread to be free again", func() bool {
		return agentPost(t, alice, addBody(th, "third")).status == http.StatusOK
	})
}

func TestAgentTitles(t *testing.T) {
	fake := newFake(t)

	t.Run("from the first message", func(t *testing.T) {
		startAgent(t, fake, "", "", "")
		msg := "Could you please help me plan a three day trip to Lisbon in early spring with children"
		s := agentStreamPost(t, client(t), createBody(msg))
		last := s.frames[len(s.frames)-1]
		var th struct{ Title string }
		if last.Type != "thread.updated" || json.Unmarshal(last.Thread, &th) != nil {
			t.Fatalf("the stream ends with %s, want thread.updated", last.raw)
		}
		if want := "Could you please help me plan a three day trip to Lisbon in…"; th.Title != want {
			t.Fatalf("title = %q, want %q", th.Title, want)
		}
	})
	t.Run("from the title model", func(t *testing.T) {
		startAgent(t, fake, "", "", "title_model gpt-5-nano")
		fake.ScriptResponse(fakeopenai.ResponseScript{})                           // the answer
		fake.ScriptResponse(fakeopenai.ResponseScript{Text: `"Lisbon with kids"`}) // the title
		browser := client(t)
		s := agentStreamPost(t, browser, createBody("Plan a Lisbon trip with my children"))
		req := fake.LastResponses()
		if req.Model != "gpt-5-nano" || req.Stream || req.Store == nil || *req.Store || req.SafetyIdentifier == nil ||
			len(req.Input) != 1 || req.Input[0].Text != "Plan a Lisbon trip with my children" {
			t.Fatalf("title request = %+v", req)
		}
		th := s.threadID(t)
		if got := agentPost(t, browser, threadBody("threads.get_by_id", th)).json["title"]; got != "Lisbon with kids" {
			t.Fatalf("title = %v", got)
		}
		// Later answers keep the title: no second title call.
		calls := fake.ResponsesCount()
		agentStreamPost(t, browser, addBody(th, "and museums?"))
		if fake.ResponsesCount() != calls+1 {
			t.Fatal("the title model was called again")
		}
	})
	t.Run("title model fails", func(t *testing.T) {
		startAgent(t, fake, "", "retries 0", "title_model gpt-5-nano")
		fake.ScriptResponse(fakeopenai.ResponseScript{})
		fake.ScriptResponse(fakeopenai.ResponseScript{Status: 500})
		s := agentStreamPost(t, client(t), createBody("Plan a Lisbon trip"))
		if e := s.errorFrame(); e != nil {
			t.Fatalf("a failed title is not the person's problem: %s", e.raw)
		}
		last := s.frames[len(s.frames)-1]
		if last.Type != "thread.updated" || !strings.Contains(string(last.Thread), `"title":"Plan a Lisbon trip"`) {
			t.Fatalf("fallback title: %s", last.raw)
		}
	})
}

func TestAgentReloadKeepsRunningStream(t *testing.T) {
	fake := newFake(t)
	site := startAgent(t, fake, "", "", "")
	browser := client(t)
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "one two three four five six", DeltaDelay: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := openStream(t, ctx, browser, createBody("q"))
	rd := bufio.NewReader(resp.Body)
	frames := readFrames(t, rd, func(f agentFrame) bool {
		return f.Update.Type == "assistant_message.content_part.text_delta"
	})

	// A reload (the agent changed) while the answer streams.
	startAgent(t, fake, site.db, "", "history 10")

	frames = append(frames, readFrames(t, rd, func(f agentFrame) bool { return f.Type == "thread.updated" })...)
	// The stream's connection belongs to the old config's server, which
	// closes it once the stream ends; a browser would open a new one.
	resp.Body.Close()
	browser.CloseIdleConnections()
	var th string
	for _, f := range frames {
		if f.Type == "thread.created" {
			var v struct{ ID string }
			_ = json.Unmarshal(f.Thread, &v)
			th = v.ID
		}
	}
	if got := itemSummary(threadItems(t, browser, th)); got != "user=q | assistant=one two three four five six" {
		t.Fatalf("after the reload the thread holds %s", got)
	}
}

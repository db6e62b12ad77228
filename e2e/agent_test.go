package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// The demo page's chat against Caddy's agent mode (the demo's own setup:
// the chatkit handler with an agent in front of a file server for the
// page), driven in headless Chromium.

// chatPage is what the demo page's chat shows, read in one evaluation.
type chatPage struct {
	Messages []struct {
		ID    string `json:"id"`
		Role  string `json:"role"`
		State string `json:"state"`
		Text  string `json:"text"`
	} `json:"messages"`
	Threads []struct {
		ID      string `json:"id"`
		Title   string `json:"title"`
		Current string `json:"current"`
	} `json:"threads"`
	ThreadsLoaded string `json:"threadsLoaded"`
	Title         string `json:"title"`
	Hash          string `json:"hash"`
	Error         string `json:"error"`
	ErrorCode     string `json:"errorCode"`
	Status        string `json:"status"`
	StatusState   string `json:"statusState"`
	Input         string `json:"input"`
	SendDisabled  bool   `json:"sendDisabled"`
	StopDisabled  bool   `json:"stopDisabled"`
	ChatKit       string `json:"chatkit"`
	ChatKitState  string `json:"chatkitState"`
}

const readChatPage = `(() => {
	const $ = (id) => document.getElementById(id);
	return {
		messages: [...document.querySelectorAll('#messages li')].map((li) => ({
			id: li.dataset.itemId, role: li.dataset.role, state: li.dataset.state,
			text: li.querySelector('.text').textContent,
		})),
		threads: [...document.querySelectorAll('#threads button')].map((b) => ({
			id: b.dataset.threadId, title: b.querySelector('.title').textContent, current: b.getAttribute('aria-current'),
		})),
		threadsLoaded: $('threads').dataset.count,
		title: $('thread-title').textContent,
		hash: location.hash,
		error: $('chat-error').textContent, errorCode: $('chat-error').dataset.code,
		status: $('chat-status').textContent, statusState: $('chat-status').dataset.state,
		input: $('input').value,
		sendDisabled: $('send').disabled, stopDisabled: $('stop').disabled,
		chatkit: $('chatkit-status').textContent, chatkitState: $('chatkit-status').dataset.state || '',
	};
})()`

func (tb *tab) chat(t *testing.T) chatPage {
	t.Helper()
	return eval[chatPage](t, tb, readChatPage)
}

// Predicates on the page, for waitFor.
const (
	threadsListed = `document.getElementById('threads').dataset.count !== ''`
	answerDone    = `(() => { const li = document.querySelector('#messages li[data-role="assistant"]:last-child'); return !!li && li.dataset.state === 'done'; })()`
	// turnDone: the answer's stream has closed and the page is ready again.
	turnDone = `document.getElementById('chat-status').dataset.state === 'done'`
	// answerStreaming: the answer is on the page but has not ended.
	answerStreaming = `(() => { const li = document.querySelector('#messages li[data-role="assistant"]:last-child');
		return !!li && li.dataset.state === 'streaming' && li.querySelector('.text').textContent.length > 0; })()`
)

func threadsCount(n int) string {
	return fmt.Sprintf(`document.getElementById('threads').dataset.count === '%d'`, n)
}

func messagesCount(n int) string {
	return fmt.Sprintf(`document.querySelectorAll('#messages li').length === %d`, n)
}

// agentSite serves the demo page with the chatkit handler's agent in front
// of it, on a free port, its threads in an SQLite file of its own; extra
// goes into the agent block, blockExtra into the chatkit block. It
// returns the page's URL.
func agentSite(t *testing.T, fake *fakeopenai.Server, extra, blockExtra string) string {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	root := t.TempDir()
	if err := os.CopyFS(root, os.DirFS(filepath.Join("..", "cmd", "demo", "page"))); err != nil {
		t.Fatalf("copying the demo page: %v", err)
	}
	if err := os.WriteFile(filepath.Join(root, "demo-config.json"), []byte(`{"backend":"fake","model":"gpt-5-mini","minting":false}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	startCaddy(t, dir, siteBlock(dir, port, fmt.Sprintf(`chatkit {
		api_base %s
		api_key %s
		agent {
			model gpt-5-mini
			store sqlite %s
			%s
		}
		%s
	}
	root * %s
	file_server`, fake.URL(), fakeopenai.DefaultAPIKey, filepath.Join(dir, "threads.db"), extra, blockExtra, root)))
	return fmt.Sprintf("http://localhost:%d/", port)
}

// newStreamingFake is the fake with a pause before every streamed event, so
// an answer takes a while to arrive.
func newStreamingFake(t *testing.T, every time.Duration) *fakeopenai.Server {
	f := fakeopenai.New(fakeopenai.Options{EventInterval: every})
	t.Cleanup(f.Close)
	return f
}

// say types text into the composer and sends it.
func (tb *tab) say(t *testing.T, text string) {
	t.Helper()
	tb.do(t, "typing "+text, chromedp.SendKeys(chromedp.ID("input"), text), chromedp.Click(chromedp.ID("send")))
}

// openChat loads the page and waits for its thread list.
func (tb *tab) openChat(t *testing.T, url string) {
	t.Helper()
	tb.do(t, "loading "+url, chromedp.Navigate(url))
	tb.waitFor(t, "the thread list", threadsListed, shortWait)
}

func (p chatPage) lastAssistant() string {
	for i := len(p.Messages) - 1; i >= 0; i-- {
		if p.Messages[i].Role == "assistant" {
			return p.Messages[i].Text
		}
	}
	return ""
}

// TestAgentChatStreamsAndSurvivesReload: a message sent from the page's
// chat streams back (partial text shows before the end), the thread is in
// the history, and after a reload, or a new visit, it opens with both
// messages.
func TestAgentChatStreamsAndSurvivesReload(t *testing.T) {
	needBrowser(t)
	fake := newStreamingFake(t, 120*time.Millisecond)
	pageURL := agentSite(t, fake, "", "")
	tb := newTab(t)

	tb.openChat(t, pageURL)
	if p := tb.chat(t); len(p.Threads) != 0 || len(p.Messages) != 0 || p.ErrorCode != "" {
		t.Fatalf("a new visitor's page: %+v", p)
	}

	const said = "tell me about streaming answers through Caddy please"
	answer := "You said: " + said
	tb.say(t, said)
	tb.waitFor(t, "part of the answer", answerStreaming, shortWait)
	partial := tb.chat(t).lastAssistant()
	if partial == "" || partial == answer || !strings.HasPrefix(answer, partial) {
		t.Fatalf("while streaming the page shows %q; want a strict start of %q", partial, answer)
	}
	if p := tb.chat(t); p.StopDisabled || !p.SendDisabled {
		t.Errorf("while streaming: Stop disabled %v, Send disabled %v; want Stop on, Send off", p.StopDisabled, p.SendDisabled)
	}
	tb.waitFor(t, "the whole answer", answerDone, shortWait)
	tb.waitFor(t, "the thread in the history", threadsCount(1), shortWait)

	p := tb.chat(t)
	if len(p.Messages) != 2 || p.Messages[0].Role != "user" || p.Messages[0].Text != said || p.Messages[1].Text != answer {
		t.Fatalf("after the answer the chat shows %+v", p.Messages)
	}
	if p.Input != "" || p.StatusState != "done" || p.ErrorCode != "" {
		t.Errorf("after the answer: input %q, status %q (%s), error %q", p.Input, p.Status, p.StatusState, p.Error)
	}
	thread := p.Threads[0]
	if p.Hash != "#thread="+thread.ID || thread.Current != "true" {
		t.Errorf("the open thread is %q in the address, the history's is %q (current %s)", p.Hash, thread.ID, thread.Current)
	}
	if title := strings.TrimSuffix(thread.Title, "…"); title == "" || title == "Untitled" || !strings.HasPrefix(said, title) {
		t.Errorf("the thread's title %q is not taken from the first message", thread.Title)
	}
	if fake.ResponsesCount() != 1 {
		t.Errorf("the fake got %d Responses calls, want 1", fake.ResponsesCount())
	}

	// Offline, OpenAI's script does not load: the page says so, calmly.
	tb.waitFor(t, "the ChatKit script verdict", `document.getElementById('chatkit-status').dataset.state === 'unavailable'`, shortWait)

	// A reload reopens the thread the address names.
	tb.do(t, "reloading", chromedp.Reload())
	tb.waitFor(t, "both messages after the reload", messagesCount(2), shortWait)
	p = tb.chat(t)
	if p.Messages[0].Text != said || p.Messages[1].Text != answer || p.Messages[1].State != "done" || len(p.Threads) != 1 {
		t.Fatalf("after a reload: %+v", p)
	}

	// A new visit (no thread in the address): the history lists it, and
	// opening it shows both messages.
	tb.openChat(t, pageURL)
	tb.waitFor(t, "the history", threadsCount(1), shortWait)
	if p := tb.chat(t); len(p.Messages) != 0 || p.Title != "New chat" {
		t.Fatalf("a new visit opened a thread: %+v", p)
	}
	tb.do(t, "opening the thread", chromedp.Click(chromedp.CSS(`#threads button[data-thread-id="`+thread.ID+`"]`)))
	tb.waitFor(t, "both messages", messagesCount(2), shortWait)
	p = tb.chat(t)
	if p.Messages[0].Role != "user" || p.Messages[0].Text != said || p.Messages[1].Role != "assistant" || p.Messages[1].Text != answer {
		t.Fatalf("the opened thread shows %+v", p.Messages)
	}
	if p.Title != thread.Title || p.Hash != "#thread="+thread.ID {
		t.Errorf("the opened thread: title %q (history %q), address %q", p.Title, thread.Title, p.Hash)
	}

	// The next message goes to the same thread, with the first turn as history.
	tb.say(t, "and again")
	tb.waitFor(t, "the second answer", messagesCount(4)+` && `+answerDone+` && `+turnDone, shortWait)
	if last := fake.LastResponses(); last == nil || len(last.Input) != 3 {
		t.Errorf("the second turn sent the model %+v, want 3 input items (question, answer, question)", last)
	}
	tb.waitFor(t, "the history after the second turn", threadsCount(1), shortWait)

	screenshot(t, tb)
}

// TestAgentThreadsArePerBrowser: a second browser profile (its own cookie
// jar, so another anonymous visitor) sees none of the first one's threads,
// cannot open one by its id, and its own stay its own.
func TestAgentThreadsArePerBrowser(t *testing.T) {
	needBrowser(t)
	fake := newStreamingFake(t, 0)
	pageURL := agentSite(t, fake, "", "")
	first := newTab(t)
	second := newTab(t)

	first.openChat(t, pageURL)
	first.say(t, "a secret of the first visitor")
	first.waitFor(t, "the first visitor's answer", answerDone, shortWait)
	first.waitFor(t, "the first visitor's history", threadsCount(1), shortWait)
	firstThread := first.chat(t).Threads[0].ID

	// Its first visit names the first visitor's thread: not found.
	second.openChat(t, pageURL+"#thread="+firstThread)
	second.waitFor(t, "the refusal", `document.getElementById('chat-error').dataset.code !== ''`, shortWait)
	p := second.chat(t)
	if p.ErrorCode != "not_found" || len(p.Messages) != 0 || p.Hash != "" || p.Title != "New chat" {
		t.Fatalf("the second profile opening the first's thread: %+v", p)
	}
	// Its history is empty.
	second.openChat(t, pageURL)
	if p := second.chat(t); len(p.Threads) != 0 || p.ThreadsLoaded != "0" || p.ErrorCode != "" {
		t.Fatalf("the second profile's history: %+v", p)
	}
	if strings.Contains(second.describe(t), "a secret of the first visitor") {
		t.Fatal("the second profile's page shows the first visitor's message")
	}

	second.say(t, "the second visitor speaks")
	second.waitFor(t, "the second visitor's answer", answerDone, shortWait)
	second.waitFor(t, "the second visitor's history", threadsCount(1), shortWait)
	p = second.chat(t)
	if p.Threads[0].ID == firstThread {
		t.Fatal("the second visitor's message went to the first visitor's thread")
	}

	first.do(t, "reloading the first profile", chromedp.Reload())
	first.waitFor(t, "the first visitor's thread", messagesCount(2), shortWait)
	if p := first.chat(t); len(p.Threads) != 1 || p.Threads[0].ID != firstThread || strings.Contains(first.describe(t), "the second visitor speaks") {
		t.Fatalf("the first profile after the second spoke: %+v", p)
	}
}

// TestAgentStopSavesPartialAnswer: Stop aborts the stream mid-answer; the
// upstream call is cancelled, and after a reload the thread holds the text
// that had arrived.
func TestAgentStopSavesPartialAnswer(t *testing.T) {
	needBrowser(t)
	fake := newStreamingFake(t, 0)
	long := strings.TrimSpace(strings.Repeat("slowly streaming words ", 20))
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: long, DeltaDelay: 250 * time.Millisecond})
	pageURL := agentSite(t, fake, "", "")
	tb := newTab(t)

	tb.openChat(t, pageURL)
	tb.say(t, "say something long")
	// A few words in, well before the end (60 words at 250 ms).
	tb.waitFor(t, "a few words of the answer", `(() => { const li = document.querySelector('#messages li[data-role="assistant"]');
		return !!li && li.dataset.state === 'streaming' && li.querySelector('.text').textContent.split(' ').length >= 4; })()`, shortWait)
	tb.do(t, "clicking Stop", chromedp.Click(chromedp.ID("stop")))
	tb.waitFor(t, "the stop", `document.getElementById('chat-status').dataset.state === 'stopped'`, shortWait)
	p := tb.chat(t)
	shown := p.lastAssistant()
	if shown == "" || !strings.HasPrefix(long, shown) || len(shown) >= len(long) {
		t.Fatalf("at the stop the page shows %q; want a strict start of the answer", shown)
	}
	if p.Messages[len(p.Messages)-1].State != "stopped" || p.SendDisabled || !p.StopDisabled {
		t.Errorf("after Stop: %+v", p)
	}
	debugShot(t, tb, "agent-stopped")
	ctx, cancel := context.WithTimeout(context.Background(), shortWait)
	defer cancel()
	if err := fake.WaitClientsGone(ctx, 1); err != nil {
		t.Fatalf("the upstream call was not cancelled after Stop: %v", err)
	}

	tb.do(t, "reloading", chromedp.Reload())
	tb.waitFor(t, "the saved thread", messagesCount(2), shortWait)
	p = tb.chat(t)
	saved := p.lastAssistant()
	// What the page showed was saved; the server may have sent one more
	// word that the page no longer read.
	if !strings.HasPrefix(saved, shown) || !strings.HasPrefix(long, saved) || len(saved) >= len(long) {
		t.Fatalf("after a reload the answer is %q; at the stop the page showed %q", saved, shown)
	}
	if p.Messages[0].Text != "say something long" {
		t.Errorf("after a reload the question is %q", p.Messages[0].Text)
	}
	if fake.ResponsesCount() != 1 {
		t.Errorf("the fake got %d Responses calls, want 1", fake.ResponsesCount())
	}
}

// TestAgentRefusalOnPage: a model run refused by the rate limit arrives as
// an error event whose message the chat shows in words; the message stays
// in the composer (nothing was saved) and the model is not called.
func TestAgentRefusalOnPage(t *testing.T) {
	needBrowser(t)
	fake := newStreamingFake(t, 0)
	pageURL := agentSite(t, fake, "", "rate_limit 1 1m")
	tb := newTab(t)

	tb.openChat(t, pageURL)
	tb.say(t, "first")
	tb.waitFor(t, "the first answer", answerDone, shortWait)
	tb.say(t, "second, too soon")
	tb.waitFor(t, "the refusal", `document.getElementById('chat-error').dataset.code !== ''`, shortWait)
	p := tb.chat(t)
	if p.ErrorCode != "custom" || !regexp.MustCompile(`(?i)try again in \d+ ?s`).MatchString(p.Error) ||
		!regexp.MustCompile(`Retry-After: \d+ s`).MatchString(p.Error) {
		t.Fatalf("the refusal shows %q (code %q); want the error event's words with its retry time", p.Error, p.ErrorCode)
	}
	if p.Input != "second, too soon" || len(p.Messages) != 2 {
		t.Errorf("after the refusal: input %q, %d messages", p.Input, len(p.Messages))
	}
	tb.waitFor(t, "the composer after the refusal", `!document.getElementById('send').disabled`, shortWait)
	debugShot(t, tb, "agent-refusal")
	if n := fake.ResponsesCount(); n != 1 {
		t.Errorf("the fake got %d Responses calls, want 1 (the refused run must not reach it)", n)
	}
	tb.do(t, "reloading", chromedp.Reload())
	tb.waitFor(t, "the thread", messagesCount(2), shortWait)
}

// TestAgentMountsChatKit: when OpenAI's script defines <openai-chatkit> (a
// stand-in here: the browser is offline), the page mounts it against the
// agent's endpoint with a domain key, not the token flow.
func TestAgentMountsChatKit(t *testing.T) {
	needBrowser(t)
	fake := newStreamingFake(t, 0)
	pageURL := agentSite(t, fake, "", "")
	tb := newTab(t)

	// Defined before the page's scripts run, as if the CDN script had loaded.
	const standIn = `customElements.define('openai-chatkit', class extends HTMLElement {
		setOptions(o) { window.chatkitOptions = JSON.parse(JSON.stringify(o)); window.chatkitOptionKeys = Object.keys(o.api || {}); }
	});`
	if _, err := chromedp.Call(within(t, tb.ctx, shortWait), page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: standIn}); err != nil {
		t.Fatal(err)
	}
	tb.openChat(t, pageURL)
	tb.waitFor(t, "the mount", `document.getElementById('chatkit-status').dataset.state === 'mounted'`, shortWait)
	type options struct {
		API struct {
			URL       string `json:"url"`
			DomainKey string `json:"domainKey"`
		} `json:"api"`
	}
	got := eval[options](t, tb, `window.chatkitOptions`)
	keys := eval[[]string](t, tb, `window.chatkitOptionKeys`)
	if got.API.URL != "/api/chatkit" || got.API.DomainKey != "domain_pk_localhost_dev" || len(keys) != 2 {
		t.Errorf("<openai-chatkit> got api %+v (keys %v); want url /api/chatkit and the localhost domain key only", got.API, keys)
	}
	if n := eval[int](t, tb, `document.querySelectorAll('#chatkit openai-chatkit').length`); n != 1 {
		t.Errorf("%d <openai-chatkit> elements mounted, want 1", n)
	}
}

package e2e

import (
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// sourceShown: the answer lists the page it cites as a link.
const sourceShown = `(() => { const a = document.querySelector('#messages li[data-role="assistant"] .sources a');
	return !!a && a.href === 'https://caddyserver.com/docs/' && a.textContent.includes('Caddy documentation'); })()`

// TestAgentChatShowsSearchAndSources: with web_search on, the page says
// the search is running before the answer starts, and the answer lists the
// page it cites, again after a reload (the citation was saved).
func TestAgentChatShowsSearchAndSources(t *testing.T) {
	needBrowser(t)
	fake := newStreamingFake(t, 300*time.Millisecond)
	fake.ScriptResponse(fakeopenai.ResponseScript{
		Hosted: []fakeopenai.HostedCall{{Type: fakeopenai.HostedWebSearch}},
		Annotations: []fakeopenai.Annotation{{Type: "url_citation", URL: "https://caddyserver.com/docs/",
			Title: "Caddy documentation", StartIndex: 0, EndIndex: 8}},
	})
	pageURL := agentSite(t, fake, "web_search caddyserver.com", "")
	tb := newTab(t)
	tb.openChat(t, pageURL)

	tb.say(t, "where are the docs")
	tb.waitFor(t, "the search in progress", `document.getElementById('chat-status').textContent === 'Searching caddyserver.com…'`, shortWait)
	tb.waitFor(t, "the whole answer", answerDone+` && `+turnDone, shortWait)
	tb.waitFor(t, "the cited page", sourceShown, shortWait)

	tb.do(t, "reloading", chromedp.Reload())
	tb.waitFor(t, "both messages after the reload", messagesCount(2), shortWait)
	tb.waitFor(t, "the cited page after the reload", sourceShown, shortWait)
	screenshot(t, tb)
}

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// crossResult is what testdata/cross-origin.html could see of its calls.
type crossResult struct {
	Start, Refresh struct {
		Status    int            `json:"status"`
		Body      map[string]any `json:"body"`
		RequestID string         `json:"requestId"`
		RateLimit string         `json:"rateLimit"`
		Rejected  string         `json:"rejected"`
	}
}

func (tb *tab) crossResult(t *testing.T, pageURL string) crossResult {
	t.Helper()
	tb.do(t, "loading "+pageURL, chromedp.Navigate(pageURL))
	tb.waitFor(t, "the cross-origin calls", `document.getElementById('result').dataset.done === '1'`, shortWait)
	raw := eval[string](t, tb, `document.getElementById('result').textContent`)
	var r crossResult
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		t.Fatalf("result %q: %v", raw, err)
	}
	return r
}

// TestCrossOriginPage: a page on a second origin listed in allow_origins
// starts and refreshes with credentials, the refresh through a real
// preflight; a page on an origin not listed is refused by the browser
// itself, and OpenAI is never called for it.
func TestCrossOriginPage(t *testing.T) {
	needBrowser(t)
	fake := newFake(t)
	dir := t.TempDir()
	apiPort, allowedPort, deniedPort := freePort(t), freePort(t), freePort(t)
	for allowedPort == apiPort {
		allowedPort = freePort(t)
	}
	for deniedPort == apiPort || deniedPort == allowedPort {
		deniedPort = freePort(t)
	}
	api := fmt.Sprintf("http://localhost:%d", apiPort)
	allowed := fmt.Sprintf("http://localhost:%d", allowedPort)
	denied := fmt.Sprintf("http://localhost:%d", deniedPort)
	pages := "root * " + testdataRoot(t) + "\n\tfile_server"
	startCaddy(t, dir,
		siteBlock(dir, apiPort, chatkitBlock(fake, "wf_e2e_cors", "allow_origins "+allowed)+"\n\trespond 404"),
		siteBlock(dir, allowedPort, pages),
		siteBlock(dir, deniedPort, pages),
	)
	apiLog := accessLogPath(dir, apiPort)
	tb := newTab(t)

	t.Run("allowed origin", func(t *testing.T) {
		r := tb.crossResult(t, allowed+"/cross-origin.html?api="+api)
		if r.Start.Status != 200 || r.Refresh.Status != 200 {
			t.Fatalf("from %s: start %+v, refresh %+v; want both 200", allowed, r.Start, r.Refresh)
		}
		// The page can read the headers the module exposes.
		if r.Start.RequestID == "" || !strings.HasPrefix(r.Start.RateLimit, `"chatkit";r=`) {
			t.Errorf("cross-origin page read X-Request-Id %q, RateLimit %q: want both (Access-Control-Expose-Headers)", r.Start.RequestID, r.Start.RateLimit)
		}
		if n := fake.CreateCount(); n != 2 {
			t.Fatalf("the fake got %d create calls, want 2", n)
		}
		ss := fake.Sessions()
		if ss[0].User != ss[1].User {
			t.Fatalf("start was for %q, refresh for %q: the cookie did not travel with credentials", ss[0].User, ss[1].User)
		}
		if r.Refresh.Body["client_secret"] != ss[1].ClientSecret {
			t.Errorf("the page got %v, the fake minted %q", r.Refresh.Body["client_secret"], ss[1].ClientSecret)
		}
		if c := findCookie(tb.cookies(t, api+"/"), "chatkit_uid"); c == nil || !c.HTTPOnly {
			t.Errorf("chatkit_uid for %s after a cross-origin start: %+v", api, c)
		}

		// Caddy's side: refresh was preceded by a preflight that the module
		// answered 204; start was a simple request, with none.
		refreshes := waitAccess(t, apiLog, "POST", "/api/chatkit/refresh", 1)
		if pre := matching(readAccessLog(t, apiLog), "OPTIONS", "/api/chatkit/start"); len(pre) != 0 {
			t.Errorf("start needed a preflight: %v", pre)
		}
		pre := waitAccess(t, apiLog, "OPTIONS", "/api/chatkit/refresh", 1)
		p := pre[0]
		if p.Status != 204 || p.header("Origin") != allowed || p.header("Access-Control-Request-Method") != "POST" ||
			!strings.EqualFold(p.header("Access-Control-Request-Headers"), "content-type") {
			t.Errorf("preflight as Caddy saw it: %v, request headers %v", p, p.Request.Headers)
		}
		if got := p.respHeader("Access-Control-Allow-Origin"); got != allowed {
			t.Errorf("preflight Access-Control-Allow-Origin %q, want %q", got, allowed)
		}
		if got := p.respHeader("Access-Control-Allow-Credentials"); got != "true" {
			t.Errorf("preflight Access-Control-Allow-Credentials %q", got)
		}
		for _, e := range refreshes {
			if e.Status != 200 || e.header("Origin") != allowed || e.header("Content-Type") != "application/json" {
				t.Errorf("refresh as Caddy saw it: %v, Content-Type %q", e, e.header("Content-Type"))
			}
		}
		// The browser's side: Chromium reports the preflight it sent.
		if pf := preflights(tb.net, "/api/chatkit/refresh", allowed); pf != 1 {
			t.Errorf("Chromium reported %d preflights for the cross-origin refresh, want 1", pf)
		}
		if pf := preflights(tb.net, "/api/chatkit/start", allowed); pf != 0 {
			t.Errorf("Chromium sent %d preflights for start, want none (a simple request)", pf)
		}
	})

	t.Run("origin not allowed", func(t *testing.T) {
		before := fake.CreateCount()
		r := tb.crossResult(t, denied+"/cross-origin.html?api="+api)
		if r.Start.Rejected == "" || r.Refresh.Rejected == "" {
			t.Fatalf("from %s: start %+v, refresh %+v; want both refused by the browser", denied, r.Start, r.Refresh)
		}
		if !strings.Contains(r.Start.Rejected, "TypeError") || !strings.Contains(r.Refresh.Rejected, "TypeError") {
			t.Errorf("rejections %q, %q: want fetch's TypeError", r.Start.Rejected, r.Refresh.Rejected)
		}
		if n := fake.CreateCount(); n != before {
			t.Fatalf("the fake got %d create calls for a refused origin", n-before)
		}
		// The simple start request reached Caddy and was answered 403
		// without CORS headers; the refresh never got past its preflight.
		var starts, preflightsSeen, refreshes []accessEntry
		waitUntil(t, "Caddy's log of the refused calls", func() bool {
			starts, preflightsSeen, refreshes = nil, nil, nil
			for _, e := range readAccessLog(t, apiLog) {
				if e.header("Origin") != denied {
					continue
				}
				switch {
				case e.Request.Method == "POST" && e.Request.URI == "/api/chatkit/start":
					starts = append(starts, e)
				case e.Request.Method == "OPTIONS" && e.Request.URI == "/api/chatkit/refresh":
					preflightsSeen = append(preflightsSeen, e)
				case e.Request.Method == "POST" && e.Request.URI == "/api/chatkit/refresh":
					refreshes = append(refreshes, e)
				}
			}
			return len(starts) > 0 && len(preflightsSeen) > 0
		})
		if len(starts) != 1 || starts[0].Status != 403 || starts[0].respHeader("Access-Control-Allow-Origin") != "" {
			t.Errorf("refused start as Caddy saw it: %v", starts)
		}
		if len(preflightsSeen) != 1 || preflightsSeen[0].Status != 403 {
			t.Errorf("refused preflight as Caddy saw it: %v", preflightsSeen)
		}
		if len(refreshes) != 0 {
			t.Errorf("the browser sent the refresh although its preflight was refused: %v", refreshes)
		}
	})
}

// preflights counts the CORS preflights Chromium reported sending for a
// URL, before the request they clear. (Chromium 156 reports them as
// OPTIONS requests of type Other, initiated by "preflight".)
func preflights(n *netLog, suffix, origin string) int {
	count := 0
	for _, r := range n.sent("OPTIONS", suffix) {
		method, _ := header(r.Request.Headers, "Access-Control-Request-Method")
		o, _ := header(r.Request.Headers, "Origin")
		if method == "POST" && o == origin {
			count++
		}
	}
	return count
}

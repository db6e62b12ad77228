package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// demoPage is what the demo page shows, read in one evaluation.
type demoPage struct {
	Status       string   `json:"status"`
	State        string   `json:"state"`
	Secret       string   `json:"secret"`
	Expires      string   `json:"expires"`
	ExpiresState string   `json:"expiresState"`
	RequestID    string   `json:"requestId"`
	RateLimit    string   `json:"ratelimit"`
	Error        string   `json:"error"`
	ErrorCode    string   `json:"errorCode"`
	ChatKit      string   `json:"chatkit"`
	ChatKitState string   `json:"chatkitState"`
	Log          []string `json:"log"`
	Body         string   `json:"body"`
	Cookie       string   `json:"cookie"`
}

const readDemoPage = `(() => {
	const $ = (id) => document.getElementById(id);
	return {
		status: $('status').textContent, state: $('status').dataset.state,
		secret: $('secret').textContent,
		expires: $('expires').textContent, expiresState: $('expires').dataset.state || '',
		requestId: $('request-id').textContent,
		ratelimit: $('ratelimit').innerText,
		error: $('error').innerText, errorCode: $('error').dataset.error,
		chatkit: $('chatkit-status').textContent, chatkitState: $('chatkit-status').dataset.state || '',
		log: [...$('log').children].map((li) => li.textContent),
		body: document.body.innerText,
		cookie: document.cookie,
	};
})()`

func (tb *tab) demo(t *testing.T) demoPage {
	t.Helper()
	return eval[demoPage](t, tb, readDemoPage)
}

// mask is how the page shows a secret: its first 6 characters.
func mask(secret string) string { return secret[:6] + "…" }

// demoSite serves the demo page with the chatkit handler in front of it,
// as cmd/demo does with CHATKIT_WORKFLOW_ID set (minting and the agent in
// one block), on a free port; it returns the page's URL.
func demoSite(t *testing.T, fake *fakeopenai.Server, workflow, extra string) (pageURL, accessLog string) {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	root := demoPageRoot(t)
	agent := "agent {\n\t\t\tmodel gpt-5-mini\n\t\t\tstore sqlite " + filepath.Join(dir, "threads.db") + "\n\t\t}\n\t\t"
	startCaddy(t, dir, siteBlock(dir, port, chatkitBlock(fake, workflow, agent+extra)+`
	root * `+root+`
	file_server`))
	return fmt.Sprintf("http://localhost:%d/", port), accessLogPath(dir, port)
}

const demoStarted = `document.getElementById('status').dataset.state === 'ok'`

// TestDemoStartThenRefresh is a newcomer's first minute: the page loads,
// starts a session exactly as the WordPress client does (POST, no body, no
// Content-Type), shows the secret masked, holds the signed HttpOnly cookie,
// and on Refresh sends {"currentClientSecret"} for the same user.
func TestDemoStartThenRefresh(t *testing.T) {
	needBrowser(t)
	fake := newFake(t)
	pageURL, accessLog := demoSite(t, fake, "wf_e2e_start", "")
	tb := newTab(t)

	tb.do(t, "loading the demo page", chromedp.Navigate(pageURL))
	tb.waitFor(t, "the automatic start", demoStarted, shortWait)

	// What reached the fake: one session, for an anonymous visitor.
	if n := fake.CreateCount(); n != 1 {
		t.Fatalf("the fake got %d create calls after the page load, want 1", n)
	}
	first := fake.Sessions()[0]
	if !strings.HasPrefix(first.User, "anon:") || len(first.User) < len("anon:")+16 {
		t.Fatalf("first session's user %q is not an anonymous id", first.User)
	}

	// What the browser sent: no body, no Content-Type (a CORS simple
	// request), seen from both ends.
	starts := tb.net.sent("POST", "/api/chatkit/start")
	if len(starts) != 1 {
		t.Fatalf("the browser sent %d start requests, want 1", len(starts))
	}
	if ct, ok := header(starts[0].Request.Headers, "Content-Type"); ok {
		t.Errorf("the page's start request had Content-Type %q; the WordPress client sends none", ct)
	}
	if starts[0].Request.HasPostData {
		t.Errorf("the page's start request had a body: %q", postData(starts[0]))
	}
	logged := waitAccess(t, accessLog, "POST", "/api/chatkit/start", 1)[0]
	if !logged.hasHeader("User-Agent") || logged.header("Origin") != strings.TrimSuffix(pageURL, "/") {
		t.Fatalf("Caddy's access log lacks the request headers (User-Agent, Origin): %v", logged.Request.Headers)
	}
	if logged.hasHeader("Content-Type") {
		t.Errorf("Caddy saw the start request with Content-Type %q", logged.header("Content-Type"))
	}
	if cl := logged.header("Content-Length"); cl != "" && cl != "0" {
		t.Errorf("Caddy saw the start request with Content-Length %s", cl)
	}
	if logged.Status != 200 {
		t.Errorf("start answered %d", logged.Status)
	}

	// The page shows the secret masked, never whole.
	p := tb.demo(t)
	if p.Secret != mask(first.ClientSecret) {
		t.Errorf("#secret = %q, want %q", p.Secret, mask(first.ClientSecret))
	}
	if strings.Contains(p.Body, first.ClientSecret) {
		t.Error("the page shows the whole client secret")
	}
	if !strings.HasPrefix(p.Expires, "in ") || p.ExpiresState != "ok" {
		t.Errorf("#expires = %q (state %q), want a countdown", p.Expires, p.ExpiresState)
	}
	if p.RequestID == "" || p.RequestID == "—" || p.RequestID != logged.respHeader("X-Request-Id") {
		t.Errorf("#request-id = %q, Caddy answered X-Request-Id %q", p.RequestID, logged.respHeader("X-Request-Id"))
	}
	if !strings.Contains(p.RateLimit, `RateLimit: "chatkit";r=`) || !strings.Contains(p.RateLimit, "RateLimit-Policy:") {
		t.Errorf("#ratelimit = %q, want the RateLimit headers", p.RateLimit)
	}
	if p.ErrorCode != "" {
		t.Errorf("#error = %q after a successful start", p.Error)
	}

	// The signed cookie: set, HttpOnly (the page's script cannot read it).
	c := findCookie(tb.cookies(t, pageURL), "chatkit_uid")
	if c == nil {
		t.Fatal("no chatkit_uid cookie after start")
	}
	if !c.HTTPOnly || c.SameSite != network.CookieSameSiteLax || c.Path != "/" || c.Session {
		t.Errorf("chatkit_uid: HttpOnly %v, SameSite %q, Path %q, session-only %v; want HttpOnly, Lax, /, persistent",
			c.HTTPOnly, c.SameSite, c.Path, c.Session)
	}
	if strings.Contains(p.Cookie, "chatkit_uid") {
		t.Error("document.cookie exposes chatkit_uid to scripts")
	}

	// Refresh from the page: JSON with the current secret, same user.
	tb.do(t, "clicking Refresh", chromedp.Click(chromedp.ID("refresh")))
	tb.waitFor(t, "the refresh", `document.getElementById('status').textContent === 'refreshed'`, shortWait)
	if n := fake.CreateCount(); n != 2 {
		t.Fatalf("the fake got %d create calls after refresh, want 2", n)
	}
	second := fake.Sessions()[1]
	if second.User != first.User {
		t.Fatalf("refresh created a session for %q, start for %q: want the same user", second.User, first.User)
	}
	refreshes := tb.net.sent("POST", "/api/chatkit/refresh")
	if len(refreshes) != 1 {
		t.Fatalf("the browser sent %d refresh requests, want 1", len(refreshes))
	}
	if ct, _ := header(refreshes[0].Request.Headers, "Content-Type"); ct != "application/json" {
		t.Errorf("refresh Content-Type %q, want application/json", ct)
	}
	var body map[string]any
	if err := json.Unmarshal([]byte(postData(refreshes[0])), &body); err != nil || len(body) != 1 || body["currentClientSecret"] != first.ClientSecret {
		t.Errorf("refresh body %q (%v), want exactly {\"currentClientSecret\": <the first secret>}", postData(refreshes[0]), err)
	}
	loggedRefresh := waitAccess(t, accessLog, "POST", "/api/chatkit/refresh", 1)[0]
	if loggedRefresh.Status != 200 {
		t.Errorf("refresh answered %d", loggedRefresh.Status)
	}
	p = tb.demo(t)
	if p.Secret != mask(second.ClientSecret) {
		t.Errorf("#secret after refresh = %q, want %q", p.Secret, mask(second.ClientSecret))
	}
	if p.RequestID != loggedRefresh.respHeader("X-Request-Id") {
		t.Errorf("#request-id after refresh = %q, want %q", p.RequestID, loggedRefresh.respHeader("X-Request-Id"))
	}
	if len(p.Log) != 2 || !strings.Contains(p.Log[0], " refresh 200 ") || !strings.Contains(p.Log[1], " start 200 ") ||
		!strings.HasSuffix(p.Log[0], loggedRefresh.respHeader("X-Request-Id")) {
		t.Errorf("#log = %q, want the refresh above the start, both 200", p.Log)
	}

	// Offline, the ChatKit script cannot load: the page says so, calmly.
	tb.waitFor(t, "the ChatKit script verdict", `document.getElementById('chatkit-status').dataset.state === 'unavailable'`, shortWait)
	p = tb.demo(t)
	if !strings.HasPrefix(p.ChatKit, "ChatKit script not reachable") || p.ErrorCode != "" || p.State != "ok" {
		t.Errorf("after the CDN failed: #chatkit-status %q, #error %q, #status %q", p.ChatKit, p.Error, p.Status)
	}
}

// screenshot takes the README's picture of the demo page (1200x800) and
// checks it is one. It goes to docs/demo.png when that file is missing or
// CHATKIT_UPDATE_SCREENSHOT is set, else only to the test's temp dir, so
// a test run leaves the work tree alone.
func screenshot(t *testing.T, tb *tab) {
	t.Helper()
	buf, err := chromedp.Run(within(t, tb.ctx, shortWait), chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1200 || b.Dy() != 800 {
		t.Errorf("screenshot is %dx%d, want 1200x800", b.Dx(), b.Dy())
	}
	target := filepath.Join("..", "docs", "demo.png")
	_, statErr := os.Stat(target)
	if os.Getenv("CHATKIT_UPDATE_SCREENSHOT") == "" && statErr == nil {
		target = filepath.Join(t.TempDir(), "demo.png")
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", target)
}

// debugShot saves a screenshot to $E2E_SHOTS/<name>.png when that is set,
// for looking at a state of the page a test reached.
func debugShot(t *testing.T, tb *tab, name string) {
	t.Helper()
	dir := os.Getenv("E2E_SHOTS")
	if dir == "" {
		return
	}
	buf, err := chromedp.Run(within(t, tb.ctx, shortWait), chromedp.CaptureScreenshot())
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name+".png"), buf, 0o644)
	}
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
	}
}

// TestDemoVisitorIdentity: the cookie is the visitor's identity. A reload
// keeps it; a cookie edited in the browser (another visitor's id under the
// old signature) is not believed; clearing cookies starts afresh.
func TestDemoVisitorIdentity(t *testing.T) {
	needBrowser(t)
	fake := newFake(t)
	pageURL, _ := demoSite(t, fake, "wf_e2e_reload", "")
	tb := newTab(t)

	tb.do(t, "loading the demo page", chromedp.Navigate(pageURL))
	tb.waitFor(t, "the automatic start", demoStarted, shortWait)
	user := fake.Sessions()[0].User
	cookie := findCookie(tb.cookies(t, pageURL), "chatkit_uid")
	if cookie == nil {
		t.Fatal("no chatkit_uid cookie after start")
	}

	reload := func(what string, creates int) string {
		t.Helper()
		tb.do(t, "reloading "+what, chromedp.Reload())
		tb.waitFor(t, "the start after reloading "+what, demoStarted, shortWait)
		waitUntil(t, fmt.Sprintf("create call %d", creates), func() bool { return fake.CreateCount() == creates })
		return fake.Sessions()[creates-1].User
	}

	if got := reload("", 2); got != user {
		t.Fatalf("after reload the user is %q, before %q", got, user)
	}

	// Forge: the same cookie with one byte of the visitor id changed, the
	// expiry and signature kept. (Layout: version, 16 id bytes, expiry,
	// HMAC; base64url.)
	raw, err := base64.RawURLEncoding.DecodeString(cookie.Value)
	if err != nil || len(raw) < 17 {
		t.Fatalf("chatkit_uid %q is not the documented base64url layout: %v", cookie.Value, err)
	}
	raw[1] ^= 0xff
	forgedUser := "anon:" + base64.RawURLEncoding.EncodeToString(raw[1:17])
	if _, err := chromedp.Call(within(t, tb.ctx, shortWait), network.SetCookie, network.SetCookieParams{
		Name: "chatkit_uid", Value: base64.RawURLEncoding.EncodeToString(raw), URL: pageURL,
		Path: "/", HTTPOnly: new(true), SameSite: network.CookieSameSiteLax,
	}); err != nil {
		t.Fatal(err)
	}
	forged := reload("with a forged cookie", 3)
	if forged == user || forged == forgedUser || !strings.HasPrefix(forged, "anon:") {
		t.Fatalf("with a forged cookie the user is %q (original %q, forged %q): want a new id", forged, user, forgedUser)
	}
	if c := findCookie(tb.cookies(t, pageURL), "chatkit_uid"); c == nil || c.Value == cookie.Value || c.Value == base64.RawURLEncoding.EncodeToString(raw) {
		t.Fatal("the forged cookie was not replaced")
	}
	if got := reload("after the forgery", 4); got != forged {
		t.Fatalf("the replacement cookie did not hold: %q, then %q", forged, got)
	}

	if _, err := chromedp.Call(within(t, tb.ctx, shortWait), network.ClearBrowserCookies, cdp.Empty{}); err != nil {
		t.Fatal(err)
	}
	if c := findCookie(tb.cookies(t, pageURL), "chatkit_uid"); c != nil {
		t.Fatal("chatkit_uid survived ClearBrowserCookies")
	}
	fresh := reload("with no cookies", 5)
	if fresh == user || fresh == forged || !strings.HasPrefix(fresh, "anon:") {
		t.Fatalf("after clearing cookies the user is %q, want a new anonymous id (had %q, %q)", fresh, user, forged)
	}
	if c := findCookie(tb.cookies(t, pageURL), "chatkit_uid"); c == nil {
		t.Fatal("no new chatkit_uid cookie after clearing cookies")
	}
}

// TestDemoRateLimitOnPage: a visitor hammering Start sees the 429 with its
// retry time and the RateLimit headers, and the fake is not called past
// the burst.
func TestDemoRateLimitOnPage(t *testing.T) {
	needBrowser(t)
	fake := newFake(t)
	pageURL, accessLog := demoSite(t, fake, "wf_e2e_ratelimit", "rate_limit 3 1m")
	tb := newTab(t)

	tb.do(t, "loading the demo page", chromedp.Navigate(pageURL))
	tb.waitFor(t, "the automatic start", demoStarted, shortWait)

	const clicks = 6
	for i := range clicks {
		tb.do(t, fmt.Sprintf("click %d on Start", i+1), chromedp.Click(chromedp.ID("start")))
	}
	// Every call (the automatic one and the clicks) is in the page's log.
	tb.waitFor(t, "every answer", fmt.Sprintf(`document.getElementById('log').children.length === %d`, 1+clicks), shortWait)
	tb.waitFor(t, "the rate-limit error", `document.getElementById('error').dataset.error === 'rate_limit_exceeded'`, shortWait)

	if n := fake.CreateCount(); n != 3 {
		t.Errorf("the fake got %d create calls, want 3 (the burst)", n)
	}
	limited := 0
	for _, e := range waitAccess(t, accessLog, "POST", "/api/chatkit/start", 1+clicks) {
		if e.Status == 429 {
			limited++
		}
	}
	if limited != 1+clicks-3 {
		t.Errorf("Caddy answered %d requests 429, want %d", limited, 1+clicks-3)
	}

	debugShot(t, tb, "ratelimit")
	p := tb.demo(t)
	// The error box: code, message with the retry time, request id.
	retry := regexp.MustCompile(`retry in (\d+)s`).FindStringSubmatch(p.Error)
	if !strings.Contains(p.Error, "HTTP 429") || retry == nil || !strings.Contains(p.Error, "request_id: ") {
		t.Errorf("#error = %q, want HTTP 429, rate_limit_exceeded, the retry time and the request id", p.Error)
	}
	if retry != nil {
		if s, _ := strconv.Atoi(retry[1]); s < 1 || s > 60 {
			t.Errorf("retry in %ss, want 1..60 for rate_limit 3 1m", retry[1])
		}
	}
	// ... and a live countdown to the time Retry-After gives.
	if !regexp.MustCompile(`retry after: [01]:\d\d \(at `).MatchString(p.Error) {
		t.Errorf("#error = %q, want a retry-after countdown", p.Error)
	}
	if !regexp.MustCompile(`Retry-After: \d+`).MatchString(p.RateLimit) || !strings.Contains(p.RateLimit, `RateLimit: "chatkit";r=0;t=`) {
		t.Errorf("#ratelimit = %q, want Retry-After and RateLimit with r=0", p.RateLimit)
	}
	if !strings.Contains(p.Status, "429") || p.State != "error" {
		t.Errorf("#status = %q (%s), want the 429", p.Status, p.State)
	}
	// The secret from the successful calls is kept, so Refresh still works.
	if p.Secret == "none" {
		t.Error("a 429 on Start discarded the current secret")
	}
}

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddyfileFmt "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	_ "github.com/caddy-chatkit/caddy-chatkit"
	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// requireBrowserEnv makes a missing Chromium a failure instead of a skip.
const requireBrowserEnv = "CHATKIT_REQUIRE_BROWSER"

// Bounds for waiting on the page. Generous for a loaded 2-core machine
// under -race; a passing run waits a few milliseconds.
const (
	shortWait = 10 * time.Second
	pollEvery = 20 * time.Millisecond
)

// chromiumPath finds Debian's chromium (or another Chromium-like browser
// on PATH); "" when there is none.
func chromiumPath() string {
	if fi, err := os.Stat("/usr/bin/chromium"); err == nil && !fi.IsDir() {
		return "/usr/bin/chromium"
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// needBrowser skips the test when there is no Chromium, or fails it when
// CHATKIT_REQUIRE_BROWSER is set. Tests call it first, before starting
// anything.
func needBrowser(t *testing.T) string {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		if os.Getenv(requireBrowserEnv) != "" {
			t.Fatalf("%s is set but no Chromium was found (apt-get install chromium)", requireBrowserEnv)
		}
		t.Skipf("no Chromium (apt-get install chromium); set %s to make this a failure", requireBrowserEnv)
	}
	return path
}

// netLog records the browser's view of the network: every request the
// tab was about to send (preflights included) and every one that failed.
type netLog struct {
	mu       sync.Mutex
	requests []*network.EventRequestWillBeSent
	failed   []*network.EventLoadingFailed
}

func (n *netLog) listen(ev any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		n.requests = append(n.requests, ev)
	case *network.EventLoadingFailed:
		n.failed = append(n.failed, ev)
	}
}

// sent returns the requests with this method to a URL ending in suffix.
func (n *netLog) sent(method, suffix string) []*network.EventRequestWillBeSent {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*network.EventRequestWillBeSent
	for _, r := range n.requests {
		if r.Request != nil && r.Request.Method == method && strings.HasSuffix(r.Request.URL, suffix) {
			out = append(out, r)
		}
	}
	return out
}

// header reads one request header case-insensitively from CDP's map.
func header(h network.Headers, name string) (string, bool) {
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return fmt.Sprint(v), true
		}
	}
	return "", false
}

// postData is the body the browser sent with a recorded request.
func postData(r *network.EventRequestWillBeSent) string {
	var b bytes.Buffer
	for _, e := range r.Request.PostDataEntries {
		b.Write(e.Bytes)
	}
	return b.String()
}

// tab is one browser tab of a browser of its own.
type tab struct {
	ctx context.Context
	net *netLog
}

// newTab starts headless Chromium for this test and opens a tab. It never
// lets the browser reach anything but loopback: every other host name
// fails to resolve, as on an offline machine (the ChatKit CDN script
// then fails at once, the way the page must cope with offline).
func newTab(t *testing.T) *tab {
	t.Helper()
	path := needBrowser(t)
	profile, err := os.MkdirTemp("", "chatkit-e2e-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	var browserOut syncBuffer
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // as root (CI, containers) Chromium needs it
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints"),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("font-render-hinting", "none"),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1200, 800),
		chromedp.CombinedOutput(&browserOut),
	)
	nl := &netLog{}
	ctx, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithListener(nl.listen))
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		if t.Failed() && browserOut.Len() > 0 {
			t.Logf("chromium output:\n%s", lastLines(withoutDBus(browserOut.String()), 30))
		}
		os.RemoveAll(profile)
	})
	// The first action starts the browser; it must not carry a timeout, or
	// the browser dies with it. Bound the start with a watchdog instead.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("starting %s: %v\n%s", path, err, lastLines(browserOut.String(), 30))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start within 30s\n%s", path, lastLines(browserOut.String(), 30))
	}
	if err := chromedp.Do(within(t, ctx, shortWait), chromedp.EmulateViewport(1200, 800)); err != nil {
		t.Fatal(err)
	}
	return &tab{ctx: ctx, net: nl}
}

// within derives a context for one bounded step; the browser outlives it.
func within(t *testing.T, ctx context.Context, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(ctx, d)
	t.Cleanup(cancel)
	return c
}

// do runs actions with a bound, failing the test on error.
func (tb *tab) do(t *testing.T, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(within(t, tb.ctx, shortWait), actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, tb *tab, expr string) T {
	t.Helper()
	v, err := chromedp.Run(within(t, tb.ctx, shortWait), chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// waitFor polls a JavaScript predicate in the page until it is truthy,
// at most d; what says what was awaited, for the failure message.
func (tb *tab) waitFor(t *testing.T, what, predicate string, d time.Duration) {
	t.Helper()
	_, err := chromedp.Run(within(t, tb.ctx, d+5*time.Second),
		chromedp.Poll[chromedp.Void](predicate, chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(pollEvery)))
	if err != nil {
		t.Fatalf("waiting %v for %s (%s): %v\npage: %s", d, what, predicate, err, tb.describe(t))
	}
}

// describe is the page's visible text, for failure messages.
func (tb *tab) describe(t *testing.T) string {
	v, err := chromedp.Run(within(t, tb.ctx, 3*time.Second), chromedp.Evaluate[string](`document.body ? document.body.innerText : ''`))
	if err != nil {
		return "(cannot read the page: " + err.Error() + ")"
	}
	return v
}

// cookies returns the browser's cookies for url, HttpOnly ones included.
func (tb *tab) cookies(t *testing.T, url string) []*network.Cookie {
	t.Helper()
	res, err := chromedp.Call(within(t, tb.ctx, shortWait), network.GetCookies, network.GetCookiesParams{URLs: []string{url}})
	if err != nil {
		t.Fatalf("GetCookies: %v", err)
	}
	return res.Cookies
}

func findCookie(cs []*network.Cookie, name string) *network.Cookie {
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// freePort picks a free loopback port. The root package's fixed ports
// (2999, 9080, 9081, 9443) are below the ephemeral range it comes from.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startCaddy runs Caddy in this process (one per test: Caddy is a
// process-wide singleton) with the given site blocks, each made with
// siteBlock, its storage and logs in dir, and stops it when the test ends.
// On failure the test log shows the Caddyfile and Caddy's own log.
func startCaddy(t *testing.T, dir string, blocks ...string) {
	t.Helper()
	caddyLog := filepath.Join(dir, "caddy.log")
	caddyfile := fmt.Sprintf(`{
	admin off
	persist_config off
	grace_period 1s
	storage file_system %s
	log default {
		output file %s
		format json
	}
}

%s
`, filepath.Join(dir, "storage"), caddyLog, strings.Join(blocks, "\n"))
	caddyfile = string(caddyfileFmt.Format([]byte(caddyfile)))
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "e2e"})
	if err != nil {
		t.Fatalf("adapting:\n%s\n%v", caddyfile, err)
	}
	for _, w := range warnings {
		t.Logf("caddyfile warning: %s", w.String())
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("starting Caddy: %v\n%s", err, caddyfile)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping Caddy: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(caddyLog)
			t.Logf("Caddyfile:\n%s\nCaddy log (last lines):\n%s", caddyfile, lastLines(string(b), 40))
		}
	})
}

// siteBlock is one http:// site on a loopback port with a JSON access log
// at accessLogPath(dir, port).
func siteBlock(dir string, port int, body string) string {
	return fmt.Sprintf(`http://:%d {
	bind 127.0.0.1
	log {
		output file %s
		format json
	}
	%s
}
`, port, accessLogPath(dir, port), body)
}

func accessLogPath(dir string, port int) string {
	return filepath.Join(dir, fmt.Sprintf("access-%d.log", port))
}

// chatkitBlock is the chatkit directive against the fake, with extra
// subdirectives. Each test uses its own workflow id, so each gets its own
// default rate-limit zone.
func chatkitBlock(fake *fakeopenai.Server, workflow, extra string) string {
	return fmt.Sprintf(`chatkit {
		api_base %s
		api_key %s
		workflow %s
		%s
	}`, fake.URL(), fakeopenai.DefaultAPIKey, workflow, extra)
}

// demoPageRoot is a copy of the demo's page, as cmd/demo serves it: the
// same files plus demo-config.json saying the backend is the fake and the
// block mints (CHATKIT_WORKFLOW_ID is set).
func demoPageRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := os.CopyFS(root, os.DirFS(filepath.Join("..", "cmd", "demo", "page"))); err != nil {
		t.Fatalf("copying the demo page: %v", err)
	}
	if err := os.WriteFile(filepath.Join(root, "demo-config.json"), []byte(`{"backend":"fake","model":"gpt-5-mini","minting":true}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// testdataRoot is e2e/testdata as an absolute path, for file_server.
func testdataRoot(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Stat(os.DirFS(p), "."); err != nil {
		t.Fatal(err)
	}
	return p
}

// accessEntry is the part of a Caddy JSON access-log line the tests read.
type accessEntry struct {
	Request struct {
		Method  string              `json:"method"`
		URI     string              `json:"uri"`
		Headers map[string][]string `json:"headers"`
	} `json:"request"`
	Status      int                 `json:"status"`
	RespHeaders map[string][]string `json:"resp_headers"`
}

func (e accessEntry) header(name string) string {
	for k, v := range e.Request.Headers {
		if strings.EqualFold(k, name) {
			return strings.Join(v, ", ")
		}
	}
	return ""
}

func (e accessEntry) hasHeader(name string) bool {
	for k := range e.Request.Headers {
		if strings.EqualFold(k, name) {
			return true
		}
	}
	return false
}

func (e accessEntry) respHeader(name string) string {
	for k, v := range e.RespHeaders {
		if strings.EqualFold(k, name) {
			return strings.Join(v, ", ")
		}
	}
	return ""
}

func (e accessEntry) String() string {
	return fmt.Sprintf("%s %s -> %d (Origin %q)", e.Request.Method, e.Request.URI, e.Status, e.header("Origin"))
}

// readAccessLog reads every entry Caddy logged so far for one site.
func readAccessLog(t *testing.T, path string) []accessEntry {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []accessEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e accessEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			continue // a line being written
		}
		out = append(out, e)
	}
	return out
}

// matching filters entries by method and path.
func matching(entries []accessEntry, method, path string) []accessEntry {
	var out []accessEntry
	for _, e := range entries {
		if e.Request.Method == method && strings.SplitN(e.Request.URI, "?", 2)[0] == path {
			out = append(out, e)
		}
	}
	return out
}

// waitAccess waits until at least n entries for method and path are in
// the access log (Caddy writes a line once the answer is complete).
func waitAccess(t *testing.T, path, method, uri string, n int) []accessEntry {
	t.Helper()
	deadline := time.Now().Add(shortWait)
	for {
		got := matching(readAccessLog(t, path), method, uri)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("Caddy logged %d %s %s requests within %v, want %d; log: %v", len(got), method, uri, shortWait, n, readAccessLog(t, path))
		}
		time.Sleep(pollEvery)
	}
}

// waitUntil polls a Go condition (e.g. what the fake received).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(shortWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", shortWait, what)
		}
		time.Sleep(pollEvery)
	}
}

func newFake(t *testing.T) *fakeopenai.Server {
	f := fakeopenai.New(fakeopenai.Options{})
	t.Cleanup(f.Close)
	return f
}

// syncBuffer collects the browser's output from its goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// withoutDBus drops Chromium's complaints about the missing D-Bus (there
// is none in containers and CI), which would hide anything useful.
func withoutDBus(s string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		if !strings.Contains(line, "dbus") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

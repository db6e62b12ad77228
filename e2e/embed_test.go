package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// embed.js in the browser: a page whose only addition is
// <script src="/api/chatkit/embed.js" defer> gets <openai-chatkit>,
// configured as the Caddyfile says. OpenAI's chatkit.js cannot load here
// (the test browser is offline), so the agent's script_url points at a
// stand-in (testdata/embed/chatkit-stub.js) that defines the element and
// records every setOptions call.

const embedDomainKey = "domain_pk_e2e_0123456789"

// embedSite is one site block: the agent with embedOptions in its block,
// and testdata/embed served as the site's pages.
func embedSite(t *testing.T, fake *fakeopenai.Server, dir string, port int, embedOptions string) string {
	t.Helper()
	return siteBlock(dir, port, fmt.Sprintf(`chatkit {
		api_base %s
		api_key %s
		agent {
			model gpt-5-mini
			store sqlite %s
			%s
		}
	}
	root * %s
	file_server`, fake.URL(), fakeopenai.DefaultAPIKey, filepath.Join(dir, fmt.Sprintf("threads-%d.db", port)), embedOptions,
		filepath.Join(testdataRoot(t), "embed")))
}

// recordConsoleErrors makes every page the tab opens keep its
// console.error messages in window.consoleErrors.
func recordConsoleErrors(t *testing.T, tb *tab) {
	t.Helper()
	const recorder = `window.consoleErrors = [];
	{ const original = console.error;
	  console.error = function (...args) { window.consoleErrors.push(args.map(String).join(' ')); return original.apply(this, args); }; }`
	if _, err := chromedp.Call(within(t, tb.ctx, shortWait), page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: recorder}); err != nil {
		t.Fatal(err)
	}
}

// emulateColorScheme sets the tab's prefers-color-scheme.
func emulateColorScheme(t *testing.T, tb *tab, scheme string) {
	t.Helper()
	if _, err := chromedp.Call(within(t, tb.ctx, shortWait), emulation.SetEmulatedMedia,
		emulation.SetEmulatedMediaParams{Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}}); err != nil {
		t.Fatal(err)
	}
}

// setOptionsCalls is what the stand-in element was given, in order.
func setOptionsCalls(t *testing.T, tb *tab) []map[string]any {
	t.Helper()
	return eval[[]map[string]any](t, tb, `window.chatkitStub ? window.chatkitStub.calls : []`)
}

func consoleErrors(t *testing.T, tb *tab) []string {
	t.Helper()
	return eval[[]string](t, tb, `window.consoleErrors || []`)
}

func decodeJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return v
}

// launcherState is the chat button and its panel, read in one evaluation.
type launcherState struct {
	Tag         string `json:"tag"`
	Name        string `json:"name"`
	Expanded    string `json:"expanded"`
	Controls    string `json:"controls"`
	Visible     bool   `json:"visible"`
	PanelHidden bool   `json:"panelHidden"`
	PanelHeight int    `json:"panelHeight"`
	Elements    int    `json:"elements"`
	InPanel     int    `json:"inPanel"`
}

const readLauncher = `(() => {
	const b = document.querySelector('.caddy-chatkit-launcher');
	const panel = document.getElementById(b.getAttribute('aria-controls'));
	const r = b.getBoundingClientRect();
	return {
		tag: b.tagName, name: b.getAttribute('aria-label') || b.textContent.trim(), expanded: b.getAttribute('aria-expanded'),
		controls: b.getAttribute('aria-controls'), visible: r.width > 0 && r.height > 0 && getComputedStyle(b).visibility === 'visible',
		panelHidden: panel.hidden, panelHeight: Math.round(panel.getBoundingClientRect().height),
		elements: document.querySelectorAll('openai-chatkit').length, inPanel: panel.querySelectorAll('openai-chatkit').length,
	};
})()`

// TestEmbedLauncherOpensTheChat: with launcher on, the one script tag adds
// a real button; it opens a panel holding <openai-chatkit>, configured as
// the Caddyfile says, and closes it again.
func TestEmbedLauncherOpensTheChat(t *testing.T) {
	needBrowser(t)
	fake := newFake(t)
	dir := t.TempDir()
	port := freePort(t)
	startCaddy(t, dir, embedSite(t, fake, dir, port, fmt.Sprintf(`domain_key %s
			greeting "Welcome to the shop"
			suggestion "Opening hours" "When are you open?"
			suggestion Shipping "How long does shipping take?"
			placeholder "Ask about an order"
			theme dark
			accent "#0a7cff" 1
			launcher on
			script_url /chatkit-stub.js`, embedDomainKey)))
	origin := fmt.Sprintf("http://localhost:%d", port)
	tb := newTab(t)
	recordConsoleErrors(t, tb)

	tb.do(t, "loading the page", chromedp.Navigate(origin+"/index.html"))
	tb.waitFor(t, "the chat button", `!!document.querySelector('.caddy-chatkit-launcher')`, shortWait)
	l := eval[launcherState](t, tb, readLauncher)
	if l.Tag != "BUTTON" || l.Name != "Open chat" || l.Expanded != "false" || !l.Visible || !l.PanelHidden || l.Elements != 0 {
		t.Fatalf("before a click: %+v; want a visible closed button and no chat yet", l)
	}
	if n := eval[int](t, tb, `window.chatkitStub.loads`); n != 1 {
		t.Errorf("the ChatKit script ran %d times", n)
	}

	tb.do(t, "opening the chat", chromedp.Click(chromedp.CSS(".caddy-chatkit-launcher")))
	tb.waitFor(t, "setOptions", `window.chatkitStub.calls.length === 1`, shortWait)
	l = eval[launcherState](t, tb, readLauncher)
	if l.Name != "Close chat" || l.Expanded != "true" || l.PanelHidden || l.PanelHeight < 200 || l.InPanel != 1 || l.Elements != 1 {
		t.Fatalf("after opening: %+v; want the open panel holding one <openai-chatkit>", l)
	}
	want := decodeJSON(t, fmt.Sprintf(`{
		"api": {"url": "%s/api/chatkit", "domainKey": %q},
		"theme": {"colorScheme": "dark", "color": {"accent": {"primary": "#0a7cff", "level": 1}}},
		"startScreen": {"greeting": "Welcome to the shop", "prompts": [
			{"label": "Opening hours", "prompt": "When are you open?"},
			{"label": "Shipping", "prompt": "How long does shipping take?"}
		]},
		"composer": {"placeholder": "Ask about an order"}
	}`, origin, embedDomainKey))
	if got := setOptionsCalls(t, tb)[0]; !reflect.DeepEqual(got, want) {
		t.Fatalf("setOptions got\n%v\nwant\n%v", got, want)
	}
	if n := eval[int](t, tb, `window.chatkitStub.focused`); n != 1 {
		t.Errorf("the composer was focused %d times on opening, want 1", n)
	}
	// api.url is the agent, with the visitor's cookie.
	status, err := chromedp.Run(within(t, tb.ctx, shortWait), chromedp.Evaluate[int](`fetch(window.chatkitStub.calls[0].api.url, {
		method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{"type":"threads.list","params":{}}'}).then((r) => r.status)`,
		chromedp.EvalAwaitPromise))
	if err != nil || status != 200 {
		t.Errorf("threads.list at api.url answered %d (%v)", status, err)
	}

	tb.do(t, "closing the chat", chromedp.Click(chromedp.CSS(".caddy-chatkit-launcher")))
	l = eval[launcherState](t, tb, readLauncher)
	if l.Name != "Open chat" || l.Expanded != "false" || !l.PanelHidden || l.Elements != 1 {
		t.Fatalf("after closing: %+v", l)
	}
	tb.do(t, "opening it again", chromedp.Click(chromedp.CSS(".caddy-chatkit-launcher")))
	if l = eval[launcherState](t, tb, readLauncher); l.PanelHidden || l.Elements != 1 || len(setOptionsCalls(t, tb)) != 1 {
		t.Fatalf("reopened: %+v, %d setOptions calls; want the same element, configured once", l, len(setOptionsCalls(t, tb)))
	}
	if errs := consoleErrors(t, tb); len(errs) != 0 {
		t.Errorf("console errors: %q", errs)
	}
	debugShot(t, tb, "embed-launcher")
}

// TestEmbedFillsTheDataChatkitElement: with launcher off, the chat fills
// the page's [data-chatkit] element; theme auto takes the visitor's
// prefers-color-scheme and follows it when it changes.
func TestEmbedFillsTheDataChatkitElement(t *testing.T) {
	needBrowser(t)
	fake := newFake(t)
	dir := t.TempDir()
	port := freePort(t)
	startCaddy(t, dir, embedSite(t, fake, dir, port, fmt.Sprintf(`domain_key %s
			theme auto
			launcher off
			script_url /chatkit-stub.js`, embedDomainKey)))
	origin := fmt.Sprintf("http://localhost:%d", port)
	tb := newTab(t)
	recordConsoleErrors(t, tb)
	emulateColorScheme(t, tb, "dark")

	tb.do(t, "loading the page", chromedp.Navigate(origin+"/inline.html"))
	tb.waitFor(t, "setOptions", `!!window.chatkitStub && window.chatkitStub.calls.length === 1`, shortWait)
	placed := eval[map[string]any](t, tb, `(() => {
		const el = document.querySelector('openai-chatkit');
		return { inContainer: el.parentElement.hasAttribute('data-chatkit'), count: document.querySelectorAll('openai-chatkit').length,
			height: Math.round(el.getBoundingClientRect().height), launcher: !!document.querySelector('.caddy-chatkit-launcher') };
	})()`)
	if placed["inContainer"] != true || placed["count"] != float64(1) || placed["launcher"] != false || placed["height"].(float64) < 500 {
		t.Fatalf("the chat on the page: %v; want one element filling [data-chatkit], no button", placed)
	}
	want := decodeJSON(t, fmt.Sprintf(`{"api": {"url": "%s/api/chatkit", "domainKey": %q}, "theme": {"colorScheme": "dark"}}`, origin, embedDomainKey))
	if got := setOptionsCalls(t, tb)[0]; !reflect.DeepEqual(got, want) {
		t.Fatalf("setOptions got %v, want %v", got, want)
	}

	// The visitor switches to light: the element gets the full options again.
	emulateColorScheme(t, tb, "light")
	tb.waitFor(t, "the light theme", `window.chatkitStub.calls.length === 2`, shortWait)
	want["theme"] = map[string]any{"colorScheme": "light"}
	if got := setOptionsCalls(t, tb)[1]; !reflect.DeepEqual(got, want) {
		t.Fatalf("after the switch setOptions got %v, want %v", got, want)
	}
	if errs := consoleErrors(t, tb); len(errs) != 0 {
		t.Errorf("console errors: %q", errs)
	}
}

// TestEmbedSaysWhatIsWrong: when the chat cannot be shown, the console says
// why, and the page gets no button: no domain key, OpenAI's script
// blocked (its real URL, unreachable from the test browser), a script that
// is not ChatKit, and launcher off without a [data-chatkit] element.
func TestEmbedSaysWhatIsWrong(t *testing.T) {
	needBrowser(t)
	fake := newFake(t)
	dir := t.TempDir()
	cases := []struct {
		name, options, page, want string
		stubRuns                  bool
	}{
		{"no domain key", "script_url /chatkit-stub.js", "index.html",
			`no domain key, so the chat is not shown: add "domain_key <key>" to the agent block`, false},
		{"script blocked", "domain_key " + embedDomainKey, "index.html",
			"OpenAI's ChatKit script https://cdn.platform.openai.com/deployments/chatkit/chatkit.js could not be loaded", false},
		{"not ChatKit", "domain_key " + embedDomainKey + "\n\t\t\tscript_url /defines-nothing.js", "index.html",
			"/defines-nothing.js loaded but did not define <openai-chatkit>", false},
		{"nowhere to go", "domain_key " + embedDomainKey + "\n\t\t\tlauncher off\n\t\t\tscript_url /chatkit-stub.js", "index.html",
			"launcher is off, but the page has no element with a data-chatkit attribute", true},
	}
	ports := make([]int, len(cases))
	var blocks []string
	for i, tc := range cases {
		ports[i] = freePort(t)
		blocks = append(blocks, embedSite(t, fake, dir, ports[i], tc.options))
	}
	startCaddy(t, dir, blocks...)
	tb := newTab(t)
	recordConsoleErrors(t, tb)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tb.do(t, "loading the page", chromedp.Navigate(fmt.Sprintf("http://localhost:%d/%s", ports[i], tc.page)))
			tb.waitFor(t, "a console error", `window.consoleErrors.length > 0`, shortWait)
			errs := consoleErrors(t, tb)
			if len(errs) != 1 || !strings.HasPrefix(errs[0], "[caddy-chatkit embed.js] ") || !strings.Contains(errs[0], tc.want) {
				t.Fatalf("console errors %q; want one saying %q", errs, tc.want)
			}
			state := eval[map[string]any](t, tb, `({ button: !!document.querySelector('.caddy-chatkit-launcher'),
				elements: document.querySelectorAll('openai-chatkit').length, stub: !!window.chatkitStub })`)
			if state["button"] != false || state["elements"] != float64(0) || state["stub"] != tc.stubRuns {
				t.Errorf("the page after the error: %v", state)
			}
		})
	}
}

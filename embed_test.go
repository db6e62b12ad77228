package chatkit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// embed.js over real HTTP, its options from the Caddyfile, and the rules
// on the options and on the agent's paths.

const embedPath = agentPath + "/embed.js"

// embedCookieSecret is a cookie secret the script must never contain.
const embedCookieSecret = "cookie-secret-canary-0123456789abcdefXYZ"

// embedOptionsOf returns the config object Caddy wrote into a served
// script: the body must be the template with its marker replaced by one
// JSON object, and nothing else changed.
func embedOptionsOf(t *testing.T, body string) map[string]any {
	t.Helper()
	before, after, ok := bytes.Cut(embedScriptTemplate, []byte(embedConfigMarker))
	if !ok {
		t.Fatal("the template has no config marker")
	}
	if !strings.HasPrefix(body, string(before)) || !strings.HasSuffix(body, string(after)) || len(body) < len(before)+len(after) {
		t.Fatalf("the served script is not the template with its options written in:\n%s", body)
	}
	raw := body[len(before) : len(body)-len(after)]
	var got map[string]any
	dec := json.NewDecoder(strings.NewReader(raw))
	if err := dec.Decode(&got); err != nil || dec.More() {
		t.Fatalf("the options are not one JSON object (%v): %s", err, raw)
	}
	return got
}

// jsonOf decodes a JSON literal, for comparing with decoded options.
func jsonOf(t *testing.T, s string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return v
}

func TestEmbedScriptServesTheCaddyfileOptions(t *testing.T) {
	fake := newFake(t)
	// A greeting that would end an inline <script> and a JavaScript line
	// terminator: both must arrive escaped, and decode to what was written.
	const greeting = "Hi </script><script>alert(1)</script> & welcome\u2028to \"Example\""
	agentExtra := strings.Join([]string{
		"domain_key domain_pk_0123456789abcdef",
		"greeting " + `"` + strings.ReplaceAll(greeting, `"`, `\"`) + `"`,
		`suggestion "Opening hours" "When are you open?"`,
		`suggestion "Shipping" "How long does shipping take?"`,
		`placeholder "Ask about our shop…"`,
		"theme dark",
		`accent "#0a7cff" 3`,
		"launcher off",
		"script_url /assets/chatkit.js",
	}, "\n\t\t\t")
	startAgent(t, fake, "", "cookie_secret "+embedCookieSecret, agentExtra)
	c := plainClient(t)

	r := do(t, c, "GET", embedPath, "")
	if r.status != http.StatusOK {
		t.Fatalf("GET %s = %d: %s", embedPath, r.status, r.body)
	}
	for name, want := range map[string]string{
		"Content-Type":           "text/javascript; charset=utf-8",
		"Cache-Control":          "public, max-age=300",
		"X-Content-Type-Options": "nosniff",
		"Content-Length":         fmt.Sprint(len(r.body)),
	} {
		if got := r.header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	etag := r.header.Get("ETag")
	if len(etag) < 10 || etag[0] != '"' || etag[len(etag)-1] != '"' {
		t.Fatalf("ETag = %q, want a strong quoted tag", etag)
	}
	if r.header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id")
	}
	for _, secret := range []string{fakeopenai.DefaultAPIKey, embedCookieSecret, "</script", "\u2028"} {
		if strings.Contains(r.body, secret) {
			t.Errorf("the script contains %q", secret)
		}
	}

	want := jsonOf(t, `{
		"path": "/api/chatkit",
		"scriptURL": "/assets/chatkit.js",
		"launcher": false,
		"options": {
			"api": {"domainKey": "domain_pk_0123456789abcdef"},
			"theme": {"colorScheme": "dark", "color": {"accent": {"primary": "#0a7cff", "level": 3}}},
			"startScreen": {"greeting": "GREETING", "prompts": [
				{"label": "Opening hours", "prompt": "When are you open?"},
				{"label": "Shipping", "prompt": "How long does shipping take?"}
			]},
			"composer": {"placeholder": "Ask about our shop…"}
		}
	}`)
	want["options"].(map[string]any)["startScreen"].(map[string]any)["greeting"] = greeting
	if got := embedOptionsOf(t, r.body); !reflect.DeepEqual(got, want) {
		t.Fatalf("options\n%s\nwant\n%s", cfJSON(got), cfJSON(want))
	}

	// Revalidation: the same tag, as browsers and caches send it, gets a
	// 304 without a body; another gets the script.
	for _, inm := range []string{etag, "W/" + etag, `"other", ` + etag, "*"} {
		r := do(t, c, "GET", embedPath, "", "If-None-Match", inm)
		if r.status != http.StatusNotModified || r.body != "" || r.header.Get("ETag") != etag || r.header.Get("Cache-Control") != "public, max-age=300" {
			t.Errorf("If-None-Match %s: %d %v %q", inm, r.status, r.header, r.body)
		}
	}
	if r := do(t, c, "GET", embedPath, "", "If-None-Match", `"stale"`); r.status != http.StatusOK || r.header.Get("ETag") != etag {
		t.Errorf("a stale tag got %d", r.status)
	}
	// A version in the URL is harmless: the same script.
	if r2 := do(t, c, "GET", embedPath+"?v=3", ""); r2.status != http.StatusOK || r2.body != r.body || r2.header.Get("ETag") != etag {
		t.Errorf("with ?v=3: %d, same body %v", r2.status, r2.body == r.body)
	}
	// HEAD: the headers without the body.
	if h := do(t, c, "HEAD", embedPath, ""); h.status != http.StatusOK || h.body != "" || h.header.Get("ETag") != etag ||
		h.header.Get("Content-Length") != fmt.Sprint(len(r.body)) || h.header.Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Errorf("HEAD: %d %v %q", h.status, h.header, h.body)
	}
	// Other methods: the module's JSON method error.
	for _, m := range []string{"POST", "PUT", "DELETE", "OPTIONS"} {
		r := do(t, c, m, embedPath, "")
		expectError(t, r, http.StatusMethodNotAllowed, "method_not_allowed")
		if r.header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: Allow = %q", m, r.header.Get("Allow"))
		}
	}
	// Only the exact path.
	for _, p := range []string{embedPath + "/", embedPath + "x", agentPath + "/Embed.js", agentPath + "/embed"} {
		if r := do(t, c, "GET", p, ""); r.status != http.StatusOK || r.body != "the next handler" {
			t.Errorf("GET %s = %d %q, want the next handler", p, r.status, r.body)
		}
	}
	// The agent endpoint beside it is unchanged.
	expectStreamHeaders(t, agentStreamPost(t, client(t), createBody("Hi")))

	// Another config, another script and tag.
	startAgent(t, fake, "", "", "greeting Hello")
	r2 := do(t, c, "GET", embedPath, "", "If-None-Match", etag)
	if r2.status != http.StatusOK || r2.header.Get("ETag") == etag {
		t.Fatalf("after a config change: %d, ETag %q (was %q)", r2.status, r2.header.Get("ETag"), etag)
	}
}

// TestEmbedScriptDefaults: an agent block without any embed option still
// serves the script, with the launcher on, OpenAI's script and no domain
// key (the script then says so in the console). Behind WordPress's
// try_files and encode, as a WordPress site runs it.
func TestEmbedScriptDefaults(t *testing.T) {
	fake := newFake(t)
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\trate_limit off\n\t\tagent /chat {\n\t\t\tmodel gpt-5-mini\n\t\t\tstore sqlite %s/t.db\n\t\t}",
		fake.URL(), fakeopenai.DefaultAPIKey, t.TempDir())
	newTester(t, caddyConfig("", block, "encode gzip\n\ttry_files {path} {path}/ /index.php?{query}"))
	c := plainClient(t) // asks for gzip and decompresses

	r := do(t, c, "GET", "/chat/embed.js", "")
	if r.status != http.StatusOK || r.header.Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Fatalf("GET /chat/embed.js = %d %v", r.status, r.header)
	}
	want := jsonOf(t, `{"path": "/chat", "scriptURL": "https://cdn.platform.openai.com/deployments/chatkit/chatkit.js",
		"launcher": true, "options": {"api": {}}}`)
	if got := embedOptionsOf(t, r.body); !reflect.DeepEqual(got, want) {
		t.Fatalf("options\n%s\nwant\n%s", cfJSON(got), cfJSON(want))
	}
	// encode makes the tag its own (`"…-gzip"`) and strips it again from
	// If-None-Match: revalidation works through it.
	etag := r.header.Get("ETag")
	if !strings.HasSuffix(etag, `-gzip"`) {
		t.Fatalf("ETag through encode = %q", etag)
	}
	if r := do(t, c, "GET", "/chat/embed.js", "", "If-None-Match", etag); r.status != http.StatusNotModified {
		t.Fatalf("If-None-Match through encode: %d", r.status)
	}
	if r := do(t, c, "GET", "/api/chatkit/embed.js", ""); r.body != "the next handler" {
		t.Fatalf("the default agent path answered for an agent at /chat: %d %q", r.status, r.body)
	}
}

func TestEmbedParseCaddyfile(t *testing.T) {
	h, err := cfParse(`chatkit {
		agent {
			model gpt-5-mini
			domain_key {env.CHATKIT_DOMAIN_KEY}
			greeting "How can we help?"
			suggestion "Hours" "When are you open?"
			suggestion Returns "How do I return an order?"
			placeholder "Ask anything"
			theme auto
			accent "rgb(10 124 255)"
			launcher off
			script_url https://static.example.com/chatkit.js
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	off := false
	want := &AgentEmbed{
		DomainKey: "{env.CHATKIT_DOMAIN_KEY}", Greeting: "How can we help?",
		Suggestions: []AgentSuggestion{{"Hours", "When are you open?"}, {"Returns", "How do I return an order?"}},
		Placeholder: "Ask anything", Theme: "auto", Accent: &AgentAccent{Color: "rgb(10 124 255)"},
		Launcher: &off, ScriptURL: "https://static.example.com/chatkit.js",
	}
	if got, exp := cfJSON(h.Agent.Embed), cfJSON(want); got != exp {
		t.Fatalf("parsed\n%s\nwant\n%s", got, exp)
	}
	// Without an accent level, ChatKit still gets one (it requires it).
	c := buildEmbedConfig(h.Agent, "/api/chatkit", "k")
	if a := c.Options.Theme.Color.Accent; a.Level != defaultEmbedAccentLevel || c.Options.Theme.ColorScheme != "" || !c.AutoColorScheme {
		t.Fatalf("theme auto, accent without a level: %+v %+v", c.Options.Theme, c)
	}
	if c.Options.Composer.Dictation != nil {
		t.Fatal("dictation is off, but the composer gets a microphone")
	}
	// The agent's dictation turns on the composer's microphone.
	h, err = cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\tdictation on\n\t}\n}")
	if err != nil {
		t.Fatal(err)
	}
	if c := buildEmbedConfig(h.Agent, "/api/chatkit", "k"); c.Options.Composer == nil || c.Options.Composer.Dictation == nil || !c.Options.Composer.Dictation.Enabled {
		t.Fatalf("dictation on: composer %+v", c.Options.Composer)
	}
}

// embedRuleCases are refused embed options written both ways: an agent
// block (the option on line cfLine of the whole chatkit block) and JSON.
var embedRuleCases = []struct {
	name    string
	option  string // one line of the agent block
	json    string // the agent's "embed" object
	wantErr string
}{
	{"theme", "theme sepia", `{"theme":"sepia"}`, `agent theme must be light, dark or auto, got "sepia"`},
	{"accent color", "accent blue", `{"accent":{"color":"blue"}}`, `agent accent must be a CSS color such as #0a7cff or rgb(10 124 255), got "blue"`},
	{"accent breaking out", `accent "#fff;background:url(x)"`, `{"accent":{"color":"#fff;background:url(x)"}}`, "agent accent must be a CSS color"},
	{"accent function", `accent "rgb(1,2,3);x"`, `{"accent":{"color":"rgb(1,2,3);x"}}`, "agent accent must be a CSS color"},
	{"accent level", `accent "#0a7cff" 4`, `{"accent":{"color":"#0a7cff","level":4}}`, "agent accent level must be 0 to 3, got 4"},
	{"accent level negative", `accent "#0a7cff" -1`, `{"accent":{"color":"#0a7cff","level":-1}}`, "agent accent level must be 0 to 3, got -1"},
	{"domain key", `domain_key "domain pk"`, `{"domain_key":"domain pk"}`, "agent domain_key must be the key from OpenAI's domain allowlist"},
	{"domain key quote", `domain_key "pk'); alert(1)"`, `{"domain_key":"pk'); alert(1)"}`, "agent domain_key must be"},
	{"domain key long", "domain_key " + strings.Repeat("k", 257), `{"domain_key":"` + strings.Repeat("k", 257) + `"}`, "at most 256 characters"},
	{"empty suggestion", `suggestion "" "prompt"`, `{"suggestions":[{"label":"","prompt":"prompt"}]}`, "agent suggestion needs a label and a prompt, both non-empty"},
	{"blank prompt", `suggestion Label " "`, `{"suggestions":[{"label":"Label","prompt":" "}]}`, "agent suggestion needs a label and a prompt"},
	{"script_url http", "script_url http://cdn.example.com/chatkit.js", `{"script_url":"http://cdn.example.com/chatkit.js"}`, "agent script_url must be an https:// URL or a path starting with '/'"},
	{"script_url relative", "script_url chatkit.js", `{"script_url":"chatkit.js"}`, "agent script_url must be"},
	{"script_url scheme-relative", "script_url //evil.example/x.js", `{"script_url":"//evil.example/x.js"}`, "agent script_url must be"},
	{"script_url javascript", "script_url javascript:alert(1)", `{"script_url":"javascript:alert(1)"}`, "agent script_url must be"},
}

// TestEmbedRulesSameFromJSONAndCaddyfile: each embed rule is written once
// (embed.go), so JSON and the Caddyfile get the same message, the
// Caddyfile's with the option's line.
func TestEmbedRulesSameFromJSONAndCaddyfile(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", cfCanaryKey)
	for _, tc := range embedRuleCases {
		t.Run(tc.name, func(t *testing.T) {
			raw := `{"user":"u","agent":{"model":"m","store":{"path":` + jsonString(t.TempDir()+"/t.db") + `},"embed":` + tc.json + `}}`
			jsonErr := cfProvision(t, cfDecode(t, raw))
			if jsonErr == nil || !strings.Contains(jsonErr.Error(), tc.wantErr) {
				t.Fatalf("JSON error %v, want %q", jsonErr, tc.wantErr)
			}
			_, cfErr := cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\t" + tc.option + "\n\t}\n}")
			if want := jsonErr.Error() + ", at Testfile:4"; cfErr == nil || cfErr.Error() != want {
				t.Errorf("Caddyfile error\n  %v\nwant\n  %q", cfErr, want)
			}
		})
	}
	for _, ok := range []string{"#abc", "#ABCD", "#0a7cff", "#0a7cff80", "rgb(10, 124, 255)", "rgb(10 124 255 / 50%)", "rgba(10,124,255,.5)", "hsl(210deg 100% 52%)", "hsla(210, 100%, 52%, 0.4)"} {
		if err := checkEmbedAccentColor(ok); err != nil {
			t.Errorf("accent %q refused: %v", ok, err)
		}
	}
	for _, ok := range []string{"domain_pk_68e4bd5c8f0c8190a1b2c3d4e5f6a7b8", "local-dev", "{env.CHATKIT_DOMAIN_KEY}"} {
		if err := checkEmbedDomainKey(ok); err != nil {
			t.Errorf("domain_key %q refused: %v", ok, err)
		}
	}
	for name, tc := range map[string]string{
		"repeated option": "greeting a\n\t\tgreeting b|duplicate agent option \"greeting\"",
		"suggestion args": "suggestion only-a-label|wrong argument count",
		"accent comment":  "accent #0a7cff 2|accent needs a color; quote a hex one",
		"accent args":     "accent red 1 2|wrong argument count",
		"accent level":    "accent \"#fff\" high|the level \"high\" is not a whole number",
		"launcher":        "launcher maybe|expected on or off",
	} {
		option, want, _ := strings.Cut(tc, "|")
		if _, err := cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\t" + option + "\n\t}\n}"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", name, err, want)
		}
	}
}

// TestEmbedDomainKeyPlaceholder: the key may come from the environment,
// and is judged once resolved.
func TestEmbedDomainKeyPlaceholder(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", cfCanaryKey)
	raw := func() string {
		return `{"user":"u","agent":{"model":"m","store":{"path":` + jsonString(t.TempDir()+"/t.db") + `},"embed":{"domain_key":"{env.CHATKIT_TEST_DOMAIN_KEY}"}}}`
	}
	t.Setenv("CHATKIT_TEST_DOMAIN_KEY", "domain_pk_fromenv")
	h := cfDecode(t, raw())
	if err := cfProvision(t, h); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(h.agent.embed.body, []byte(`"domainKey":"domain_pk_fromenv"`)) {
		t.Fatal("the resolved key is not in the script")
	}
	t.Setenv("CHATKIT_TEST_DOMAIN_KEY", "not a key")
	if err := cfProvision(t, cfDecode(t, raw())); err == nil || !strings.Contains(err.Error(), "{env.CHATKIT_TEST_DOMAIN_KEY}") || strings.Contains(err.Error(), "not a key") {
		t.Fatalf("a bad resolved key: %v", err)
	}
	t.Setenv("CHATKIT_TEST_DOMAIN_KEY", "")
	if err := cfProvision(t, cfDecode(t, raw())); err == nil || !strings.Contains(err.Error(), "resolved to an empty value") {
		t.Fatalf("an empty resolved key: %v", err)
	}
}

// TestEmbedPathNeverShadowsTheOtherEndpoints: a start, refresh or health
// path that is one of the agent's own paths is refused at load, and
// routing tries the exact endpoint paths first.
func TestEmbedPathNeverShadowsTheOtherEndpoints(t *testing.T) {
	for name, block := range map[string]string{
		"start":   "workflow wf_x\n\tstart_path /api/chatkit/embed.js\n\tagent {\n\t\tmodel m\n\t}",
		"refresh": "workflow wf_x\n\trefresh_path /chat/embed.js\n\tagent /chat/ {\n\t\tmodel m\n\t}",
		"health":  "health_path /api/chatkit/embed.js\n\tagent {\n\t\tmodel m\n\t}",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := cfParse("chatkit {\n\t" + block + "\n}")
			if err == nil || !strings.Contains(err.Error(), "the agent's embed.js path") || !strings.Contains(err.Error(), "is also the start, refresh or health path") {
				t.Fatalf("error %v", err)
			}
		})
	}
	// Without a workflow nothing mints: start_path is not a path then.
	if _, err := cfParse("chatkit {\n\tprotect /x\n\tagent {\n\t\tmodel m\n\t}\n}"); err != nil {
		t.Fatal(err)
	}

	h := &Handler{minting: true, startPath: "/a/embed.js", refreshPath: "/r", healthPath: "/h",
		agent: &agentRuntime{path: "/a", subPaths: agentSubPaths("/a")}}
	for path, want := range map[string]endpoint{
		"/a/embed.js": endpointStart, "/a": endpointAgent, "/r": endpointRefresh, "/h": endpointHealth, "": endpointNone, "/a/x": endpointNone,
	} {
		if got := h.route(path); got != want {
			t.Errorf("route(%q) = %v, want %v", path, got, want)
		}
	}
	h.startPath = "/s"
	if got := h.route("/a/embed.js"); got != endpointEmbed {
		t.Errorf("route(/a/embed.js) = %v, want embed", got)
	}
}

// TestEmbedTemplate: the asset holds the marker once and, as served, is
// the template around one JSON object.
func TestEmbedTemplate(t *testing.T) {
	if n := bytes.Count(embedScriptTemplate, []byte(embedConfigMarker)); n != 1 {
		t.Fatalf("assets/embed.js holds the marker %d times", n)
	}
	s, err := newEmbedScript(&Agent{Model: "m"}, "/api/chatkit", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := embedOptionsOf(t, string(s.body)); got["path"] != "/api/chatkit" {
		t.Fatalf("options %v", got)
	}
	if _, err := renderEmbedScript([]byte("{}")); err != nil {
		t.Fatal(err)
	}
}

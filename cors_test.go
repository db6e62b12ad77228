package chatkit

import (
	"net/http"
	"strings"
	"testing"
)

func TestOriginPolicyMatrix(t *testing.T) {
	p, err := newOriginPolicy([]string{"https://app.example.com", "http://localhost:3000", "https://*.example.org", "https://*.ports.test:8443"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		origin string
		want   bool
	}{
		{"https://app.example.com", true},
		{"https://app.example.com:443", true},
		{"HTTPS://APP.EXAMPLE.COM", true},
		{"http://app.example.com", false},       // other scheme
		{"https://app.example.com:8443", false}, // other port
		{"https://evil.app.example.com", false}, // exact entries have no subdomains
		{"http://localhost:3000", true},
		{"http://localhost:3001", false},
		{"https://a.example.org", true},
		{"https://a.b.c.example.org", true},
		{"https://example.org", false}, // never the bare domain
		{"https://badexample.org", false},
		{"https://a.example.org:444", false},
		{"http://a.example.org", false},
		{"https://a.ports.test:8443", true},
		{"https://a.ports.test", false},
		{"null", false},
		{"https://app.example.com/path", false},
		{"https://user@app.example.com", false},
		{"file://app.example.com", false},
	}
	for _, tc := range cases {
		norm, ok := normalizeOrigin(tc.origin)
		got := ok && p.allows(norm)
		if got != tc.want {
			t.Errorf("origin %q: allowed = %v, want %v", tc.origin, got, tc.want)
		}
	}
	for _, bad := range []string{"example.com", "https://*.", "https://*.com", "http://*.org:8080", "https://*.*.com", "ftp://x.com", "https://a.com/path",
		"https://*.example.com:0", "https://*.example.com:x", "https://*.10.0.0.1", "https://*.[::1]", "https://*.example..com", "https://*.example.com.", "https://*.kawasaki.jp."} {
		if _, err := newOriginPolicy([]string{bad}); err == nil {
			t.Errorf("allow_origins %q accepted", bad)
		}
	}
}

// TestOriginWildcardsBelowPublicSuffix: a wildcard must stay inside one
// owner's sites. The public suffix list, private entries included, decides;
// its default rule keeps single labels such as "com" or "localhost" out.
func TestOriginWildcardsBelowPublicSuffix(t *testing.T) {
	for _, bad := range []struct{ pattern, suffix string }{
		{"https://*.com", "com"},
		{"https://*.localhost", "localhost"},
		{"https://*.co.uk", "co.uk"},
		{"http://*.co.uk", "co.uk"},
		{"https://*.github.io", "github.io"},
		{"https://*.GitHub.IO:8443", "github.io"},
		{"https://*.vercel.app", "vercel.app"},
		{"https://*.pages.dev", "pages.dev"},
		{"https://*.anything.kawasaki.jp", "anything.kawasaki.jp"}, // under the list's rule *.kawasaki.jp
	} {
		_, err := newOriginPolicy([]string{"https://app.example.com", bad.pattern})
		if err == nil {
			t.Errorf("allow_origins %q accepted: it covers everybody's sites under %s", bad.pattern, bad.suffix)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, bad.pattern) || !strings.Contains(msg, "public suffix ("+bad.suffix+")") ||
			!strings.Contains(msg, "someone else's") {
			t.Errorf("allow_origins %q: error %q does not say it is the public suffix %s", bad.pattern, msg, bad.suffix)
		}
	}

	// The module refuses it when its config loads.
	t.Setenv("OPENAI_API_KEY", cfCanaryKey)
	err := cfProvision(t, cfDecode(t, `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["https://*.example.com","https://*.github.io"]}`))
	if err == nil || !strings.Contains(err.Error(), `"https://*.github.io" is a public suffix`) {
		t.Errorf("provisioning with https://*.github.io: err = %v", err)
	}
	if err := cfProvision(t, cfDecode(t, `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["https://*.alice.github.io"]}`)); err != nil {
		t.Errorf("provisioning with https://*.alice.github.io: %v", err)
	}

	p, err := newOriginPolicy([]string{"https://*.example.co.uk", "https://*.alice.github.io", "https://*.example.com",
		"https://*.city.kawasaki.jp"}) // the list's exception to *.kawasaki.jp: registrable
	if err != nil {
		t.Fatal(err)
	}
	for origin, want := range map[string]bool{
		"https://shop.example.co.uk":    true,
		"https://a.b.example.co.uk":     true,
		"https://other.co.uk":           false,
		"https://example.co.uk":         false,
		"https://docs.alice.github.io":  true,
		"https://alice.github.io":       false,
		"https://bob.github.io":         false,
		"https://x.bob.github.io":       false,
		"https://app.example.com":       true,
		"https://example.com":           false,
		"https://www.city.kawasaki.jp":  true,
		"https://www.other.kawasaki.jp": false,
	} {
		norm, ok := normalizeOrigin(origin)
		if got := ok && p.allows(norm); got != want {
			t.Errorf("origin %q: allowed = %v, want %v", origin, got, want)
		}
	}
}

func TestOriginEnforcementAndCORS(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "allow_origins https://app.example.com https://*.example.org", "")
	c := client(t)
	allowed := "https://shop.example.org"

	r := do(t, c, "POST", "/api/chatkit/start", "", "Origin", allowed)
	expectSecret(t, r, fake)
	if r.header.Get("Access-Control-Allow-Origin") != allowed ||
		r.header.Get("Access-Control-Allow-Credentials") != "true" ||
		r.header.Get("Vary") != "Origin" || r.header.Get("Access-Control-Expose-Headers") == "" {
		t.Fatalf("CORS headers for an allowed origin: %v", r.header)
	}
	// The site's own origin is always allowed.
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "Origin", siteURL), fake)
	// No Origin at all (curl, server-to-server) is allowed.
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", ""), fake)

	calls := fake.CreateCount()
	for _, bad := range []string{"https://evil.example", "null", "https://example.org", "http://shop.example.org", "https://app.example.com:8443", "http://localhost:9081"} {
		r = do(t, c, "POST", "/api/chatkit/refresh", `{"currentClientSecret":"x"}`, "Origin", bad)
		expectError(t, r, http.StatusForbidden, "origin_not_allowed")
		if r.header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("disallowed origin %q got CORS headers", bad)
		}
	}
	r = do(t, c, "POST", "/api/chatkit/start", "", "Sec-Fetch-Site", "cross-site")
	expectError(t, r, http.StatusForbidden, "origin_not_allowed")
	if fake.CreateCount() != calls {
		t.Fatal("a refused origin reached OpenAI")
	}

	// Preflight from an allowed origin.
	r = do(t, c, "OPTIONS", "/api/chatkit/refresh", "", "Origin", allowed,
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "content-type")
	if r.status != http.StatusNoContent || r.header.Get("Access-Control-Allow-Origin") != allowed ||
		r.header.Get("Access-Control-Allow-Methods") != "POST, OPTIONS" ||
		r.header.Get("Access-Control-Allow-Headers") != "Content-Type" ||
		r.header.Get("Access-Control-Allow-Credentials") != "true" ||
		r.header.Get("Access-Control-Max-Age") == "" || r.header.Get("Vary") != "Origin" {
		t.Fatalf("preflight = %d %v", r.status, r.header)
	}
	// Preflight from a disallowed origin: 403, no CORS headers.
	r = do(t, c, "OPTIONS", "/api/chatkit/start", "", "Origin", "https://evil.example", "Access-Control-Request-Method", "POST")
	expectError(t, r, http.StatusForbidden, "origin_not_allowed")
	for _, h := range []string{"Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Allow-Credentials"} {
		if r.header.Get(h) != "" {
			t.Fatalf("disallowed preflight carries %s", h)
		}
	}
	if fake.CreateCount() != calls {
		t.Fatal("preflights reached OpenAI")
	}
}

func TestCORSHeadersOnRefusals(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "allow_origins https://app.example.com\n\t\trate_limit 1 1m {\n\t\t\tzone cors-429-test\n\t\t}", "")
	c := client(t)
	origin := "https://app.example.com"
	expectSecret(t, do(t, c, "POST", "/api/chatkit/start", "", "Origin", origin), fake)
	for _, r := range []reply{
		do(t, c, "POST", "/api/chatkit/start", "", "Origin", origin),
		do(t, c, "GET", "/api/chatkit/start", "", "Origin", origin),
	} {
		if r.status < 400 || r.header.Get("Access-Control-Allow-Origin") != origin {
			t.Fatalf("refusal %d lacks CORS headers: %v", r.status, r.header)
		}
	}
}

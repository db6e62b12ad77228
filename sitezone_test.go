package chatkit

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// zProvisioned provisions a handler from JSON and keeps it (and its hold on
// its zone) until the test ends, so several live at once as in one config.
func zProvisioned(t *testing.T, raw string) *Handler {
	t.Helper()
	h := cfDecode(t, raw)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provisioning %s: %v", raw, err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	if err := h.Validate(); err != nil {
		t.Fatalf("validating %s: %v", raw, err)
	}
	return h
}

// TestDefaultZoneJoinsOnlySameSiteAndLimits: without `zone`, handlers share
// buckets only when site, what they limit and how are all the same.
func TestDefaultZoneJoinsOnlySameSiteAndLimits(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", cfCanaryKey)
	const base = `"user":"u","protect":["/chatkit"],"rate_limit":{"burst":2,"interval":"1h"}`
	a := zProvisioned(t, `{"site":"a.example",`+base+`}`)
	for _, tc := range []struct {
		name  string
		json  string
		share bool
	}{
		{"same site and limits", `{"site":"a.example",` + base + `}`, true},
		{"another site", `{"site":"b.example",` + base + `}`, false},
		{"no site", `{` + base + `}`, false},
		{"another burst", `{"site":"a.example","user":"u","protect":["/chatkit"],"rate_limit":{"burst":3,"interval":"1h"}}`, false},
		{"another interval", `{"site":"a.example","user":"u","protect":["/chatkit"],"rate_limit":{"burst":2,"interval":"1m"}}`, false},
		{"another key", `{"site":"a.example","user":"u","protect":["/chatkit"],"rate_limit":{"burst":2,"interval":"1h","key":"{http.auth.user.id}"}}`, false},
		{"another prefix", `{"site":"a.example","user":"u","protect":["/chatkit"],"rate_limit":{"burst":2,"interval":"1h","ipv6_prefix":48}}`, false},
		{"another max_keys", `{"site":"a.example","user":"u","protect":["/chatkit"],"rate_limit":{"burst":2,"interval":"1h","max_keys":10}}`, false},
		{"a budget", `{"site":"a.example",` + base + `,"budget":{"sessions":5,"interval":"1h"}}`, false},
		{"other paths", `{"site":"a.example","user":"u","protect":["/other"],"rate_limit":{"burst":2,"interval":"1h"}}`, false},
		{"a workflow too", `{"site":"a.example","workflow":{"id":"wf_1"},` + base + `}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := zProvisioned(t, tc.json)
			if shared := h.limiter.zone == a.limiter.zone; shared != tc.share {
				t.Errorf("shares the zone: %t, want %t (keys %q and %q)", shared, tc.share, a.limiter.zoneKey, h.limiter.zoneKey)
			}
		})
	}

	// Spelling out the defaults is the same limit.
	implicit := zProvisioned(t, `{"site":"a.example","user":"u","protect":["/chatkit"]}`)
	explicit := zProvisioned(t, `{"site":"a.example","user":"u","protect":["/chatkit"],"rate_limit":{"burst":10,"interval":"1s","key":"{client_ip}","ipv4_prefix":32,"ipv6_prefix":64,"max_keys":100000}}`)
	if implicit.limiter.zone != explicit.limiter.zone {
		t.Errorf("default limits written out got another zone: %q vs %q", implicit.limiter.zoneKey, explicit.limiter.zoneKey)
	}
	// Minting handlers: one zone per site and workflow.
	wf1 := zProvisioned(t, `{"site":"a.example","user":"u","workflow":{"id":"wf_1"}}`)
	if again := zProvisioned(t, `{"site":"a.example","user":"u","workflow":{"id":"wf_1"}}`); again.limiter.zone != wf1.limiter.zone {
		t.Error("two handlers of one site minting for one workflow got different zones")
	}
	for _, other := range []string{
		`{"site":"a.example","user":"u","workflow":{"id":"wf_2"}}`,
		`{"site":"b.example","user":"u","workflow":{"id":"wf_1"}}`,
	} {
		if h := zProvisioned(t, other); h.limiter.zone == wf1.limiter.zone {
			t.Errorf("%s shares the zone of wf_1 on a.example", other)
		}
	}
	// A named zone shares on purpose, across sites and limits.
	za := zProvisioned(t, `{"site":"a.example","user":"u","protect":["/chatkit"],"rate_limit":{"burst":2,"interval":"1h","zone":"zone-rule-test"}}`)
	zb := zProvisioned(t, `{"site":"b.example","user":"u","protect":["/chatkit"],"rate_limit":{"burst":5,"interval":"1m","zone":"zone-rule-test"}}`)
	if za.limiter.zone != zb.limiter.zone {
		t.Error("two handlers naming one zone got different zones")
	}
}

func TestSiteAddressesNeedsCaddysHelperLayout(t *testing.T) {
	for _, v := range []any{struct{}{}, struct{ parentBlock int }{}, struct{ parentBlock struct{ Keys []string } }{}} {
		_, err := siteAddresses(reflect.ValueOf(v))
		if err == nil || !strings.Contains(err.Error(), "does not tell which site block") || !strings.Contains(err.Error(), "zone <name>") {
			t.Errorf("%T: error %v, want the layout refusal", v, err)
		}
	}
	block := struct{ parentBlock caddyfile.ServerBlock }{caddyfile.ServerBlock{Keys: []caddyfile.Token{{Text: "a.example"}, {Text: "http://b.example:8080"}}}}
	if got, err := siteAddresses(reflect.ValueOf(block)); err != nil || got != "a.example, http://b.example:8080" {
		t.Errorf("siteAddresses = %q, %v", got, err)
	}
	// The real Helper: the adapter records each block's addresses.
	for _, tc := range []struct{ site, want string }{
		{"shop.example, www.shop.example", `"site":"shop.example, www.shop.example"`},
		{"&(chat)", `"site":"\u0026(chat)"`},
	} {
		cf := tc.site + " {\n\tchatkit {\n\t\tworkflow wf_1\n\t}\n}\n"
		if strings.HasPrefix(tc.site, "&") {
			cf += "example.com {\n\tinvoke chat\n}\n"
		}
		got, _ := adaptCaddyfile(t, cf)
		if compact := strings.Join(strings.Fields(got), ""); !strings.Contains(compact, strings.ReplaceAll(tc.want, " ", "")) {
			t.Errorf("%s: adapted JSON lacks %s:\n%s", tc.site, tc.want, got)
		}
	}
}

// twoSites is two site blocks with the same protect-only chatkit block.
func twoSites(answer string) string {
	site := func(host string) string {
		return fmt.Sprintf(`http://%s:9080 {
	chatkit {
		protect /chatkit
		rate_limit 2 1h
	}
	handle /chatkit* {
		respond "%s %s" 200
	}
}
`, host, answer, host)
	}
	return `{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
}
` + site("site-a.localhost") + site("site-b.localhost")
}

// TestDefaultZonesKeepSitesApart: one visitor (one IP) exhausting site A
// leaves them allowed on site B, and a reload that changes something else
// keeps both sites' buckets.
func TestDefaultZonesKeepSitesApart(t *testing.T) {
	newTester(t, twoSites("backend"))
	c := plainClient(t)
	model := func(host string) reply {
		return do(t, c, "POST", "/chatkit", `{"type":"threads.create","params":{}}`, "Content-Type", "application/json", "Host", host+":9080")
	}
	expectAnswer := func(r reply, want string) {
		t.Helper()
		if r.status != http.StatusOK || r.body != want {
			t.Fatalf("got %d %q, want 200 %q", r.status, r.body, want)
		}
	}
	expectAnswer(model("site-a.localhost"), "backend site-a.localhost")
	expectAnswer(model("site-a.localhost"), "backend site-a.localhost")
	expectError(t, model("site-a.localhost"), http.StatusTooManyRequests, "rate_limit_exceeded")
	expectAnswer(model("site-b.localhost"), "backend site-b.localhost")

	newTester(t, twoSites("reloaded"))
	expectError(t, model("site-a.localhost"), http.StatusTooManyRequests, "rate_limit_exceeded")
	expectAnswer(model("site-b.localhost"), "reloaded site-b.localhost")
	expectError(t, model("site-b.localhost"), http.StatusTooManyRequests, "rate_limit_exceeded")
}

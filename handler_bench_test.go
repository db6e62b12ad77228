package chatkit

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// BenchmarkStart measures one start request through ServeHTTP, upstream
// call to the (loopback) fake included, for allocations and CPU profiles:
//
//	go test -run '^$' -bench Start -benchmem -cpuprofile cpu.out .
func BenchmarkStart(b *testing.B) {
	fake := fakeopenai.New(fakeopenai.Options{})
	defer fake.Close()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	raw := `{"api_base":"` + fake.URL() + `","api_key":"` + fakeopenai.DefaultAPIKey + `","workflow":{"id":"wf_bench"},
		"cookie":{"secret":"0123456789abcdef0123456789abcdef"},"rate_limit":{"disabled":true}}`
	h := new(Handler)
	if err := json.Unmarshal([]byte(raw), h); err != nil {
		b.Fatal(err)
	}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

	// A returning visitor: a valid cookie, so no new id is minted.
	first := serveOnce(b, h, next, "")
	cookie := strings.Split(first.Header().Get("Set-Cookie"), ";")[0]
	b.ReportAllocs()
	for b.Loop() {
		w := serveOnce(b, h, next, cookie)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

func serveOnce(b *testing.B, h *Handler, next caddyhttp.Handler, cookie string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("POST", "/api/chatkit/start", nil)
	if cookie != "" {
		r.Header.Set("Cookie", cookie)
	}
	repl := caddy.NewReplacer()
	r = caddyhttp.PrepareRequest(r, repl, nil, nil)
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		b.Fatal(err)
	}
	return w
}

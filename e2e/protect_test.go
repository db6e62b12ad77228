package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chatKitServer stands in for a self-hosted ChatKit server: it answers
// threads.create with a text/event-stream of streamEvents events, 200 ms
// apart. It holds back the last event until the test has seen the page
// render the first one (or streamGate passes), so "the page showed event 0
// before the stream ended" cannot depend on timing luck.
type chatKitServer struct {
	*httptest.Server
	sent    atomic.Int32
	release chan struct{}
	once    sync.Once

	mu         sync.Mutex
	identities []string
	types      []string
}

const (
	streamEvents = 5
	streamGap    = 200 * time.Millisecond
	streamGate   = 15 * time.Second
)

func newChatKitServer(t *testing.T) *chatKitServer {
	s := &chatKitServer{release: make(chan struct{})}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req struct{ Type string }
		_ = json.Unmarshal(body, &req)
		s.mu.Lock()
		s.identities = append(s.identities, strings.Join(r.Header.Values("X-ChatKit-User"), ","))
		s.types = append(s.types, req.Type)
		s.mu.Unlock()
		if req.Type != "threads.create" {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		rc := http.NewResponseController(w)
		for i := range streamEvents {
			if i > 0 {
				wait := streamGap
				if i == streamEvents-1 {
					select {
					case <-s.release:
					case <-time.After(streamGate):
					case <-r.Context().Done():
						return
					}
				}
				select {
				case <-time.After(wait):
				case <-r.Context().Done():
					return
				}
			}
			fmt.Fprintf(w, "data: {\"type\":\"event\",\"n\":%d}\n\n", i)
			if err := rc.Flush(); err != nil {
				return
			}
			s.sent.Add(1)
		}
	}))
	t.Cleanup(func() {
		s.once.Do(func() { close(s.release) })
		s.Close()
	})
	return s
}

func (s *chatKitServer) seen() (identities, types []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.identities...), append([]string(nil), s.types...)
}

// TestProtectStreamsToPage: a page posts a ChatKit request to the
// protected path; Caddy adds the visitor's identity, proxies it to the
// self-hosted server and the page renders each event as it arrives.
func TestProtectStreamsToPage(t *testing.T) {
	needBrowser(t)
	fake := newFake(t)
	backend := newChatKitServer(t)
	dir := t.TempDir()
	port := freePort(t)
	startCaddy(t, dir, siteBlock(dir, port, chatkitBlock(fake, "wf_e2e_protect", "protect /chatkit")+`
	reverse_proxy /chatkit* `+strings.TrimPrefix(backend.URL, "http://")+`
	root * `+testdataRoot(t)+`
	file_server`))
	pageURL := fmt.Sprintf("http://localhost:%d/stream.html", port)
	tb := newTab(t)

	tb.do(t, "loading the stream page", chromedp.Navigate(pageURL), chromedp.Click(chromedp.ID("go")))
	// Event 0 on the page while the server still holds the last one back.
	tb.waitFor(t, "event 0 on the page", `document.querySelectorAll('#events li').length >= 1`, 5*time.Second)
	if n := backend.sent.Load(); n >= streamEvents {
		t.Fatalf("the page showed its first event only after the server wrote all %d", n)
	}
	first := eval[string](t, tb, `document.querySelector('#events li').textContent`)
	if first != `{"type":"event","n":0}` {
		t.Errorf("first event on the page: %q", first)
	}
	backend.once.Do(func() { close(backend.release) })

	tb.waitFor(t, "the end of the stream", `document.getElementById('state').dataset.state === 'done'`, shortWait)
	got := eval[[]string](t, tb, `[...document.querySelectorAll('#events li')].map((li) => li.textContent)`)
	if len(got) != streamEvents {
		t.Fatalf("the page shows %d events, want %d: %q", len(got), streamEvents, got)
	}
	for i, e := range got {
		if want := fmt.Sprintf(`{"type":"event","n":%d}`, i); e != want {
			t.Errorf("event %d on the page: %q, want %q", i, e, want)
		}
	}
	// The events arrived spread out (600 ms from event 0 to 3 as sent),
	// not in one piece.
	ms := eval[[]float64](t, tb, `[...document.querySelectorAll('#events li')].map((li) => Number(li.dataset.ms))`)
	if spread := ms[streamEvents-2] - ms[0]; spread < float64(streamGap/time.Millisecond) {
		t.Errorf("events 0..%d reached the page within %.0f ms, sent %v apart: %v", streamEvents-2, spread, streamGap, ms)
	}
	if status := eval[string](t, tb, `document.getElementById('state').dataset.status`); status != "200" {
		t.Errorf("protected request answered %s", status)
	}

	// The server saw exactly one identity, Caddy's, for this visitor; the
	// minting endpoint uses the same one.
	identities, types := backend.seen()
	if len(types) != 1 || types[0] != "threads.create" {
		t.Fatalf("the ChatKit server received %q", types)
	}
	if !strings.HasPrefix(identities[0], "anon:") || strings.Contains(identities[0], ",") {
		t.Fatalf("the ChatKit server saw identity %q, want one anonymous id", identities[0])
	}
	if c := findCookie(tb.cookies(t, pageURL), "chatkit_uid"); c == nil {
		t.Fatal("the protected path set no chatkit_uid cookie")
	}
	res, err := chromedp.Run(within(t, tb.ctx, shortWait), chromedp.Evaluate[map[string]any](
		`fetch('/api/chatkit/start', {method: 'POST'}).then((r) => r.json())`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	if res["client_secret"] == nil {
		t.Fatalf("start from the stream page: %v", res)
	}
	if u := fake.Sessions()[0].User; u != identities[0] {
		t.Errorf("minted for %q, the ChatKit server saw %q: want one identity", u, identities[0])
	}
}

package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Constants shared by the Caddyfile, the virtual clients and the fake.
const (
	workflowID   = "wf_bench"
	apiKey       = "sk-test-fake" // fakeopenai.DefaultAPIKey
	cookieName   = "chatkit_uid"
	startPath    = "/api/chatkit/start"
	proxyPath    = "/proxy/chatkit/start"
	fakeSessions = "/v1/chatkit/sessions"
	// The headers the module sends upstream (openai.go newUpstreamClient).
	moduleUserAgent = "caddy-chatkit/0.1.0"
	betaHeader      = "chatkit_beta=v1"
)

// vclient is one virtual browser: its own keep-alive connection, client
// address (sent as X-Forwarded-For through trusted_proxies) and anonymous
// cookie.
type vclient struct {
	ip     string
	cookie string // signed chatkit_uid value, "" before priming
	user   string // the upstream user id the module derives from cookie
	tr     *http.Transport
	hc     *http.Client
}

func newClients(n int, ipBase [4]byte) []*vclient {
	out := make([]*vclient, n)
	for i := range out {
		out[i] = newClient(addIP(ipBase, i))
	}
	return out
}

func newClient(ip string) *vclient {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &vclient{ip: ip, tr: tr, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func closeClients(cs []*vclient) {
	for _, c := range cs {
		c.tr.CloseIdleConnections()
	}
}

// addIP returns base + i as a dotted IPv4 address.
func addIP(base [4]byte, i int) string {
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i)
	return fmt.Sprintf("%d.%d.%d.%d", v>>24, v>>16&255, v>>8&255, v&255)
}

// userFromCookie decodes the module's cookie (version byte, 16 id bytes,
// expiry, MAC; base64url) into the upstream id it sends, "anon:<id>".
func userFromCookie(v string) string {
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil || len(raw) < 17 {
		return "anon:" + v
	}
	return "anon:" + base64.RawURLEncoding.EncodeToString(raw[1:17])
}

// sessionBody is what the module sends for user with the bench config.
func sessionBody(user, ttlSeconds string) []byte {
	b := `{"user":"` + user + `","workflow":{"id":"` + workflowID + `"}`
	if ttlSeconds != "" {
		b += `,"expires_after":{"anchor":"created_at","seconds":` + ttlSeconds + `}`
	}
	return []byte(b + "}")
}

// target is one of the three things measured.
type target struct {
	key  string // "a", "b", "c"
	name string
	// newRequest builds one request for client c.
	newRequest func(c *vclient) *http.Request
	caddy      bool // served by Caddy (else by the fake alone)
	// check tells a successful answer; nil means success (a minted secret).
	check func(status int, body []byte) bool
}

func (t *target) ok(status int, body []byte) bool {
	if t.check != nil {
		return t.check(status, body)
	}
	return success(status, body)
}

func targets(s *servers) map[string]*target {
	browser := func(path string) func(c *vclient) *http.Request {
		url := s.siteURL() + path
		origin := s.siteURL()
		return func(c *vclient) *http.Request {
			req, _ := http.NewRequest(http.MethodPost, url, nil)
			// What the WordPress client's fetch sends: no body, no
			// Content-Type, the page's Origin and the visitor's cookie.
			req.Header["Origin"] = []string{origin}
			req.Header["X-Forwarded-For"] = []string{c.ip}
			if c.cookie != "" {
				req.Header["Cookie"] = []string{cookieName + "=" + c.cookie}
				// Ignored by (a); (b)'s proxy copies it into the body.
				req.Header["X-Bench-User"] = []string{c.user}
			}
			return req
		}
	}
	fakeURL := s.fakeURL() + fakeSessions
	direct := func(c *vclient) *http.Request {
		body := sessionBody(c.user, "")
		req, _ := http.NewRequest(http.MethodPost, fakeURL, bytes.NewReader(body))
		req.Header["Authorization"] = []string{"Bearer " + apiKey}
		req.Header["Openai-Beta"] = []string{betaHeader}
		req.Header["Content-Type"] = []string{"application/json"}
		req.Header["Accept"] = []string{"application/json"}
		req.Header["User-Agent"] = []string{moduleUserAgent}
		return req
	}
	return map[string]*target{
		"a": {key: "a", name: "chatkit start", newRequest: browser(startPath), caddy: true},
		"b": {key: "b", name: "reverse_proxy", newRequest: browser(proxyPath), caddy: true},
		"c": {key: "c", name: "fake direct", newRequest: direct},
	}
}

// outcome of one request: success means 2xx with a client_secret.
func do(c *vclient, req *http.Request) (status int, body []byte, setCookie string, err error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, ck := range resp.Cookies() {
		if ck.Name == cookieName {
			setCookie = ck.Value
		}
	}
	return resp.StatusCode, body, setCookie, err
}

var secretKey = []byte(`"client_secret"`)

func success(status int, body []byte) bool {
	return status >= 200 && status < 300 && bytes.Contains(body, secretKey)
}

// failureKey names a failed request for the error table.
func failureKey(status int, err error) string {
	if err != nil {
		msg := err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		return "error: " + msg
	}
	if status >= 200 && status < 300 {
		return strconv.Itoa(status) + " without client_secret"
	}
	return "status " + strconv.Itoa(status)
}

// Load phases, read by the workers.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// loadResult is what one closed-loop run measured.
type loadResult struct {
	ok       int64
	failures map[string]int64
	lat      []time.Duration // successful requests only, sorted
	window   time.Duration
	loadCPU  time.Duration // the harness's CPU during the window
}

func (r *loadResult) failed() int64 {
	var n int64
	for _, v := range r.failures {
		n += v
	}
	return n
}

func (r *loadResult) rps() float64 { return float64(r.ok) / r.window.Seconds() }

func (r *loadResult) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	i := int(p*float64(len(r.lat))+0.5) - 1
	return r.lat[min(max(i, 0), len(r.lat)-1)]
}

func (r *loadResult) failureSummary() string {
	if len(r.failures) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(r.failures))
	for k := range r.failures {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, r.failures[k])
	}
	return strings.Join(parts, ", ")
}

// closedLoop runs one worker per client, each sending t's request back to
// back over its keep-alive connection: warmup first (not counted), then
// dur measured. onStart and onEnd run exactly at the window's edges.
func closedLoop(clients []*vclient, t *target, warmup, dur time.Duration, onStart, onEnd func()) *loadResult {
	var phase atomic.Int32
	type workerOut struct {
		ok   int64
		fail map[string]int64
		lat  []time.Duration
	}
	outs := make([]workerOut, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &outs[i]
			o.fail = map[string]int64{}
			o.lat = make([]time.Duration, 0, 1<<14)
			for {
				ph := phase.Load()
				if ph == phaseStop {
					return
				}
				req := t.newRequest(c)
				t0 := time.Now()
				status, body, _, err := do(c, req)
				d := time.Since(t0)
				if ph != phaseMeasure || phase.Load() != phaseMeasure {
					if err != nil {
						time.Sleep(10 * time.Millisecond) // do not spin on a dead server
					}
					continue
				}
				if err == nil && t.ok(status, body) {
					o.ok++
					o.lat = append(o.lat, d)
				} else {
					o.fail[failureKey(status, err)]++
					if err != nil {
						time.Sleep(10 * time.Millisecond)
					}
				}
			}
		}()
	}
	time.Sleep(warmup)
	cpu0 := selfCPU()
	if onStart != nil {
		onStart()
	}
	start := time.Now()
	phase.Store(phaseMeasure)
	time.Sleep(dur)
	phase.Store(phaseStop)
	window := time.Since(start)
	cpu1 := selfCPU()
	if onEnd != nil {
		onEnd()
	}
	wg.Wait()

	res := &loadResult{failures: map[string]int64{}, window: window, loadCPU: cpu1 - cpu0}
	for _, o := range outs {
		res.ok += o.ok
		for k, v := range o.fail {
			res.failures[k] += v
		}
		res.lat = append(res.lat, o.lat...)
	}
	slices.Sort(res.lat)
	return res
}

// prime gives every client a signed cookie from the module, the way a
// browser's first start request does, and checks the answer.
func prime(clients []*vclient, t *target) error {
	for _, c := range clients {
		c.cookie = ""
		status, body, ck, err := do(c, t.newRequest(c))
		if err != nil {
			return fmt.Errorf("priming %s: %w", c.ip, err)
		}
		if !success(status, body) || ck == "" {
			return fmt.Errorf("priming %s: status %d, cookie %q, body %s", c.ip, status, ck, body)
		}
		c.cookie = ck
		c.user = userFromCookie(ck)
	}
	return nil
}

func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
}

func fmtMB(kb int64) string {
	if kb <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MB", float64(kb)/1024)
}

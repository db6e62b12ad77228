package chatkit

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// scrapeCounter reads one sample from the admin metrics endpoint.
func scrapeCounter(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://localhost:2999/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return 0
}

func TestMetricsSurviveReload(t *testing.T) {
	fake := newFake(t)
	startSite(t, fake, "", "", "")
	series := `caddy_chatkit_requests_total{endpoint="start",outcome="success"}`
	before := scrapeCounter(t, series)
	expectSecret(t, do(t, client(t), "POST", "/api/chatkit/start", ""), fake)
	if got := scrapeCounter(t, series); got != before+1 {
		t.Fatalf("%s = %v, want %v", series, got, before+1)
	}
	startSite(t, fake, "", "session_ttl 3m", "")
	expectSecret(t, do(t, client(t), "POST", "/api/chatkit/start", ""), fake)
	if got := scrapeCounter(t, series); got != before+2 {
		t.Fatalf("after a reload %s = %v, want %v", series, got, before+2)
	}
	if scrapeCounter(t, `caddy_chatkit_upstream_duration_seconds_count{operation="create_session",status_class="2xx"}`) < 2 {
		t.Fatal("upstream latency histogram not exported")
	}
}

func TestLiveKeysCollectorReportsEachZone(t *testing.T) {
	// Room for every key in every shard: a small store may evict one of
	// three keys that hash to the same shard.
	z := newLimiterZone(defaultMaxKeys, time.Now)
	key := "zone:collector-test"
	if _, loaded, err := zones.LoadOrNew(key, func() (caddy.Destructor, error) { return z, nil }); err != nil || loaded {
		t.Fatalf("zone already pooled: %v %v", loaded, err)
	}
	defer zones.Delete(key)
	l := limit{burst: 5, interval: time.Second}
	for i := 0; i < 3; i++ {
		z.buckets.allow(stringBucketKey(strconv.Itoa(i)), l, 1)
	}
	registry := prometheus.NewRegistry()
	if err := registerMetrics(registry); err != nil {
		t.Fatal(err)
	}
	// Registering again (a config reload) is not an error.
	if err := registerMetrics(registry); err != nil {
		t.Fatalf("second registration: %v", err)
	}
	families, err := registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		if f.GetName() != "caddy_chatkit_ratelimit_keys" {
			continue
		}
		// Zones pooled by other tests may be listed too; ours must be right.
		for _, s := range f.GetMetric() {
			if s.GetLabel()[0].GetValue() == key {
				found = true
				if v := s.GetGauge().GetValue(); v != 3 {
					t.Fatalf("%s keys = %v, want 3", key, v)
				}
			}
		}
	}
	if !found {
		t.Fatal("the zone is not reported")
	}
}

func TestStatusClass(t *testing.T) {
	for _, tc := range []struct {
		status int
		err    *upstreamError
		want   string
	}{
		{200, nil, "2xx"},
		{429, &upstreamError{failure: failRateLimited}, "4xx"},
		{503, &upstreamError{failure: failServer}, "5xx"},
		{0, &upstreamError{failure: failTimeout}, "timeout"},
		{0, &upstreamError{failure: failCanceled}, "canceled"},
		{0, &upstreamError{failure: failNetwork}, "error"},
	} {
		if got := statusClass(tc.status, tc.err); got != tc.want {
			t.Errorf("statusClass(%d, %v) = %q, want %q", tc.status, tc.err, got, tc.want)
		}
	}
}

// scrapeSeries reads every series of one metric from the admin metrics
// endpoint, keyed by its label set as exposed (`a="x",b="y"`).
func scrapeSeries(t *testing.T, metric string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://localhost:2999/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	series := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), metric+"{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			t.Fatalf("cannot parse %q", sc.Text())
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatal(err)
		}
		series[labels] = v
	}
	return series
}

// breakerLabels is how the breaker gauge names a handler of the site
// caddyConfig writes.
func breakerLabels(site, workflow, startPath string) string {
	return `site="` + site + `",start_path="` + startPath + `",workflow="` + workflow + `"`
}

func TestBreakerMetricDescribesLiveHandlers(t *testing.T) {
	fake := newFake(t)
	// Two minting handlers in one site, each with its own paths.
	site := func(alphaWorkflow string) {
		t.Helper()
		block := func(workflow, prefix, extra string) string {
			return "chatkit {\n\t\tapi_base " + fake.URL() + "\n\t\tapi_key " + fakeopenai.DefaultAPIKey +
				"\n\t\tworkflow " + workflow + "\n\t\tstart_path " + prefix + "/start\n\t\trefresh_path " + prefix + "/refresh" +
				"\n\t\thealth_path off\n\t\tretries 0\n\t\trate_limit off\n\t\t" + extra + "\n\t}"
		}
		config := caddyConfig("", "", "")
		config = strings.Replace(config, "chatkit {\n\t\t\n\t}", block(alphaWorkflow, "/alpha", "")+"\n\t"+block("wf_beta", "/beta", "circuit_breaker 1 1h"), 1)
		newTester(t, config)
	}
	const metric = "caddy_chatkit_circuit_breaker_open"
	expect := func(when string, want map[string]float64) {
		t.Helper()
		got := scrapeSeries(t, metric)
		if len(got) != len(want) {
			t.Fatalf("%s: %s series %v, want %v", when, metric, got, want)
		}
		for labels, v := range want {
			if g, ok := got[labels]; !ok || g != v {
				t.Fatalf("%s: %s series %v, want %v", when, metric, got, want)
			}
		}
	}

	site("wf_alpha")
	alpha, beta := breakerLabels(siteURL, "wf_alpha", "/alpha/start"), breakerLabels(siteURL, "wf_beta", "/beta/start")
	expect("two handlers", map[string]float64{alpha: 0, beta: 0})

	// One failure opens beta's breaker (failures 1); alpha's stays closed.
	c := client(t)
	fake.Inject(fakeopenai.Fault{Status: 500})
	expectError(t, do(t, c, "POST", "/beta/start", ""), http.StatusBadGateway, "upstream_error")
	expectError(t, do(t, c, "POST", "/beta/start", ""), http.StatusServiceUnavailable, "circuit_open")
	expectSecret(t, do(t, c, "POST", "/alpha/start", ""), fake)
	expect("beta open", map[string]float64{alpha: 0, beta: 1})

	// A reload that renames alpha's workflow leaves no series for the old
	// one; beta's new handler starts closed.
	site("wf_gamma")
	expect("after the reload", map[string]float64{breakerLabels(siteURL, "wf_gamma", "/alpha/start"): 0, beta: 0})

	// The same block in two sites: two handlers, two series.
	block := "chatkit {\n\t\tapi_base " + fake.URL() + "\n\t\tapi_key " + fakeopenai.DefaultAPIKey + "\n\t\tworkflow wf_alpha\n\t\trate_limit off\n\t}\n\trespond \"next\"\n"
	config := caddyConfig("", "", "")
	config = config[:strings.Index(config, "http://localhost:9080 {")] +
		"http://localhost:9080 {\n\t" + block + "}\nhttp://127.0.0.1:9080 {\n\t" + block + "}\n"
	newTester(t, config)
	expect("one block in two sites", map[string]float64{
		breakerLabels(siteURL, "wf_alpha", "/api/chatkit/start"):                 0,
		breakerLabels("http://127.0.0.1:9080", "wf_alpha", "/api/chatkit/start"): 0,
	})

	// A config without a minting handler has no breaker series at all.
	newTester(t, caddyConfig("", "protect /chatkit\n\t\trate_limit off", ""))
	expect("without minting handlers", map[string]float64{})
}

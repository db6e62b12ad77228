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
	z := newLimiterZone(100, time.Now)
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

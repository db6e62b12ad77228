package chatkit

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Upstream operations, as metric labels.
const (
	operationCreate = "create_session"
	operationCancel = "cancel_session"
	// The agent's: a streamed answer, the title model's call, and a
	// dictation's transcription.
	operationResponses     = "responses"
	operationTitle         = "title"
	operationTranscription = "transcription"
)

// Collectors are created once and registered with every config's registry
// (Caddy makes a new one per load), so counts survive reloads. No label
// carries a client IP or a user id.
var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "requests_total",
		Help: "Requests answered by the chatkit handler, by endpoint and outcome.",
	}, []string{"endpoint", "outcome"})

	protectedRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "protected_requests_total",
		Help: "Requests to protected (self-hosted ChatKit) paths, by ChatKit request type and outcome.",
	}, []string{"type", "outcome"})

	upstreamDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "upstream_duration_seconds",
		Help:    "Duration of each attempt at an OpenAI call, by operation and status class.",
		Buckets: []float64{.05, .1, .25, .5, 1, 2, 4, 8, 16},
	}, []string{"operation", "status_class"})

	upstreamRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "upstream_retries_total",
		Help: "Retried OpenAI calls, by operation.",
	}, []string{"operation"})

	budgetExhausted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "budget_exhausted_total",
		Help: "Sessions refused because the site-wide budget was used up, by zone.",
	}, []string{"zone"})

	redisErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "redis_errors_total",
		Help: "Failed Redis operations (each one starts or extends a fallback window).",
	})

	redisFallbacks = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "chatkit", Name: "redis_fallbacks_total",
		Help: "Rate-limit decisions made in-process because Redis was unreachable.",
	})

	liveKeysDesc = prometheus.NewDesc("caddy_chatkit_ratelimit_keys",
		"Rate-limit buckets held in memory, by zone.", []string{"zone"}, nil)

	breakerOpenDesc = prometheus.NewDesc("caddy_chatkit_circuit_breaker_open",
		"1 while the circuit breaker in front of OpenAI is open, by handler (site, workflow and start path).",
		[]string{"site", "workflow", "start_path"}, nil)
)

// breakerCollector reports the breaker of each live handler when scraped:
// a handler that a reload removed has no series left.
type breakerCollector struct{}

func (breakerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- breakerOpenDesc }

func (breakerCollector) Collect(ch chan<- prometheus.Metric) {
	breakers.Range(func(key, value any) bool {
		series, open := key.(breakerSeries), 0.0
		if value.(*breakerGroup).open() {
			open = 1
		}
		ch <- prometheus.MustNewConstMetric(breakerOpenDesc, prometheus.GaugeValue, open, series.site, series.workflow, series.startPath)
		return true
	})
}

// liveKeysCollector reports each pooled zone's bucket count when scraped,
// so nothing has to be updated on the request path.
type liveKeysCollector struct{}

func (liveKeysCollector) Describe(ch chan<- *prometheus.Desc) { ch <- liveKeysDesc }

func (liveKeysCollector) Collect(ch chan<- prometheus.Metric) {
	zones.Range(func(key, value any) bool {
		z := value.(*limiterZone)
		ch <- prometheus.MustNewConstMetric(liveKeysDesc, prometheus.GaugeValue, float64(z.buckets.len()), key.(string))
		return true
	})
}

// registerMetrics adds the collectors to a config's registry.
func registerMetrics(registry prometheus.Registerer) error {
	if registry == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{requestsTotal, protectedRequests, upstreamDuration, upstreamRetries, budgetExhausted, redisErrors, redisFallbacks, liveKeysCollector{}, breakerCollector{}} {
		if err := registry.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// observeUpstream records one attempt.
func observeUpstream(operation string, status int, uerr *upstreamError, d time.Duration) {
	upstreamDuration.WithLabelValues(operation, statusClass(status, uerr)).Observe(d.Seconds())
}

// statusClass is the HTTP status class, or the failure's own class when
// there was no status.
func statusClass(status int, uerr *upstreamError) string {
	if status != 0 {
		return strconv.Itoa(status/100) + "xx"
	}
	if uerr != nil && uerr.failure.rule().metricClass != "" {
		return uerr.failure.rule().metricClass
	}
	return failNetwork.rule().metricClass
}

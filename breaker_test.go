package chatkit

import (
	"testing"
	"time"
)

func TestBreakerOpensProbesAndCloses(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	opened, closed := 0, 0
	g := &upstreamGuard{threshold: 3, cooldown: 30 * time.Second, errorTTL: 10 * time.Second,
		onOpen: func() { opened++ }, onClose: func() { closed++ }}
	serverError := &upstreamError{failure: failServer, status: 500}

	for i := 0; i < 2; i++ {
		_, wait, probe := g.check(now)
		if wait != 0 || probe {
			t.Fatalf("closed breaker refused call %d", i)
		}
		g.record(serverError, probe, now)
	}
	// A client error in between proves OpenAI is up: the run restarts.
	g.record(&upstreamError{failure: failRejected, status: 400}, false, now)
	for i := 0; i < 3; i++ {
		g.record(serverError, false, now)
	}
	if opened != 1 || !g.degraded(now) {
		t.Fatalf("breaker did not open after 3 consecutive failures (opened %d)", opened)
	}
	if _, wait, _ := g.check(now.Add(10 * time.Second)); wait != 20*time.Second {
		t.Fatalf("open breaker wait = %s, want 20s", wait)
	}

	// After the cooldown exactly one probe goes through.
	later := now.Add(31 * time.Second)
	_, wait, probe := g.check(later)
	if wait != 0 || !probe {
		t.Fatal("no probe after the cooldown")
	}
	if _, wait2, probe2 := g.check(later); wait2 == 0 || probe2 {
		t.Fatal("a second concurrent probe was let through")
	}
	// A failed probe reopens at once for a full cooldown.
	g.record(serverError, true, later)
	if _, wait, _ := g.check(later.Add(time.Second)); wait != 29*time.Second {
		t.Fatalf("after a failed probe wait = %s, want 29s", wait)
	}
	// A good probe closes it.
	muchLater := later.Add(31 * time.Second)
	_, _, probe = g.check(muchLater)
	g.record(nil, probe, muchLater)
	if _, wait, probe := g.check(muchLater); wait != 0 || probe || closed != 1 || g.degraded(muchLater) {
		t.Fatalf("breaker did not close after a good probe (closed %d)", closed)
	}
}

func TestBreakerIgnoresCanceledCallsAndReleasesUnusedProbes(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	g := &upstreamGuard{threshold: 1, cooldown: time.Second}
	g.record(&upstreamError{failure: failCanceled}, false, now)
	if g.degraded(now) {
		t.Fatal("a departed browser opened the breaker")
	}
	g.record(&upstreamError{failure: failTimeout}, false, now)
	_, _, probe := g.check(now.Add(2 * time.Second))
	g.release(probe)
	if _, wait, probe := g.check(now.Add(2 * time.Second)); wait != 0 || !probe {
		t.Fatal("a released probe blocked the next one")
	}
}

func TestErrorCacheKeepsTheSameAnswer(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	g := &upstreamGuard{threshold: 5, cooldown: time.Minute, errorTTL: 10 * time.Second}
	notFound := &upstreamError{failure: failNotFound, status: 404}
	g.record(notFound, false, now)
	if cached, _, _ := g.check(now.Add(9 * time.Second)); cached != notFound {
		t.Fatal("404 not cached within the window")
	}
	if cached, _, _ := g.check(now.Add(11 * time.Second)); cached != nil {
		t.Fatal("404 still cached after the window")
	}
	if !g.degraded(now.Add(11 * time.Second)) {
		t.Fatal("health stopped reporting the workflow error before OpenAI answered otherwise")
	}
	g.record(nil, false, now.Add(12*time.Second))
	if g.degraded(now.Add(12 * time.Second)) {
		t.Fatal("a success did not clear the degraded state")
	}
	// Server errors are never cached.
	g.record(&upstreamError{failure: failServer, status: 500}, false, now)
	if cached, _, _ := g.check(now); cached != nil {
		t.Fatal("a 500 was cached")
	}
}

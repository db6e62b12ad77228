package chatkit

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestTokenLedgerAdmitsExactly(t *testing.T) {
	hour := &tokenLimit{tokens: 100, interval: time.Hour}
	l := newTokenLedger(10)
	at := func(d time.Duration) int64 { return int64(5*time.Hour + d) } // 5h: a window starts

	if scope, _ := l.admit("alice", hour, nil, at(0)); scope != tokenScopeNone {
		t.Fatal("a user who spent nothing was refused")
	}
	l.charge("alice", 99, hour, nil, at(time.Minute))
	if scope, _ := l.admit("alice", hour, nil, at(2*time.Minute)); scope != tokenScopeNone {
		t.Fatal("refused under the budget (99 of 100)")
	}
	// A turn admitted under the budget may finish over it; then nothing more.
	l.charge("alice", 50, hour, nil, at(3*time.Minute))
	scope, wait := l.admit("alice", hour, nil, at(10*time.Minute))
	if scope != tokenScopeUser || wait != 50*time.Minute {
		t.Fatalf("over the budget: scope %d, wait %s (want the user's, 50m: the rest of the window)", scope, wait)
	}
	if u, _ := l.spent("alice", hour, nil, at(10*time.Minute)); u != 149 {
		t.Fatalf("spent %d, want 149", u)
	}
	// Others have their own budget.
	if scope, _ := l.admit("bob", hour, nil, at(10*time.Minute)); scope != tokenScopeNone {
		t.Fatal("bob refused for alice's spending")
	}
	// The next window starts afresh, to the nanosecond.
	if scope, _ := l.admit("alice", hour, nil, at(time.Hour-1)); scope != tokenScopeUser {
		t.Fatal("admitted a nanosecond before the window ends")
	}
	if scope, _ := l.admit("alice", hour, nil, at(time.Hour)); scope != tokenScopeNone {
		t.Fatal("still refused in the next window")
	}
	if u, _ := l.spent("alice", hour, nil, at(time.Hour)); u != 0 {
		t.Fatalf("the new window starts with %d spent", u)
	}
}

func TestTokenLedgerSiteBudget(t *testing.T) {
	site := &tokenLimit{tokens: 30, interval: time.Minute}
	user := &tokenLimit{tokens: 1000, interval: time.Minute}
	l := newTokenLedger(10)
	now := int64(time.Hour)
	l.charge("alice", 20, user, site, now)
	l.charge("bob", 20, user, site, now)
	for _, who := range []string{"alice", "bob", "carol"} {
		if scope, wait := l.admit(who, user, site, now); scope != tokenScopeSite || wait != time.Minute {
			t.Fatalf("%s: scope %d wait %s, want the site's budget for 1m", who, scope, wait)
		}
	}
	if u, s := l.spent("alice", user, site, now); u != 20 || s != 40 {
		t.Fatalf("spent user %d site %d, want 20 and 40", u, s)
	}
	// No budget configured: nothing is kept, nothing refused.
	l2 := newTokenLedger(10)
	l2.charge("alice", 1<<40, nil, nil, now)
	if scope, _ := l2.admit("alice", nil, nil, now); scope != tokenScopeNone || len(l2.users) != 0 {
		t.Fatal("a ledger without budgets tracked or refused someone")
	}
}

func TestTokenLedgerClockBackNeverRefunds(t *testing.T) {
	hour := &tokenLimit{tokens: 10, interval: time.Hour}
	l := newTokenLedger(10)
	late := int64(10 * time.Hour)
	l.charge("alice", 10, hour, hour, late)
	// A clock that went back a window: the spend stays.
	earlier := late - int64(time.Hour)
	if scope, _ := l.admit("alice", hour, hour, earlier); scope == tokenScopeNone {
		t.Fatal("a clock step back handed the budget back")
	}
}

func TestTokenLedgerBoundedMemory(t *testing.T) {
	hour := &tokenLimit{tokens: 100, interval: time.Hour}
	l := newTokenLedger(50)
	now := int64(time.Hour)
	// The big spender must survive a flood of small ones: the one forgotten
	// is the one that spent least among those sampled, never above them all.
	l.charge("whale", 100, hour, nil, now)
	for i := range 10_000 {
		l.charge(fmt.Sprintf("user-%d", i), 1, hour, nil, now)
	}
	if len(l.users) > 50 {
		t.Fatalf("%d users tracked, bound is 50", len(l.users))
	}
	if scope, _ := l.admit("whale", hour, nil, now); scope != tokenScopeUser {
		t.Fatal("the flood made the ledger forget the user over budget")
	}
	// Users from a past window go first.
	l.charge("old", 5, hour, nil, now)
	later := now + int64(2*time.Hour)
	for i := range 100 {
		l.charge(fmt.Sprintf("new-%d", i), 1, hour, nil, later)
	}
	if len(l.users) > 50 {
		t.Fatalf("%d users tracked after the window moved", len(l.users))
	}
}

func TestTokenLedgerConcurrent(t *testing.T) {
	hour := &tokenLimit{tokens: 1_000_000, interval: time.Hour}
	l := newTokenLedger(1000)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				user := fmt.Sprintf("u%d", (g*500+i)%64)
				l.admit(user, hour, hour, int64(time.Hour))
				l.charge(user, 1, hour, hour, int64(time.Hour))
			}
		})
	}
	wg.Wait()
	if _, site := l.spent("u0", hour, hour, int64(time.Hour)); site != 4000 {
		t.Fatalf("site spent %d, want 4000", site)
	}
}

func TestAgentWaitWords(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                        "in 1 second",
		300 * time.Millisecond:   "in 1 second",
		time.Second:              "in 1 second",
		12 * time.Second:         "in 12 seconds",
		90 * time.Second:         "in 90 seconds",
		91 * time.Second:         "in 2 minutes",
		time.Hour:                "in 60 minutes",
		2 * time.Hour:            "in 2 hours",
		36 * time.Hour:           "in 36 hours",
		36*time.Hour + time.Hour: "in 2 days",
	} {
		if got := agentWaitWords(d); got != want {
			t.Errorf("agentWaitWords(%s) = %q, want %q", d, got, want)
		}
	}
}

package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// The lease tests run on the real clock: a PostgreSQL store's leases expire
// on the server's, which no test can move. They use short ttls and poll
// with deadlines; each store's own tests move an injectable clock.

// leaseDeadline bounds every wait for a lease to lapse.
const leaseDeadline = 15 * time.Second

func claim(t *testing.T, s threadstore.Store, threadID string, ttl time.Duration) threadstore.Lease {
	t.Helper()
	l, err := s.ClaimThread(context.Background(), threadID, ttl)
	if err != nil {
		t.Fatalf("ClaimThread(%s): %v", threadID, err)
	}
	return l
}

func release(t *testing.T, l threadstore.Lease) {
	t.Helper()
	if err := l.Release(context.Background()); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

func testLeaseClaimRelease(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	a := claim(t, s, "thr_a", time.Minute)
	_, err := s.ClaimThread(ctx, "thr_a", time.Minute)
	wantErr(t, "a second claim on a held thread", err, threadstore.ErrBusy)
	// Threads are claimed one by one; a claim needs no stored thread
	// (threads.create claims the id it is about to use).
	b := claim(t, s, "thr_b", time.Minute)
	if err := a.Renew(ctx); err != nil {
		t.Fatalf("Renew of a held lease: %v", err)
	}
	release(t, a)
	release(t, a) // twice is safe
	a2 := claim(t, s, "thr_a", time.Minute)
	_, err = s.ClaimThread(ctx, "thr_b", time.Minute)
	wantErr(t, "claim on the other thread, still held", err, threadstore.ErrBusy)
	// A released lease is done: renewing it does not take the thread back,
	// and releasing it again leaves the new holder alone.
	wantErr(t, "Renew of a released lease", a.Renew(ctx), threadstore.ErrBusy)
	release(t, a)
	_, err = s.ClaimThread(ctx, "thr_a", time.Minute)
	wantErr(t, "claim after the old holder released twice", err, threadstore.ErrBusy)
	release(t, a2)
	release(t, b)
	release(t, claim(t, s, "thr_b", time.Minute))
}

// testLeaseRenewHolds: renewing before the ttl passes keeps the thread held
// well past the first claim's ttl.
func testLeaseRenewHolds(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	const ttl = 800 * time.Millisecond
	start := time.Now()
	l := claim(t, s, "thr_a", ttl)
	for time.Since(start) < 2*ttl+ttl/2 {
		// Paced well inside the ttl: the renewal, not the wait, is under test.
		time.Sleep(ttl / 8)
		if err := l.Renew(ctx); err != nil {
			t.Fatalf("Renew %s after the claim: %v", time.Since(start), err)
		}
		if _, err := s.ClaimThread(ctx, "thr_a", ttl); !errors.Is(err, threadstore.ErrBusy) {
			t.Fatalf("claim %s after a claim of %s, renewed all along: %v, want ErrBusy", time.Since(start), ttl, err)
		}
	}
	release(t, l)
	release(t, claim(t, s, "thr_a", ttl))
}

// testLeaseTakeover: a claim nobody renews lapses after its ttl, never
// before; another claimer takes the thread, and the old holder can neither
// renew nor release the new claim.
func testLeaseTakeover(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	const ttl = 300 * time.Millisecond
	start := time.Now()
	old := claim(t, s, "thr_a", ttl)
	var next threadstore.Lease
	for next == nil {
		l, err := s.ClaimThread(ctx, "thr_a", time.Minute)
		switch {
		case err == nil:
			next = l
		case !errors.Is(err, threadstore.ErrBusy):
			t.Fatalf("claim while waiting for the lapse: %v", err)
		case time.Since(start) > leaseDeadline:
			t.Fatalf("a lease of %s still held after %s", ttl, leaseDeadline)
		default:
			time.Sleep(ttl / 10)
		}
	}
	if took := time.Since(start); took < ttl {
		t.Fatalf("a lease of %s was taken over after %s", ttl, took)
	}
	wantErr(t, "Renew after the thread was taken over", old.Renew(ctx), threadstore.ErrBusy)
	release(t, old) // not next's
	_, err := s.ClaimThread(ctx, "thr_a", time.Minute)
	wantErr(t, "claim after the lapsed holder released", err, threadstore.ErrBusy)
	if err := next.Renew(ctx); err != nil {
		t.Fatalf("the new holder's Renew: %v", err)
	}
	release(t, next)
	release(t, claim(t, s, "thr_a", time.Minute))
}

// testLeaseConcurrentClaimers: of claimers racing for one thread, exactly
// one wins, every time.
func testLeaseConcurrentClaimers(t *testing.T, s threadstore.Store) {
	const rounds, claimers = 5, 12
	for r := range rounds {
		thread := fmt.Sprintf("thr_%d", r)
		leases := make([]threadstore.Lease, claimers)
		errs := make([]error, claimers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range claimers {
			wg.Go(func() {
				<-start
				leases[i], errs[i] = s.ClaimThread(context.Background(), thread, time.Minute)
			})
		}
		close(start)
		wg.Wait()
		var won []int
		for i, err := range errs {
			switch {
			case err == nil:
				won = append(won, i)
			case !errors.Is(err, threadstore.ErrBusy):
				t.Fatalf("round %d, claimer %d: %v", r, i, err)
			}
		}
		if len(won) != 1 {
			t.Fatalf("round %d: %d of %d claimers won %v, want exactly one", r, len(won), claimers, won)
		}
		if err := leases[won[0]].Renew(context.Background()); err != nil {
			t.Fatalf("round %d: the winner's Renew: %v", r, err)
		}
	}
}

func testLeaseErrors(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	_, err := s.ClaimThread(ctx, "", time.Minute)
	wantErr(t, "claim of an empty thread id", err, threadstore.ErrInvalid)
	for _, ttl := range []time.Duration{0, -time.Second} {
		_, err = s.ClaimThread(ctx, "thr_a", ttl)
		wantErr(t, fmt.Sprintf("claim for %s", ttl), err, threadstore.ErrInvalid)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = s.ClaimThread(cctx, "thr_a", time.Minute)
	wantErr(t, "claim with a cancelled context", err, threadstore.ErrUnavailable)
	if errors.Is(err, threadstore.ErrBusy) {
		t.Fatalf("claim with a cancelled context says busy: %v", err)
	}
	// The refused claims took nothing.
	l := claim(t, s, "thr_a", time.Minute)
	wantErr(t, "Renew with a cancelled context", l.Renew(cctx), threadstore.ErrUnavailable)
	if err := l.Renew(ctx); err != nil {
		t.Fatalf("Renew after a cancelled one: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.ClaimThread(ctx, "thr_b", time.Minute)
	wantErr(t, "claim after Close", err, threadstore.ErrClosed)
	wantErr(t, "Renew after Close", l.Renew(ctx), threadstore.ErrUnavailable)
}

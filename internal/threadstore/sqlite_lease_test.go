package threadstore_test

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestSQLiteLeaseClock walks a lease through its ttl on the store's clock,
// with two stores on one file standing for two processes: the claim holds
// up to its expiry and not a microsecond past it, a renewal counts from its
// own moment, and a lapsed claim nobody took is taken back by its renewal.
func TestSQLiteLeaseClock(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "threads.db")
	a := openSQLite(t, path, threadstore.SQLiteOptions{Now: clock.Now})
	b := openSQLite(t, path, threadstore.SQLiteOptions{Now: clock.Now})
	busy := func(what string) {
		t.Helper()
		if _, err := b.ClaimThread(ctx, "thr", time.Hour); !errors.Is(err, threadstore.ErrBusy) {
			t.Fatalf("%s: the other process's claim: %v, want ErrBusy", what, err)
		}
	}

	const ttl = 10 * time.Second
	la, err := a.ClaimThread(ctx, "thr", ttl)
	if err != nil {
		t.Fatal(err)
	}
	busy("at once")
	clock.advance(ttl - time.Microsecond)
	busy("a microsecond before the expiry")
	if err := la.Renew(ctx); err != nil { // now held until 2*ttl - 1µs
		t.Fatal(err)
	}
	clock.advance(ttl - time.Microsecond)
	busy("renewed, a microsecond before the new expiry")

	// Lapsed, and nobody took it: the renewal takes it back.
	clock.advance(time.Hour)
	if err := la.Renew(ctx); err != nil {
		t.Fatalf("renewing a lapsed claim nobody took: %v", err)
	}
	busy("taken back")

	// Lapsed and taken: the old holder has lost it.
	clock.advance(ttl)
	lb, err := b.ClaimThread(ctx, "thr", ttl)
	if err != nil {
		t.Fatalf("claim at the expiry: %v", err)
	}
	if err := la.Renew(ctx); !errors.Is(err, threadstore.ErrBusy) {
		t.Fatalf("renewing a claim taken over: %v, want ErrBusy", err)
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ClaimThread(ctx, "thr", ttl); !errors.Is(err, threadstore.ErrBusy) {
		t.Fatalf("the old holder's release freed the new claim: %v", err)
	}
	if err := lb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if l, err := a.ClaimThread(ctx, "thr", ttl); err != nil {
		t.Fatalf("claim after the holder released: %v", err)
	} else if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestSQLiteLeaseTwoStoresRace: claimers in two processes on one file race
// for the same threads; exactly one wins each.
func TestSQLiteLeaseTwoStoresRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "threads.db")
	stores := []*threadstore.SQLiteStore{
		openSQLite(t, path, threadstore.SQLiteOptions{}), openSQLite(t, path, threadstore.SQLiteOptions{}),
	}
	const threads, perStore = 10, 4
	for th := range threads {
		id := "thr_" + strconv.Itoa(th)
		var wins, busy atomic.Int32
		errs := make(chan error, len(stores)*perStore)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for _, s := range stores {
			for range perStore {
				wg.Go(func() {
					<-start
					_, err := s.ClaimThread(context.Background(), id, time.Minute)
					switch {
					case err == nil:
						wins.Add(1)
					case errors.Is(err, threadstore.ErrBusy):
						busy.Add(1)
					default:
						errs <- err
					}
				})
			}
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("%s: %v", id, err)
		}
		if wins.Load() != 1 || int(busy.Load()) != len(stores)*perStore-1 {
			t.Fatalf("%s: %d wins, %d busy; want exactly one win", id, wins.Load(), busy.Load())
		}
	}
}

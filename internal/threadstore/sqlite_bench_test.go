package threadstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// BenchmarkSQLite measures the reads behind threads.list, threads.get_by_id, items.list
// and a turn's history in a database of 10,000 threads (100 owners of 100) and 200,000
// items (20 a thread), filled through the Store API. Each sub-benchmark reports the
// p50 and p99 latency of one call. -short fills a tenth of that.
//
//	go test -run '^$' -bench BenchmarkSQLite -benchtime 5000x ./internal/threadstore/
func BenchmarkSQLite(b *testing.B) {
	s, err := threadstore.OpenSQLite(context.Background(), filepath.Join(b.TempDir(), "threads.db"), threadstore.SQLiteOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchReads(b, s)
}

// benchReads fills s (from 4 writers, as a busy site would) and measures its reads:
// see BenchmarkSQLite.
func benchReads(b *testing.B, s threadstore.Store) {
	owners, threadsPerOwner, itemsPerThread := 100, 100, 20
	if testing.Short() {
		owners = 10
	}
	ctx := context.Background()
	start := time.Now()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	errs := make(chan error, owners)
	next := make(chan int)
	for range 4 {
		wg.Go(func() {
			for o := range next {
				if err := benchFillOwner(ctx, s, o, threadsPerOwner, itemsPerThread, base); err != nil {
					errs <- err
				}
			}
		})
	}
	for o := range owners {
		next <- o
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.Logf("filled %d threads and %d items in %v", owners*threadsPerOwner, owners*threadsPerOwner*itemsPerThread, time.Since(start).Round(time.Millisecond))

	rng := rand.New(rand.NewPCG(1, 2))
	pick := func() (owner, thread string) {
		o, th := rng.IntN(owners), rng.IntN(threadsPerOwner)
		return fmt.Sprintf("user:%04d", o), threadID(o, th)
	}
	cases := []struct {
		name string
		call func() error
	}{
		{"ListThreads", func() error { // threads.list, first page
			owner, _ := pick()
			_, err := s.ListThreads(ctx, owner, "", 20, threadstore.Desc)
			return err
		}},
		{"ListThreadsAfter", func() error { // threads.list, a later page
			owner, thread := pick()
			_, err := s.ListThreads(ctx, owner, thread, 20, threadstore.Desc)
			return err
		}},
		{"ThreadAndItems", func() error { // threads.get_by_id: the thread and its oldest 20 items
			owner, thread := pick()
			if _, err := s.Thread(ctx, owner, thread); err != nil {
				return err
			}
			_, err := s.ListItems(ctx, owner, thread, "", 20, threadstore.Asc)
			return err
		}},
		{"ListItemsAfter", func() error { // items.list from a cursor
			owner, thread := pick()
			_, err := s.ListItems(ctx, owner, thread, "msg_15", 20, threadstore.Desc)
			return err
		}},
		{"RecentItems", func() error { // a turn's model history
			owner, thread := pick()
			_, err := s.RecentItems(ctx, owner, thread, 30)
			return err
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				t := time.Now()
				if err := c.call(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// benchFillOwner writes one owner's threads, an item a second apart from base.
func benchFillOwner(ctx context.Context, s threadstore.Store, o, threads, items int, base time.Time) error {
	owner := fmt.Sprintf("user:%04d", o)
	for th := range threads {
		id := threadID(o, th)
		first := base.Add(time.Duration((o*threads+th)*items) * time.Second)
		if _, err := s.CreateThread(ctx, threadstore.Thread{ID: id, Owner: owner, Title: "A thread about something", CreatedAt: first}); err != nil {
			return err
		}
		for i := range items {
			item := threadstore.Item{ID: fmt.Sprintf("msg_%02d", i), ThreadID: id, CreatedAt: first.Add(time.Duration(i+1) * time.Second), Type: "assistant_message", Data: benchItem(id, i)}
			if _, err := s.AddItem(ctx, owner, item); err != nil {
				return err
			}
		}
	}
	return nil
}

func threadID(owner, n int) string { return fmt.Sprintf("thr_%04d_%03d", owner, n) }

// benchItem is an assistant message of a typical size (about 600 bytes).
func benchItem(threadID string, i int) json.RawMessage {
	b, _ := json.Marshal(map[string]any{
		"id": fmt.Sprintf("msg_%02d", i), "thread_id": threadID, "type": "assistant_message", "created_at": "2026-01-01T00:00:00Z",
		"content": []any{map[string]any{"type": "output_text", "annotations": []any{},
			"text": "Here is an answer of a few sentences, as an assistant would give it. It says what the user asked about, " +
				"adds some detail and a suggestion or two, and ends with a question back. Nothing in it matters to the store, " +
				"which keeps it as an opaque JSON document next to a few indexed columns."}},
	})
	return b
}

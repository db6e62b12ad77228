package threadstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-chatkit/caddy-chatkit/internal/pgtest"
	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore/storetest"
)

// pgSecret is the password of the DSNs in these tests: it must never show in
// an error or a description.
const pgSecret = threadstore.PGSecret

func parsePG(t testing.TB, dsn string, opts threadstore.PostgresOptions) *threadstore.PostgresConfig {
	t.Helper()
	cfg, err := threadstore.ParsePostgres(dsn, opts)
	if err != nil {
		t.Fatalf("ParsePostgres: %v", err)
	}
	return cfg
}

func openPG(t testing.TB, dsn string, opts threadstore.PostgresOptions) *threadstore.PostgresStore {
	t.Helper()
	s, err := threadstore.OpenPostgres(context.Background(), parsePG(t, dsn, opts))
	if err != nil {
		t.Fatalf("OpenPostgres: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// rawPG connects to the database directly, as another program would.
func rawPG(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestPostgresConformance(t *testing.T) {
	threadstore.PGServer(t)
	storetest.Run(t, func(t *testing.T) threadstore.Store {
		return openPG(t, threadstore.PGFreshDatabase(t), threadstore.PostgresOptions{})
	})
}

// TestPostgresConformanceOneConn runs the suite on a pool of one connection:
// no method may hold a connection while it waits for a second one.
func TestPostgresConformanceOneConn(t *testing.T) {
	if testing.Short() {
		t.Skip("the suite again, on one connection")
	}
	threadstore.PGServer(t)
	storetest.Run(t, func(t *testing.T) threadstore.Store {
		return openPG(t, threadstore.PGFreshDatabase(t), threadstore.PostgresOptions{MaxConns: 1, QueryTimeout: 20 * time.Second})
	})
}

// TestPostgresConcurrentMigrations: processes starting at the same moment on a
// new database migrate it once, and all of them open.
func TestPostgresConcurrentMigrations(t *testing.T) {
	dsn := threadstore.PGFreshDatabase(t)
	const n = 8
	stores := make([]*threadstore.PostgresStore, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = threadstore.OpenPostgres(context.Background(), parsePG(t, dsn, threadstore.PostgresOptions{MaxConns: 2}))
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("open %d of %d: %v", i, n, err)
		}
		defer stores[i].Close()
	}
	ctx := context.Background()
	for i, s := range stores {
		if _, err := s.CreateThread(ctx, threadstore.Thread{ID: fmt.Sprintf("t%d", i), Owner: "u"}); err != nil {
			t.Fatalf("store %d: %v", i, err)
		}
	}
	raw := rawPG(t, dsn)
	versions := func() (rows, distinct, newest int) {
		t.Helper()
		if err := raw.QueryRow(ctx, `SELECT count(*), count(DISTINCT version), max(version) FROM chatkit.schema_version`).Scan(&rows, &distinct, &newest); err != nil {
			t.Fatal(err)
		}
		return
	}
	rows, distinct, newest := versions()
	if newest < 1 || rows != newest || distinct != newest {
		t.Fatalf("schema_version has %d rows, %d versions, newest %d: want each of 1..newest once", rows, distinct, newest)
	}
	// Opening a current schema again changes nothing.
	openPG(t, dsn, threadstore.PostgresOptions{}).Close()
	if r, _, _ := versions(); r != rows {
		t.Fatalf("schema_version has %d rows after reopening, had %d", r, rows)
	}
	p, err := stores[0].ListThreads(ctx, "u", "", 100, threadstore.Asc)
	if err != nil || len(p.Data) != n {
		t.Fatalf("threads seen by store 0: %d, %v", len(p.Data), err)
	}
}

func TestPostgresRefusesForeignOrNewerSchema(t *testing.T) {
	ctx := context.Background()
	dsn := threadstore.PGFreshDatabase(t)
	raw := rawPG(t, dsn)
	if _, err := raw.Exec(ctx, `CREATE SCHEMA chatkit; CREATE TABLE chatkit.posts (id int)`); err != nil {
		t.Fatal(err)
	}
	_, err := threadstore.OpenPostgres(ctx, parsePG(t, dsn, threadstore.PostgresOptions{}))
	if err == nil || !strings.Contains(err.Error(), "another program") || errors.Is(err, threadstore.ErrUnavailable) {
		t.Fatalf("opening another program's schema: %v", err)
	}
	var tables int
	if err := raw.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'chatkit'`).Scan(&tables); err != nil || tables != 1 {
		t.Fatalf("the foreign schema now has %d tables, %v", tables, err)
	}

	dsn = threadstore.PGFreshDatabase(t)
	openPG(t, dsn, threadstore.PostgresOptions{}).Close()
	raw = rawPG(t, dsn)
	if _, err := raw.Exec(ctx, `INSERT INTO chatkit.schema_version (version) VALUES (999)`); err != nil {
		t.Fatal(err)
	}
	_, err = threadstore.OpenPostgres(ctx, parsePG(t, dsn, threadstore.PostgresOptions{}))
	if err == nil || !strings.Contains(err.Error(), "schema version 999, newer than") {
		t.Fatalf("opening a newer schema: %v", err)
	}
}

// TestPostgresTwoPoolsOneThread is two Caddys on one database answering in
// one thread at once: Seq and the default times follow one order, nothing is
// lost or doubled, and each writer's items keep their order.
func TestPostgresTwoPoolsOneThread(t *testing.T) {
	ctx := context.Background()
	dsn := threadstore.PGFreshDatabase(t)
	stores := []*threadstore.PostgresStore{openPG(t, dsn, threadstore.PostgresOptions{}), openPG(t, dsn, threadstore.PostgresOptions{})}
	if _, err := stores[0].CreateThread(ctx, threadstore.Thread{ID: "t", Owner: "u"}); err != nil {
		t.Fatal(err)
	}
	const writers, each = 4, 30
	same := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var wg sync.WaitGroup
	errs := make(chan error, 2*writers*each)
	for w := range writers {
		for si, s := range stores {
			wg.Go(func() {
				for i := range each {
					id := fmt.Sprintf("s%d-w%d-%02d", si, w, i)
					it := threadstore.Item{ID: id, ThreadID: "t", Type: "user_message", Data: json.RawMessage(`{}`)}
					if w%2 == 0 {
						it.CreatedAt = same // ties: Seq alone orders them
					}
					if _, err := s.AddItem(ctx, "u", it); err != nil {
						errs <- err
						continue
					}
					if err := s.AddFeedback(ctx, "u", "t", []string{id}, threadstore.Positive); err != nil {
						errs <- err
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}
	for si, s := range stores {
		items, err := s.RecentItems(ctx, "u", "t", threadstore.MaxRecentItems)
		if err != nil || len(items) != 2*writers*each {
			t.Fatalf("store %d sees %d items, %v", si, len(items), err)
		}
		next := map[string]int{}
		var lastDefault threadstore.Item
		for i, it := range items {
			if i > 0 && it.CreatedAt.Equal(items[i-1].CreatedAt) && it.Seq <= items[i-1].Seq {
				t.Fatalf("Seq not increasing among equal times: %d after %d", it.Seq, items[i-1].Seq)
			}
			var sj, w, n int
			if _, err := fmt.Sscanf(it.ID, "s%d-w%d-%d", &sj, &w, &n); err != nil {
				t.Fatal(err)
			}
			key := fmt.Sprintf("s%d-w%d", sj, w)
			if n != next[key] {
				t.Fatalf("%s out of its writer's order (want index %d)", it.ID, next[key])
			}
			next[key]++
			if w%2 == 1 { // default times: the server's clock, in Seq order
				if lastDefault.ID != "" && (it.Seq <= lastDefault.Seq || it.CreatedAt.Before(lastDefault.CreatedAt)) {
					t.Fatalf("default-time items out of order: %+v after %+v", it, lastDefault)
				}
				lastDefault = it
			}
		}
		fb, err := s.Feedback(ctx, "u", "t")
		if err != nil || len(fb) != 2*writers*each {
			t.Fatalf("store %d sees %d feedback, %v", si, len(fb), err)
		}
	}
}

// TestPostgresLeaseAcrossPools: a claim made through one pool holds against
// another, as between two Caddys.
func TestPostgresLeaseAcrossPools(t *testing.T) {
	ctx := context.Background()
	dsn := threadstore.PGFreshDatabase(t)
	a, b := openPG(t, dsn, threadstore.PostgresOptions{}), openPG(t, dsn, threadstore.PostgresOptions{})
	la, err := a.ClaimThread(ctx, "thr", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ClaimThread(ctx, "thr", time.Minute); !errors.Is(err, threadstore.ErrBusy) {
		t.Fatalf("claim through the other pool: %v, want ErrBusy", err)
	}
	if err := la.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	lb, err := b.ClaimThread(ctx, "thr", time.Minute)
	if err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	if err := la.Renew(ctx); !errors.Is(err, threadstore.ErrBusy) {
		t.Fatalf("renewing a released lease: %v, want ErrBusy", err)
	}
	if err := lb.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// idleThreads makes n threads last touched long ago, with an item each.
func idleThreads(t *testing.T, s threadstore.Store, prefix string, n int) {
	t.Helper()
	ctx := context.Background()
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		id := fmt.Sprintf("%s%d", prefix, i)
		if _, err := s.CreateThread(ctx, threadstore.Thread{ID: id, Owner: "u", CreatedAt: old}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPostgresSweepOneAtATime: while another session holds the sweep lock, a
// sweep returns zeros at once; two stores sweeping together delete each idle
// thread once between them.
func TestPostgresSweepOneAtATime(t *testing.T) {
	ctx := context.Background()
	dsn := threadstore.PGFreshDatabase(t)
	a, b := openPG(t, dsn, threadstore.PostgresOptions{}), openPG(t, dsn, threadstore.PostgresOptions{})
	idleThreads(t, a, "idle", 20)
	cutoff := time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)

	other := rawPG(t, dsn)
	if _, err := other.Exec(ctx, `SELECT pg_advisory_lock($1, $2)`, threadstore.PGSweepLock[0], threadstore.PGSweepLock[1]); err != nil {
		t.Fatal(err)
	}
	d, err := a.DeleteIdleThreads(ctx, cutoff)
	if err != nil || d != (threadstore.Deleted{}) {
		t.Fatalf("sweep while another holds the lock: %+v, %v; want zeros", d, err)
	}
	if p, err := a.ListThreads(ctx, "u", "", 100, threadstore.Asc); err != nil || len(p.Data) != 20 {
		t.Fatalf("threads after a skipped sweep: %d, %v", len(p.Data), err)
	}
	if _, err := other.Exec(ctx, `SELECT pg_advisory_unlock($1, $2)`, threadstore.PGSweepLock[0], threadstore.PGSweepLock[1]); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	var ds [2]threadstore.Deleted
	var es [2]error
	for i, s := range []*threadstore.PostgresStore{a, b} {
		wg.Go(func() { ds[i], es[i] = s.DeleteIdleThreads(ctx, cutoff) })
	}
	wg.Wait()
	if es[0] != nil || es[1] != nil || ds[0].Threads+ds[1].Threads != 20 {
		t.Fatalf("two sweeps: %+v %v, %+v %v; want 20 threads between them", ds[0], es[0], ds[1], es[1])
	}
	// The lock was let go: a later sweep runs (and finds nothing left).
	if _, err := other.Exec(ctx, `SELECT pg_advisory_lock($1, $2)`, threadstore.PGSweepLock[0], threadstore.PGSweepLock[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, `SELECT pg_advisory_unlock($1, $2)`, threadstore.PGSweepLock[0], threadstore.PGSweepLock[1]); err != nil {
		t.Fatal(err)
	}
}

// TestPostgresSweepBatches: a sweep larger than one transaction's batch gets
// everything, and leaves live threads.
func TestPostgresSweepBatches(t *testing.T) {
	ctx := context.Background()
	dsn := threadstore.PGFreshDatabase(t)
	s := openPG(t, dsn, threadstore.PostgresOptions{})
	raw := rawPG(t, dsn)
	// Filled directly: 1,234 idle threads with an item each, more than two batches.
	if _, err := raw.Exec(ctx, `INSERT INTO chatkit.threads (id, owner, status, created_at, updated_at)
		SELECT 'old' || g, 'u', '{}', '2020-01-01', '2020-01-01' FROM generate_series(1, 1234) g;
		INSERT INTO chatkit.items (thread_id, id, created_at, type, data)
		SELECT 'old' || g, 'm', '2020-01-01', 'user_message', '{}' FROM generate_series(1, 1234) g`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateThread(ctx, threadstore.Thread{ID: "live", Owner: "u"}); err != nil {
		t.Fatal(err)
	}
	d, err := s.DeleteIdleThreads(ctx, time.Now().Add(-time.Hour))
	if err != nil || d != (threadstore.Deleted{Threads: 1234, Items: 1234}) {
		t.Fatalf("DeleteIdleThreads = %+v, %v", d, err)
	}
	if _, err := s.Thread(ctx, "u", "live"); err != nil {
		t.Fatalf("the live thread: %v", err)
	}
}

func TestPostgresBadTextIsInvalid(t *testing.T) {
	ctx := context.Background()
	s := openPG(t, threadstore.PGFreshDatabase(t), threadstore.PostgresOptions{})
	_, err := s.CreateThread(ctx, threadstore.Thread{ID: "t\x00", Owner: "u"})
	if !errors.Is(err, threadstore.ErrInvalid) {
		t.Fatalf("a NUL byte in an id: %v, want ErrInvalid", err)
	}
	if _, err := s.CreateThread(ctx, threadstore.Thread{ID: "t", Owner: "u"}); err != nil {
		t.Fatal(err)
	}
	title := "bad \xff utf-8"
	if _, err := s.UpdateThread(ctx, "u", "t", threadstore.ThreadUpdate{Title: &title}); !errors.Is(err, threadstore.ErrInvalid) {
		t.Fatalf("invalid UTF-8 in a title: %v, want ErrInvalid", err)
	}
	// JSON with a \u0000 escape is kept as it was sent.
	data := json.RawMessage(`{"text":"a\u0000b"}`)
	it, err := s.AddItem(ctx, "u", threadstore.Item{ID: "m", ThreadID: "t", Type: "user_message", Data: data})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Item(ctx, "u", "t", it.ID)
	if err != nil || string(got.Data) != string(data) {
		t.Fatalf("item data %s, %v; want %s", got.Data, err, data)
	}
}

func TestPostgresDSNErrorsHidePassword(t *testing.T) {
	for _, dsn := range []string{
		"postgres://alice:" + pgSecret + "@db.example:notaport/chat",
		"postgres://alice:" + pgSecret + "@db.example:99999/chat",
		"postgres://alice:" + pgSecret + "@[::1/chat",
		"postgres://alice:" + pgSecret + "@db.example/chat%zz",
		"postgres://alice:" + pgSecret + "@db.example/chat?sslmode=sometimes",
		"postgres://alice:" + pgSecret + "@db.example/chat?pool_max_conns=many",
		"postgres://alice:" + pgSecret + "@db.example/chat?connect_timeout=soon",
		"postgres://alice:" + pgSecret + ":more@db.example:5432:6543/chat",
		"postgres://db.example/chat?password=" + pgSecret + "&target_session_attrs=bogus",
		"host=db.example password=" + pgSecret + " port=notaport",
		"host=db.example password='" + pgSecret,
		"host=db.example password=" + pgSecret + " sslmode=sometimes",
		"user=alice password=" + pgSecret + " dbname",
	} {
		_, err := threadstore.ParsePostgres(dsn, threadstore.PostgresOptions{})
		if err == nil {
			t.Errorf("ParsePostgres(%q) accepted it", dsn)
			continue
		}
		msg := err.Error()
		for _, part := range []string{pgSecret, "s3cr3t", "xyzzy"} {
			if strings.Contains(msg, part) {
				t.Errorf("ParsePostgres error shows the password: %s", msg)
			}
		}
		if !strings.Contains(msg, "DSN") {
			t.Errorf("ParsePostgres error does not say what is wrong: %s", msg)
		}
		t.Logf("%s", msg)
	}
	for _, bad := range []struct {
		dsn  string
		opts threadstore.PostgresOptions
	}{
		{"", threadstore.PostgresOptions{}},
		{"  ", threadstore.PostgresOptions{}},
		{"postgres://h/db", threadstore.PostgresOptions{QueryTimeout: -time.Second}},
		{"postgres://h/db", threadstore.PostgresOptions{MaxConns: -1}},
	} {
		if _, err := threadstore.ParsePostgres(bad.dsn, bad.opts); err == nil {
			t.Errorf("ParsePostgres(%q, %+v) accepted it", bad.dsn, bad.opts)
		}
	}
}

func TestPostgresDescribeHidesPassword(t *testing.T) {
	cfg := parsePG(t, "postgres://alice:"+pgSecret+"@db.example:6543/chat?sslmode=disable", threadstore.PostgresOptions{})
	desc := cfg.Describe()
	if desc != "postgres://db.example:6543/chat (user alice)" {
		t.Fatalf("Describe() = %q", desc)
	}
	for _, s := range []string{desc, cfg.String(), fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg)} {
		if strings.Contains(s, pgSecret) {
			t.Fatalf("the description shows the password: %s", s)
		}
	}
	kv := parsePG(t, "host=db.example port=7000 dbname=chat user=bob password="+pgSecret, threadstore.PostgresOptions{})
	if got := kv.Describe(); got != "postgres://db.example:7000/chat (user bob)" {
		t.Fatalf("Describe() of key=value = %q", got)
	}
	s := openPG(t, threadstore.PGFreshDatabase(t), threadstore.PostgresOptions{})
	if strings.Contains(s.Describe(), pgSecret) || !strings.Contains(s.Describe(), "chatkit_test_") {
		t.Fatalf("store Describe() = %q", s.Describe())
	}
}

// TestPostgresDownIsUnavailable: no server on the port, or one that accepts and
// never answers: Open fails with ErrUnavailable, within the query timeout for
// the silent one, and without the password.
func TestPostgresDownIsUnavailable(t *testing.T) {
	ctx := context.Background()
	refused := fmt.Sprintf("postgres://alice:%s@127.0.0.1:%d/chat", pgSecret, pgtest.FreePort(t))
	_, err := threadstore.OpenPostgres(ctx, parsePG(t, refused, threadstore.PostgresOptions{}))
	if !errors.Is(err, threadstore.ErrUnavailable) || strings.Contains(err.Error(), pgSecret) {
		t.Fatalf("open on a closed port: %v", err)
	}
	t.Logf("closed port: %v", err)

	// A silent server: it accepts and never says a word.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	const timeout = 300 * time.Millisecond
	silent := fmt.Sprintf("postgres://alice:%s@%s/chat", pgSecret, l.Addr())
	start := time.Now()
	_, err = threadstore.OpenPostgres(ctx, parsePG(t, silent, threadstore.PostgresOptions{QueryTimeout: timeout}))
	took := time.Since(start)
	if !errors.Is(err, threadstore.ErrUnavailable) || strings.Contains(err.Error(), pgSecret) {
		t.Fatalf("open on a silent server: %v", err)
	}
	// The bound is what is tested, with room for a loaded machine.
	if took > timeout+5*time.Second {
		t.Fatalf("open on a silent server took %v, query timeout %v", took, timeout)
	}
	t.Logf("silent server: %v after %v", err, took.Round(time.Millisecond))
}

// TestPostgresRecoversFromLostConnections: the server ends every session of
// the store (as a restart does): a call meanwhile may fail as ErrUnavailable,
// and the next ones are served on new connections.
func TestPostgresRecoversFromLostConnections(t *testing.T) {
	ctx := context.Background()
	dsn := threadstore.PGFreshDatabase(t)
	s := openPG(t, dsn, threadstore.PostgresOptions{})
	if _, err := s.CreateThread(ctx, threadstore.Thread{ID: "t", Owner: "u"}); err != nil {
		t.Fatal(err)
	}
	raw := rawPG(t, dsn)
	var killed int
	if err := raw.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&killed); err != nil || killed == 0 {
		t.Fatalf("terminated %d sessions, %v", killed, err)
	}
	if _, err := s.Thread(ctx, "u", "t"); err != nil && !errors.Is(err, threadstore.ErrUnavailable) {
		t.Fatalf("a call on a terminated connection: %v, want ErrUnavailable or success", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Thread(ctx, "u", "t")
		if err == nil {
			break
		}
		if !errors.Is(err, threadstore.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("after the sessions were ended: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPostgresExportOrder(t *testing.T) {
	ctx := context.Background()
	s := openPG(t, threadstore.PGFreshDatabase(t), threadstore.PostgresOptions{})
	for _, id := range []string{"b", "a"} {
		if _, err := s.CreateThread(ctx, threadstore.Thread{ID: id, Owner: "u", CreatedAt: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}); err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"m2", "m1"} {
			if _, err := s.AddItem(ctx, "u", threadstore.Item{ID: m, ThreadID: id, Type: "user_message", Data: json.RawMessage(`{}`)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	exp, err := s.ExportOwner(ctx, "u")
	if err != nil || len(exp.Threads) != 2 {
		t.Fatalf("ExportOwner: %+v, %v", exp, err)
	}
	var got []string
	for _, te := range exp.Threads {
		for _, it := range te.Items {
			got = append(got, te.Thread.ID+"/"+it.ID)
		}
	}
	if want := []string{"b/m2", "b/m1", "a/m2", "a/m1"}; !slices.Equal(got, want) {
		t.Fatalf("export order %v, want %v (threads by creation, items by insertion)", got, want)
	}
	if _, err := s.ExportOwner(ctx, "nobody"); !errors.Is(err, threadstore.ErrNotFound) {
		t.Fatalf("export of an unknown owner: %v", err)
	}
}

func TestPostgresDeleteOwner(t *testing.T) {
	ctx := context.Background()
	s := openPG(t, threadstore.PGFreshDatabase(t), threadstore.PostgresOptions{})
	for _, th := range []struct{ owner, id string }{{"alice", "a1"}, {"alice", "a2"}, {"bob", "b1"}} {
		if _, err := s.CreateThread(ctx, threadstore.Thread{ID: th.id, Owner: th.owner}); err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"m1", "m2"} {
			if _, err := s.AddItem(ctx, th.owner, threadstore.Item{ID: m, ThreadID: th.id, Type: "user_message", Data: json.RawMessage(`{}`)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.AddFeedback(ctx, th.owner, th.id, []string{"m2"}, threadstore.Negative); err != nil {
			t.Fatal(err)
		}
		for _, a := range []string{"att_" + th.id, "free_" + th.id} {
			if _, err := s.CreateAttachment(ctx, threadstore.Attachment{ID: a, Owner: th.owner, Name: "f", MimeType: "text/plain"}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.UploadAttachment(ctx, th.owner, a, "text/plain", []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.AttachToThread(ctx, th.owner, th.id, []string{"att_" + th.id}); err != nil {
			t.Fatal(err)
		}
	}
	exp, err := s.ExportOwner(ctx, "alice")
	if err != nil || len(exp.Threads) != 2 || len(exp.Attachments) != 4 || len(exp.Threads[0].Items) != 2 || len(exp.Threads[0].Feedback) != 1 ||
		string(exp.Attachments[0].Data) != "x" {
		t.Fatalf("ExportOwner(alice) = %+v, %v", exp, err)
	}
	d, err := s.DeleteOwner(ctx, "alice")
	if err != nil || d != (threadstore.Deleted{Threads: 2, Items: 4, Feedback: 2, Attachments: 4}) {
		t.Fatalf("DeleteOwner(alice) = %+v, %v", d, err)
	}
	if _, err := s.ExportOwner(ctx, "alice"); !errors.Is(err, threadstore.ErrNotFound) {
		t.Fatalf("export after delete: %v", err)
	}
	if d, err := s.DeleteOwner(ctx, "alice"); err != nil || d != (threadstore.Deleted{}) {
		t.Fatalf("second DeleteOwner = %+v, %v", d, err)
	}
	exp, err = s.ExportOwner(ctx, "bob")
	if err != nil || len(exp.Threads) != 1 || len(exp.Attachments) != 2 || len(exp.Threads[0].Items) != 2 {
		t.Fatalf("bob after alice's delete: %+v, %v", exp, err)
	}
}

// pgCluster starts a PostgreSQL server of the test's own that asks for
// passwords (the superuser postgres has password pw), and returns its address.
func pgCluster(t *testing.T, pw string) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", pgtest.StartCluster(t, pw).Port)
}

// TestPostgresRefusedPassword: a server that refuses the password is
// ErrUnavailable (Caddy starts and retries), and the error does not show it.
func TestPostgresRefusedPassword(t *testing.T) {
	threadstore.PGServer(t)
	addr := pgCluster(t, "the-right-one")
	ctx := context.Background()
	_, err := threadstore.OpenPostgres(ctx, parsePG(t, "postgres://postgres:"+pgSecret+"@"+addr+"/postgres", threadstore.PostgresOptions{}))
	if !errors.Is(err, threadstore.ErrUnavailable) || strings.Contains(err.Error(), pgSecret) || !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("open with a wrong password: %v", err)
	}
	t.Logf("wrong password: %v", err)
	s := openPG(t, "postgres://postgres:the-right-one@"+addr+"/postgres", threadstore.PostgresOptions{})
	if _, err := s.CreateThread(ctx, threadstore.Thread{ID: "t", Owner: "u"}); err != nil {
		t.Fatalf("with the right password: %v", err)
	}
}

// TestPostgresLockedIsUnavailable: a thread's row lock held elsewhere past the
// query timeout (another process stalled mid-write) is ErrUnavailable, the
// reads keep answering meanwhile, and the write goes through once it is let go.
func TestPostgresLockedIsUnavailable(t *testing.T) {
	ctx := context.Background()
	dsn := threadstore.PGFreshDatabase(t)
	s := openPG(t, dsn, threadstore.PostgresOptions{QueryTimeout: time.Second})
	if _, err := s.CreateThread(ctx, threadstore.Thread{ID: "t", Owner: "u"}); err != nil {
		t.Fatal(err)
	}
	raw := rawPG(t, dsn)
	tx, err := raw.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1 FROM chatkit.threads WHERE id = 't' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	item := threadstore.Item{ID: "m", ThreadID: "t", Type: "user_message", Data: json.RawMessage(`{}`)}
	_, err = s.AddItem(ctx, "u", item)
	if !errors.Is(err, threadstore.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write under a held row lock past the query timeout: %v", err)
	}
	if _, err := s.Thread(ctx, "u", "t"); err != nil {
		t.Fatalf("read under a held row lock: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddItem(ctx, "u", item); err != nil {
		t.Fatalf("write after the lock was let go: %v", err)
	}
	if items, err := s.RecentItems(ctx, "u", "t", 10); err != nil || len(items) != 1 {
		t.Fatalf("items: %d, %v; want the one written after the lock", len(items), err)
	}
}

package threadstore_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore/storetest"
)

func openSQLite(t *testing.T, path string, opts threadstore.SQLiteOptions) *threadstore.SQLiteStore {
	t.Helper()
	s, err := threadstore.OpenSQLite(context.Background(), path, opts)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSQLiteConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) threadstore.Store {
		return openSQLite(t, filepath.Join(t.TempDir(), "threads.db"), threadstore.SQLiteOptions{})
	})
}

// rawDB opens the file directly, as another program would.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

func pragma(t *testing.T, db *sql.DB, name string) int {
	t.Helper()
	var v int
	if err := db.QueryRow("PRAGMA " + name).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSQLiteReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "threads.db")
	s := openSQLite(t, path, threadstore.SQLiteOptions{})
	title := "kept"
	created := time.Date(2026, 1, 2, 3, 4, 5, 678000, time.UTC)
	if _, err := s.CreateThread(ctx, threadstore.Thread{ID: "thr_1", Owner: "u", CreatedAt: created}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateThread(ctx, "u", "thr_1", threadstore.ThreadUpdate{Title: &title, Metadata: json.RawMessage(`{"m":1}`)}); err != nil {
		t.Fatal(err)
	}
	first, err := s.AddItem(ctx, "u", threadstore.Item{ID: "msg_1", ThreadID: "thr_1", CreatedAt: created, Type: "user_message", Data: json.RawMessage(`{"id":"msg_1"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddFeedback(ctx, "u", "thr_1", []string{"msg_1"}, threadstore.Negative); err != nil {
		t.Fatal(err)
	}
	before, err := s.Thread(ctx, "u", "thr_1")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openSQLite(t, path, threadstore.SQLiteOptions{})
	th, err := s2.Thread(ctx, "u", "thr_1")
	if err != nil {
		t.Fatal(err)
	}
	if th.Title != "kept" || !th.CreatedAt.Equal(created) || !th.UpdatedAt.Equal(before.UpdatedAt) || string(th.Metadata) != `{"m":1}` || string(th.Status) != `{"type":"active"}` {
		t.Fatalf("reopened thread %+v, before %+v", th, before)
	}
	it, err := s2.Item(ctx, "u", "thr_1", "msg_1")
	if err != nil || it.Seq != first.Seq || string(it.Data) != `{"id":"msg_1"}` || !it.CreatedAt.Equal(created) {
		t.Fatalf("reopened item %+v, %v", it, err)
	}
	fb, err := s2.Feedback(ctx, "u", "thr_1")
	if err != nil || len(fb) != 1 || fb[0].Kind != threadstore.Negative {
		t.Fatalf("reopened feedback %+v, %v", fb, err)
	}
	// Seq keeps increasing across the reopen.
	next, err := s2.AddItem(ctx, "u", threadstore.Item{ID: "msg_2", ThreadID: "thr_1", CreatedAt: created, Type: "assistant_message", Data: json.RawMessage(`{}`)})
	if err != nil || next.Seq <= first.Seq {
		t.Fatalf("item after reopen %+v, %v", next, err)
	}
}

func TestSQLiteCreatesPrivateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "chatkit")
	path := filepath.Join(dir, "threads.db")
	s := openSQLite(t, path, threadstore.SQLiteOptions{})
	if _, err := s.CreateThread(context.Background(), threadstore.Thread{ID: "t", Owner: "u"}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, path: 0o600, path + "-wal": 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
	db := rawDB(t, path)
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v", mode, err)
	}
}

func TestSQLiteMigratesEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "threads.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openSQLite(t, path, threadstore.SQLiteOptions{})
	if _, err := s.CreateThread(context.Background(), threadstore.Thread{ID: "t", Owner: "u"}); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, path)
	if v := pragma(t, db, "user_version"); v < 1 {
		t.Fatalf("user_version = %d after migration", v)
	}
	version := pragma(t, db, "user_version")
	s.Close()
	// Opening again leaves a current schema as it is.
	openSQLite(t, path, threadstore.SQLiteOptions{}).Close()
	if v := pragma(t, db, "user_version"); v != version {
		t.Fatalf("user_version %d after reopening, was %d", v, version)
	}
}

func TestSQLiteRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "threads.db")
	openSQLite(t, path, threadstore.SQLiteOptions{}).Close()
	db := rawDB(t, path)
	if _, err := db.Exec("PRAGMA user_version = 999"); err != nil {
		t.Fatal(err)
	}
	_, err := threadstore.OpenSQLite(context.Background(), path, threadstore.SQLiteOptions{})
	if err == nil || !strings.Contains(err.Error(), "schema version 999, newer than") {
		t.Fatalf("opening a newer schema: %v", err)
	}
	if v := pragma(t, db, "user_version"); v != 999 {
		t.Fatalf("user_version changed to %d", v)
	}
}

func TestSQLiteRefusesForeignDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wordpress.db")
	db := rawDB(t, path)
	// It even uses user_version, as many programs do.
	if _, err := db.Exec("CREATE TABLE wp_posts (id INTEGER PRIMARY KEY); PRAGMA user_version = 1"); err != nil {
		t.Fatal(err)
	}
	_, err := threadstore.OpenSQLite(context.Background(), path, threadstore.SQLiteOptions{})
	if err == nil || !strings.Contains(err.Error(), "another program") {
		t.Fatalf("opening another program's database: %v", err)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM sqlite_schema").Scan(&n); err != nil || n != 1 {
		t.Fatalf("the foreign database now has %d schema objects, %v", n, err)
	}

	// Nor a file that is not a database at all.
	junk := filepath.Join(t.TempDir(), "junk.db")
	if err := os.WriteFile(junk, []byte(strings.Repeat("not a database ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := threadstore.OpenSQLite(context.Background(), junk, threadstore.SQLiteOptions{}); err == nil {
		t.Fatal("opened a file that is not a database")
	}
}

// TestSQLiteTwoStoresOneFile is a config reload: the new store opens the file while the
// old one still writes. Immediate transactions and the busy timeout queue the writers.
func TestSQLiteTwoStoresOneFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "threads.db")
	stores := []*threadstore.SQLiteStore{openSQLite(t, path, threadstore.SQLiteOptions{}), openSQLite(t, path, threadstore.SQLiteOptions{})}
	if _, err := stores[0].CreateThread(ctx, threadstore.Thread{ID: "t", Owner: "u"}); err != nil {
		t.Fatal(err)
	}
	const each = 40
	var wg sync.WaitGroup
	errs := make(chan error, 4*each)
	for i, s := range stores {
		wg.Go(func() {
			for j := range each {
				id := fmt.Sprintf("s%d-%d", i, j)
				if _, err := s.AddItem(ctx, "u", threadstore.Item{ID: id, ThreadID: "t", Type: "user_message", Data: json.RawMessage(`{}`)}); err != nil {
					errs <- err
				}
				// This one reads before it writes: in a deferred transaction it would
				// fail with SQLITE_BUSY whenever the other store wrote in between.
				if err := s.AddFeedback(ctx, "u", "t", []string{id}, threadstore.Positive); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}
	for _, s := range stores {
		items, err := s.RecentItems(ctx, "u", "t", 2*each)
		if err != nil || len(items) != 2*each {
			t.Fatalf("items seen: %d, %v", len(items), err)
		}
		for i := 1; i < len(items); i++ {
			if items[i].Seq <= items[i-1].Seq {
				t.Fatalf("Seq not increasing across stores: %d after %d", items[i].Seq, items[i-1].Seq)
			}
		}
		if fb, err := s.Feedback(ctx, "u", "t"); err != nil || len(fb) != 2*each {
			t.Fatalf("feedback seen: %d, %v", len(fb), err)
		}
	}
}

// TestSQLiteLockedIsUnavailable: a lock held elsewhere past the deadline (or past the
// busy timeout) is ErrUnavailable, and the read side keeps answering meanwhile.
func TestSQLiteLockedIsUnavailable(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "threads.db")
	s := openSQLite(t, path, threadstore.SQLiteOptions{BusyTimeout: time.Minute})
	if _, err := s.CreateThread(ctx, threadstore.Thread{ID: "t", Owner: "u"}); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, path)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(ctx, "ROLLBACK")

	item := threadstore.Item{ID: "m", ThreadID: "t", Type: "user_message", Data: json.RawMessage(`{}`)}
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = s.AddItem(dctx, "u", item)
	if !errors.Is(err, threadstore.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write under a held lock past the deadline: %v", err)
	}

	short := openSQLite(t, path, threadstore.SQLiteOptions{BusyTimeout: 50 * time.Millisecond})
	_, err = short.AddItem(ctx, "u", item)
	if !errors.Is(err, threadstore.ErrUnavailable) {
		t.Fatalf("write under a held lock past the busy timeout: %v", err)
	}
	if _, err := s.Thread(ctx, "u", "t"); err != nil {
		t.Fatalf("read under a held write lock: %v", err)
	}

	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddItem(ctx, "u", item); err != nil {
		t.Fatalf("write after the lock was released: %v", err)
	}
}

func TestSQLiteOpenErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := threadstore.OpenSQLite(ctx, "", threadstore.SQLiteOptions{}); err == nil {
		t.Fatal("opened an empty path")
	}
	dir := t.TempDir()
	if _, err := threadstore.OpenSQLite(ctx, dir, threadstore.SQLiteOptions{}); err == nil {
		t.Fatal("opened a directory")
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := threadstore.OpenSQLite(ctx, filepath.Join(file, "threads.db"), threadstore.SQLiteOptions{}); err == nil {
		t.Fatal("opened a path under a regular file")
	}
	// Odd characters in the path are a file name, not DSN parameters.
	odd := filepath.Join(dir, "a?b#c%20d e.db")
	s := openSQLite(t, odd, threadstore.SQLiteOptions{})
	if _, err := s.CreateThread(ctx, threadstore.Thread{ID: "t", Owner: "u"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(odd); err != nil {
		t.Fatalf("the database is not at the path given: %v", err)
	}
}

// TestSQLiteBackup: the copy opens as a thread store with the same data,
// taken while writes go on; an existing file or a relative path is refused.
func TestSQLiteBackup(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openSQLite(t, filepath.Join(dir, "threads.db"), threadstore.SQLiteOptions{})
	for i := range 20 {
		id := fmt.Sprintf("thr_%02d", i)
		if _, err := s.CreateThread(ctx, threadstore.Thread{ID: id, Owner: "user:a"}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AddItem(ctx, "user:a", threadstore.Item{ID: "m1", ThreadID: id, Type: "user_message", Data: json.RawMessage(`{"x":1}`)}); err != nil {
			t.Fatal(err)
		}
	}
	// A writer keeps going during the copy: the copy is one snapshot of it.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.AddItem(ctx, "user:a", threadstore.Item{ID: fmt.Sprintf("w%d", i), ThreadID: "thr_00", Type: "user_message", Data: json.RawMessage(`{}`)}); err != nil {
				t.Errorf("write during the backup: %v", err)
				return
			}
		}
	})
	to := filepath.Join(dir, "backup.db")
	err := s.Backup(ctx, to)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(to); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, %v; want mode 0600", fi, err)
	}
	if err := s.Backup(ctx, to); !errors.Is(err, threadstore.ErrExists) {
		t.Fatalf("backup onto an existing file: %v, want ErrExists", err)
	}
	// Two copies to one new path at once: exactly one is written.
	race := filepath.Join(dir, "race.db")
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- s.Backup(ctx, race) }()
	}
	e1, e2 := <-errs, <-errs
	if (e1 == nil) == (e2 == nil) || !errors.Is(cmpOr(e1, e2), threadstore.ErrExists) {
		t.Fatalf("two backups to one path: %v and %v; want one written, one ErrExists", e1, e2)
	}
	if err := s.Backup(ctx, "relative.db"); !errors.Is(err, threadstore.ErrInvalid) {
		t.Fatalf("backup to a relative path: %v, want ErrInvalid", err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".backup.db.*")); len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
	copied := openSQLite(t, to, threadstore.SQLiteOptions{})
	p, err := copied.ListThreads(ctx, "user:a", "", 100, threadstore.Asc)
	if err != nil || len(p.Data) != 20 {
		t.Fatalf("threads in the backup: %d, %v", len(p.Data), err)
	}
	items, err := copied.ListItems(ctx, "user:a", "thr_01", "", 10, threadstore.Asc)
	if err != nil || len(items.Data) != 1 {
		t.Fatalf("items in the backup: %+v, %v", items, err)
	}
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// TestSQLiteConcurrentFirstOpen: openers of a file that does not exist yet,
// all at once (two Caddys starting on one SQLite file), all succeed. One in
// about a hundred failed with SQLITE_BUSY while another switched the new
// file to WAL mode.
func TestSQLiteConcurrentFirstOpen(t *testing.T) {
	const rounds, openers = 100, 3
	for round := range rounds {
		path := filepath.Join(t.TempDir(), "threads.db")
		var wg sync.WaitGroup
		errs := make([]error, openers)
		for i := range errs {
			wg.Go(func() {
				s, err := threadstore.OpenSQLite(context.Background(), path, threadstore.SQLiteOptions{})
				if err == nil {
					err = s.Close()
				}
				errs[i] = err
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d of %d openers at once: %v", round, openers, err)
		}
	}
}

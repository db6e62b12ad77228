package threadstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSQLiteMigratesVersion1 opens a database written before attachments existed:
// its threads stay, and the attachments table arrives with the version bump.
func TestSQLiteMigratesVersion1(t *testing.T) {
	ctx := context.Background()
	s := openOldSchema(t, 1, oldThreadRow)
	var version int
	if err := s.r.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil || version != len(sqliteMigrations) || version < 2 {
		t.Fatalf("user_version = %d, %v; want %d", version, err, len(sqliteMigrations))
	}
	if _, err := s.Thread(ctx, "user:a", "thr_old"); err != nil {
		t.Fatalf("the version 1 thread: %v", err)
	}
	if _, err := s.CreateAttachment(ctx, Attachment{ID: "atc_1", Owner: "user:a", Name: "a.png", MimeType: "image/png"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UploadAttachment(ctx, "user:a", "atc_1", "image/png", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AttachToThread(ctx, "user:a", "thr_old", []string{"atc_1"}); err != nil {
		t.Fatal(err)
	}
	if d, err := s.DeleteThread(ctx, "user:a", "thr_old"); err != nil || d.Attachments != 1 {
		t.Fatalf("DeleteThread = %+v, %v", d, err)
	}
}

// TestSQLiteMigratesVersion2 opens a database written before the owner's
// indexes: its threads and attachments stay, the indexes arrive with the
// version bump, and the owner's methods work on the old rows.
func TestSQLiteMigratesVersion2(t *testing.T) {
	ctx := context.Background()
	s := openOldSchema(t, 2, oldThreadRow+`;
		INSERT INTO attachments (id, owner, thread_id, name, mime_type, size, created_at, data) VALUES ('atc_old', 'user:a', 'thr_old', 'a.png', 'image/png', 1, 1, x'00')`)
	var version, indexes int
	if err := s.r.QueryRow(`SELECT (SELECT user_version FROM pragma_user_version),
		(SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name IN ('threads_by_update', 'attachments_by_owner'))`).Scan(&version, &indexes); err != nil ||
		version != len(sqliteMigrations) || version < 3 || indexes != 2 {
		t.Fatalf("user_version = %d, owner indexes = %d, %v; want %d and 2", version, indexes, err, len(sqliteMigrations))
	}
	exp, err := s.ExportOwner(ctx, "user:a")
	if err != nil || len(exp.Threads) != 1 || len(exp.Attachments) != 1 {
		t.Fatalf("ExportOwner of the version 2 rows = %+v, %v", exp, err)
	}
	if d, err := s.DeleteIdleThreads(ctx, fromMicros(2)); err != nil || d != (Deleted{Threads: 1, Attachments: 1}) {
		t.Fatalf("DeleteIdleThreads = %+v, %v", d, err)
	}
}

// TestSQLiteMigratesVersion3 opens a database written before thread leases:
// its threads stay, and the leases table arrives with the version bump.
func TestSQLiteMigratesVersion3(t *testing.T) {
	ctx := context.Background()
	s := openOldSchema(t, 3, oldThreadRow)
	var version int
	if err := s.r.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil || version != len(sqliteMigrations) || version < 4 {
		t.Fatalf("user_version = %d, %v; want %d", version, err, len(sqliteMigrations))
	}
	if _, err := s.Thread(ctx, "user:a", "thr_old"); err != nil {
		t.Fatalf("the version 3 thread: %v", err)
	}
	l, err := s.ClaimThread(ctx, "thr_old", time.Minute)
	if err != nil {
		t.Fatalf("claiming the version 3 thread: %v", err)
	}
	if _, err := s.ClaimThread(ctx, "thr_old", time.Minute); !errors.Is(err, ErrBusy) {
		t.Fatalf("second claim: %v, want ErrBusy", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// oldThreadRow is the thread an old database holds: thr_old of user:a.
const oldThreadRow = `INSERT INTO threads (id, owner, status, created_at, updated_at) VALUES ('thr_old', 'user:a', '{"type":"active"}', 1, 1)`

// openOldSchema writes a database of schema version (its first version
// migrations) holding rows, then opens it as a store, which migrates it.
func openOldSchema(t *testing.T, version int, rows string) *SQLiteStore {
	t.Helper()
	path := filepath.Join(t.TempDir(), "threads.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	schema := strings.Join(sqliteMigrations[:version], ";")
	if _, err := db.Exec(schema + fmt.Sprintf("; PRAGMA application_id = %d; PRAGMA user_version = %d;\n", sqliteAppID, version) + rows); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := OpenSQLite(context.Background(), path, SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

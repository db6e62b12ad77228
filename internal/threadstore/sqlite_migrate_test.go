package threadstore

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
)

// TestSQLiteMigratesVersion1 opens a database written before attachments existed:
// its threads stay, and the attachments table arrives with the version bump.
func TestSQLiteMigratesVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "threads.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(sqliteMigrations[0] + fmt.Sprintf(`; PRAGMA application_id = %d; PRAGMA user_version = 1;
		INSERT INTO threads (id, owner, status, created_at, updated_at) VALUES ('thr_old', 'user:a', '{"type":"active"}', 1, 1)`, sqliteAppID)); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := OpenSQLite(ctx, path, SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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

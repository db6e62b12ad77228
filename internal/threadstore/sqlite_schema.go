package threadstore

import (
	"context"
	"database/sql"
	"fmt"
)

// sqliteAppID marks a database as a thread store in its header (PRAGMA application_id),
// so that a path pointing at some other program's database is refused, not altered.
const sqliteAppID = 0x43486b54 // "CHkT"

// sqliteMigrations[i] takes the schema from version i to i+1 (PRAGMA user_version).
// Append only: a released step is never edited, a change is a new step.
var sqliteMigrations = []string{
	// 1: threads, items, feedback.
	`CREATE TABLE threads (
		seq        INTEGER PRIMARY KEY,
		id         TEXT NOT NULL UNIQUE,
		owner      TEXT NOT NULL,
		title      TEXT NOT NULL DEFAULT '',
		status     TEXT NOT NULL,
		metadata   TEXT,
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	) STRICT;
	CREATE INDEX threads_by_owner ON threads (owner, created_at, seq);

	CREATE TABLE items (
		seq        INTEGER PRIMARY KEY,
		thread_id  TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
		id         TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		type       TEXT NOT NULL,
		data       TEXT NOT NULL,
		UNIQUE (thread_id, id)
	) STRICT;
	CREATE INDEX items_by_time ON items (thread_id, created_at, seq);

	CREATE TABLE feedback (
		thread_id  TEXT NOT NULL,
		item_id    TEXT NOT NULL,
		kind       TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		PRIMARY KEY (thread_id, item_id),
		FOREIGN KEY (thread_id, item_id) REFERENCES items (thread_id, id) ON DELETE CASCADE
	) STRICT, WITHOUT ROWID;`,
	// 2: attachments. thread_id is NULL until a message names the attachment;
	// data is NULL until it is uploaded. The sweep of uploads never attached
	// reads the partial index.
	`CREATE TABLE attachments (
		seq        INTEGER PRIMARY KEY,
		id         TEXT NOT NULL UNIQUE,
		owner      TEXT NOT NULL,
		thread_id  TEXT REFERENCES threads (id) ON DELETE CASCADE,
		name       TEXT NOT NULL,
		mime_type  TEXT NOT NULL,
		size       INTEGER NOT NULL,
		created_at INTEGER NOT NULL,
		data       BLOB
	) STRICT;
	CREATE INDEX attachments_by_thread ON attachments (thread_id);
	CREATE INDEX attachments_unattached ON attachments (created_at) WHERE thread_id IS NULL;`,
	// 3: the site owner's reads: the retention sweep finds idle threads by
	// updated_at, and an owner's export and erasure find their attachments,
	// attached or not, by owner.
	`CREATE INDEX threads_by_update ON threads (updated_at);
	CREATE INDEX attachments_by_owner ON attachments (owner, created_at);`,
	// 4: one running turn per thread, between the processes on the file:
	// holder is the claim's random token, expires_at (microseconds) its end.
	// No foreign key: a claim needs nothing of the thread and lapses by itself.
	`CREATE TABLE leases (
		thread_id  TEXT PRIMARY KEY,
		holder     TEXT NOT NULL,
		expires_at INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;`,
}

// migrateSQLite brings the database to the newest schema, refusing a database that
// belongs to another program or was written by a newer version of this module. A
// current schema is only read, so opening the file while another store on it writes
// (a config reload) does not wait for the write lock.
func migrateSQLite(ctx context.Context, db *sql.DB, path string) error {
	version, err := schemaVersion(ctx, db, path)
	if err != nil || version == len(sqliteMigrations) {
		return err
	}
	// One immediate transaction, so that two processes opening a new file at once do
	// not both migrate: the second one sees the first one's version here.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return openError(path, err)
	}
	defer tx.Rollback()
	if version, err = schemaVersion(ctx, tx, path); err != nil || version == len(sqliteMigrations) {
		return err
	}
	for v := version; v < len(sqliteMigrations); v++ {
		if _, err := tx.ExecContext(ctx, sqliteMigrations[v]); err != nil {
			return openError(path, fmt.Errorf("migrating to schema version %d: %w", v+1, err))
		}
	}
	// PRAGMA takes no bound parameters; both values are integers formatted here.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA application_id = %d; PRAGMA user_version = %d`, sqliteAppID, len(sqliteMigrations))); err != nil {
		return openError(path, err)
	}
	if err := tx.Commit(); err != nil {
		return openError(path, err)
	}
	return nil
}

// schemaVersion reads the schema version, or refuses the database.
func schemaVersion(ctx context.Context, q querier, path string) (int, error) {
	var version, appID, objects int
	if err := q.QueryRowContext(ctx, `SELECT (SELECT user_version FROM pragma_user_version), (SELECT application_id FROM pragma_application_id),
		(SELECT count(*) FROM sqlite_schema)`).Scan(&version, &appID, &objects); err != nil {
		return 0, openError(path, err)
	}
	switch {
	case appID != sqliteAppID && (appID != 0 || objects > 0):
		return 0, fmt.Errorf("threadstore: %s is a database of another program, not a thread store: refusing to use it", path)
	case version > len(sqliteMigrations):
		return 0, fmt.Errorf("threadstore: %s has schema version %d, newer than version %d that this build knows (written by a newer caddy-chatkit?): refusing to open it",
			path, version, len(sqliteMigrations))
	}
	return version, nil
}

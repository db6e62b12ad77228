package threadstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The advisory locks of the thread store, in the two-key space: the first key
// marks them as this program's ("CHkT", as sqliteAppID), the second names the
// lock. Advisory locks are per database, so stores in other databases of the
// same server never contend.
const (
	pgLockSpace   = 0x43486b54
	pgLockMigrate = 1 // held by the transaction that migrates the schema
	pgLockSweep   = 2 // held by the session that runs the retention sweep
)

// pgMigrations[i] takes the schema from version i to i+1; each applied version
// is a row of chatkit.schema_version. Append only: a released step is never
// edited, a change is a new step. Everything lives in the schema chatkit, so
// that the store can share a database with the site's own tables.
//
// Times are timestamptz (microseconds, as the package keeps them); JSON is
// text, kept byte for byte as the caller built it (jsonb would reorder it and
// refuse \u0000); seq is one identity per table: a row's seq is drawn while
// the writer holds its thread's row lock, so that within a thread it follows
// the order of the writes, whichever process made them.
var pgMigrations = []string{
	// 1: threads, items, feedback, attachments, thread leases.
	`CREATE TABLE chatkit.threads (
		id         text PRIMARY KEY,
		seq        bigint GENERATED ALWAYS AS IDENTITY,
		owner      text NOT NULL,
		title      text NOT NULL DEFAULT '',
		status     text NOT NULL,
		metadata   text,
		created_at timestamptz NOT NULL,
		updated_at timestamptz NOT NULL
	);
	CREATE INDEX threads_by_owner ON chatkit.threads (owner, created_at, seq);

	CREATE TABLE chatkit.items (
		thread_id  text NOT NULL REFERENCES chatkit.threads (id) ON DELETE CASCADE,
		id         text NOT NULL,
		seq        bigint GENERATED ALWAYS AS IDENTITY,
		created_at timestamptz NOT NULL,
		type       text NOT NULL,
		data       text NOT NULL,
		PRIMARY KEY (thread_id, id)
	);
	CREATE INDEX items_by_time ON chatkit.items (thread_id, created_at, seq);

	CREATE TABLE chatkit.feedback (
		thread_id  text NOT NULL,
		item_id    text NOT NULL,
		kind       text NOT NULL,
		created_at timestamptz NOT NULL,
		PRIMARY KEY (thread_id, item_id),
		FOREIGN KEY (thread_id, item_id) REFERENCES chatkit.items (thread_id, id) ON DELETE CASCADE
	);

	-- thread_id is NULL until a message names the attachment; data is NULL
	-- until it is uploaded.
	CREATE TABLE chatkit.attachments (
		id         text PRIMARY KEY,
		seq        bigint GENERATED ALWAYS AS IDENTITY,
		owner      text NOT NULL,
		thread_id  text REFERENCES chatkit.threads (id) ON DELETE CASCADE,
		name       text NOT NULL,
		mime_type  text NOT NULL,
		size       bigint NOT NULL,
		created_at timestamptz NOT NULL,
		data       bytea
	);
	CREATE INDEX attachments_by_owner ON chatkit.attachments (owner, created_at, seq);
	CREATE INDEX attachments_by_thread ON chatkit.attachments (thread_id);
	CREATE INDEX attachments_unattached ON chatkit.attachments (created_at) WHERE thread_id IS NULL;

	-- One running turn per thread: holder is the claim's random token, and
	-- expires_at is on the server's clock, which every process shares. No
	-- foreign key: a claim outlives nothing it needs, and lapses by itself.
	CREATE TABLE chatkit.leases (
		thread_id  text PRIMARY KEY,
		holder     text NOT NULL,
		expires_at timestamptz NOT NULL
	);`,
}

// migrate brings the database to the newest schema, under the query timeout.
// A current schema is only read; otherwise the migrating transaction holds
// the migration lock, so that processes opening together migrate once, in
// turn, each seeing what the one before it did.
func (s *PostgresStore) migrate(ctx context.Context) error {
	return s.bounded(ctx, "opening "+s.desc, func(ctx context.Context) error {
		version, err := s.schemaVersion(ctx, s.pool)
		if err != nil || version == len(pgMigrations) {
			return err
		}
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, pgLockSpace, pgLockMigrate); err != nil {
				return err
			}
			if version, err = s.schemaVersion(ctx, tx); err != nil || version == len(pgMigrations) {
				return err
			}
			if version == 0 {
				if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS chatkit;
					CREATE TABLE chatkit.schema_version (
						version    integer PRIMARY KEY,
						applied_at timestamptz NOT NULL DEFAULT now()
					)`); err != nil {
					return fmt.Errorf("creating the schema chatkit: %w", err)
				}
			}
			for v := version; v < len(pgMigrations); v++ {
				if _, err := tx.Exec(ctx, pgMigrations[v]); err != nil {
					return fmt.Errorf("migrating to schema version %d: %w", v+1, err)
				}
				if _, err := tx.Exec(ctx, `INSERT INTO chatkit.schema_version (version) VALUES ($1)`, v+1); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

// pgQuerier is what both a pool and a transaction offer.
type pgQuerier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, arguments ...any) (pgconn.CommandTag, error)
}

// schemaVersion reads the schema version, or refuses a schema chatkit that is
// not the thread store's or is newer than this build.
func (s *PostgresStore) schemaVersion(ctx context.Context, q pgQuerier) (int, error) {
	var hasVersions bool
	var objects int
	if err := q.QueryRow(ctx, `SELECT to_regclass('chatkit.schema_version') IS NOT NULL,
		(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'chatkit')`).
		Scan(&hasVersions, &objects); err != nil {
		return 0, err
	}
	if !hasVersions {
		if objects > 0 {
			return 0, errors.New("the schema chatkit holds tables of another program, not a thread store: refusing to use it")
		}
		return 0, nil
	}
	var version int
	if err := q.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM chatkit.schema_version`).Scan(&version); err != nil {
		return 0, err
	}
	if version > len(pgMigrations) {
		return 0, fmt.Errorf("the thread store has schema version %d, newer than version %d that this build knows (written by a newer caddy-chatkit?): refusing to use it",
			version, len(pgMigrations))
	}
	return version, nil
}

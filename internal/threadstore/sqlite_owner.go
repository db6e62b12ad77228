package threadstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// idleBatch is how many threads one transaction of the retention sweep
// removes: the sweep lets the site's own writes in between batches rather
// than holding the write lock for a whole backlog.
const idleBatch = 500

// The owner's statements (checked by TestSQLiteQueryPlans).
const (
	qOwnerThreads     = `SELECT ` + threadCols + ` FROM threads WHERE owner = ? ORDER BY created_at, seq`
	qAllItems         = `SELECT ` + itemCols + ` FROM items WHERE thread_id = ? ORDER BY created_at, seq`
	qOwnerAttachments = `SELECT ` + attachmentCols + `, data FROM attachments WHERE owner = ? ORDER BY created_at, seq`
	// Cascaded rows are not in a statement's change count: counted first.
	qCountOwner = `SELECT (SELECT count(*) FROM items WHERE thread_id IN (SELECT id FROM threads WHERE owner = ?1)),
		(SELECT count(*) FROM feedback WHERE thread_id IN (SELECT id FROM threads WHERE owner = ?1))`
	qDeleteOwnerAttachments = `DELETE FROM attachments WHERE owner = ?`
	qDeleteOwnerThreads     = `DELETE FROM threads WHERE owner = ?`

	// idleThreads is one batch of the sweep; the count and the delete read it
	// in the same transaction, so they see the same threads.
	idleThreads = `SELECT id FROM threads WHERE updated_at < ?1 ORDER BY updated_at LIMIT ?2`
	qCountIdle  = `SELECT (SELECT count(*) FROM threads WHERE id IN (` + idleThreads + `)),
		(SELECT count(*) FROM items WHERE thread_id IN (` + idleThreads + `)),
		(SELECT count(*) FROM feedback WHERE thread_id IN (` + idleThreads + `)),
		(SELECT count(*) FROM attachments WHERE thread_id IN (` + idleThreads + `))`
	qDeleteIdle = `DELETE FROM threads WHERE id IN (` + idleThreads + `)`
)

// ExportOwner implements Store, in one read transaction: a consistent view.
func (s *SQLiteStore) ExportOwner(ctx context.Context, owner string) (OwnerExport, error) {
	if owner == "" {
		return OwnerExport{}, invalid("empty owner")
	}
	var out OwnerExport
	err := s.read(ctx, "export owner", func(tx *sql.Tx) error {
		threads, err := collect(ctx, tx, scanThread, qOwnerThreads, owner)
		if err != nil {
			return err
		}
		out.Threads = make([]ThreadExport, 0, len(threads))
		for _, t := range threads {
			te := ThreadExport{Thread: t}
			if te.Items, err = collect(ctx, tx, scanItem, qAllItems, t.ID); err != nil {
				return err
			}
			if te.Feedback, err = collect(ctx, tx, scanFeedback, qFeedback, t.ID); err != nil {
				return err
			}
			te.Items, te.Feedback = orEmpty(te.Items), orEmpty(te.Feedback)
			out.Threads = append(out.Threads, te)
		}
		out.Attachments, err = collect(ctx, tx, func(row scanner) (Attachment, error) { return scanAttachment(row, true) }, qOwnerAttachments, owner)
		out.Attachments = orEmpty(out.Attachments)
		return err
	})
	if err != nil {
		return OwnerExport{}, err
	}
	if len(out.Threads) == 0 && len(out.Attachments) == 0 {
		return OwnerExport{}, ErrNotFound
	}
	return out, nil
}

// orEmpty makes a nil slice empty, so that "none" is never told from "not read".
func orEmpty[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}

// DeleteOwner implements Store, in one transaction.
func (s *SQLiteStore) DeleteOwner(ctx context.Context, owner string) (Deleted, error) {
	if owner == "" {
		return Deleted{}, invalid("empty owner")
	}
	var d Deleted
	err := s.write(ctx, "delete owner", func(tx *sql.Tx) error {
		// The owner's attachments first, attached or not, so that every one is
		// counted once; the threads' cascade then finds none left.
		res, err := tx.ExecContext(ctx, qDeleteOwnerAttachments, owner)
		if err != nil {
			return err
		}
		if d.Attachments, err = res.RowsAffected(); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, qCountOwner, owner).Scan(&d.Items, &d.Feedback); err != nil {
			return err
		}
		if res, err = tx.ExecContext(ctx, qDeleteOwnerThreads, owner); err != nil {
			return err
		}
		d.Threads, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return Deleted{}, err
	}
	return d, nil
}

// DeleteIdleThreads implements Store, a batch per transaction. A SQLite file has
// one writer at a time, so sweeps from several processes follow one another.
func (s *SQLiteStore) DeleteIdleThreads(ctx context.Context, before time.Time) (Deleted, error) {
	var total Deleted
	for {
		var d Deleted
		err := s.write(ctx, "delete idle threads", func(tx *sql.Tx) error {
			if err := tx.QueryRowContext(ctx, qCountIdle, micros(before), idleBatch).
				Scan(&d.Threads, &d.Items, &d.Feedback, &d.Attachments); err != nil || d.Threads == 0 {
				return err
			}
			res, err := tx.ExecContext(ctx, qDeleteIdle, micros(before), idleBatch)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil || n != d.Threads {
				return cmp.Or(err, fmt.Errorf("counted %d idle threads, deleted %d", d.Threads, n))
			}
			return nil
		})
		if err != nil {
			// What earlier batches removed is gone: say so with the error.
			return total, err
		}
		total.add(d)
		if d.Threads < idleBatch {
			return total, nil
		}
	}
}

// Backup writes a consistent copy of the database to the new file to (an
// absolute path; its directory must exist) while the store serves: SQLite's
// VACUUM INTO, which reads one snapshot and also compacts. An existing file
// is refused with ErrExists; the copy is made beside it under a temporary
// name and linked into place, so a file that appears at to meanwhile is never
// overwritten and a failed copy leaves nothing at to. Not part of Store: a
// PostgreSQL store is backed up with the database's own tools.
func (s *SQLiteStore) Backup(ctx context.Context, to string) error {
	if !filepath.IsAbs(to) {
		return invalid("the backup path must be absolute")
	}
	to = filepath.Clean(to)
	if _, err := os.Lstat(to); err == nil {
		return ErrExists
	}
	dir := filepath.Dir(to)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(to)+".*.tmp")
	if err != nil {
		return fmt.Errorf("threadstore: backup: %w", err)
	}
	tmpPath := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpPath)
	if s.closed.Load() {
		return ErrClosed
	}
	// VACUUM INTO writes into a new or empty file: this one, created private
	// (0600) as the database itself is. It reads one snapshot, outside a
	// transaction (VACUUM refuses one), on a connection of its own: the
	// readers are query-only, which VACUUM INTO is not, and the writer must
	// stay free for the site.
	if err := s.vacuumInto(ctx, tmpPath); err != nil {
		return s.fail(ctx, "backup", err)
	}
	// A hard link never replaces an existing file: the atomic "create only if
	// absent" for the finished copy.
	if err := os.Link(tmpPath, to); err != nil {
		if errors.Is(err, os.ErrExist) {
			return ErrExists
		}
		return fmt.Errorf("threadstore: backup: %w", err)
	}
	return nil
}

// vacuumInto runs VACUUM INTO on a connection opened for it to the store's file.
func (s *SQLiteStore) vacuumInto(ctx context.Context, to string) error {
	var file string
	if err := s.r.QueryRowContext(ctx, `SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&file); err != nil {
		return err
	}
	db, err := openPool(file, url.Values{"_busy_timeout": {"5000"}}, 1)
	if err != nil {
		return err
	}
	defer db.Close()
	// The file takes no bound parameter: the path is quoted as an SQL string.
	_, err = db.ExecContext(ctx, `VACUUM INTO '`+strings.ReplaceAll(to, `'`, `''`)+`'`)
	return err
}

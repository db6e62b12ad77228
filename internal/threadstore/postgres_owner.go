package threadstore

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The owner statements.
const (
	pgOwnerThreads = `SELECT ` + pgThreadCols + ` FROM chatkit.threads WHERE owner = $1 ORDER BY created_at, seq`
	pgOwnerItems   = `SELECT i.seq, i.thread_id, i.id, i.created_at, i.type, i.data FROM chatkit.items i
		JOIN chatkit.threads t ON t.id = i.thread_id WHERE t.owner = $1 ORDER BY i.thread_id, i.created_at, i.seq`
	pgOwnerFeedback = `SELECT f.thread_id, f.item_id, f.kind, f.created_at FROM chatkit.feedback f
		JOIN chatkit.items i ON i.thread_id = f.thread_id AND i.id = f.item_id
		JOIN chatkit.threads t ON t.id = f.thread_id WHERE t.owner = $1 ORDER BY f.thread_id, i.created_at, i.seq`
	pgOwnerAttachments = `SELECT ` + pgAttachmentCols + `, data FROM chatkit.attachments WHERE owner = $1 ORDER BY created_at, seq`

	// In id order, as every multi-row lock of threads is taken, so that two
	// deletes never deadlock.
	pgLockOwnerThreads    = `SELECT id FROM chatkit.threads WHERE owner = $1 ORDER BY id FOR UPDATE`
	pgDeleteOwnerAttached = `DELETE FROM chatkit.attachments WHERE id = ANY(ARRAY(SELECT id FROM chatkit.attachments WHERE owner = $1 ORDER BY id FOR UPDATE))`
	pgTrySweepLock        = `SELECT pg_try_advisory_lock($1, $2)`
	pgSweepUnlock         = `SELECT pg_advisory_unlock($1, $2)`
	pgLockIdleThreads     = `SELECT id FROM chatkit.threads WHERE updated_at < $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED`
	pgDeleteLapsedLeases  = `DELETE FROM chatkit.leases WHERE expires_at < now()`
	pgSweepBatch          = 500 // threads a sweep transaction deletes, so that each stays short
)

// ExportOwner implements OwnerStore, from one snapshot of the database.
func (s *PostgresStore) ExportOwner(ctx context.Context, owner string) (OwnerExport, error) {
	if owner == "" {
		return OwnerExport{}, invalid("empty owner")
	}
	var out OwnerExport
	err := s.bounded(ctx, "export owner", func(ctx context.Context) error {
		return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
			threads, _, err := pgCollect(ctx, tx, pgThreadRow, pgOwnerThreads, owner)
			if err != nil {
				return err
			}
			items, _, err := pgCollect(ctx, tx, pgItemRow, pgOwnerItems, owner)
			if err != nil {
				return err
			}
			feedback, _, err := pgCollect(ctx, tx, pgFeedbackRow, pgOwnerFeedback, owner)
			if err != nil {
				return err
			}
			rows, err := tx.Query(ctx, pgOwnerAttachments, owner)
			if err != nil {
				return err
			}
			out.Attachments, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Attachment, error) { return pgScanAttachment(row, true) })
			if err != nil {
				return err
			}
			if len(threads) == 0 && len(out.Attachments) == 0 {
				return ErrNotFound
			}
			byThread := make(map[string]*ThreadExport, len(threads))
			out.Threads = make([]ThreadExport, len(threads))
			for i, t := range threads {
				out.Threads[i] = ThreadExport{Thread: t, Items: []Item{}, Feedback: []Feedback{}}
				byThread[t.ID] = &out.Threads[i]
			}
			for _, it := range items {
				te := byThread[it.ThreadID]
				te.Items = append(te.Items, it)
			}
			for _, f := range feedback {
				te := byThread[f.ThreadID]
				te.Feedback = append(te.Feedback, f)
			}
			return nil
		})
	})
	if err != nil {
		return OwnerExport{}, err
	}
	if out.Attachments == nil {
		out.Attachments = []Attachment{}
	}
	return out, nil
}

// DeleteOwner implements OwnerStore.
func (s *PostgresStore) DeleteOwner(ctx context.Context, owner string) (Deleted, error) {
	if owner == "" {
		return Deleted{}, invalid("empty owner")
	}
	var d Deleted
	err := s.inTx(ctx, "delete owner", func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, pgLockOwnerThreads, owner)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(ids) > 0 {
			if d, err = pgDeleteThreadRows(ctx, tx, ids); err != nil {
				return err
			}
		}
		tag, err := tx.Exec(ctx, pgDeleteOwnerAttached, owner) // the ones no message named
		d.Attachments += tag.RowsAffected()
		return err
	})
	if err != nil {
		return Deleted{}, err
	}
	return d, nil
}

// DeleteIdleThreads implements OwnerStore: in transactions of pgSweepBatch
// threads, each under the query timeout, while this session holds the sweep
// lock; a sweep that finds the lock held elsewhere returns zeros at once.
// Threads being written are skipped (their UpdatedAt is about to move). It also
// drops lapsed thread leases, which a claim would replace anyway.
func (s *PostgresStore) DeleteIdleThreads(ctx context.Context, before time.Time) (Deleted, error) {
	var (
		total Deleted
		conn  *pgxpool.Conn
	)
	err := s.bounded(ctx, "idle sweep", func(ctx context.Context) (err error) {
		conn, err = s.sweepLock(ctx)
		return err
	})
	if err != nil || conn == nil {
		return Deleted{}, err
	}
	defer s.sweepUnlock(ctx, conn)
	for {
		var d Deleted
		var n int
		err := s.bounded(ctx, "idle sweep", func(ctx context.Context) error {
			return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				rows, err := tx.Query(ctx, pgLockIdleThreads, before.UTC(), pgSweepBatch)
				if err != nil {
					return err
				}
				ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil || len(ids) == 0 {
					return err
				}
				n = len(ids)
				d, err = pgDeleteThreadRows(ctx, tx, ids)
				return err
			})
		})
		if err != nil {
			return total, err
		}
		total.add(d)
		if n < pgSweepBatch {
			break
		}
	}
	err = s.bounded(ctx, "idle sweep", func(ctx context.Context) error {
		_, err := conn.Exec(ctx, pgDeleteLapsedLeases)
		return err
	})
	return total, err
}

// sweepLock takes the sweep lock on a connection of its own, for the session;
// nil and no error when another session holds it.
func (s *PostgresStore) sweepLock(ctx context.Context) (*pgxpool.Conn, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	var got bool
	if err := conn.QueryRow(ctx, pgTrySweepLock, pgLockSpace, pgLockSweep).Scan(&got); err != nil || !got {
		conn.Release()
		return nil, err
	}
	return conn, nil
}

// sweepUnlock releases the sweep lock, even when the sweep's context ended; if
// that fails, the connection is closed, which ends the session and its lock.
func (s *PostgresStore) sweepUnlock(ctx context.Context, conn *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	var released bool
	if err := conn.QueryRow(ctx, pgSweepUnlock, pgLockSpace, pgLockSweep).Scan(&released); err != nil || !released {
		_ = conn.Conn().Close(ctx)
	}
	conn.Release()
}

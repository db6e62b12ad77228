package threadstore

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// The thread, item and feedback statements. The store's clock is the
// server's: clock_timestamp(), read after the thread's row lock is taken, so
// that default times follow Seq across processes.
const (
	pgThreadCols = `id, owner, title, status, metadata, created_at, updated_at`
	pgItemCols   = `seq, thread_id, id, created_at, type, data`

	pgCreateThread = `INSERT INTO chatkit.threads (id, owner, title, status, metadata, created_at, updated_at)
		SELECT $1, $2, $3, $4, $5, n.c, coalesce($7::timestamptz, n.c) FROM (SELECT coalesce($6::timestamptz, clock_timestamp()) AS c) n
		RETURNING created_at, updated_at`
	pgThread       = `SELECT ` + pgThreadCols + ` FROM chatkit.threads WHERE id = $1 AND owner = $2`
	pgUpdateThread = `UPDATE chatkit.threads SET updated_at = clock_timestamp(),
		title = coalesce($3, title), status = coalesce($4, status), metadata = coalesce($5, metadata)
		WHERE id = $1 AND owner = $2 RETURNING ` + pgThreadCols
	// Locks the thread against writers (who touch it) and readers that must
	// see it stay (feedback), so that what is counted is what is deleted.
	pgLockThread  = `SELECT id FROM chatkit.threads WHERE id = $1 AND owner = $2 FOR UPDATE`
	pgTouchThread = `UPDATE chatkit.threads SET updated_at = clock_timestamp() WHERE id = $1 AND owner = $2`
	// Deletes threads $1 and all that hangs on them, counting each kind.
	pgDeleteThreads = `WITH
		f AS (DELETE FROM chatkit.feedback WHERE thread_id = ANY($1) RETURNING 1),
		i AS (DELETE FROM chatkit.items WHERE thread_id = ANY($1) RETURNING 1),
		a AS (DELETE FROM chatkit.attachments WHERE thread_id = ANY($1) RETURNING 1),
		t AS (DELETE FROM chatkit.threads WHERE id = ANY($1) RETURNING 1)
		SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM i), (SELECT count(*) FROM f), (SELECT count(*) FROM a)`

	// One statement: the touch takes the thread's row lock (and checks the
	// owner) before the item's seq and default time are drawn.
	pgAddItem = `WITH t AS (UPDATE chatkit.threads SET updated_at = clock_timestamp() WHERE id = $1 AND owner = $2 RETURNING id)
		INSERT INTO chatkit.items (thread_id, id, created_at, type, data)
		SELECT t.id, $3, coalesce($4::timestamptz, clock_timestamp()), $5, $6 FROM t`
	pgAddItemReturning = ` RETURNING seq, created_at`
	pgSaveItemConflict = ` ON CONFLICT (thread_id, id) DO UPDATE SET type = excluded.type, data = excluded.data`
	pgItem             = `SELECT i.seq, i.thread_id, i.id, i.created_at, i.type, i.data FROM chatkit.items i JOIN chatkit.threads t ON t.id = i.thread_id
		WHERE i.thread_id = $1 AND i.id = $2 AND t.owner = $3`
	pgDeleteItemsAfter = `WITH c AS (SELECT created_at, seq FROM chatkit.items WHERE thread_id = $1 AND id = $2),
		d AS (DELETE FROM chatkit.items i USING c WHERE i.thread_id = $1 AND (i.created_at, i.seq) > (c.created_at, c.seq) RETURNING 1)
		SELECT (SELECT count(*) FROM d) FROM c`

	// FOR KEY SHARE: feedback does not wait for item writers, but a thread
	// being deleted waits for it (and it for the delete).
	pgShareThread = `SELECT id FROM chatkit.threads WHERE id = $1 AND owner = $2 FOR KEY SHARE`
	pgPutFeedback = `INSERT INTO chatkit.feedback (thread_id, item_id, kind, created_at)
		SELECT $1, i.id, $3, clock_timestamp() FROM chatkit.items i WHERE i.thread_id = $1 AND i.id = ANY($2)
		ON CONFLICT (thread_id, item_id) DO UPDATE SET kind = excluded.kind, created_at = excluded.created_at`
	// A thread with no feedback is one row of NULLs; another owner's, none.
	pgFeedback = `SELECT f.thread_id, f.item_id, f.kind, f.created_at FROM chatkit.threads t
		LEFT JOIN LATERAL (SELECT f.*, i.created_at AS item_at, i.seq AS item_seq FROM chatkit.feedback f
			JOIN chatkit.items i ON i.thread_id = f.thread_id AND i.id = f.item_id WHERE f.thread_id = t.id) f ON true
		WHERE t.id = $1 AND t.owner = $2 ORDER BY f.item_at, f.item_seq`
)

// pgListThreads pages an owner's threads: args owner, [cursor thread id,] limit.
// With a cursor, an unknown or other owner's cursor gives no rows and an empty
// page one row of NULLs.
func pgListThreads(order Order, hasCursor bool) string {
	cmp, dir := pgOrder(order)
	if !hasCursor {
		return `SELECT ` + pgThreadCols + ` FROM chatkit.threads WHERE owner = $1 ORDER BY created_at` + dir + `, seq` + dir + ` LIMIT $2`
	}
	return `SELECT p.id, p.owner, p.title, p.status, p.metadata, p.created_at, p.updated_at FROM chatkit.threads c
		LEFT JOIN LATERAL (SELECT t.* FROM chatkit.threads t WHERE t.owner = $1 AND (t.created_at, t.seq) ` + cmp + ` (c.created_at, c.seq)
			ORDER BY t.created_at` + dir + `, t.seq` + dir + ` LIMIT $3) p ON true
		WHERE c.id = $2 AND c.owner = $1 ORDER BY p.created_at` + dir + `, p.seq` + dir
}

// pgListItems pages a thread's items: args thread id, owner, [cursor item id,]
// limit. A thread (and cursor) not found gives no rows; an empty page, one row
// of NULLs.
func pgListItems(order Order, hasCursor bool) string {
	cmp, dir := pgOrder(order)
	var join, after, limit = "", "", "$3"
	if hasCursor {
		join = ` JOIN chatkit.items c ON c.thread_id = t.id AND c.id = $3`
		after = ` AND (i.created_at, i.seq) ` + cmp + ` (c.created_at, c.seq)`
		limit = "$4"
	}
	return `SELECT p.seq, p.thread_id, p.id, p.created_at, p.type, p.data FROM chatkit.threads t` + join + `
		LEFT JOIN LATERAL (SELECT i.* FROM chatkit.items i WHERE i.thread_id = t.id` + after + `
			ORDER BY i.created_at` + dir + `, i.seq` + dir + ` LIMIT ` + limit + `) p ON true
		WHERE t.id = $1 AND t.owner = $2 ORDER BY p.created_at` + dir + `, p.seq` + dir
}

func pgOrder(order Order) (cmp, dir string) {
	if order == Desc {
		return "<", " DESC"
	}
	return ">", ""
}

// pgTime is a time to store, NULL (the server's clock) when zero.
func pgTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.Truncate(time.Microsecond).UTC()
}

// pgThreadRow scans a thread; ok is false for a row of NULLs.
func pgThreadRow(row scanner) (t Thread, ok bool, err error) {
	var (
		id, owner, title, status *string
		metadata                 *string
		created, updated         *time.Time
	)
	if err := row.Scan(&id, &owner, &title, &status, &metadata, &created, &updated); err != nil || id == nil {
		return Thread{}, false, err
	}
	t = Thread{ID: *id, Owner: *owner, Title: *title, Status: []byte(*status), CreatedAt: created.UTC(), UpdatedAt: updated.UTC()}
	if metadata != nil {
		t.Metadata = []byte(*metadata)
	}
	return t, true, nil
}

// pgItemRow scans an item; ok is false for a row of NULLs.
func pgItemRow(row scanner) (it Item, ok bool, err error) {
	var (
		seq                    *int64
		threadID, id, typ, dat *string
		created                *time.Time
	)
	if err := row.Scan(&seq, &threadID, &id, &created, &typ, &dat); err != nil || seq == nil {
		return Item{}, false, err
	}
	return Item{Seq: *seq, ThreadID: *threadID, ID: *id, CreatedAt: created.UTC(), Type: *typ, Data: []byte(*dat)}, true, nil
}

// pgFeedbackRow scans feedback; ok is false for a row of NULLs.
func pgFeedbackRow(row scanner) (f Feedback, ok bool, err error) {
	var (
		threadID, itemID, kind *string
		created                *time.Time
	)
	if err := row.Scan(&threadID, &itemID, &kind, &created); err != nil || threadID == nil {
		return Feedback{}, false, err
	}
	return Feedback{ThreadID: *threadID, ItemID: *itemID, Kind: FeedbackKind(*kind), CreatedAt: created.UTC()}, true, nil
}

// pgCollect runs a query and scans its rows, skipping rows of NULLs; found is
// false when there was no row at all (the thread or the cursor is not the
// owner's).
func pgCollect[T any](ctx context.Context, q pgQuerier, scan func(scanner) (T, bool, error), query string, args ...any) (out []T, found bool, err error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	out = []T{}
	for rows.Next() {
		found = true
		v, ok, err := scan(rows)
		if err != nil {
			return nil, false, err
		}
		if ok {
			out = append(out, v)
		}
	}
	return out, found, rows.Err()
}

// CreateThread implements Store.
func (s *PostgresStore) CreateThread(ctx context.Context, t Thread) (Thread, error) {
	if err := checkThread(t); err != nil {
		return Thread{}, err
	}
	if t.Status == nil {
		t.Status = defaultStatus
	}
	err := s.bounded(ctx, "create thread", func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, pgCreateThread, t.ID, t.Owner, t.Title, string(t.Status), nullJSON(t.Metadata),
			pgTime(t.CreatedAt), pgTime(t.UpdatedAt)).Scan(&t.CreatedAt, &t.UpdatedAt)
	})
	if err != nil {
		return Thread{}, err
	}
	t.CreatedAt, t.UpdatedAt = t.CreatedAt.UTC(), t.UpdatedAt.UTC()
	return t, nil
}

// Thread implements Store.
func (s *PostgresStore) Thread(ctx context.Context, owner, id string) (Thread, error) {
	if owner == "" {
		return Thread{}, invalid("empty owner")
	}
	var t Thread
	err := s.bounded(ctx, "load thread", func(ctx context.Context) error {
		var ok bool
		var err error
		t, ok, err = pgThreadRow(s.pool.QueryRow(ctx, pgThread, id, owner))
		if err == nil && !ok {
			err = ErrNotFound
		}
		return err
	})
	return t, err
}

// ListThreads implements Store.
func (s *PostgresStore) ListThreads(ctx context.Context, owner, after string, limit int, order Order) (Page[Thread], error) {
	limit, err := checkPage(owner, limit, order)
	if err != nil {
		return Page[Thread]{}, err
	}
	var rows []Thread
	err = s.bounded(ctx, "list threads", func(ctx context.Context) error {
		args := []any{owner}
		if after != "" {
			args = append(args, after)
		}
		var found bool
		var err error
		rows, found, err = pgCollect(ctx, s.pool, pgThreadRow, pgListThreads(order, after != ""), append(args, limit+1)...)
		if err == nil && after != "" && !found {
			err = ErrNotFound
		}
		return err
	})
	if err != nil {
		return Page[Thread]{}, err
	}
	return pageOf(rows, limit, func(t Thread) string { return t.ID }), nil
}

// UpdateThread implements Store.
func (s *PostgresStore) UpdateThread(ctx context.Context, owner, id string, u ThreadUpdate) (Thread, error) {
	title, err := checkUpdate(owner, u)
	if err != nil {
		return Thread{}, err
	}
	var t Thread
	err = s.bounded(ctx, "update thread", func(ctx context.Context) error {
		var ok bool
		var err error
		t, ok, err = pgThreadRow(s.pool.QueryRow(ctx, pgUpdateThread, id, owner, title, nullJSON(u.Status), nullJSON(u.Metadata)))
		if err == nil && !ok {
			err = ErrNotFound
		}
		return err
	})
	return t, err
}

// DeleteThread implements Store.
func (s *PostgresStore) DeleteThread(ctx context.Context, owner, id string) (Deleted, error) {
	if owner == "" {
		return Deleted{}, invalid("empty owner")
	}
	var d Deleted
	err := s.inTx(ctx, "delete thread", func(ctx context.Context, tx pgx.Tx) error {
		var locked string
		if err := tx.QueryRow(ctx, pgLockThread, id, owner).Scan(&locked); err != nil {
			return err
		}
		var err error
		d, err = pgDeleteThreadRows(ctx, tx, []string{id})
		return err
	})
	if err != nil {
		return Deleted{}, err
	}
	return d, nil
}

// pgDeleteThreadRows deletes threads (locked by the caller's transaction) with
// everything that hangs on them.
func pgDeleteThreadRows(ctx context.Context, tx pgx.Tx, ids []string) (Deleted, error) {
	var d Deleted
	err := tx.QueryRow(ctx, pgDeleteThreads, ids).Scan(&d.Threads, &d.Items, &d.Feedback, &d.Attachments)
	return d, err
}

// AddItem implements Store.
func (s *PostgresStore) AddItem(ctx context.Context, owner string, it Item) (Item, error) {
	return s.putItem(ctx, "add item", owner, it, pgAddItem+pgAddItemReturning)
}

// SaveItem implements Store.
func (s *PostgresStore) SaveItem(ctx context.Context, owner string, it Item) (Item, error) {
	return s.putItem(ctx, "save item", owner, it, pgAddItem+pgSaveItemConflict+pgAddItemReturning)
}

func (s *PostgresStore) putItem(ctx context.Context, op, owner string, it Item, query string) (Item, error) {
	if err := checkItem(owner, it); err != nil {
		return Item{}, err
	}
	err := s.bounded(ctx, op, func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, query, it.ThreadID, owner, it.ID, pgTime(it.CreatedAt), it.Type, string(it.Data)).
			Scan(&it.Seq, &it.CreatedAt)
	})
	if err != nil {
		return Item{}, err
	}
	it.CreatedAt = it.CreatedAt.UTC()
	return it, nil
}

// Item implements Store.
func (s *PostgresStore) Item(ctx context.Context, owner, threadID, id string) (Item, error) {
	if owner == "" {
		return Item{}, invalid("empty owner")
	}
	var it Item
	err := s.bounded(ctx, "load item", func(ctx context.Context) error {
		var ok bool
		var err error
		it, ok, err = pgItemRow(s.pool.QueryRow(ctx, pgItem, threadID, id, owner))
		if err == nil && !ok {
			err = ErrNotFound
		}
		return err
	})
	return it, err
}

// ListItems implements Store.
func (s *PostgresStore) ListItems(ctx context.Context, owner, threadID, after string, limit int, order Order) (Page[Item], error) {
	limit, err := checkPage(owner, limit, order)
	if err != nil {
		return Page[Item]{}, err
	}
	rows, err := s.items(ctx, "list items", owner, threadID, after, limit+1, order)
	if err != nil {
		return Page[Item]{}, err
	}
	return pageOf(rows, limit, func(it Item) string { return it.ID }), nil
}

// items runs one items page query; ErrNotFound when the thread or the cursor
// is not the owner's.
func (s *PostgresStore) items(ctx context.Context, op, owner, threadID, after string, limit int, order Order) ([]Item, error) {
	var rows []Item
	err := s.bounded(ctx, op, func(ctx context.Context) error {
		args := []any{threadID, owner}
		if after != "" {
			args = append(args, after)
		}
		var found bool
		var err error
		rows, found, err = pgCollect(ctx, s.pool, pgItemRow, pgListItems(order, after != ""), append(args, limit)...)
		if err == nil && !found {
			err = ErrNotFound
		}
		return err
	})
	return rows, err
}

// RecentItems implements Store.
func (s *PostgresStore) RecentItems(ctx context.Context, owner, threadID string, n int) ([]Item, error) {
	switch {
	case owner == "":
		return nil, invalid("empty owner")
	case n < 1:
		return nil, invalid("n below 1")
	}
	rows, err := s.items(ctx, "recent items", owner, threadID, "", min(n, MaxRecentItems), Desc)
	if err != nil {
		return nil, err
	}
	slices.Reverse(rows)
	return rows, nil
}

// DeleteItemsAfter implements Store.
func (s *PostgresStore) DeleteItemsAfter(ctx context.Context, owner, threadID, itemID string) (int64, error) {
	if owner == "" {
		return 0, invalid("empty owner")
	}
	var n int64
	err := s.inTx(ctx, "delete items after", func(ctx context.Context, tx pgx.Tx) error {
		if err := pgTouch(ctx, tx, owner, threadID); err != nil {
			return err
		}
		return tx.QueryRow(ctx, pgDeleteItemsAfter, threadID, itemID).Scan(&n)
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// pgTouch bumps the owner's thread's UpdatedAt, taking its row lock;
// ErrNotFound if it is not theirs.
func pgTouch(ctx context.Context, tx pgx.Tx, owner, threadID string) error {
	tag, err := tx.Exec(ctx, pgTouchThread, threadID, owner)
	if err == nil && tag.RowsAffected() == 0 {
		err = ErrNotFound
	}
	return err
}

// AddFeedback implements Store.
func (s *PostgresStore) AddFeedback(ctx context.Context, owner, threadID string, itemIDs []string, kind FeedbackKind) error {
	switch {
	case owner == "":
		return invalid("empty owner")
	case !kind.Valid():
		return invalid(fmt.Sprintf("feedback kind %q", kind))
	case len(itemIDs) == 0 || len(itemIDs) > MaxPageLimit:
		return invalid("feedback needs 1 to " + strconv.Itoa(MaxPageLimit) + " item ids")
	}
	want := distinct(itemIDs)
	return s.inTx(ctx, "add feedback", func(ctx context.Context, tx pgx.Tx) error {
		var locked string
		if err := tx.QueryRow(ctx, pgShareThread, threadID, owner).Scan(&locked); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, pgPutFeedback, threadID, want, string(kind))
		if err == nil && tag.RowsAffected() != int64(len(want)) {
			err = ErrNotFound // an id that is not an item of the thread: rolled back
		}
		return err
	})
}

// distinct is ids without repeats, in their first order.
func distinct(ids []string) []string {
	seen := make(map[string]bool, len(ids))
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// Feedback implements Store.
func (s *PostgresStore) Feedback(ctx context.Context, owner, threadID string) ([]Feedback, error) {
	if owner == "" {
		return nil, invalid("empty owner")
	}
	var out []Feedback
	err := s.bounded(ctx, "load feedback", func(ctx context.Context) error {
		var found bool
		var err error
		out, found, err = pgCollect(ctx, s.pool, pgFeedbackRow, pgFeedback, threadID, owner)
		if err == nil && !found {
			err = ErrNotFound
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

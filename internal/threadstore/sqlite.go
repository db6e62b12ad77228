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
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLiteOptions tunes OpenSQLite; the zero value is the default.
type SQLiteOptions struct {
	// BusyTimeout is how long a statement waits for a lock held by another connection
	// to the same file (another store on it during a config reload, a backup tool)
	// before failing with ErrUnavailable; the caller's context can end the wait sooner.
	// Zero means 5s.
	BusyTimeout time.Duration
	// MaxReaders is how many reads run in parallel. Zero means 4.
	MaxReaders int
	// Now is the clock for UpdatedAt and for CreatedAt left zero. Nil means time.Now.
	Now func() time.Time
}

// SQLiteStore is a Store in one SQLite file (pure Go, no cgo), in WAL mode: one writer
// connection, so writes in this process queue instead of failing with SQLITE_BUSY,
// and every write transaction begins IMMEDIATE, so that writers in other processes
// wait under the busy timeout; reads run in parallel on their own connections.
type SQLiteStore struct {
	w, r      *sql.DB
	now       func() time.Time
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ Store = (*SQLiteStore)(nil)

// OpenSQLite opens the thread store at path, creating its directory (0700) and the
// file (0600) if missing, and creating or migrating the schema. It refuses a file
// whose schema is newer than this build knows, or that belongs to another program.
func OpenSQLite(ctx context.Context, path string, opts SQLiteOptions) (*SQLiteStore, error) {
	if path == "" {
		return nil, errors.New("threadstore: empty SQLite path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("threadstore: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("threadstore: %w", err)
	}
	// Created here so that it is private from the start; SQLite gives its -wal and
	// -shm files the same mode.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("threadstore: %w", err)
	}
	f.Close()

	if opts.BusyTimeout <= 0 {
		opts.BusyTimeout = 5 * time.Second
	}
	if opts.MaxReaders <= 0 {
		opts.MaxReaders = 4
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	busy := strconv.FormatInt(opts.BusyTimeout.Milliseconds(), 10)

	w, err := openPool(abs, url.Values{
		"_busy_timeout": {busy},
		"_foreign_keys": {"on"},
		"_journal_mode": {"WAL"},
		// In WAL mode NORMAL never corrupts the file; a power cut may lose the last
		// commits, an application crash loses nothing.
		"_synchronous": {"NORMAL"},
		"_txlock":      {"immediate"},
	}, 1)
	if err != nil {
		return nil, err
	}
	// Several openers of a new file at once: the one switching it to WAL
	// holds a lock that SQLite answers with SQLITE_BUSY without calling the
	// busy handler, so the others try again, for up to the busy timeout.
	deadline := time.Now().Add(opts.BusyTimeout)
	for {
		err = migrateSQLite(ctx, w, abs)
		if err == nil || !isSQLiteBusy(err) || !time.Now().Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			err = openError(abs, ctx.Err())
		case <-time.After(sqliteOpenRetry):
			continue
		}
		break
	}
	if err != nil {
		w.Close()
		return nil, err
	}
	r, err := openPool(abs, url.Values{
		"_busy_timeout": {busy},
		"_query_only":   {"on"},
	}, opts.MaxReaders)
	if err != nil {
		w.Close()
		return nil, err
	}
	if err := r.PingContext(ctx); err != nil {
		w.Close()
		r.Close()
		return nil, openError(abs, err)
	}
	return &SQLiteStore{w: w, r: r, now: opts.Now}, nil
}

// openPool opens a connection pool on the file with the driver's DSN parameters.
func openPool(abs string, params url.Values, conns int) (*sql.DB, error) {
	// A file: URI, so that any character in the path is escaped rather than read as
	// the start of the parameters.
	dsn := (&url.URL{Scheme: "file", Path: abs, RawQuery: params.Encode()}).String()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("threadstore: %w", err)
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	return db, nil
}

// sqliteOpenRetry is the pause between two tries of a busy open.
const sqliteOpenRetry = 10 * time.Millisecond

// isSQLiteBusy reports whether err is SQLite's SQLITE_BUSY (any extended code).
func isSQLiteBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

// openError labels a driver error met while opening the file.
func openError(path string, err error) error {
	return fmt.Errorf("threadstore: opening SQLite database %s: %w", path, err)
}

// Close closes the store; it is safe to call more than once.
func (s *SQLiteStore) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.closeErr = errors.Join(s.r.Close(), s.w.Close())
	})
	return s.closeErr
}

// querier is what both a transaction and a pool offer.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// write runs fn in an immediate transaction on the writer connection.
func (s *SQLiteStore) write(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	return s.inTx(ctx, op, s.w, nil, fn)
}

// read runs fn in a read transaction (one consistent snapshot) on a reader connection.
func (s *SQLiteStore) read(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	return s.inTx(ctx, op, s.r, &sql.TxOptions{ReadOnly: true}, fn)
}

func (s *SQLiteStore) inTx(ctx context.Context, op string, db *sql.DB, opts *sql.TxOptions, fn func(tx *sql.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		return s.fail(ctx, op, err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return s.fail(ctx, op, err)
	}
	return s.fail(ctx, op, tx.Commit())
}

// fail maps an error to the package's errors, in one place for every method.
func (s *SQLiteStore) fail(ctx context.Context, op string, err error) error {
	var se *sqlite.Error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrExists), errors.Is(err, ErrInvalid), errors.Is(err, ErrUnavailable),
		errors.Is(err, ErrBusy):
		return err
	case errors.Is(err, sql.ErrNoRows):
		return ErrNotFound
	case s.closed.Load():
		return ErrClosed
	case ctx.Err() != nil:
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, ctx.Err())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
	case errors.As(err, &se):
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return ErrExists
		}
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_IOERR,
			sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_NOMEM,
			sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
			return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
		}
	}
	return fmt.Errorf("threadstore: %s: %w", op, err)
}

// The statements, named so that TestSQLiteQueryPlans checks the very strings in use.
const (
	threadCols = `id, owner, title, status, metadata, created_at, updated_at`
	itemCols   = `seq, thread_id, id, created_at, type, data`

	qCreateThread   = `INSERT INTO threads (id, owner, title, status, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)`
	qThread         = `SELECT ` + threadCols + ` FROM threads WHERE id = ? AND owner = ?`
	qOwnThread      = `SELECT 1 FROM threads WHERE id = ? AND owner = ?`
	qThreadPosition = `SELECT created_at, seq FROM threads WHERE id = ? AND owner = ?`
	qUpdateThread   = `UPDATE threads SET updated_at = ?, title = coalesce(?, title), status = coalesce(?, status), metadata = coalesce(?, metadata)
		WHERE id = ? AND owner = ? RETURNING ` + threadCols
	qTouchThread  = `UPDATE threads SET updated_at = ? WHERE id = ? AND owner = ?`
	qCountThread  = `SELECT (SELECT count(*) FROM items WHERE thread_id = ?1), (SELECT count(*) FROM feedback WHERE thread_id = ?1), (SELECT count(*) FROM attachments WHERE thread_id = ?1)`
	qDeleteThread = `DELETE FROM threads WHERE id = ?`

	qAddItem  = `INSERT INTO items (thread_id, id, created_at, type, data) VALUES (?, ?, ?, ?, ?) RETURNING seq, created_at`
	qSaveItem = `INSERT INTO items (thread_id, id, created_at, type, data) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (thread_id, id) DO UPDATE SET type = excluded.type, data = excluded.data
		RETURNING seq, created_at`
	// The join is the ownership check.
	qItem = `SELECT i.seq, i.thread_id, i.id, i.created_at, i.type, i.data FROM items i JOIN threads t ON t.id = i.thread_id
		WHERE i.thread_id = ? AND i.id = ? AND t.owner = ?`
	qItemPosition     = `SELECT created_at, seq FROM items WHERE thread_id = ? AND id = ?`
	qDeleteItemsAfter = `DELETE FROM items WHERE thread_id = ? AND (created_at, seq) > (?, ?)`

	qPutFeedback = `INSERT INTO feedback (thread_id, item_id, kind, created_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (thread_id, item_id) DO UPDATE SET kind = excluded.kind, created_at = excluded.created_at`
	qFeedback = `SELECT f.thread_id, f.item_id, f.kind, f.created_at FROM feedback f
		JOIN items i ON i.thread_id = f.thread_id AND i.id = f.item_id
		WHERE f.thread_id = ? ORDER BY i.created_at, i.seq`
)

// qListThreads pages an owner's threads: args owner, [cursor created_at, seq,] limit.
func qListThreads(order Order, hasCursor bool) string {
	return `SELECT ` + threadCols + ` FROM threads WHERE owner = ?` + rangeClause(order, hasCursor)
}

// qListItems pages a thread's items: args thread id, [cursor created_at, seq,] limit.
func qListItems(order Order, hasCursor bool) string {
	return `SELECT ` + itemCols + ` FROM items WHERE thread_id = ?` + rangeClause(order, hasCursor)
}

// rangeClause is the WHERE part and ORDER BY of a keyset page over (created_at, seq).
func rangeClause(order Order, hasCursor bool) string {
	cmp, dir := ">", ""
	if order == Desc {
		cmp, dir = "<", " DESC"
	}
	var where string
	if hasCursor {
		where = ` AND (created_at, seq) ` + cmp + ` (?, ?)`
	}
	return where + ` ORDER BY created_at` + dir + `, seq` + dir + ` LIMIT ?`
}

func scanThread(row scanner) (Thread, error) {
	var (
		t            Thread
		status       string
		metadata     sql.NullString
		created, upd int64
	)
	if err := row.Scan(&t.ID, &t.Owner, &t.Title, &status, &metadata, &created, &upd); err != nil {
		return Thread{}, err
	}
	t.Status = []byte(status)
	if metadata.Valid {
		t.Metadata = []byte(metadata.String)
	}
	t.CreatedAt, t.UpdatedAt = fromMicros(created), fromMicros(upd)
	return t, nil
}

func scanItem(row scanner) (Item, error) {
	var (
		it      Item
		created int64
		data    string
	)
	if err := row.Scan(&it.Seq, &it.ThreadID, &it.ID, &created, &it.Type, &data); err != nil {
		return Item{}, err
	}
	it.CreatedAt, it.Data = fromMicros(created), []byte(data)
	return it, nil
}

func scanFeedback(row scanner) (Feedback, error) {
	var (
		f       Feedback
		created int64
	)
	err := row.Scan(&f.ThreadID, &f.ItemID, &f.Kind, &created)
	f.CreatedAt = fromMicros(created)
	return f, err
}

// nullJSON stores absent JSON as NULL.
func nullJSON(d []byte) any {
	if d == nil {
		return nil
	}
	return string(d)
}

// CreateThread implements Store.
func (s *SQLiteStore) CreateThread(ctx context.Context, t Thread) (Thread, error) {
	if err := checkThread(t); err != nil {
		return Thread{}, err
	}
	if t.Status == nil {
		t.Status = defaultStatus
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = s.now()
	}
	if t.UpdatedAt.IsZero() {
		t.UpdatedAt = t.CreatedAt
	}
	t.CreatedAt, t.UpdatedAt = fromMicros(micros(t.CreatedAt)), fromMicros(micros(t.UpdatedAt))
	err := s.write(ctx, "create thread", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, qCreateThread, t.ID, t.Owner, t.Title, string(t.Status), nullJSON(t.Metadata), micros(t.CreatedAt), micros(t.UpdatedAt))
		return err
	})
	if err != nil {
		return Thread{}, err
	}
	return t, nil
}

// Thread implements Store.
func (s *SQLiteStore) Thread(ctx context.Context, owner, id string) (Thread, error) {
	if owner == "" {
		return Thread{}, invalid("empty owner")
	}
	var t Thread
	err := s.read(ctx, "load thread", func(tx *sql.Tx) (err error) {
		t, err = scanThread(tx.QueryRowContext(ctx, qThread, id, owner))
		return err
	})
	return t, err
}

// cursor is a resolved after: the position of an element.
type cursor struct {
	createdAt, seq int64
}

// pageOf cuts limit+1 fetched rows to a page.
func pageOf[T any](rows []T, limit int, id func(T) string) Page[T] {
	if rows == nil {
		rows = []T{}
	}
	p := Page[T]{Data: rows}
	if len(rows) > limit {
		p.Data, p.HasMore, p.After = rows[:limit], true, id(rows[limit-1])
	}
	return p
}

// scanner is a row to scan: *sql.Row or *sql.Rows.
type scanner interface{ Scan(...any) error }

// collect runs a query and scans every row.
func collect[T any](ctx context.Context, q querier, scan func(scanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// ListThreads implements Store.
func (s *SQLiteStore) ListThreads(ctx context.Context, owner, after string, limit int, order Order) (Page[Thread], error) {
	limit, err := checkPage(owner, limit, order)
	if err != nil {
		return Page[Thread]{}, err
	}
	var rows []Thread
	err = s.read(ctx, "list threads", func(tx *sql.Tx) error {
		args := []any{owner}
		if after != "" {
			var c cursor
			if err := tx.QueryRowContext(ctx, qThreadPosition, after, owner).Scan(&c.createdAt, &c.seq); err != nil {
				return err
			}
			args = append(args, c.createdAt, c.seq)
		}
		args = append(args, limit+1)
		rows, err = collect(ctx, tx, scanThread, qListThreads(order, after != ""), args...)
		return err
	})
	if err != nil {
		return Page[Thread]{}, err
	}
	return pageOf(rows, limit, func(t Thread) string { return t.ID }), nil
}

// UpdateThread implements Store.
func (s *SQLiteStore) UpdateThread(ctx context.Context, owner, id string, u ThreadUpdate) (Thread, error) {
	title, err := checkUpdate(owner, u)
	if err != nil {
		return Thread{}, err
	}
	var t Thread
	err = s.write(ctx, "update thread", func(tx *sql.Tx) (err error) {
		t, err = scanThread(tx.QueryRowContext(ctx, qUpdateThread,
			micros(s.now()), title, nullJSON(u.Status), nullJSON(u.Metadata), id, owner))
		return err
	})
	return t, err
}

// DeleteThread implements Store.
func (s *SQLiteStore) DeleteThread(ctx context.Context, owner, id string) (Deleted, error) {
	if owner == "" {
		return Deleted{}, invalid("empty owner")
	}
	var d Deleted
	err := s.write(ctx, "delete thread", func(tx *sql.Tx) error {
		if err := ownThread(ctx, tx, owner, id); err != nil {
			return err
		}
		// Cascaded rows are not in the statement's change count: count them first.
		if err := tx.QueryRowContext(ctx, qCountThread, id).
			Scan(&d.Items, &d.Feedback, &d.Attachments); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, qDeleteThread, id)
		if err != nil {
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

// ownThread is ErrNotFound unless the owner has thread id.
func ownThread(ctx context.Context, q querier, owner, id string) error {
	var one int
	return q.QueryRowContext(ctx, qOwnThread, id, owner).Scan(&one)
}

// touchThread bumps the owner's thread's UpdatedAt; ErrNotFound if it is not theirs.
func (s *SQLiteStore) touchThread(ctx context.Context, tx *sql.Tx, owner, id string) error {
	res, err := tx.ExecContext(ctx, qTouchThread, micros(s.now()), id, owner)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return cmp.Or(err, ErrNotFound)
	}
	return nil
}

// itemPosition resolves an item id of a thread to its place.
func itemPosition(ctx context.Context, q querier, threadID, id string) (cursor, error) {
	var c cursor
	err := q.QueryRowContext(ctx, qItemPosition, threadID, id).Scan(&c.createdAt, &c.seq)
	return c, err
}

// AddItem implements Store.
func (s *SQLiteStore) AddItem(ctx context.Context, owner string, it Item) (Item, error) {
	return s.putItem(ctx, "add item", owner, it, qAddItem)
}

// SaveItem implements Store.
func (s *SQLiteStore) SaveItem(ctx context.Context, owner string, it Item) (Item, error) {
	return s.putItem(ctx, "save item", owner, it, qSaveItem)
}

// putItem runs an item insert (or upsert) that returns seq and created_at.
func (s *SQLiteStore) putItem(ctx context.Context, op, owner string, it Item, query string) (Item, error) {
	if err := checkItem(owner, it); err != nil {
		return Item{}, err
	}
	err := s.write(ctx, op, func(tx *sql.Tx) error {
		if err := s.touchThread(ctx, tx, owner, it.ThreadID); err != nil {
			return err
		}
		// Read under the write lock, so that default timestamps follow Seq.
		if it.CreatedAt.IsZero() {
			it.CreatedAt = s.now()
		}
		var created int64
		if err := tx.QueryRowContext(ctx, query, it.ThreadID, it.ID, micros(it.CreatedAt), it.Type, string(it.Data)).Scan(&it.Seq, &created); err != nil {
			return err
		}
		it.CreatedAt = fromMicros(created)
		return nil
	})
	if err != nil {
		return Item{}, err
	}
	return it, nil
}

// Item implements Store.
func (s *SQLiteStore) Item(ctx context.Context, owner, threadID, id string) (Item, error) {
	if owner == "" {
		return Item{}, invalid("empty owner")
	}
	var it Item
	err := s.read(ctx, "load item", func(tx *sql.Tx) (err error) {
		// The join is the ownership check.
		it, err = scanItem(tx.QueryRowContext(ctx, qItem, threadID, id, owner))
		return err
	})
	return it, err
}

// ListItems implements Store.
func (s *SQLiteStore) ListItems(ctx context.Context, owner, threadID, after string, limit int, order Order) (Page[Item], error) {
	limit, err := checkPage(owner, limit, order)
	if err != nil {
		return Page[Item]{}, err
	}
	var rows []Item
	err = s.read(ctx, "list items", func(tx *sql.Tx) error {
		if err := ownThread(ctx, tx, owner, threadID); err != nil {
			return err
		}
		args := []any{threadID}
		if after != "" {
			c, err := itemPosition(ctx, tx, threadID, after)
			if err != nil {
				return err
			}
			args = append(args, c.createdAt, c.seq)
		}
		args = append(args, limit+1)
		rows, err = collect(ctx, tx, scanItem, qListItems(order, after != ""), args...)
		return err
	})
	if err != nil {
		return Page[Item]{}, err
	}
	return pageOf(rows, limit, func(it Item) string { return it.ID }), nil
}

// RecentItems implements Store.
func (s *SQLiteStore) RecentItems(ctx context.Context, owner, threadID string, n int) ([]Item, error) {
	switch {
	case owner == "":
		return nil, invalid("empty owner")
	case n < 1:
		return nil, invalid("n below 1")
	}
	n = min(n, MaxRecentItems)
	var rows []Item
	err := s.read(ctx, "recent items", func(tx *sql.Tx) (err error) {
		if err := ownThread(ctx, tx, owner, threadID); err != nil {
			return err
		}
		rows, err = collect(ctx, tx, scanItem, qListItems(Desc, false), threadID, n)
		return err
	})
	if err != nil {
		return nil, err
	}
	slices.Reverse(rows)
	if rows == nil {
		rows = []Item{}
	}
	return rows, nil
}

// DeleteItemsAfter implements Store.
func (s *SQLiteStore) DeleteItemsAfter(ctx context.Context, owner, threadID, itemID string) (int64, error) {
	if owner == "" {
		return 0, invalid("empty owner")
	}
	var n int64
	err := s.write(ctx, "delete items after", func(tx *sql.Tx) error {
		if err := s.touchThread(ctx, tx, owner, threadID); err != nil {
			return err
		}
		c, err := itemPosition(ctx, tx, threadID, itemID)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, qDeleteItemsAfter, threadID, c.createdAt, c.seq)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// AddFeedback implements Store.
func (s *SQLiteStore) AddFeedback(ctx context.Context, owner, threadID string, itemIDs []string, kind FeedbackKind) error {
	switch {
	case owner == "":
		return invalid("empty owner")
	case !kind.Valid():
		return invalid(fmt.Sprintf("feedback kind %q", kind))
	case len(itemIDs) == 0 || len(itemIDs) > MaxPageLimit:
		return invalid("feedback needs 1 to " + strconv.Itoa(MaxPageLimit) + " item ids")
	}
	now := micros(s.now())
	return s.write(ctx, "add feedback", func(tx *sql.Tx) error {
		if err := ownThread(ctx, tx, owner, threadID); err != nil {
			return err
		}
		for _, id := range itemIDs {
			if _, err := itemPosition(ctx, tx, threadID, id); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, qPutFeedback, threadID, id, string(kind), now); err != nil {
				return err
			}
		}
		return nil
	})
}

// Feedback implements Store.
func (s *SQLiteStore) Feedback(ctx context.Context, owner, threadID string) ([]Feedback, error) {
	if owner == "" {
		return nil, invalid("empty owner")
	}
	var out []Feedback
	err := s.read(ctx, "load feedback", func(tx *sql.Tx) (err error) {
		if err := ownThread(ctx, tx, owner, threadID); err != nil {
			return err
		}
		out, err = collect(ctx, tx, scanFeedback, qFeedback, threadID)
		return err
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = []Feedback{}
	}
	return out, nil
}

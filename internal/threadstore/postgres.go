package threadstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresOptions tunes ParsePostgres; the zero value is the default.
type PostgresOptions struct {
	// QueryTimeout bounds every call to the database (each method, and the
	// connection and migration of OpenPostgres); the caller's context can end it
	// sooner. Twice it is the server's statement_timeout and
	// idle_in_transaction_session_timeout, unless the DSN sets them. Zero
	// means 5s.
	QueryTimeout time.Duration
	// MaxConns is the size of the connection pool. Zero means the DSN's
	// pool_max_conns, else pgxpool's default (the larger of 4 and the CPUs).
	MaxConns int32
}

// PostgresConfig is a parsed, valid DSN with its options: what OpenPostgres
// connects with. Its String form is Describe, without credentials.
type PostgresConfig struct {
	pool    *pgxpool.Config
	timeout time.Duration
}

// ParsePostgres checks a DSN (a postgres:// URL or key=value pairs, as libpq
// reads them, environment variables such as PGPASSWORD included) without
// connecting. Its errors say what is wrong without quoting the DSN, so that no
// password reaches a log or an HTTP answer.
func ParsePostgres(dsn string, opts PostgresOptions) (*PostgresConfig, error) {
	switch {
	case strings.TrimSpace(dsn) == "":
		return nil, errors.New("threadstore: empty PostgreSQL DSN")
	case opts.QueryTimeout < 0:
		return nil, errors.New("threadstore: negative PostgreSQL query timeout")
	case opts.MaxConns < 0:
		return nil, errors.New("threadstore: negative PostgreSQL max_conns")
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("threadstore: the PostgreSQL DSN does not parse: %s (the DSN is not repeated here, as it may hold a password)", parseReason(err))
	}
	if opts.QueryTimeout == 0 {
		opts.QueryTimeout = 5 * time.Second
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	rt := cfg.ConnConfig.RuntimeParams
	if rt["application_name"] == "" {
		rt["application_name"] = "caddy-chatkit"
	}
	// The server ends what this process gave up on: a statement still running
	// after its context ended, and a transaction left open by a process that
	// stalled while holding a thread's row lock. Twice the query timeout, so
	// that the caller's deadline ends a call first (and says so).
	backstop := strconv.FormatInt(2*max(opts.QueryTimeout.Milliseconds(), 1), 10) // 0 would mean none
	if rt["statement_timeout"] == "" {
		rt["statement_timeout"] = backstop
	}
	if rt["idle_in_transaction_session_timeout"] == "" {
		rt["idle_in_transaction_session_timeout"] = backstop
	}
	return &PostgresConfig{pool: cfg, timeout: opts.QueryTimeout}, nil
}

// parseReason is what pgx says is wrong with a DSN, without the DSN: its
// message quotes the DSN with recognizable passwords masked, which is best
// effort on malformed input, and wraps errors (from net/url) that quote it
// whole. Only the reason between the two is kept.
func parseReason(err error) string {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return "malformed"
	}
	// The message is "cannot parse `<masked DSN>`: <reason>[ (<wrapped>)]";
	// the prefix is rebuilt from the same DSN, so it matches exactly.
	reason, ok := strings.CutPrefix(pe.Error(), pgconn.NewParseConfigError(pe.ConnString, "", nil).Error())
	if inner := pe.Unwrap(); inner != nil {
		reason = strings.TrimSuffix(reason, " ("+inner.Error()+")")
		// A wrapped error that quotes nothing (such as "sslmode is invalid")
		// is kept; net/url's quote the whole DSN, strconv's a value.
		var ue *url.Error
		if msg := inner.Error(); !errors.As(inner, &ue) && !strings.ContainsAny(msg, "\"'`@=:/") && len(msg) < 80 {
			reason += ": " + msg
		}
	}
	// Belt and braces: a reason that still holds some of the DSN says nothing.
	if !ok || reason == "" || strings.ContainsAny(reason, "@`") || len(pe.ConnString) > 3 && strings.Contains(reason, pe.ConnString) {
		return "malformed"
	}
	return reason
}

// Describe names the server(s), database and user, for logs: no password.
func (c *PostgresConfig) Describe() string {
	cc := c.pool.ConnConfig
	hosts := []string{net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port)))}
	for _, f := range cc.Fallbacks {
		h := net.JoinHostPort(f.Host, strconv.Itoa(int(f.Port)))
		if h != hosts[len(hosts)-1] {
			hosts = append(hosts, h)
		}
	}
	return fmt.Sprintf("postgres://%s/%s (user %s)", strings.Join(hosts, ","), cc.Database, cc.User)
}

// String is Describe, so that printing a config never shows its password.
func (c *PostgresConfig) String() string { return c.Describe() }

// GoString is Describe too (for %#v).
func (c *PostgresConfig) GoString() string { return c.Describe() }

// PostgresStore is a Store in a PostgreSQL database, in its own schema
// (chatkit), shared by every process that opens it: each write that orders
// items locks its thread's row, so that Seq and the store's clock (the
// server's) follow one order across processes, and leases and the retention
// sweep hold across them.
type PostgresStore struct {
	pool      *pgxpool.Pool
	desc      string
	timeout   time.Duration
	closed    atomic.Bool
	closeOnce sync.Once
}

var _ Store = (*PostgresStore)(nil)

// OpenPostgres connects and creates or migrates the schema (once, under an
// advisory lock, however many processes open at the same moment). A server
// that is down, unreachable or refuses the credentials is ErrUnavailable: the
// caller may try again later. A schema newer than this build or not the
// thread store's is refused with a plain error.
func OpenPostgres(ctx context.Context, cfg *PostgresConfig) (*PostgresStore, error) {
	if cfg == nil || cfg.pool == nil {
		return nil, errors.New("threadstore: OpenPostgres needs a config from ParsePostgres")
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg.pool.Copy())
	if err != nil {
		return nil, fmt.Errorf("threadstore: PostgreSQL %s: %w", cfg.Describe(), err)
	}
	s := &PostgresStore{pool: pool, desc: cfg.Describe(), timeout: cfg.timeout}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// Describe names the database, for logs.
func (s *PostgresStore) Describe() string { return s.desc }

// Close closes the pool, waiting for calls in flight (each bounded by the query
// timeout); later calls answer ErrClosed. Safe to call twice.
func (s *PostgresStore) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.pool.Close()
	})
	return nil
}

// bounded runs fn under the query timeout and maps its error.
func (s *PostgresStore) bounded(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	qctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.fail(ctx, qctx, op, fn(qctx))
}

// inTx runs fn in a read-committed transaction under the query timeout.
func (s *PostgresStore) inTx(ctx context.Context, op string, fn func(ctx context.Context, tx pgx.Tx) error) error {
	return s.bounded(ctx, op, func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return fn(ctx, tx) })
	})
}

// fail maps an error to the package's errors, in one place for every method:
// ctx is the caller's context, qctx the one bounded by the query timeout.
func (s *PostgresStore) fail(ctx, qctx context.Context, op string, err error) error {
	var pe *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrExists), errors.Is(err, ErrInvalid),
		errors.Is(err, ErrUnavailable), errors.Is(err, ErrBusy):
		return err
	case errors.Is(err, pgx.ErrNoRows):
		return ErrNotFound
	case s.closed.Load(): // set before the pool closes, so its errors are ErrClosed
		return ErrClosed
	case ctx.Err() != nil:
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, ctx.Err())
	case qctx.Err() != nil:
		return fmt.Errorf("%w: %s: no answer from PostgreSQL within %v: %w", ErrUnavailable, op, s.timeout, qctx.Err())
	case errors.As(err, &pe):
		switch kind := pgErrorKind(pe); kind {
		case nil:
		case ErrUnavailable:
			return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
		case ErrInvalid:
			return fmt.Errorf("%w: %s: %s", ErrInvalid, op, pe.Message)
		default:
			return kind
		}
	case isConnError(err):
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
	}
	return fmt.Errorf("threadstore: %s: %w", op, err)
}

// pgErrorKind classes a server error by its SQLSTATE; nil for an unexpected one.
func pgErrorKind(pe *pgconn.PgError) error {
	switch pe.Code {
	case "23505": // unique_violation
		return ErrExists
	case "23503": // foreign_key_violation: the thread or item went meanwhile
		return ErrNotFound
	case "22021", "22P05", "22008", "54000":
		// Bad encoding (a NUL byte, invalid UTF-8), a JSON escape the server
		// refuses, a time out of range, an id too long to index.
		return ErrInvalid
	case "55P03", "25006", "3D000":
		// lock_not_available; read_only_sql_transaction (a standby, mid
		// failover); invalid_catalog_name (the database is not there yet).
		return ErrUnavailable
	}
	switch pe.Code[:min(len(pe.Code), 2)] {
	case "08", "28", "40", "53", "57", "58":
		// Connection, authorization, serialization or deadlock, resources,
		// operator intervention (shutdown, cancel, statement_timeout), system.
		return ErrUnavailable
	}
	return nil
}

// isConnError reports an error of the connection rather than of the statement.
func isConnError(err error) bool {
	var (
		ce *pgconn.ConnectError
		ne net.Error
	)
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// randomToken is a lease holder's unguessable name.
func randomToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// isNoRows reports a query that returned no row.
func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

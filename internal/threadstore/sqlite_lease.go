package threadstore

import (
	"context"
	"database/sql"
	"errors"
	"sync/atomic"
	"time"
)

// The lease statements (checked by TestSQLiteQueryPlans), as PostgreSQL's but
// on the store's clock: the processes sharing a file share a machine, and
// with it a clock, and a test can move it.
const (
	// Claims a free thread, or takes it over from a lapsed claim, in one
	// statement: writes to the file are serialized, so one claimer wins.
	// Args thread id, holder, expiry, now.
	qClaimThread = `INSERT INTO leases AS l (thread_id, holder, expires_at) VALUES (?1, ?2, ?3)
		ON CONFLICT (thread_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE l.expires_at <= ?4
		RETURNING holder`
	// Extends the claim if it is still ours, or takes the thread back if
	// nobody holds it (lapsed, and no live claim took it).
	qRenewLease = `INSERT INTO leases AS l (thread_id, holder, expires_at) VALUES (?1, ?2, ?3)
		ON CONFLICT (thread_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE l.holder = excluded.holder OR l.expires_at <= ?4
		RETURNING holder`
	qReleaseLease = `DELETE FROM leases WHERE thread_id = ? AND holder = ?`
)

// sqliteLease is one claim: the thread's row in leases while holder is its
// token.
type sqliteLease struct {
	s        *SQLiteStore
	threadID string
	holder   string
	ttl      time.Duration
	released atomic.Bool
}

// ClaimThread implements ThreadLeaser across every process on the file.
func (s *SQLiteStore) ClaimThread(ctx context.Context, threadID string, ttl time.Duration) (Lease, error) {
	if err := checkClaim(threadID, ttl); err != nil {
		return nil, err
	}
	l := &sqliteLease{s: s, threadID: threadID, holder: randomToken(), ttl: ttl}
	if err := l.put(ctx, "claim thread", qClaimThread); err != nil {
		return nil, err
	}
	return l, nil
}

// put runs a claim or renewal; ErrBusy when another live claim holds the thread.
func (l *sqliteLease) put(ctx context.Context, op, query string) error {
	return l.s.write(ctx, op, func(tx *sql.Tx) error {
		now := l.s.now()
		var holder string
		err := tx.QueryRowContext(ctx, query, l.threadID, l.holder, micros(now.Add(max(l.ttl, time.Microsecond))), micros(now)).Scan(&holder)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrBusy
		}
		return err
	})
}

// Renew implements Lease; ErrBusy once another claim holds the thread or this
// one was released.
func (l *sqliteLease) Renew(ctx context.Context) error {
	if l.released.Load() {
		return ErrBusy
	}
	return l.put(ctx, "renew lease", qRenewLease)
}

// Release implements Lease: it deletes the claim only if it is still this
// one's. Safe to call twice.
func (l *sqliteLease) Release(ctx context.Context) error {
	if l.released.Swap(true) {
		return nil
	}
	return l.s.write(ctx, "release lease", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, qReleaseLease, l.threadID, l.holder)
		return err
	})
}

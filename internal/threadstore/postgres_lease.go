package threadstore

import (
	"context"
	"sync/atomic"
	"time"
)

// The lease statements. Expiry is on the server's clock (now()), so that
// processes whose clocks disagree still agree on who holds a thread.
const (
	// Claims a free thread, or takes it over from a lapsed claim, in one
	// statement: concurrent claimers queue on the row and one wins.
	pgClaimThread = `INSERT INTO chatkit.leases AS l (thread_id, holder, expires_at)
		VALUES ($1, $2, now() + $3 * interval '1 microsecond')
		ON CONFLICT (thread_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE l.expires_at <= now()
		RETURNING holder`
	// Extends the claim if it is still ours, or takes the thread back if
	// nobody holds it (lapsed, and no live claim took it).
	pgRenewLease = `INSERT INTO chatkit.leases AS l (thread_id, holder, expires_at)
		VALUES ($1, $2, now() + $3 * interval '1 microsecond')
		ON CONFLICT (thread_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE l.holder = excluded.holder OR l.expires_at <= now()
		RETURNING holder`
	pgReleaseLease = `DELETE FROM chatkit.leases WHERE thread_id = $1 AND holder = $2`
)

// pgLease is one claim: the thread's row in chatkit.leases while holder is
// its token.
type pgLease struct {
	s        *PostgresStore
	threadID string
	holder   string
	ttl      time.Duration
	released atomic.Bool
}

// ClaimThread implements ThreadLeaser across every process on the database.
func (s *PostgresStore) ClaimThread(ctx context.Context, threadID string, ttl time.Duration) (Lease, error) {
	if err := checkClaim(threadID, ttl); err != nil {
		return nil, err
	}
	l := &pgLease{s: s, threadID: threadID, holder: randomToken(), ttl: ttl}
	if err := l.put(ctx, "claim thread", pgClaimThread); err != nil {
		return nil, err
	}
	return l, nil
}

// put runs a claim or renewal; ErrBusy when another live claim holds the thread.
func (l *pgLease) put(ctx context.Context, op, query string) error {
	return l.s.bounded(ctx, op, func(ctx context.Context) error {
		var holder string
		err := l.s.pool.QueryRow(ctx, query, l.threadID, l.holder, max(l.ttl.Microseconds(), 1)).Scan(&holder)
		if err != nil && isNoRows(err) {
			return ErrBusy
		}
		return err
	})
}

// Renew implements Lease; ErrBusy once another claim holds the thread or this
// one was released.
func (l *pgLease) Renew(ctx context.Context) error {
	if l.released.Load() {
		return ErrBusy
	}
	return l.put(ctx, "renew lease", pgRenewLease)
}

// Release implements Lease: it deletes the claim only if it is still this
// one's. Safe to call twice.
func (l *pgLease) Release(ctx context.Context) error {
	if l.released.Swap(true) {
		return nil
	}
	return l.s.bounded(ctx, "release lease", func(ctx context.Context) error {
		_, err := l.s.pool.Exec(ctx, pgReleaseLease, l.threadID, l.holder)
		return err
	})
}

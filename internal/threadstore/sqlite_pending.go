package threadstore

// Placeholders for the Step 11 methods, replaced by their implementations.

import (
	"context"
	"errors"
	"time"
)

var errPending = errors.New("threadstore: not implemented yet")

func (s *SQLiteStore) ExportOwner(ctx context.Context, owner string) (OwnerExport, error) {
	return OwnerExport{}, errPending
}

func (s *SQLiteStore) DeleteOwner(ctx context.Context, owner string) (Deleted, error) {
	return Deleted{}, errPending
}

func (s *SQLiteStore) DeleteIdleThreads(ctx context.Context, before time.Time) (Deleted, error) {
	return Deleted{}, errPending
}

func (s *SQLiteStore) ClaimThread(ctx context.Context, threadID string, ttl time.Duration) (Lease, error) {
	return nil, errPending
}

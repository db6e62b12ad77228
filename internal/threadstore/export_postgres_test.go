package threadstore

import (
	"testing"

	"github.com/caddy-chatkit/caddy-chatkit/internal/pgtest"
)

// PGSweepLock is the advisory lock the retention sweep takes, for tests that
// hold it from another session.
var PGSweepLock = [2]int32{pgLockSpace, pgLockSweep}

// The PostgreSQL test helpers, shared with the package's external tests.
var PGServer = pgtest.Server

// PGSecret is the password of the test DSNs: it must never show in an error
// or a description. The shared test server trusts loopback, so it is never
// even asked for.
const PGSecret = "Zq7-s3cr3t-xyzzy"

// PGFreshDatabase creates a database of its own on the test server and returns
// its DSN, with PGSecret as the password; the database is dropped at cleanup.
func PGFreshDatabase(t testing.TB) string { return pgtest.FreshDatabase(t, PGSecret) }

func pgFreshDatabase(t testing.TB) string { return PGFreshDatabase(t) }

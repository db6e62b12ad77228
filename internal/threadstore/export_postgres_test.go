package threadstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

// PGSweepLock is the advisory lock the retention sweep takes, for tests that
// hold it from another session.
var PGSweepLock = [2]int32{pgLockSpace, pgLockSweep}

// The PostgreSQL test helpers, shared with the package's external tests.
var (
	PGServer        = pgServer
	PGFreshDatabase = pgFreshDatabase
)

// PGSecret is the password of the test DSNs: it must never show in an error
// or a description. The shared test server trusts loopback, so it is never
// even asked for.
const PGSecret = "Zq7-s3cr3t-xyzzy"

// pgServer is the test server's DSN (a postgres:// URL), or a skip.
func pgServer(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("CHATKIT_TEST_POSTGRES_URL")
	if dsn == "" {
		if os.Getenv("CHATKIT_REQUIRE_POSTGRES") == "1" {
			t.Fatal("CHATKIT_REQUIRE_POSTGRES=1 but CHATKIT_TEST_POSTGRES_URL is not set")
		}
		t.Skip("CHATKIT_TEST_POSTGRES_URL is not set")
	}
	return dsn
}

// pgFreshDatabase creates a database of its own on the test server and returns
// its DSN, with PGSecret as the password; the database is dropped at cleanup.
func pgFreshDatabase(t testing.TB) string {
	t.Helper()
	server := pgServer(t)
	ctx := context.Background()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "chatkit_test_" + hex.EncodeToString(b[:])
	admin, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatalf("connecting to the test server: %v", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("CREATE DATABASE: %v", err)
	}
	t.Cleanup(func() {
		admin, err := pgx.Connect(ctx, server)
		if err != nil {
			t.Errorf("dropping %s: %v", name, err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping %s: %v", name, err)
		}
	})
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("CHATKIT_TEST_POSTGRES_URL must be a postgres:// URL (%v)", err)
	}
	u.Path = "/" + name
	u.User = url.UserPassword(u.User.Username(), PGSecret)
	return u.String()
}

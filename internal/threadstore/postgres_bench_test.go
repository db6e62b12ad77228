package threadstore_test

import (
	"testing"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// BenchmarkPostgres is BenchmarkSQLite on a fresh database of the server at
// CHATKIT_TEST_POSTGRES_URL (dropped afterwards), through one pool.
//
//	CHATKIT_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:15432/postgres \
//	  go test -run '^$' -bench BenchmarkPostgres -benchtime 5000x ./internal/threadstore/
func BenchmarkPostgres(b *testing.B) {
	s := openPG(b, threadstore.PGFreshDatabase(b), threadstore.PostgresOptions{})
	benchReads(b, s)
}

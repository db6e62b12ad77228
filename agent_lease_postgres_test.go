package chatkit

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-chatkit/caddy-chatkit/internal/pgtest"
	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// pgItemIDs reads a thread's item ids from PostgreSQL, in thread order.
func pgStoredItemIDs(t *testing.T, dsn, threadID string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT id FROM chatkit.items WHERE thread_id = $1 ORDER BY created_at, seq`, threadID)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestAgentLeasePostgres: the one-turn-per-thread rules on PostgreSQL
// through Caddy: concurrent turns (one streams, the other 409, every
// acknowledged item stored once), and a claim by another instance (its own
// pool on the database) refusing turns and the delete before the model.
func TestAgentLeasePostgres(t *testing.T) {
	dsn := pgtest.FreshDatabase(t, agentStoreSecret)
	t.Setenv(pgAgentEnv, dsn)
	fake := newFake(t)
	startPGAgent(t, fake, "", "", "")
	alice := &userClient{t: t, c: client(t), user: "alice"}

	checkConcurrentTurns(t, fake, func(body string) rawReply { return rawAgentPost(alice.c, body, "X-Test-User", "alice") },
		func(threadID string) []string { return pgStoredItemIDs(t, dsn, threadID) })

	th := alice.stream(createBody("another")).threadID(t)
	cfg, err := threadstore.ParsePostgres(dsn, threadstore.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := threadstore.OpenPostgres(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l, err := other.ClaimThread(context.Background(), th, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	before, calls := pgStoredItemIDs(t, dsn, th), fake.ResponsesCount()
	expectError(t, alice.post(addBody(th, "busy?")), http.StatusConflict, "thread_busy")
	expectError(t, alice.post(threadBody("threads.delete", th)), http.StatusConflict, "thread_busy")
	if got := pgStoredItemIDs(t, dsn, th); len(got) != len(before) || fake.ResponsesCount() != calls {
		t.Fatalf("a turn on a thread held elsewhere: items %v (had %v), %d model calls", got, before, fake.ResponsesCount()-calls)
	}
	if err := l.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := alice.stream(addBody(th, "now")); s.status != http.StatusOK || s.errorFrame() != nil {
		t.Fatalf("after the other instance released: %d %s", s.status, s.body)
	}
	// The turn's end let the thread go: the other instance claims it.
	if l, err := other.ClaimThread(context.Background(), th, time.Minute); err != nil {
		t.Fatalf("the other instance's claim after the turn: %v", err)
	} else if err := l.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
}

package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestClusterStopStallResume: the cluster answers when started, refuses when
// stopped, hangs when stalled and answers again after each.
func TestClusterStopStallResume(t *testing.T) {
	const pw = "pgtest-pw"
	c := StartCluster(t, pw)
	ping := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.DSN(pw))
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		return conn.Ping(ctx)
	}
	if err := ping(5 * time.Second); err != nil {
		t.Fatalf("started: %v", err)
	}
	if err := ping(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(context.Background(), c.DSN("wrong")); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	c.Stall()
	start := time.Now()
	if err := ping(500 * time.Millisecond); err == nil {
		t.Fatal("a stalled server answered")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the stalled ping took %v", d)
	}
	c.Resume()
	if err := ping(5 * time.Second); err != nil {
		t.Fatalf("resumed: %v", err)
	}
	c.Stop()
	if err := ping(time.Second); err == nil {
		t.Fatal("a stopped server answered")
	}
	c.Start()
	if err := ping(5 * time.Second); err != nil {
		t.Fatalf("restarted: %v", err)
	}
}

func TestFreshDatabase(t *testing.T) {
	dsn := FreshDatabase(t, "")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var name string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil || len(name) < len("chatkit_test_") {
		t.Fatalf("current_database() = %q, %v", name, err)
	}
}

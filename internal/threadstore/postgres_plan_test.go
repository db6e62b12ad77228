package threadstore

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestPostgresQueryPlans checks that no statement reads a whole table of a
// store with 20,000 threads of 200 owners, 200,000 items and as many leases
// and attachments as threads: each reaches its
// rows through an index (the latency itself is measured by BenchmarkPostgres).
// Two are left out: the retention sweep reads threads once an interval (an
// index on updated_at would cost every item write, and stop the touch of a
// thread from being a HOT update), and the export of an owner's feedback,
// which the planner joins by hashing the feedback table while it is this
// small (the export is a rare call of the site owner's).
func TestPostgresQueryPlans(t *testing.T) {
	ctx := context.Background()
	cfg, err := ParsePostgres(pgFreshDatabase(t), PostgresOptions{QueryTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenPostgres(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.pool.Exec(ctx, `
		INSERT INTO chatkit.threads (id, owner, status, created_at, updated_at)
		SELECT 't' || g, 'user:' || g % 200, '{}', '2026-01-01'::timestamptz + g * interval '1 s', '2026-01-01'::timestamptz + g * interval '1 s'
		FROM generate_series(1, 20000) g;
		INSERT INTO chatkit.items (thread_id, id, created_at, type, data)
		SELECT 't' || g % 20000 + 1, 'm' || g / 20000, '2026-01-01'::timestamptz + g * interval '1 s', 'user_message', '{}'
		FROM generate_series(0, 199999) g;
		INSERT INTO chatkit.feedback (thread_id, item_id, kind, created_at)
		SELECT 't' || g % 20000 + 1, 'm' || g / 20000, 'positive', now() FROM generate_series(0, 199999, 2) g;
		INSERT INTO chatkit.attachments (id, owner, thread_id, name, mime_type, size, created_at, data)
		SELECT 'a' || g, 'user:' || g % 200, CASE WHEN g % 3 > 0 THEN 't' || g END, 'f', 'image/png', 1, '2026-01-01'::timestamptz + g * interval '1 s', '\x00'
		FROM generate_series(1, 20000) g;
		INSERT INTO chatkit.leases (thread_id, holder, expires_at)
		SELECT 't' || g, 'h', now() FROM generate_series(1, 20000) g;
		ANALYZE`); err != nil {
		t.Fatal(err)
	}
	when := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	type q struct {
		sql  string
		args []any
	}
	queries := map[string]q{
		"thread":              {pgThread, []any{"t17", "user:17"}},
		"update thread":       {pgUpdateThread, []any{"t17", "user:17", "x", nil, nil}},
		"lock thread":         {pgLockThread, []any{"t17", "user:17"}},
		"touch thread":        {pgTouchThread, []any{"t17", "user:17"}},
		"share thread":        {pgShareThread, []any{"t17", "user:17"}},
		"delete threads":      {pgDeleteThreads, []any{[]string{"t17", "t18"}}},
		"add item":            {pgAddItem + pgAddItemReturning, []any{"t17", "user:17", "m99", when, "user_message", "{}"}},
		"save item":           {pgAddItem + pgSaveItemConflict + pgAddItemReturning, []any{"t17", "user:17", "m1", when, "user_message", "{}"}},
		"item":                {pgItem, []any{"t17", "m3", "user:17"}},
		"delete items after":  {pgDeleteItemsAfter, []any{"t17", "m3"}},
		"put feedback":        {pgPutFeedback, []any{"t17", []string{"m1", "m2"}, "positive"}},
		"feedback":            {pgFeedback, []any{"t17", "user:17"}},
		"attachment":          {pgAttachment, []any{"a17", "user:17"}},
		"attachment exists":   {pgAttachmentExists, []any{"a17", "user:17"}},
		"linked attachment":   {pgLinkedAttachment, []any{"a17"}},
		"upload attachment":   {pgUploadAttachment, []any{"a17", "user:17", "image/png", 1, []byte("x")}},
		"attach attachments":  {pgAttachAttachments, []any{"t17", []string{"a17", "a18"}, "user:17"}},
		"delete attachment":   {pgDeleteAttachment, []any{"a17", "user:17"}},
		"delete unattached":   {pgDeleteUnattached, []any{when}},
		"owner threads":       {pgOwnerThreads, []any{"user:17"}},
		"owner items":         {pgOwnerItems, []any{"user:17"}},
		"owner attachments":   {pgOwnerAttachments, []any{"user:17"}},
		"lock owner threads":  {pgLockOwnerThreads, []any{"user:17"}},
		"delete owner attach": {pgDeleteOwnerAttached, []any{"user:17"}},
		"claim":               {pgClaimThread, []any{"t17", "h", int64(1e6)}},
		"renew":               {pgRenewLease, []any{"t17", "h", int64(1e6)}},
		"release":             {pgReleaseLease, []any{"t17", "h"}},
	}
	for _, order := range []Order{Asc, Desc} {
		queries["list threads "+string(order)] = q{pgListThreads(order, false), []any{"user:17", 21}}
		queries["list threads after "+string(order)] = q{pgListThreads(order, true), []any{"user:17", "t217", 21}}
		queries["list items "+string(order)] = q{pgListItems(order, false), []any{"t17", "user:17", 21}}
		queries["list items after "+string(order)] = q{pgListItems(order, true), []any{"t17", "user:17", "m3", 21}}
	}
	for name, q := range queries {
		rows, err := s.pool.Query(ctx, "EXPLAIN "+q.sql, q.args...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var plan []string
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, line)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		text := strings.Join(plan, "\n")
		if strings.Contains(text, "Seq Scan") {
			t.Errorf("%s reads a whole table:\n%s", name, text)
		}
	}
}

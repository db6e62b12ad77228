package threadstore

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestSQLiteQueryPlans checks that every statement reaches its rows through an index
// and sorts nothing: what keeps reads fast however many threads and items there are
// (the latency itself is measured by BenchmarkSQLite).
func TestSQLiteQueryPlans(t *testing.T) {
	s, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "threads.db"), SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	queries := map[string]string{
		"thread": qThread, "own thread": qOwnThread, "thread position": qThreadPosition,
		"update thread": qUpdateThread, "touch thread": qTouchThread, "count thread": qCountThread,
		"delete thread": qDeleteThread, "item": qItem, "item position": qItemPosition,
		"delete items after": qDeleteItemsAfter, "feedback": qFeedback,
		"attachment": qAttachment, "attachment meta": qAttachmentMeta, "upload attachment": qUploadAttachment,
		"attach attachment": qAttachAttachment, "delete attachment": qDeleteAttachment,
		"delete unattached": qDeleteUnattached, "linked attachment": qLinkedAttachment,
		"owner threads": qOwnerThreads, "all items": qAllItems, "owner attachments": qOwnerAttachments,
		"count owner": qCountOwner, "delete owner attachments": qDeleteOwnerAttachments,
		"delete owner threads": qDeleteOwnerThreads, "count idle": qCountIdle, "delete idle": qDeleteIdle,
		// The lease upserts (qClaimThread, qRenewLease) have no plan to read:
		// their conflict target is the primary key.
		"release lease": qReleaseLease,
	}
	for _, order := range []Order{Asc, Desc} {
		for _, cursor := range []bool{false, true} {
			queries["list threads "+string(order)+map[bool]string{true: " after"}[cursor]] = qListThreads(order, cursor)
			queries["list items "+string(order)+map[bool]string{true: " after"}[cursor]] = qListItems(order, cursor)
		}
	}
	for name, q := range queries {
		plan := explain(t, s, q)
		if len(plan) == 0 {
			t.Fatalf("%s: empty plan", name)
		}
		for _, step := range plan {
			scansTable := strings.HasPrefix(step, "SCAN") && step != "SCAN CONSTANT ROW"
			if scansTable || strings.Contains(step, "TEMP B-TREE") {
				t.Errorf("%s: plan step %q (whole plan %q)", name, step, plan)
			}
		}
	}
	// The listings use the composite indexes, range included.
	for q, want := range map[string]string{
		qListThreads(Desc, true): "USING INDEX threads_by_owner (owner=? AND created_at<?)",
		qListItems(Asc, true):    "USING INDEX items_by_time (thread_id=? AND created_at>?)",
		qDeleteIdle:              "USING INDEX threads_by_update (updated_at<?)",
		qOwnerAttachments:        "USING INDEX attachments_by_owner (owner=?)",
	} {
		if plan := strings.Join(explain(t, s, q), "; "); !strings.Contains(plan, want) {
			t.Errorf("plan %q does not use %q", plan, want)
		}
	}
}

// explain returns the detail column of EXPLAIN QUERY PLAN, with NULL for every argument.
func explain(t *testing.T, s *SQLiteStore, q string) []string {
	t.Helper()
	n := strings.Count(q, "?")
	for i := 9; i >= 1; i-- { // numbered parameters: as many as the highest
		if strings.Contains(q, "?"+strconv.Itoa(i)) {
			n = i
			break
		}
	}
	args := make([]any, n)
	rows, err := s.r.Query("EXPLAIN QUERY PLAN "+q, args...)
	if err != nil {
		t.Fatalf("explain %q: %v", q, err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return plan
}

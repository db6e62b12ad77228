package storetest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// ownerFixture fills the store with two owners' data and returns what alice
// has: thr_late created first but later in time, thr_early with more items
// than a page (equal timestamps among them) and feedback, and attachments
// attached, free and never uploaded.
func ownerFixture(t *testing.T, s threadstore.Store) (wantThreads []string, wantItems map[string][]string) {
	t.Helper()
	ctx := context.Background()
	newThread(t, s, alice, "thr_late", at(50))
	newThread(t, s, alice, "thr_early", at(10))
	var early []string
	for i := range threadstore.MaxPageLimit + 5 {
		id := fmt.Sprintf("m%03d", i)
		early = append(early, id)
		addItem(t, s, alice, newItem("thr_early", id, at(11+i/10))) // ten to a timestamp
	}
	addItems(t, s, alice, "thr_late", []string{"z", "a"}, []int{51, 51})
	if err := s.AddFeedback(ctx, alice, "thr_early", []string{"m003", "m001"}, threadstore.Positive); err != nil {
		t.Fatal(err)
	}
	if err := s.AddFeedback(ctx, alice, "thr_late", []string{"a"}, threadstore.Negative); err != nil {
		t.Fatal(err)
	}
	newAttachment(t, s, alice, "atc_attached", 12)
	upload(t, s, alice, "atc_attached", []byte("attached bytes"))
	if _, err := s.AttachToThread(ctx, alice, "thr_early", []string{"atc_attached"}); err != nil {
		t.Fatal(err)
	}
	newAttachment(t, s, alice, "atc_free", 13)
	upload(t, s, alice, "atc_free", []byte("free bytes"))
	newAttachment(t, s, alice, "atc_pending", 14)

	newThread(t, s, bob, "thr_bob", at(20))
	addItems(t, s, bob, "thr_bob", []string{"b1"}, []int{21})
	if err := s.AddFeedback(ctx, bob, "thr_bob", []string{"b1"}, threadstore.Positive); err != nil {
		t.Fatal(err)
	}
	newAttachment(t, s, bob, "atc_bob", 22)
	upload(t, s, bob, "atc_bob", []byte("bob's bytes"))
	if _, err := s.AttachToThread(ctx, bob, "thr_bob", []string{"atc_bob"}); err != nil {
		t.Fatal(err)
	}
	return []string{"thr_early", "thr_late"}, map[string][]string{"thr_early": early, "thr_late": {"z", "a"}}
}

// exportDiff compares an export with what the owner reads through the rest
// of the interface, thread by thread.
func exportDiff(t *testing.T, s threadstore.Store, owner string, got threadstore.OwnerExport) string {
	t.Helper()
	for _, te := range got.Threads {
		want := snapshot(t, s, owner, te.Thread.ID)
		if d := stateDiff(state{te.Thread, te.Items, te.Feedback}, want); d != "" {
			return te.Thread.ID + ": " + d
		}
	}
	for _, a := range got.Attachments {
		want, err := s.Attachment(context.Background(), owner, a.ID)
		if err != nil {
			return fmt.Sprintf("attachment %s: %v", a.ID, err)
		}
		if a.Owner != owner || a.ThreadID != want.ThreadID || a.Name != want.Name || a.MimeType != want.MimeType ||
			a.Size != want.Size || !a.CreatedAt.Equal(want.CreatedAt) || a.Uploaded != want.Uploaded ||
			!bytes.Equal(a.Data, want.Data) || (a.Data == nil) != (want.Data == nil) {
			return fmt.Sprintf("attachment %+v, want %+v", a, want)
		}
	}
	return ""
}

func testExportOwner(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	wantThreads, wantItems := ownerFixture(t, s)

	got, err := s.ExportOwner(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	var threads []string
	for _, te := range got.Threads {
		threads = append(threads, te.Thread.ID)
		if ids := itemIDs(te.Items); !slices.Equal(ids, wantItems[te.Thread.ID]) {
			t.Fatalf("%s: items %v, want %v", te.Thread.ID, ids, wantItems[te.Thread.ID])
		}
	}
	if !slices.Equal(threads, wantThreads) {
		t.Fatalf("exported threads %v, want %v (oldest first)", threads, wantThreads)
	}
	if fb := got.Threads[0].Feedback; len(fb) != 2 || fb[0].ItemID != "m001" || fb[1].ItemID != "m003" || fb[0].Kind != threadstore.Positive {
		t.Fatalf("thr_early feedback %+v", fb)
	}
	var atts []string
	for _, a := range got.Attachments {
		atts = append(atts, a.ID)
	}
	if !slices.Equal(atts, []string{"atc_attached", "atc_free", "atc_pending"}) {
		t.Fatalf("exported attachments %v", atts)
	}
	if a := got.Attachments[0]; string(a.Data) != "attached bytes" || a.ThreadID != "thr_early" || !a.Uploaded {
		t.Fatalf("attached attachment %+v", a)
	}
	if a := got.Attachments[2]; a.Uploaded || a.Data != nil {
		t.Fatalf("never uploaded attachment %+v", a)
	}
	if d := exportDiff(t, s, alice, got); d != "" {
		t.Fatalf("alice's export: %s", d)
	}

	// Bob's export is his alone, and alice's holds nothing of his.
	b, err := s.ExportOwner(ctx, bob)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Threads) != 1 || b.Threads[0].Thread.ID != "thr_bob" || len(b.Threads[0].Items) != 1 ||
		len(b.Attachments) != 1 || string(b.Attachments[0].Data) != "bob's bytes" {
		t.Fatalf("bob's export %+v", b)
	}
	if d := exportDiff(t, s, bob, b); d != "" {
		t.Fatalf("bob's export: %s", d)
	}
	raw, _ := json.Marshal(got)
	for _, bobs := range []string{"thr_bob", "atc_bob", base64.StdEncoding.EncodeToString([]byte("bob's bytes")), bob} {
		if bytes.Contains(raw, []byte(bobs)) {
			t.Fatalf("alice's export contains %q", bobs)
		}
	}

	_, err = s.ExportOwner(ctx, "user:nobody")
	wantErr(t, "export of an unknown owner", err, threadstore.ErrNotFound)
	_, err = s.ExportOwner(ctx, "")
	wantErr(t, "export of an empty owner", err, threadstore.ErrInvalid)

	// An owner with nothing but an upload is known; one with an empty thread too.
	newAttachment(t, s, "user:carol", "atc_carol", 1)
	if c, err := s.ExportOwner(ctx, "user:carol"); err != nil || len(c.Threads) != 0 || len(c.Attachments) != 1 {
		t.Fatalf("carol's export %+v, %v", c, err)
	}
	newThread(t, s, "user:dave", "thr_dave", at(1))
	if d, err := s.ExportOwner(ctx, "user:dave"); err != nil || len(d.Threads) != 1 || len(d.Threads[0].Items) != 0 || len(d.Attachments) != 0 {
		t.Fatalf("dave's export %+v, %v", d, err)
	}
}

func testDeleteOwner(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	ownerFixture(t, s)
	bobBefore, err := s.ExportOwner(ctx, bob)
	if err != nil {
		t.Fatal(err)
	}

	d, err := s.DeleteOwner(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	want := threadstore.Deleted{Threads: 2, Items: threadstore.MaxPageLimit + 5 + 2, Feedback: 3, Attachments: 3}
	if d != want {
		t.Fatalf("DeleteOwner = %+v, want %+v", d, want)
	}
	_, err = s.ExportOwner(ctx, alice)
	wantErr(t, "export after DeleteOwner", err, threadstore.ErrNotFound)
	for _, id := range []string{"atc_attached", "atc_free", "atc_pending"} {
		_, err := s.LinkedAttachment(ctx, id)
		wantErr(t, "attachment "+id+" after DeleteOwner", err, threadstore.ErrNotFound)
	}
	if p, err := s.ListThreads(ctx, alice, "", 10, threadstore.Asc); err != nil || len(p.Data) != 0 {
		t.Fatalf("alice's threads after DeleteOwner: %v, %v", threadIDs(p.Data), err)
	}

	// Bob's data is exactly as it was.
	bobAfter, err := s.ExportOwner(ctx, bob)
	if err != nil {
		t.Fatal(err)
	}
	if len(bobAfter.Threads) != len(bobBefore.Threads) || len(bobAfter.Attachments) != len(bobBefore.Attachments) {
		t.Fatalf("bob's data changed: %+v, was %+v", bobAfter, bobBefore)
	}
	b, a := bobBefore.Threads[0], bobAfter.Threads[0]
	if df := stateDiff(state{a.Thread, a.Items, a.Feedback}, state{b.Thread, b.Items, b.Feedback}); df != "" {
		t.Fatalf("bob's thread changed: %s", df)
	}
	if !bytes.Equal(bobAfter.Attachments[0].Data, bobBefore.Attachments[0].Data) {
		t.Fatal("bob's attachment changed")
	}

	for _, owner := range []string{alice, "user:nobody"} {
		if d, err := s.DeleteOwner(ctx, owner); err != nil || d != (threadstore.Deleted{}) {
			t.Fatalf("DeleteOwner(%s) again = %+v, %v; want zeros", owner, d, err)
		}
	}
	_, err = s.DeleteOwner(ctx, "")
	wantErr(t, "DeleteOwner of an empty owner", err, threadstore.ErrInvalid)
	// The ids are free again and start empty.
	newThread(t, s, alice, "thr_early", at(60))
	if items := allItems(t, s, alice, "thr_early"); len(items) != 0 {
		t.Fatalf("recreated thread has items %v", itemIDs(items))
	}
}

// testDeleteIdleThreads: the sweep removes what nobody touched before the
// cutoff, of any owner, and keeps every thread an item or a rename touched
// since. Threads can only be made idle with items through
// the store's clock, so the cutoff is taken from what the store recorded.
func testDeleteIdleThreads(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	// Idle: created long ago and never touched since (injected timestamps).
	newThread(t, s, alice, "thr_ancient", at(0))
	newThread(t, s, bob, "thr_ancient_bob", at(1))
	// Idle by the store's clock: items, feedback and an attachment, then silence.
	newThread(t, s, alice, "thr_idle", at(2))
	addItems(t, s, alice, "thr_idle", []string{"i1", "i2", "i3"}, []int{3, 4, 5})
	if err := s.AddFeedback(ctx, alice, "thr_idle", []string{"i2"}, threadstore.Positive); err != nil {
		t.Fatal(err)
	}
	newAttachment(t, s, alice, "atc_idle", 3)
	upload(t, s, alice, "atc_idle", []byte("idle bytes"))
	if _, err := s.AttachToThread(ctx, alice, "thr_idle", []string{"atc_idle"}); err != nil {
		t.Fatal(err)
	}
	newThread(t, s, bob, "thr_idle_bob", at(2))
	addItems(t, s, bob, "thr_idle_bob", []string{"b1"}, []int{3})
	// Touched later, each in one of the ways that count.
	for _, id := range []string{"thr_item", "thr_renamed"} {
		newThread(t, s, alice, id, at(2))
		addItems(t, s, alice, id, []string{"old"}, []int{3})
	}
	// An upload no message named is the other sweep's, not this one's.
	newAttachment(t, s, alice, "atc_free", 3)

	var cutoff time.Time
	for _, id := range []string{"thr_idle", "thr_item", "thr_renamed"} {
		th, err := s.Thread(ctx, alice, id)
		if err != nil {
			t.Fatal(err)
		}
		if th.UpdatedAt.After(cutoff) {
			cutoff = th.UpdatedAt
		}
	}
	if th, _ := s.Thread(ctx, bob, "thr_idle_bob"); th.UpdatedAt.After(cutoff) {
		cutoff = th.UpdatedAt
	}
	cutoff = cutoff.Add(time.Microsecond) // after every write so far

	title := "renamed"
	touch := map[string]func() error{
		"thr_item": func() error {
			_, err := s.AddItem(ctx, alice, newItem("thr_item", fmt.Sprintf("new%d", time.Now().UnixNano()), at(9)))
			return err
		},
		"thr_renamed": func() error {
			_, err := s.UpdateThread(ctx, alice, "thr_renamed", threadstore.ThreadUpdate{Title: &title})
			return err
		},
	}
	// The store's clock must have passed the cutoff: touch until it has (a
	// fast machine can write twice in one microsecond).
	deadline := time.Now().Add(5 * time.Second)
	for id, fn := range touch {
		for {
			if err := fn(); err != nil {
				t.Fatalf("touching %s: %v", id, err)
			}
			th, err := s.Thread(ctx, alice, id)
			if err != nil {
				t.Fatal(err)
			}
			if !th.UpdatedAt.Before(cutoff) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: UpdatedAt %v never passed %v", id, th.UpdatedAt, cutoff)
			}
		}
	}
	newThread(t, s, alice, "thr_new", time.Time{}) // the store's clock

	d, err := s.DeleteIdleThreads(ctx, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	want := threadstore.Deleted{Threads: 4, Items: 4, Feedback: 1, Attachments: 1}
	if d != want {
		t.Fatalf("DeleteIdleThreads = %+v, want %+v", d, want)
	}
	for _, c := range []struct {
		owner, id string
		gone      bool
	}{
		{alice, "thr_ancient", true}, {bob, "thr_ancient_bob", true}, {alice, "thr_idle", true}, {bob, "thr_idle_bob", true},
		{alice, "thr_item", false}, {alice, "thr_renamed", false}, {alice, "thr_new", false},
	} {
		_, err := s.Thread(ctx, c.owner, c.id)
		if gone := err != nil; gone != c.gone {
			t.Errorf("%s: gone = %v (%v), want %v", c.id, gone, err, c.gone)
		}
	}
	_, err = s.LinkedAttachment(ctx, "atc_idle")
	wantErr(t, "the idle thread's attachment", err, threadstore.ErrNotFound)
	if _, err := s.LinkedAttachment(ctx, "atc_free"); err != nil {
		t.Errorf("the free upload after the sweep: %v", err)
	}
	// A kept thread keeps all its items.
	if got := itemIDs(allItems(t, s, alice, "thr_renamed")); !slices.Equal(got, []string{"old"}) {
		t.Fatalf("thr_renamed items after the sweep: %v", got)
	}
	// The idle thread's ids are free again: its items and feedback really went.
	newThread(t, s, alice, "thr_idle", at(70))
	addItem(t, s, alice, newItem("thr_idle", "i1", at(71)))
	if fb, err := s.Feedback(ctx, alice, "thr_idle"); err != nil || len(fb) != 0 {
		t.Fatalf("recreated idle thread has feedback %+v, %v", fb, err)
	}
	if d, err := s.DeleteIdleThreads(ctx, cutoff); err != nil || d != (threadstore.Deleted{}) {
		t.Fatalf("second sweep = %+v, %v; want zeros", d, err)
	}
}

// testDeleteIdleThreadsMany sweeps more threads than one batch of any
// reasonable implementation, and counts them all.
func testDeleteIdleThreadsMany(t *testing.T, s threadstore.Store) {
	const n = 1234
	for i := range n {
		newThread(t, s, fmt.Sprintf("user:u%d", i%7), fmt.Sprintf("thr_%04d", i), at(i%100))
	}
	newThread(t, s, alice, "thr_kept", at(500))
	d, err := s.DeleteIdleThreads(context.Background(), at(100))
	if err != nil || d != (threadstore.Deleted{Threads: n}) {
		t.Fatalf("DeleteIdleThreads = %+v, %v; want %d threads", d, err, n)
	}
	if _, err := s.Thread(context.Background(), alice, "thr_kept"); err != nil {
		t.Fatalf("thr_kept: %v", err)
	}
}

func testOwnerMethodsClosed(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	calls := map[string]error{}
	_, calls["ExportOwner"] = s.ExportOwner(ctx, alice)
	_, calls["DeleteOwner"] = s.DeleteOwner(ctx, alice)
	_, calls["DeleteIdleThreads"] = s.DeleteIdleThreads(ctx, at(10))
	for name, err := range calls {
		wantErr(t, name+" after Close", err, threadstore.ErrClosed)
	}
}

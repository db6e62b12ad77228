// Package storetest is the conformance suite every threadstore.Store implementation
// passes: ordering, pagination, ownership, cascades, retries, feedback, attachments,
// thread leases, concurrency and errors, all through the Store interface.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// Run runs the suite. open returns a new, empty store that uses the real clock, and
// closes it in t.Cleanup; Close must be safe to call twice.
func Run(t *testing.T, open func(t *testing.T) threadstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s threadstore.Store)
	}{
		{"CreateAndLoadThread", testCreateAndLoadThread},
		{"InvalidArguments", testInvalidArguments},
		{"UpdateThread", testUpdateThread},
		{"ItemOrderEqualTimestamps", testItemOrderEqualTimestamps},
		{"ItemPages", testItemPages},
		{"ThreadPages", testThreadPages},
		{"PageLimitClamped", testPageLimitClamped},
		{"UnknownAfter", testUnknownAfter},
		{"AddItem", testAddItem},
		{"SaveItem", testSaveItem},
		{"RecentItems", testRecentItems},
		{"DeleteItemsAfter", testDeleteItemsAfter},
		{"Feedback", testFeedback},
		{"DeleteThreadCascades", testDeleteThreadCascades},
		{"Ownership", testOwnership},
		{"ConcurrentWriters", testConcurrentWriters},
		{"CancelledContext", testCancelledContext},
		{"Closed", testClosed},
		{"Attachments", testAttachments},
		{"AttachToThread", testAttachToThread},
		{"AttachmentsCascadeWithThread", testAttachmentsCascadeWithThread},
		{"DeleteUnattached", testDeleteUnattached},
		{"ExportOwner", testExportOwner},
		{"DeleteOwner", testDeleteOwner},
		{"DeleteIdleThreads", testDeleteIdleThreads},
		{"DeleteIdleThreadsMany", testDeleteIdleThreadsMany},
		{"OwnerMethodsClosed", testOwnerMethodsClosed},
		{"LeaseClaimRelease", testLeaseClaimRelease},
		{"LeaseRenewHolds", testLeaseRenewHolds},
		{"LeaseTakeover", testLeaseTakeover},
		{"LeaseConcurrentClaimers", testLeaseConcurrentClaimers},
		{"LeaseErrors", testLeaseErrors},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

const (
	alice = "user:alice"
	bob   = "user:bob"
)

// t0 is a fixed past instant; injected timestamps are offsets from it.
var t0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

func newThread(t *testing.T, s threadstore.Store, owner, id string, created time.Time) threadstore.Thread {
	t.Helper()
	th, err := s.CreateThread(context.Background(), threadstore.Thread{ID: id, Owner: owner, CreatedAt: created})
	if err != nil {
		t.Fatalf("CreateThread(%s): %v", id, err)
	}
	return th
}

// itemData is the JSON an item of the thread would carry.
func itemData(threadID, id, text string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"id": id, "thread_id": threadID, "type": "user_message",
		"content": []any{map[string]any{"type": "input_text", "text": text}}})
	return b
}

func newItem(threadID, id string, created time.Time) threadstore.Item {
	return threadstore.Item{ID: id, ThreadID: threadID, CreatedAt: created, Type: "user_message", Data: itemData(threadID, id, "text of "+id)}
}

func addItem(t *testing.T, s threadstore.Store, owner string, it threadstore.Item) threadstore.Item {
	t.Helper()
	got, err := s.AddItem(context.Background(), owner, it)
	if err != nil {
		t.Fatalf("AddItem(%s/%s): %v", it.ThreadID, it.ID, err)
	}
	return got
}

// addItems adds items with the given ids and creation times (seconds after t0).
func addItems(t *testing.T, s threadstore.Store, owner, threadID string, ids []string, secs []int) {
	t.Helper()
	for i, id := range ids {
		addItem(t, s, owner, newItem(threadID, id, at(secs[i])))
	}
}

func itemIDs(items []threadstore.Item) []string {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.ID
	}
	return ids
}

func threadIDs(ts []threadstore.Thread) []string {
	ids := make([]string, len(ts))
	for i, th := range ts {
		ids[i] = th.ID
	}
	return ids
}

// allItems pages through a thread's items in ascending order.
func allItems(t *testing.T, s threadstore.Store, owner, threadID string) []threadstore.Item {
	t.Helper()
	var out []threadstore.Item
	after := ""
	for {
		p, err := s.ListItems(context.Background(), owner, threadID, after, threadstore.MaxPageLimit, threadstore.Asc)
		if err != nil {
			t.Fatalf("ListItems(%s): %v", threadID, err)
		}
		out = append(out, p.Data...)
		if !p.HasMore {
			return out
		}
		after = p.After
	}
}

// pageWant is the expected shape of one page.
type pageWant struct {
	ids     []string
	hasMore bool
}

// checkPage compares a page with its expected ids and cursor.
func checkPage(t *testing.T, what string, ids []string, hasMore bool, after string, want pageWant) {
	t.Helper()
	if !slices.Equal(ids, want.ids) || hasMore != want.hasMore {
		t.Fatalf("%s: got %v has_more=%v, want %v has_more=%v", what, ids, hasMore, want.ids, want.hasMore)
	}
	wantAfter := ""
	if want.hasMore {
		wantAfter = want.ids[len(want.ids)-1]
	}
	if after != wantAfter {
		t.Fatalf("%s: after = %q, want %q", what, after, wantAfter)
	}
}

func sameJSON(a, b json.RawMessage) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func threadDiff(got, want threadstore.Thread) string {
	switch {
	case got.ID != want.ID || got.Owner != want.Owner || got.Title != want.Title:
		return fmt.Sprintf("id/owner/title %q/%q/%q, want %q/%q/%q", got.ID, got.Owner, got.Title, want.ID, want.Owner, want.Title)
	case !sameJSON(got.Status, want.Status):
		return fmt.Sprintf("status %s, want %s", got.Status, want.Status)
	case !sameJSON(got.Metadata, want.Metadata):
		return fmt.Sprintf("metadata %s, want %s", got.Metadata, want.Metadata)
	case !got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt):
		return fmt.Sprintf("created/updated %v/%v, want %v/%v", got.CreatedAt, got.UpdatedAt, want.CreatedAt, want.UpdatedAt)
	}
	return ""
}

func itemDiff(got, want threadstore.Item) string {
	if got.ID != want.ID || got.ThreadID != want.ThreadID || got.Seq != want.Seq || got.Type != want.Type ||
		!got.CreatedAt.Equal(want.CreatedAt) || !sameJSON(got.Data, want.Data) {
		return fmt.Sprintf("got %+v (data %s), want %+v (data %s)", got, got.Data, want, want.Data)
	}
	return ""
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want %v", what, err, target)
	}
}

func testCreateAndLoadThread(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	in := threadstore.Thread{
		ID: "thr_a", Owner: alice, Title: "Trip planning",
		Status:    json.RawMessage(`{"type":"locked","reason":"maintenance"}`),
		Metadata:  json.RawMessage(`{"previous":"x"}`),
		CreatedAt: at(1).Add(1234567 * time.Nanosecond), // kept to the microsecond
		UpdatedAt: at(5),
	}
	created, err := s.CreateThread(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	want := in
	want.CreatedAt = at(1).Add(1234 * time.Microsecond)
	if d := threadDiff(created, want); d != "" {
		t.Fatalf("CreateThread returned %s", d)
	}
	got, err := s.Thread(ctx, alice, "thr_a")
	if err != nil {
		t.Fatal(err)
	}
	if d := threadDiff(got, want); d != "" {
		t.Fatalf("Thread returned %s", d)
	}

	// Defaults: active status, no metadata, UpdatedAt = CreatedAt, CreatedAt = now.
	before := time.Now().Add(-time.Second)
	def, err := s.CreateThread(ctx, threadstore.Thread{ID: "thr_b", Owner: alice})
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now().Add(time.Second)
	got, err = s.Thread(ctx, alice, "thr_b")
	if err != nil {
		t.Fatal(err)
	}
	if d := threadDiff(got, def); d != "" {
		t.Fatalf("Thread returned %s", d)
	}
	if !sameJSON(got.Status, json.RawMessage(`{"type":"active"}`)) || got.Metadata != nil || got.Title != "" {
		t.Fatalf("defaults: status %s metadata %s title %q", got.Status, got.Metadata, got.Title)
	}
	if got.CreatedAt.Before(before) || got.CreatedAt.After(after) || !got.UpdatedAt.Equal(got.CreatedAt) {
		t.Fatalf("default times %v/%v, want now (%v..%v)", got.CreatedAt, got.UpdatedAt, before, after)
	}

	// Ids are unique across owners, and a refused create changes nothing.
	_, err = s.CreateThread(ctx, threadstore.Thread{ID: "thr_a", Owner: bob, Title: "mine"})
	wantErr(t, "duplicate thread id (other owner)", err, threadstore.ErrExists)
	_, err = s.CreateThread(ctx, threadstore.Thread{ID: "thr_a", Owner: alice, Title: "again"})
	wantErr(t, "duplicate thread id", err, threadstore.ErrExists)
	if got, _ := s.Thread(ctx, alice, "thr_a"); got.Title != "Trip planning" {
		t.Fatalf("title after refused creates = %q", got.Title)
	}
	_, err = s.Thread(ctx, bob, "thr_a")
	wantErr(t, "other owner's thread", err, threadstore.ErrNotFound)
	_, err = s.Thread(ctx, alice, "thr_none")
	wantErr(t, "unknown thread", err, threadstore.ErrNotFound)
}

func testInvalidArguments(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	addItem(t, s, alice, newItem("thr_a", "msg_1", at(1)))
	bad := map[string]error{}
	_, bad["create: empty owner"] = s.CreateThread(ctx, threadstore.Thread{ID: "thr_x"})
	_, bad["create: empty id"] = s.CreateThread(ctx, threadstore.Thread{Owner: alice})
	_, bad["create: bad status"] = s.CreateThread(ctx, threadstore.Thread{ID: "thr_x", Owner: alice, Status: json.RawMessage(`{`)})
	_, bad["create: bad metadata"] = s.CreateThread(ctx, threadstore.Thread{ID: "thr_x", Owner: alice, Metadata: json.RawMessage(`nope`)})
	_, bad["thread: empty owner"] = s.Thread(ctx, "", "thr_a")
	_, bad["list threads: empty owner"] = s.ListThreads(ctx, "", "", 10, threadstore.Desc)
	_, bad["list threads: order"] = s.ListThreads(ctx, alice, "", 10, "sideways")
	_, bad["list threads: limit 0"] = s.ListThreads(ctx, alice, "", 0, threadstore.Desc)
	_, bad["update: empty owner"] = s.UpdateThread(ctx, "", "thr_a", threadstore.ThreadUpdate{})
	_, bad["update: bad status"] = s.UpdateThread(ctx, alice, "thr_a", threadstore.ThreadUpdate{Status: json.RawMessage(`[`)})
	_, bad["delete: empty owner"] = s.DeleteThread(ctx, "", "thr_a")
	_, bad["add item: empty owner"] = s.AddItem(ctx, "", newItem("thr_a", "msg_2", at(2)))
	_, bad["add item: empty id"] = s.AddItem(ctx, alice, newItem("thr_a", "", at(2)))
	_, bad["add item: empty type"] = s.AddItem(ctx, alice, threadstore.Item{ID: "msg_2", ThreadID: "thr_a", Data: json.RawMessage(`{}`)})
	_, bad["add item: no data"] = s.AddItem(ctx, alice, threadstore.Item{ID: "msg_2", ThreadID: "thr_a", Type: "user_message"})
	_, bad["add item: bad data"] = s.AddItem(ctx, alice, threadstore.Item{ID: "msg_2", ThreadID: "thr_a", Type: "user_message", Data: json.RawMessage(`{"a":`)})
	_, bad["save item: bad data"] = s.SaveItem(ctx, alice, threadstore.Item{ID: "msg_1", ThreadID: "thr_a", Type: "user_message", Data: json.RawMessage(`x`)})
	_, bad["item: empty owner"] = s.Item(ctx, "", "thr_a", "msg_1")
	_, bad["list items: limit -1"] = s.ListItems(ctx, alice, "thr_a", "", -1, threadstore.Asc)
	_, bad["list items: order"] = s.ListItems(ctx, alice, "thr_a", "", 5, "")
	_, bad["recent: n 0"] = s.RecentItems(ctx, alice, "thr_a", 0)
	_, bad["recent: empty owner"] = s.RecentItems(ctx, "", "thr_a", 5)
	_, bad["delete after: empty owner"] = s.DeleteItemsAfter(ctx, "", "thr_a", "msg_1")
	bad["feedback: kind"] = s.AddFeedback(ctx, alice, "thr_a", []string{"msg_1"}, "meh")
	bad["feedback: no items"] = s.AddFeedback(ctx, alice, "thr_a", nil, threadstore.Positive)
	bad["feedback: empty owner"] = s.AddFeedback(ctx, "", "thr_a", []string{"msg_1"}, threadstore.Positive)
	_, bad["feedback list: empty owner"] = s.Feedback(ctx, "", "thr_a")
	for what, err := range bad {
		wantErr(t, what, err, threadstore.ErrInvalid)
	}
	// None of it changed anything.
	if got := itemIDs(allItems(t, s, alice, "thr_a")); !slices.Equal(got, []string{"msg_1"}) {
		t.Fatalf("items after invalid calls: %v", got)
	}
	if _, err := s.Thread(ctx, alice, "thr_x"); !errors.Is(err, threadstore.ErrNotFound) {
		t.Fatalf("invalid create left a thread: %v", err)
	}
	if fb, err := s.Feedback(ctx, alice, "thr_a"); err != nil || len(fb) != 0 {
		t.Fatalf("feedback after invalid calls: %v %v", fb, err)
	}
}

func testUpdateThread(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	orig, err := s.CreateThread(ctx, threadstore.Thread{ID: "thr_a", Owner: alice, Title: "Old", Metadata: json.RawMessage(`{"k":1}`), CreatedAt: at(0)})
	if err != nil {
		t.Fatal(err)
	}
	title := "New title"
	before := time.Now().Add(-time.Second)
	got, err := s.UpdateThread(ctx, alice, "thr_a", threadstore.ThreadUpdate{Title: &title})
	if err != nil {
		t.Fatal(err)
	}
	want := orig
	want.Title, want.UpdatedAt = title, got.UpdatedAt
	if d := threadDiff(got, want); d != "" {
		t.Fatalf("after title update: %s", d)
	}
	if got.UpdatedAt.Before(before) {
		t.Fatalf("UpdatedAt %v not bumped (before %v)", got.UpdatedAt, before)
	}
	if loaded, _ := s.Thread(ctx, alice, "thr_a"); threadDiff(loaded, got) != "" {
		t.Fatalf("loaded after update: %s", threadDiff(loaded, got))
	}

	got, err = s.UpdateThread(ctx, alice, "thr_a", threadstore.ThreadUpdate{
		Status: json.RawMessage(`{"type":"closed","reason":"done"}`), Metadata: json.RawMessage(`{"k":2}`)})
	if err != nil {
		t.Fatal(err)
	}
	if got.Title != title || !sameJSON(got.Status, json.RawMessage(`{"type":"closed","reason":"done"}`)) || !sameJSON(got.Metadata, json.RawMessage(`{"k":2}`)) {
		t.Fatalf("after status update: %+v", got)
	}

	empty := ""
	got, err = s.UpdateThread(ctx, alice, "thr_a", threadstore.ThreadUpdate{Title: &empty})
	if err != nil || got.Title != "" || !sameJSON(got.Metadata, json.RawMessage(`{"k":2}`)) {
		t.Fatalf("clearing the title: %+v, %v", got, err)
	}
	_, err = s.UpdateThread(ctx, alice, "thr_none", threadstore.ThreadUpdate{Title: &title})
	wantErr(t, "update unknown thread", err, threadstore.ErrNotFound)
}

func testItemOrderEqualTimestamps(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	// Inserted out of time order, with ties; the order is (created_at, insertion).
	addItems(t, s, alice, "thr_a",
		[]string{"m_c1", "m_a1", "m_c2", "m_b1", "m_a2", "m_c3", "m_b2"},
		[]int{30, 10, 30, 20, 10, 30, 20})
	wantAsc := []string{"m_a1", "m_a2", "m_b1", "m_b2", "m_c1", "m_c2", "m_c3"}

	p, err := s.ListItems(ctx, alice, "thr_a", "", 50, threadstore.Asc)
	if err != nil {
		t.Fatal(err)
	}
	checkPage(t, "asc", itemIDs(p.Data), p.HasMore, p.After, pageWant{wantAsc, false})
	p, err = s.ListItems(ctx, alice, "thr_a", "", 50, threadstore.Desc)
	if err != nil {
		t.Fatal(err)
	}
	wantDesc := slices.Clone(wantAsc)
	slices.Reverse(wantDesc)
	checkPage(t, "desc", itemIDs(p.Data), p.HasMore, p.After, pageWant{wantDesc, false})

	// Seq follows insertion order.
	bySeq := slices.Clone(p.Data)
	slices.SortFunc(bySeq, func(a, b threadstore.Item) int { return int(a.Seq - b.Seq) })
	if got := itemIDs(bySeq); !slices.Equal(got, []string{"m_c1", "m_a1", "m_c2", "m_b1", "m_a2", "m_c3", "m_b2"}) {
		t.Fatalf("items by Seq: %v", got)
	}
	// Paging one at a time through the ties loses and repeats nothing, both ways.
	for _, order := range []threadstore.Order{threadstore.Asc, threadstore.Desc} {
		var got []string
		after := ""
		for range 20 {
			p, err := s.ListItems(ctx, alice, "thr_a", after, 1, order)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, itemIDs(p.Data)...)
			if !p.HasMore {
				break
			}
			after = p.After
		}
		want := wantAsc
		if order == threadstore.Desc {
			want = wantDesc
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s one by one: %v, want %v", order, got, want)
		}
	}
}

func testItemPages(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	ids := []string{"i0", "i1", "i2", "i3", "i4", "i5"}
	addItems(t, s, alice, "thr_a", ids, []int{1, 2, 2, 3, 4, 4})

	list := func(after string, limit int, order threadstore.Order) threadstore.Page[threadstore.Item] {
		t.Helper()
		p, err := s.ListItems(ctx, alice, "thr_a", after, limit, order)
		if err != nil {
			t.Fatalf("ListItems(after %q, %d, %s): %v", after, limit, order, err)
		}
		return p
	}
	cases := []struct {
		after string
		limit int
		order threadstore.Order
		want  pageWant
	}{
		{"", 3, threadstore.Asc, pageWant{[]string{"i0", "i1", "i2"}, true}},
		{"i2", 3, threadstore.Asc, pageWant{[]string{"i3", "i4", "i5"}, false}}, // exact last page
		{"", 4, threadstore.Asc, pageWant{[]string{"i0", "i1", "i2", "i3"}, true}},
		{"i3", 4, threadstore.Asc, pageWant{[]string{"i4", "i5"}, false}},
		{"", 6, threadstore.Asc, pageWant{ids, false}},
		{"i5", 3, threadstore.Asc, pageWant{[]string{}, false}},
		{"", 3, threadstore.Desc, pageWant{[]string{"i5", "i4", "i3"}, true}},
		{"i3", 3, threadstore.Desc, pageWant{[]string{"i2", "i1", "i0"}, false}},
		{"i4", 2, threadstore.Desc, pageWant{[]string{"i3", "i2"}, true}},
		{"i2", 2, threadstore.Desc, pageWant{[]string{"i1", "i0"}, false}},
		{"i0", 2, threadstore.Desc, pageWant{[]string{}, false}},
		{"i1", 1, threadstore.Asc, pageWant{[]string{"i2"}, true}}, // tie with i1 at the same time
	}
	for _, c := range cases {
		p := list(c.after, c.limit, c.order)
		checkPage(t, fmt.Sprintf("after %q limit %d %s", c.after, c.limit, c.order), itemIDs(p.Data), p.HasMore, p.After, c.want)
	}
	// A page carries the items as stored.
	p := list("", 1, threadstore.Asc)
	if !sameJSON(p.Data[0].Data, itemData("thr_a", "i0", "text of i0")) || p.Data[0].Type != "user_message" ||
		p.Data[0].ThreadID != "thr_a" || !p.Data[0].CreatedAt.Equal(at(1)) {
		t.Fatalf("listed item %+v (data %s)", p.Data[0], p.Data[0].Data)
	}
	// An empty thread lists an empty page.
	newThread(t, s, alice, "thr_empty", at(0))
	p, err := s.ListItems(ctx, alice, "thr_empty", "", 10, threadstore.Desc)
	if err != nil || len(p.Data) != 0 || p.HasMore || p.After != "" {
		t.Fatalf("empty thread: %+v, %v", p, err)
	}
}

func testThreadPages(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	// Five threads for alice (two sharing a timestamp), interleaved with bob's.
	for i, sec := range []int{1, 2, 2, 3, 4} {
		newThread(t, s, alice, fmt.Sprintf("ta%d", i), at(sec))
		newThread(t, s, bob, fmt.Sprintf("tb%d", i), at(sec))
	}
	cases := []struct {
		after string
		limit int
		order threadstore.Order
		want  pageWant
	}{
		{"", 2, threadstore.Desc, pageWant{[]string{"ta4", "ta3"}, true}},
		{"ta3", 2, threadstore.Desc, pageWant{[]string{"ta2", "ta1"}, true}},
		{"ta1", 2, threadstore.Desc, pageWant{[]string{"ta0"}, false}},
		{"", 5, threadstore.Desc, pageWant{[]string{"ta4", "ta3", "ta2", "ta1", "ta0"}, false}},
		{"", 3, threadstore.Asc, pageWant{[]string{"ta0", "ta1", "ta2"}, true}},
		{"ta2", 2, threadstore.Asc, pageWant{[]string{"ta3", "ta4"}, false}},
		{"ta4", 2, threadstore.Asc, pageWant{[]string{}, false}},
	}
	for _, c := range cases {
		p, err := s.ListThreads(ctx, alice, c.after, c.limit, c.order)
		if err != nil {
			t.Fatalf("ListThreads(after %q): %v", c.after, err)
		}
		checkPage(t, fmt.Sprintf("threads after %q limit %d %s", c.after, c.limit, c.order), threadIDs(p.Data), p.HasMore, p.After, c.want)
		for _, th := range p.Data {
			if th.Owner != alice {
				t.Fatalf("alice's listing has %s of %s", th.ID, th.Owner)
			}
		}
	}
	p, err := s.ListThreads(ctx, "user:nobody", "", 10, threadstore.Desc)
	if err != nil || len(p.Data) != 0 || p.HasMore {
		t.Fatalf("owner with no threads: %+v, %v", p, err)
	}
}

func testPageLimitClamped(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	n := threadstore.MaxPageLimit + 5
	for i := range n {
		addItem(t, s, alice, newItem("thr_a", fmt.Sprintf("m%03d", i), at(i)))
		if i < n-1 {
			newThread(t, s, alice, fmt.Sprintf("t%03d", i), at(i))
		}
	}
	items, err := s.ListItems(ctx, alice, "thr_a", "", 9999, threadstore.Asc)
	if err != nil {
		t.Fatal(err)
	}
	if len(items.Data) != threadstore.MaxPageLimit || !items.HasMore || items.After != fmt.Sprintf("m%03d", threadstore.MaxPageLimit-1) {
		t.Fatalf("huge item limit: %d items, has_more %v, after %q", len(items.Data), items.HasMore, items.After)
	}
	threads, err := s.ListThreads(ctx, alice, "", 9999, threadstore.Desc)
	if err != nil {
		t.Fatal(err)
	}
	if len(threads.Data) != threadstore.MaxPageLimit || !threads.HasMore {
		t.Fatalf("huge thread limit: %d threads, has_more %v", len(threads.Data), threads.HasMore)
	}
	recent, err := s.RecentItems(ctx, alice, "thr_a", threadstore.MaxRecentItems*10)
	if err != nil || len(recent) != n {
		t.Fatalf("recent items: %d, %v", len(recent), err)
	}
}

func testUnknownAfter(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	newThread(t, s, alice, "thr_b", at(1))
	newThread(t, s, bob, "thr_bob", at(2))
	addItem(t, s, alice, newItem("thr_a", "m_a", at(1)))
	addItem(t, s, alice, newItem("thr_b", "m_b", at(1)))
	addItem(t, s, bob, newItem("thr_bob", "m_bob", at(1)))
	for _, order := range []threadstore.Order{threadstore.Asc, threadstore.Desc} {
		_, err := s.ListThreads(ctx, alice, "thr_none", 5, order)
		wantErr(t, "threads after an unknown id", err, threadstore.ErrNotFound)
		_, err = s.ListThreads(ctx, alice, "thr_bob", 5, order)
		wantErr(t, "threads after another owner's thread", err, threadstore.ErrNotFound)
		_, err = s.ListItems(ctx, alice, "thr_a", "m_none", 5, order)
		wantErr(t, "items after an unknown id", err, threadstore.ErrNotFound)
		_, err = s.ListItems(ctx, alice, "thr_a", "m_b", 5, order)
		wantErr(t, "items after an item of another thread", err, threadstore.ErrNotFound)
		_, err = s.ListItems(ctx, alice, "thr_a", "m_bob", 5, order)
		wantErr(t, "items after another owner's item", err, threadstore.ErrNotFound)
		_, err = s.ListItems(ctx, alice, "thr_none", "", 5, order)
		wantErr(t, "items of an unknown thread", err, threadstore.ErrNotFound)
	}
}

func testAddItem(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	th := newThread(t, s, alice, "thr_a", at(0))
	newThread(t, s, alice, "thr_b", at(0))
	before := time.Now().Add(-time.Second)
	first := addItem(t, s, alice, newItem("thr_a", "msg_1", at(1)))
	if first.Seq == 0 || !first.CreatedAt.Equal(at(1)) {
		t.Fatalf("added item: %+v", first)
	}
	got, err := s.Thread(ctx, alice, "thr_a")
	if err != nil {
		t.Fatal(err)
	}
	if !got.UpdatedAt.After(th.UpdatedAt) || got.UpdatedAt.Before(before) {
		t.Fatalf("UpdatedAt %v not bumped from %v", got.UpdatedAt, th.UpdatedAt)
	}
	loaded, err := s.Item(ctx, alice, "thr_a", "msg_1")
	if err != nil {
		t.Fatal(err)
	}
	if d := itemDiff(loaded, first); d != "" {
		t.Fatalf("Item: %s", d)
	}

	// A duplicate id in the same thread is refused and changes nothing.
	dup := newItem("thr_a", "msg_1", at(9))
	dup.Data = itemData("thr_a", "msg_1", "overwritten")
	_, err = s.AddItem(ctx, alice, dup)
	wantErr(t, "duplicate item id", err, threadstore.ErrExists)
	if loaded, _ := s.Item(ctx, alice, "thr_a", "msg_1"); itemDiff(loaded, first) != "" {
		t.Fatalf("after a refused duplicate: %s", itemDiff(loaded, first))
	}
	if got := itemIDs(allItems(t, s, alice, "thr_a")); !slices.Equal(got, []string{"msg_1"}) {
		t.Fatalf("items after a refused duplicate: %v", got)
	}
	// The same id in another thread is another item.
	other := addItem(t, s, alice, newItem("thr_b", "msg_1", at(1)))
	if other.ThreadID != "thr_b" {
		t.Fatalf("item in thread b: %+v", other)
	}
	// A zero CreatedAt takes the store's clock.
	now := addItem(t, s, alice, threadstore.Item{ID: "msg_2", ThreadID: "thr_a", Type: "assistant_message", Data: json.RawMessage(`{"type":"assistant_message"}`)})
	if now.CreatedAt.Before(before) || now.CreatedAt.After(time.Now().Add(time.Second)) || now.Seq <= first.Seq {
		t.Fatalf("item with default time: %+v", now)
	}
	_, err = s.AddItem(ctx, alice, newItem("thr_none", "msg_1", at(1)))
	wantErr(t, "item into an unknown thread", err, threadstore.ErrNotFound)
	_, err = s.Item(ctx, alice, "thr_a", "msg_none")
	wantErr(t, "unknown item", err, threadstore.ErrNotFound)
}

func testSaveItem(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	addItems(t, s, alice, "thr_a", []string{"m1", "m2", "m3"}, []int{1, 2, 3})
	orig, err := s.Item(ctx, alice, "thr_a", "m2")
	if err != nil {
		t.Fatal(err)
	}
	// Replacing keeps the item's place, and takes the new type and data.
	repl := threadstore.Item{ID: "m2", ThreadID: "thr_a", CreatedAt: at(99), Type: "assistant_message", Data: json.RawMessage(`{"id":"m2","text":"partial"}`)}
	saved, err := s.SaveItem(ctx, alice, repl)
	if err != nil {
		t.Fatal(err)
	}
	want := orig
	want.Type, want.Data = repl.Type, repl.Data
	if d := itemDiff(saved, want); d != "" {
		t.Fatalf("SaveItem returned %s", d)
	}
	if loaded, _ := s.Item(ctx, alice, "thr_a", "m2"); itemDiff(loaded, want) != "" {
		t.Fatalf("loaded after save: %s", itemDiff(loaded, want))
	}
	if got := itemIDs(allItems(t, s, alice, "thr_a")); !slices.Equal(got, []string{"m1", "m2", "m3"}) {
		t.Fatalf("order after replace: %v", got)
	}
	// Saving a new id inserts it.
	ins, err := s.SaveItem(ctx, alice, newItem("thr_a", "m4", at(4)))
	if err != nil || ins.Seq <= orig.Seq {
		t.Fatalf("SaveItem insert: %+v, %v", ins, err)
	}
	if got := itemIDs(allItems(t, s, alice, "thr_a")); !slices.Equal(got, []string{"m1", "m2", "m3", "m4"}) {
		t.Fatalf("after save insert: %v", got)
	}
	_, err = s.SaveItem(ctx, alice, newItem("thr_none", "m1", at(1)))
	wantErr(t, "save into an unknown thread", err, threadstore.ErrNotFound)
}

func testRecentItems(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	got, err := s.RecentItems(ctx, alice, "thr_a", 5)
	if err != nil || len(got) != 0 {
		t.Fatalf("recent of an empty thread: %v, %v", got, err)
	}
	ids := []string{"r0", "r1", "r2", "r3", "r4", "r5"}
	addItems(t, s, alice, "thr_a", ids, []int{1, 2, 3, 3, 3, 4})
	for n, want := range map[int][]string{1: {"r5"}, 3: {"r3", "r4", "r5"}, 4: {"r2", "r3", "r4", "r5"}, 6: ids, 50: ids} {
		got, err := s.RecentItems(ctx, alice, "thr_a", n)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(itemIDs(got), want) {
			t.Fatalf("RecentItems(%d) = %v, want %v", n, itemIDs(got), want)
		}
	}
	_, err = s.RecentItems(ctx, alice, "thr_none", 5)
	wantErr(t, "recent of an unknown thread", err, threadstore.ErrNotFound)
}

func testDeleteItemsAfter(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	newThread(t, s, alice, "thr_b", at(0))
	// i2, i3 and i4 share a timestamp: the cut follows insertion order.
	addItems(t, s, alice, "thr_a", []string{"i0", "i1", "i2", "i3", "i4", "i5"}, []int{1, 2, 3, 3, 3, 4})
	addItems(t, s, alice, "thr_b", []string{"i0", "i1"}, []int{1, 2})
	if err := s.AddFeedback(ctx, alice, "thr_a", []string{"i1"}, threadstore.Positive); err != nil {
		t.Fatal(err)
	}
	if err := s.AddFeedback(ctx, alice, "thr_a", []string{"i4"}, threadstore.Negative); err != nil {
		t.Fatal(err)
	}
	last, _ := s.Item(ctx, alice, "thr_a", "i5")

	_, err := s.DeleteItemsAfter(ctx, alice, "thr_a", "i_none")
	wantErr(t, "delete after an unknown item", err, threadstore.ErrNotFound)
	_, err = s.DeleteItemsAfter(ctx, alice, "thr_none", "i0")
	wantErr(t, "delete after in an unknown thread", err, threadstore.ErrNotFound)
	if got := itemIDs(allItems(t, s, alice, "thr_a")); len(got) != 6 {
		t.Fatalf("a refused delete removed items: %v", got)
	}

	n, err := s.DeleteItemsAfter(ctx, alice, "thr_a", "i3")
	if err != nil || n != 2 {
		t.Fatalf("DeleteItemsAfter(i3) = %d, %v; want 2", n, err)
	}
	if got := itemIDs(allItems(t, s, alice, "thr_a")); !slices.Equal(got, []string{"i0", "i1", "i2", "i3"}) {
		t.Fatalf("after delete after i3: %v", got)
	}
	n, err = s.DeleteItemsAfter(ctx, alice, "thr_a", "i3")
	if err != nil || n != 0 {
		t.Fatalf("DeleteItemsAfter(last) = %d, %v; want 0", n, err)
	}
	n, err = s.DeleteItemsAfter(ctx, alice, "thr_a", "i1")
	if err != nil || n != 2 {
		t.Fatalf("DeleteItemsAfter(i1) = %d, %v; want 2", n, err)
	}
	if got := itemIDs(allItems(t, s, alice, "thr_a")); !slices.Equal(got, []string{"i0", "i1"}) {
		t.Fatalf("after delete after i1: %v", got)
	}
	// The feedback on removed items went with them; the rest stayed.
	fb, err := s.Feedback(ctx, alice, "thr_a")
	if err != nil || len(fb) != 1 || fb[0].ItemID != "i1" || fb[0].Kind != threadstore.Positive {
		t.Fatalf("feedback after deletes: %+v, %v", fb, err)
	}
	// Another thread's items with the same ids are untouched.
	if got := itemIDs(allItems(t, s, alice, "thr_b")); !slices.Equal(got, []string{"i0", "i1"}) {
		t.Fatalf("thread b after deletes in a: %v", got)
	}
	// A new answer goes after what is left, and the removed id is free again.
	again := addItem(t, s, alice, newItem("thr_a", "i5", at(4)))
	if again.Seq <= 0 {
		t.Fatalf("re-added item: %+v", again)
	}
	if got := itemIDs(allItems(t, s, alice, "thr_a")); !slices.Equal(got, []string{"i0", "i1", "i5"}) {
		t.Fatalf("after re-adding: %v", got)
	}
	if got, _ := s.Item(ctx, alice, "thr_a", "i5"); !sameJSON(got.Data, last.Data) || got.Seq == 0 {
		t.Fatalf("re-added item: %+v", got)
	}
}

func testFeedback(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	addItems(t, s, alice, "thr_a", []string{"a", "b", "c"}, []int{1, 2, 3})
	if err := s.AddFeedback(ctx, alice, "thr_a", []string{"b", "a"}, threadstore.Positive); err != nil {
		t.Fatal(err)
	}
	if err := s.AddFeedback(ctx, alice, "thr_a", []string{"b"}, threadstore.Negative); err != nil {
		t.Fatal(err)
	}
	// An unknown item refuses the whole call.
	err := s.AddFeedback(ctx, alice, "thr_a", []string{"c", "zz"}, threadstore.Negative)
	wantErr(t, "feedback on an unknown item", err, threadstore.ErrNotFound)
	err = s.AddFeedback(ctx, alice, "thr_none", []string{"a"}, threadstore.Negative)
	wantErr(t, "feedback in an unknown thread", err, threadstore.ErrNotFound)

	fb, err := s.Feedback(ctx, alice, "thr_a")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, len(fb))
	for i, f := range fb {
		got[i] = f.ItemID + "=" + string(f.Kind)
		if f.ThreadID != "thr_a" || f.CreatedAt.IsZero() {
			t.Fatalf("feedback row %+v", f)
		}
	}
	if !slices.Equal(got, []string{"a=positive", "b=negative"}) {
		t.Fatalf("feedback = %v", got)
	}
	_, err = s.Feedback(ctx, alice, "thr_none")
	wantErr(t, "feedback of an unknown thread", err, threadstore.ErrNotFound)
}

func testDeleteThreadCascades(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	newThread(t, s, alice, "thr_b", at(1))
	addItems(t, s, alice, "thr_a", []string{"m1", "m2", "m3"}, []int{1, 2, 3})
	addItems(t, s, alice, "thr_b", []string{"m1"}, []int{1})
	if err := s.AddFeedback(ctx, alice, "thr_a", []string{"m1", "m3"}, threadstore.Positive); err != nil {
		t.Fatal(err)
	}
	if err := s.AddFeedback(ctx, alice, "thr_b", []string{"m1"}, threadstore.Positive); err != nil {
		t.Fatal(err)
	}
	d, err := s.DeleteThread(ctx, alice, "thr_a")
	if err != nil {
		t.Fatal(err)
	}
	if d != (threadstore.Deleted{Threads: 1, Items: 3, Feedback: 2}) {
		t.Fatalf("DeleteThread = %+v", d)
	}
	_, err = s.Thread(ctx, alice, "thr_a")
	wantErr(t, "deleted thread", err, threadstore.ErrNotFound)
	_, err = s.Item(ctx, alice, "thr_a", "m1")
	wantErr(t, "item of a deleted thread", err, threadstore.ErrNotFound)
	_, err = s.ListItems(ctx, alice, "thr_a", "", 10, threadstore.Asc)
	wantErr(t, "items of a deleted thread", err, threadstore.ErrNotFound)
	_, err = s.DeleteThread(ctx, alice, "thr_a")
	wantErr(t, "deleting twice", err, threadstore.ErrNotFound)

	// The id can be used again and starts empty: the items and feedback really went.
	newThread(t, s, alice, "thr_a", at(5))
	if got := allItems(t, s, alice, "thr_a"); len(got) != 0 {
		t.Fatalf("recreated thread has items %v", itemIDs(got))
	}
	addItem(t, s, alice, newItem("thr_a", "m1", at(6)))
	if fb, err := s.Feedback(ctx, alice, "thr_a"); err != nil || len(fb) != 0 {
		t.Fatalf("recreated thread has feedback %+v, %v", fb, err)
	}
	// The other thread is untouched.
	if got := itemIDs(allItems(t, s, alice, "thr_b")); !slices.Equal(got, []string{"m1"}) {
		t.Fatalf("thread b after deleting a: %v", got)
	}
	if fb, _ := s.Feedback(ctx, alice, "thr_b"); len(fb) != 1 {
		t.Fatalf("thread b feedback after deleting a: %+v", fb)
	}
	p, err := s.ListThreads(ctx, alice, "", 10, threadstore.Asc)
	if err != nil || !slices.Equal(threadIDs(p.Data), []string{"thr_b", "thr_a"}) {
		t.Fatalf("threads after delete and recreate: %v, %v", threadIDs(p.Data), err)
	}
}

// state is everything an owner can see of one thread.
type state struct {
	thread   threadstore.Thread
	items    []threadstore.Item
	feedback []threadstore.Feedback
}

func snapshot(t *testing.T, s threadstore.Store, owner, threadID string) state {
	t.Helper()
	th, err := s.Thread(context.Background(), owner, threadID)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := s.Feedback(context.Background(), owner, threadID)
	if err != nil {
		t.Fatal(err)
	}
	return state{th, allItems(t, s, owner, threadID), fb}
}

func stateDiff(got, want state) string {
	if d := threadDiff(got.thread, want.thread); d != "" {
		return "thread: " + d
	}
	if len(got.items) != len(want.items) {
		return fmt.Sprintf("items %v, want %v", itemIDs(got.items), itemIDs(want.items))
	}
	for i := range got.items {
		if d := itemDiff(got.items[i], want.items[i]); d != "" {
			return "item: " + d
		}
	}
	if len(got.feedback) != len(want.feedback) {
		return fmt.Sprintf("feedback %+v, want %+v", got.feedback, want.feedback)
	}
	for i, f := range got.feedback {
		w := want.feedback[i]
		if f.ItemID != w.ItemID || f.Kind != w.Kind || !f.CreatedAt.Equal(w.CreatedAt) {
			return fmt.Sprintf("feedback %+v, want %+v", got.feedback, want.feedback)
		}
	}
	return ""
}

func testOwnership(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	addItems(t, s, alice, "thr_a", []string{"m1", "m2", "m3"}, []int{1, 2, 3})
	if err := s.AddFeedback(ctx, alice, "thr_a", []string{"m2"}, threadstore.Positive); err != nil {
		t.Fatal(err)
	}
	newThread(t, s, bob, "thr_b", at(0)) // bob has threads of his own
	addItem(t, s, bob, newItem("thr_b", "m1", at(1)))
	before := snapshot(t, s, alice, "thr_a")

	title := "bob was here"
	calls := map[string]error{}
	_, calls["Thread"] = s.Thread(ctx, bob, "thr_a")
	_, calls["UpdateThread"] = s.UpdateThread(ctx, bob, "thr_a", threadstore.ThreadUpdate{Title: &title, Status: json.RawMessage(`{"type":"closed"}`)})
	_, calls["DeleteThread"] = s.DeleteThread(ctx, bob, "thr_a")
	_, calls["AddItem"] = s.AddItem(ctx, bob, newItem("thr_a", "m9", at(9)))
	_, calls["AddItem (existing id)"] = s.AddItem(ctx, bob, newItem("thr_a", "m1", at(9)))
	_, calls["SaveItem (existing id)"] = s.SaveItem(ctx, bob, threadstore.Item{ID: "m1", ThreadID: "thr_a", Type: "user_message", Data: json.RawMessage(`{"text":"bob"}`)})
	_, calls["SaveItem (new id)"] = s.SaveItem(ctx, bob, newItem("thr_a", "m8", at(8)))
	_, calls["Item"] = s.Item(ctx, bob, "thr_a", "m1")
	_, calls["ListItems"] = s.ListItems(ctx, bob, "thr_a", "", 10, threadstore.Asc)
	_, calls["ListItems (after)"] = s.ListItems(ctx, bob, "thr_a", "m1", 10, threadstore.Desc)
	_, calls["ListItems (own thread, alice's cursor)"] = s.ListItems(ctx, bob, "thr_b", "m2", 10, threadstore.Asc)
	_, calls["RecentItems"] = s.RecentItems(ctx, bob, "thr_a", 10)
	_, calls["DeleteItemsAfter"] = s.DeleteItemsAfter(ctx, bob, "thr_a", "m1")
	calls["AddFeedback"] = s.AddFeedback(ctx, bob, "thr_a", []string{"m2"}, threadstore.Negative)
	_, calls["Feedback"] = s.Feedback(ctx, bob, "thr_a")
	_, calls["ListThreads (after)"] = s.ListThreads(ctx, bob, "thr_a", 10, threadstore.Desc)
	for name, err := range calls {
		wantErr(t, "bob's "+name+" on alice's thread", err, threadstore.ErrNotFound)
	}
	p, err := s.ListThreads(ctx, bob, "", 10, threadstore.Desc)
	if err != nil || !slices.Equal(threadIDs(p.Data), []string{"thr_b"}) {
		t.Fatalf("bob's threads: %v, %v", threadIDs(p.Data), err)
	}
	if d := stateDiff(snapshot(t, s, alice, "thr_a"), before); d != "" {
		t.Fatalf("alice's thread changed under bob's calls: %s", d)
	}
}

func testConcurrentWriters(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	const (
		writers = 8
		each    = 25
	)
	newThread(t, s, alice, "shared", at(0))
	for w := range writers {
		newThread(t, s, alice, fmt.Sprintf("own%d", w), at(0))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4*writers*each)
	for w := range writers {
		// One goroutine into the shared thread and one into its own, per writer, with
		// readers alongside; all items share one timestamp so that Seq alone orders them.
		wg.Go(func() {
			for i := range each {
				if _, err := s.AddItem(ctx, alice, newItem("shared", fmt.Sprintf("w%d-%d", w, i), at(1))); err != nil {
					errs <- err
				}
			}
		})
		wg.Go(func() {
			own := fmt.Sprintf("own%d", w)
			for i := range each {
				if _, err := s.SaveItem(ctx, alice, newItem(own, fmt.Sprintf("m%d", i), at(1))); err != nil {
					errs <- err
				}
			}
		})
		wg.Go(func() {
			for range each {
				if _, err := s.RecentItems(ctx, alice, "shared", 10); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent write: %v", err)
	}
	check := func(threadID string, want int) []threadstore.Item {
		items := allItems(t, s, alice, threadID)
		if len(items) != want {
			t.Fatalf("%s has %d items, want %d", threadID, len(items), want)
		}
		seen := map[string]bool{}
		for i, it := range items {
			if seen[it.ID] {
				t.Fatalf("%s: item %s twice", threadID, it.ID)
			}
			seen[it.ID] = true
			if i > 0 && it.Seq <= items[i-1].Seq {
				t.Fatalf("%s: Seq not increasing: %d after %d", threadID, it.Seq, items[i-1].Seq)
			}
		}
		return items
	}
	shared := check("shared", writers*each)
	// Each writer's items keep their own order within the shared thread.
	next := make([]int, writers)
	for _, it := range shared {
		var w, i int
		if _, err := fmt.Sscanf(it.ID, "w%d-%d", &w, &i); err != nil || i != next[w] {
			t.Fatalf("shared thread: %s out of its writer's order (want index %d)", it.ID, next[w])
		}
		next[w]++
	}
	for w := range writers {
		check(fmt.Sprintf("own%d", w), each)
	}
}

func testCancelledContext(t *testing.T, s threadstore.Store) {
	newThread(t, s, alice, "thr_a", at(0))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.AddItem(ctx, alice, newItem("thr_a", "m1", at(1)))
	wantErr(t, "AddItem with a cancelled context", err, threadstore.ErrUnavailable)
	wantErr(t, "AddItem with a cancelled context", err, context.Canceled)
	_, err = s.ListThreads(ctx, alice, "", 10, threadstore.Desc)
	wantErr(t, "ListThreads with a cancelled context", err, threadstore.ErrUnavailable)
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	_, err = s.ListItems(dctx, alice, "thr_a", "", 10, threadstore.Asc)
	wantErr(t, "ListItems past the deadline", err, threadstore.ErrUnavailable)
	wantErr(t, "ListItems past the deadline", err, context.DeadlineExceeded)
	if got := allItems(t, s, alice, "thr_a"); len(got) != 0 {
		t.Fatalf("a cancelled AddItem left %v", itemIDs(got))
	}
}

func testClosed(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	addItem(t, s, alice, newItem("thr_a", "m1", at(1)))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	title := "x"
	calls := map[string]error{}
	_, calls["CreateThread"] = s.CreateThread(ctx, threadstore.Thread{ID: "thr_b", Owner: alice})
	_, calls["Thread"] = s.Thread(ctx, alice, "thr_a")
	_, calls["ListThreads"] = s.ListThreads(ctx, alice, "", 10, threadstore.Desc)
	_, calls["UpdateThread"] = s.UpdateThread(ctx, alice, "thr_a", threadstore.ThreadUpdate{Title: &title})
	_, calls["DeleteThread"] = s.DeleteThread(ctx, alice, "thr_a")
	_, calls["AddItem"] = s.AddItem(ctx, alice, newItem("thr_a", "m2", at(2)))
	_, calls["SaveItem"] = s.SaveItem(ctx, alice, newItem("thr_a", "m2", at(2)))
	_, calls["Item"] = s.Item(ctx, alice, "thr_a", "m1")
	_, calls["ListItems"] = s.ListItems(ctx, alice, "thr_a", "", 10, threadstore.Asc)
	_, calls["RecentItems"] = s.RecentItems(ctx, alice, "thr_a", 10)
	_, calls["DeleteItemsAfter"] = s.DeleteItemsAfter(ctx, alice, "thr_a", "m1")
	calls["AddFeedback"] = s.AddFeedback(ctx, alice, "thr_a", []string{"m1"}, threadstore.Positive)
	_, calls["Feedback"] = s.Feedback(ctx, alice, "thr_a")
	for name, err := range calls {
		wantErr(t, name+" after Close", err, threadstore.ErrClosed)
		wantErr(t, name+" after Close", err, threadstore.ErrUnavailable)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

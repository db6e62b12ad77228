// Package threadstore keeps ChatKit threads, their items, item feedback and the
// files users attach to their messages for the agent mode, scoped by owner.
//
// It knows nothing of Caddy or HTTP. The caller (the agent handler) builds the item
// JSON the client sees and generates every id; the store keeps it as an opaque blob
// with a few indexed columns, orders it, pages it and enforces ownership.
//
// Ownership: every method takes the owner (the namespaced user id). A thread, item or
// cursor that exists but belongs to another owner is answered exactly as one that does
// not exist (ErrNotFound), and nothing is changed.
//
// Ordering: items and threads are ordered by (CreatedAt, Seq), where Seq is a
// store-assigned insertion sequence, so equal timestamps never reorder.
//
// Errors: ErrNotFound, ErrExists, ErrInvalid (a caller bug or bad input), and
// ErrUnavailable (the database is down, locked past the caller's deadline or closed;
// callers answer 503). Any other error is unexpected (500). Errors from a cancelled or
// expired context wrap both ErrUnavailable and the context's error. A caller that must
// save something after its client went away (the partial answer of a cancelled turn)
// passes a context detached from the request, such as
// context.WithTimeout(context.WithoutCancel(ctx), ...).
//
// Implementations: SQLiteStore (OpenSQLite), for the processes of one machine
// on one file (its leases hold between them, on the machine's clock), and
// PostgresStore (ParsePostgres, then OpenPostgres), for any number of processes
// on one database: its ordering, leases and sweeps hold across them, and its
// store's clock is the database server's. Every implementation passes the
// conformance suite in package storetest.
package threadstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Thread is a conversation's metadata, without its items.
type Thread struct {
	// ID is chosen by the caller (random, at least 64 bits) and unique in the store.
	ID string
	// Owner is the namespaced user id the thread belongs to.
	Owner string
	// Title is the thread's title; "" means none.
	Title string
	// Status is the ChatKit status object, such as {"type":"active"}. Nil on
	// CreateThread means {"type":"active"}.
	Status json.RawMessage
	// CreatedAt orders threads. Zero on CreateThread means the store's clock. Kept to
	// the microsecond.
	CreatedAt time.Time
	// UpdatedAt is the last time the thread or any of its items changed (for retention).
	// Zero on CreateThread means CreatedAt.
	UpdatedAt time.Time
	// Metadata is server-side JSON never shown to the client; nil means none.
	Metadata json.RawMessage
}

// Item is one thread item, kept as the JSON the client sees.
type Item struct {
	// ID is chosen by the caller and unique within its thread.
	ID string
	// ThreadID is the thread the item belongs to.
	ThreadID string
	// Seq is assigned by the store on insertion: it increases with every item added to
	// a thread and breaks CreatedAt ties. Ignored on input.
	Seq int64
	// CreatedAt orders items. Zero on AddItem or SaveItem means the store's clock. Kept
	// to the microsecond.
	CreatedAt time.Time
	// Type is the ChatKit item type ("user_message", "assistant_message", ...).
	Type string
	// Data is the item's full JSON as the client sees it.
	Data json.RawMessage
}

// Feedback is a user's verdict on one item; a later verdict on the same item replaces it.
type Feedback struct {
	ThreadID  string
	ItemID    string
	Kind      FeedbackKind
	CreatedAt time.Time
}

// FeedbackKind is the ChatKit items.feedback kind.
type FeedbackKind string

// The feedback kinds ChatKit sends.
const (
	Positive FeedbackKind = "positive"
	Negative FeedbackKind = "negative"
)

// Valid reports whether k is a kind the store accepts.
func (k FeedbackKind) Valid() bool { return k == Positive || k == Negative }

// Page is one page of a listing. After is the id of the last element, set only when
// HasMore; pass it back as the next call's after.
type Page[T any] struct {
	Data    []T
	HasMore bool
	After   string
}

// Order is a listing direction over (CreatedAt, Seq).
type Order string

// The two listing orders, spelled as in the ChatKit protocol.
const (
	Asc  Order = "asc"
	Desc Order = "desc"
)

// Valid reports whether o is Asc or Desc.
func (o Order) Valid() bool { return o == Asc || o == Desc }

// Bounds on what one read returns, so that no request can make the database return an
// unbounded amount. Larger requested sizes are clamped (HasMore then tells the rest).
const (
	MaxPageLimit   = 100
	MaxRecentItems = 1000
)

// ThreadUpdate names the fields UpdateThread changes; a nil field is left as it is.
type ThreadUpdate struct {
	Title    *string
	Status   json.RawMessage
	Metadata json.RawMessage
}

// Deleted counts what a delete removed.
type Deleted struct {
	Threads     int64
	Items       int64
	Feedback    int64
	Attachments int64
}

// add counts o in d (a delete done in batches).
func (d *Deleted) add(o Deleted) {
	d.Threads += o.Threads
	d.Items += o.Items
	d.Feedback += o.Feedback
	d.Attachments += o.Attachments
}

// Store is a thread store. All methods are safe for concurrent use.
type Store interface {
	// CreateThread inserts t and returns it as stored. ErrExists if the id is taken,
	// by any owner (ids are the caller's random choice: draw another).
	CreateThread(ctx context.Context, t Thread) (Thread, error)
	// Thread returns the owner's thread with that id.
	Thread(ctx context.Context, owner, id string) (Thread, error)
	// ListThreads pages the owner's threads. after is a thread id from a previous page
	// ("" = from the start); limit must be at least 1 and is clamped to MaxPageLimit.
	ListThreads(ctx context.Context, owner, after string, limit int, order Order) (Page[Thread], error)
	// UpdateThread changes the fields u names, bumps UpdatedAt and returns the result.
	UpdateThread(ctx context.Context, owner, id string, u ThreadUpdate) (Thread, error)
	// DeleteThread removes the thread with its items and their feedback.
	DeleteThread(ctx context.Context, owner, id string) (Deleted, error)

	// AddItem inserts it into the owner's thread it.ThreadID, assigns Seq and bumps
	// the thread's UpdatedAt. ErrExists if the thread already has an item with that id.
	AddItem(ctx context.Context, owner string, it Item) (Item, error)
	// SaveItem inserts it like AddItem, or replaces the Type and Data of the item with
	// the same id; a replaced item keeps its Seq and CreatedAt (its place in the thread).
	SaveItem(ctx context.Context, owner string, it Item) (Item, error)
	// Item returns one item of the owner's thread.
	Item(ctx context.Context, owner, threadID, id string) (Item, error)
	// ListItems pages the items of the owner's thread. after is an item id of that
	// thread ("" = from the start); limit is as for ListThreads.
	ListItems(ctx context.Context, owner, threadID, after string, limit int, order Order) (Page[Item], error)
	// RecentItems returns the newest n items (n ≥ 1, clamped to MaxRecentItems) in
	// ascending order: the model's history.
	RecentItems(ctx context.Context, owner, threadID string, n int) ([]Item, error)
	// DeleteItemsAfter removes every item ordered after itemID (for
	// threads.retry_after_item) with their feedback, and returns how many items went.
	DeleteItemsAfter(ctx context.Context, owner, threadID, itemID string) (int64, error)

	// AddFeedback records kind for each of itemIDs (1 to MaxPageLimit of them), all of
	// which must be items of the owner's thread (else ErrNotFound and nothing recorded).
	AddFeedback(ctx context.Context, owner, threadID string, itemIDs []string, kind FeedbackKind) error
	// Feedback returns the feedback on the owner's thread, in item order.
	Feedback(ctx context.Context, owner, threadID string) ([]Feedback, error)

	AttachmentStore
	OwnerStore
	ThreadLeaser

	// Close releases the store; later calls answer ErrClosed. Safe to call twice.
	Close() error
}

var (
	// ErrNotFound: no such thread, item or cursor for this owner.
	ErrNotFound = errors.New("threadstore: not found")
	// ErrExists: the id is already taken.
	ErrExists = errors.New("threadstore: already exists")
	// ErrInvalid: a missing id or owner, an unknown order or feedback kind, a limit
	// below 1 or malformed JSON.
	ErrInvalid = errors.New("threadstore: invalid argument")
	// ErrUnavailable: the database cannot answer now (down, locked past the deadline,
	// the context ended, or closed). Callers answer 503.
	ErrUnavailable = errors.New("threadstore: unavailable")
	// ErrBusy: another live claim holds the thread (ClaimThread), or a lease was
	// lost to one (Renew).
	ErrBusy = errors.New("threadstore: busy")
	// ErrClosed: the store was closed. It is also an ErrUnavailable.
	ErrClosed = fmt.Errorf("%w: store closed", ErrUnavailable)
)

// OwnerStore is the part of a Store that serves the site owner: a user's data
// exported or erased, and the retention sweep.
type OwnerStore interface {
	// ExportOwner returns everything stored for owner: each of their threads
	// (oldest first) with all its items in ascending order and its feedback, and
	// every attachment they uploaded, with its data. ErrNotFound when nothing at
	// all is stored for owner.
	ExportOwner(ctx context.Context, owner string) (OwnerExport, error)
	// DeleteOwner removes everything stored for owner (threads, items, feedback,
	// attachments, attached or not) and counts it; zeros for an unknown owner.
	DeleteOwner(ctx context.Context, owner string) (Deleted, error)
	// DeleteIdleThreads removes every thread, of any owner, whose UpdatedAt is
	// before the cutoff, with its items, feedback and attachments, and counts
	// it. Where several processes share the database, one sweeps at a time: a
	// call while another process's sweep runs returns zeros at once.
	DeleteIdleThreads(ctx context.Context, before time.Time) (Deleted, error)
}

// OwnerExport is everything a store keeps for one owner.
type OwnerExport struct {
	Threads     []ThreadExport
	Attachments []Attachment
}

// ThreadExport is one thread with all its items and feedback.
type ThreadExport struct {
	Thread   Thread
	Items    []Item
	Feedback []Feedback
}

// ThreadLeaser is the part of a Store that keeps one turn running per thread
// across every process sharing the database.
type ThreadLeaser interface {
	// ClaimThread marks the thread (any owner's: callers check ownership first)
	// as running a turn for ttl. ErrBusy when another live claim holds it. The
	// holder renews the lease before ttl passes while the turn runs and
	// releases it when the turn ends; the claim of a process that died lapses
	// after ttl.
	ClaimThread(ctx context.Context, threadID string, ttl time.Duration) (Lease, error)
}

// Lease is a live claim on a thread.
type Lease interface {
	// Renew extends the claim by its ttl from now; ErrBusy if it had lapsed
	// and another claim took the thread, or it was released. A claim that
	// lapsed with nobody taking the thread is taken back.
	Renew(ctx context.Context) error
	// Release ends the claim (only this one: never a later holder's). Safe to
	// call twice.
	Release(ctx context.Context) error
}

// invalid returns an ErrInvalid that says what was wrong.
func invalid(what string) error { return fmt.Errorf("%w: %s", ErrInvalid, what) }

// defaultStatus is a new thread's status when the caller gives none.
var defaultStatus = json.RawMessage(`{"type":"active"}`)

// checkThread validates a thread for CreateThread.
func checkThread(t Thread) error {
	switch {
	case t.ID == "":
		return invalid("empty thread id")
	case t.Owner == "":
		return invalid("empty owner")
	}
	return checkJSON(t.Status, t.Metadata)
}

// checkItem validates an item for AddItem and SaveItem.
func checkItem(owner string, it Item) error {
	switch {
	case owner == "":
		return invalid("empty owner")
	case it.ThreadID == "":
		return invalid("empty thread id")
	case it.ID == "":
		return invalid("empty item id")
	case it.Type == "":
		return invalid("empty item type")
	case it.Data == nil:
		return invalid("empty item data")
	}
	return checkJSON(it.Data)
}

// checkUpdate validates UpdateThread's arguments and returns the title
// argument of its statement: nil (NULL) leaves the title as it is.
func checkUpdate(owner string, u ThreadUpdate) (title any, err error) {
	if owner == "" {
		return nil, invalid("empty owner")
	}
	if err := checkJSON(u.Status, u.Metadata); err != nil {
		return nil, err
	}
	if u.Title != nil {
		title = *u.Title
	}
	return title, nil
}

// checkAttach validates AttachToThread's arguments.
func checkAttach(owner string, ids []string) error {
	switch {
	case owner == "":
		return invalid("empty owner")
	case len(ids) == 0 || len(ids) > MaxPageLimit:
		return invalid("attaching needs 1 to " + strconv.Itoa(MaxPageLimit) + " attachment ids")
	}
	return nil
}

// checkClaim validates ClaimThread's arguments.
func checkClaim(threadID string, ttl time.Duration) error {
	switch {
	case threadID == "":
		return invalid("empty thread id")
	case ttl <= 0:
		return invalid("lease ttl must be positive")
	}
	return nil
}

// checkJSON rejects malformed JSON; nil means absent and passes.
func checkJSON(docs ...json.RawMessage) error {
	for _, d := range docs {
		if d != nil && !json.Valid(d) {
			return invalid("malformed JSON")
		}
	}
	return nil
}

// checkPage validates listing arguments and returns the clamped limit.
func checkPage(owner string, limit int, order Order) (int, error) {
	switch {
	case owner == "":
		return 0, invalid("empty owner")
	case !order.Valid():
		return 0, invalid(fmt.Sprintf("order %q", order))
	case limit < 1:
		return 0, invalid("limit below 1")
	}
	return min(limit, MaxPageLimit), nil
}

// micros is the stored form of a time: integer microseconds since the Unix epoch, UTC.
func micros(t time.Time) int64 { return t.UnixMicro() }

// fromMicros is the inverse of micros.
func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

package storetest

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

func newAttachment(t *testing.T, s threadstore.Store, owner, id string, sec int) threadstore.Attachment {
	t.Helper()
	a, err := s.CreateAttachment(context.Background(), threadstore.Attachment{
		ID: id, Owner: owner, Name: id + ".png", MimeType: "image/png", Size: 4, CreatedAt: at(sec),
	})
	if err != nil {
		t.Fatalf("CreateAttachment %s: %v", id, err)
	}
	return a
}

func upload(t *testing.T, s threadstore.Store, owner, id string, data []byte) {
	t.Helper()
	if _, err := s.UploadAttachment(context.Background(), owner, id, "image/png", data); err != nil {
		t.Fatalf("UploadAttachment %s: %v", id, err)
	}
}

func testAttachments(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	a := newAttachment(t, s, alice, "atc_1", 1)
	if a.Uploaded || a.Data != nil || a.ThreadID != "" || !a.CreatedAt.Equal(at(1)) {
		t.Fatalf("created attachment %+v", a)
	}
	_, err := s.CreateAttachment(ctx, threadstore.Attachment{ID: "atc_1", Owner: bob, Name: "x", MimeType: "image/png"})
	wantErr(t, "id taken by another owner", err, threadstore.ErrExists)
	_, err = s.CreateAttachment(ctx, threadstore.Attachment{ID: "atc_x", Owner: alice, Name: "x"})
	wantErr(t, "no type", err, threadstore.ErrInvalid)

	got, err := s.Attachment(ctx, alice, "atc_1")
	if err != nil || got.Uploaded || got.Data != nil || got.Name != "atc_1.png" || got.MimeType != "image/png" || got.Size != 4 {
		t.Fatalf("Attachment before upload = %+v, %v", got, err)
	}
	_, err = s.Attachment(ctx, bob, "atc_1")
	wantErr(t, "another owner's attachment", err, threadstore.ErrNotFound)
	if l, err := s.LinkedAttachment(ctx, "atc_1"); err != nil || l.Owner != alice || l.Uploaded {
		t.Fatalf("LinkedAttachment = %+v, %v", l, err)
	}
	_, err = s.LinkedAttachment(ctx, "atc_nope")
	wantErr(t, "linked attachment that does not exist", err, threadstore.ErrNotFound)
	_, err = s.UploadAttachment(ctx, bob, "atc_1", "image/png", []byte("evil"))
	wantErr(t, "uploading to another owner's attachment", err, threadstore.ErrNotFound)

	data := []byte("\x89PNG\r\n\x1a\n-bytes")
	up, err := s.UploadAttachment(ctx, alice, "atc_1", "image/webp", data)
	if err != nil || !up.Uploaded || up.MimeType != "image/webp" || up.Size != int64(len(data)) {
		t.Fatalf("UploadAttachment = %+v, %v", up, err)
	}
	_, err = s.UploadAttachment(ctx, alice, "atc_1", "image/png", []byte("again"))
	wantErr(t, "second upload", err, threadstore.ErrExists)
	got, err = s.Attachment(ctx, alice, "atc_1")
	if err != nil || !got.Uploaded || !bytes.Equal(got.Data, data) || got.MimeType != "image/webp" {
		t.Fatalf("Attachment after upload = %+v, %v", got, err)
	}
	if l, err := s.LinkedAttachment(ctx, "atc_1"); err != nil || !bytes.Equal(l.Data, data) || l.Owner != alice {
		t.Fatalf("LinkedAttachment after upload = %+v, %v", l, err)
	}

	// An empty file is uploaded, not absent.
	newAttachment(t, s, alice, "atc_empty", 1)
	upload(t, s, alice, "atc_empty", nil)
	if got, err := s.Attachment(ctx, alice, "atc_empty"); err != nil || !got.Uploaded || got.Data == nil || len(got.Data) != 0 {
		t.Fatalf("empty upload = %+v, %v", got, err)
	}

	wantErr(t, "deleting another owner's", s.DeleteAttachment(ctx, bob, "atc_1"), threadstore.ErrNotFound)
	if err := s.DeleteAttachment(ctx, alice, "atc_1"); err != nil {
		t.Fatal(err)
	}
	_, err = s.Attachment(ctx, alice, "atc_1")
	wantErr(t, "deleted attachment", err, threadstore.ErrNotFound)
	wantErr(t, "deleting twice", s.DeleteAttachment(ctx, alice, "atc_1"), threadstore.ErrNotFound)
}

func testAttachToThread(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	newThread(t, s, alice, "thr_b", at(0))
	newThread(t, s, bob, "thr_bob", at(0))
	for _, id := range []string{"atc_1", "atc_2", "atc_pending"} {
		newAttachment(t, s, alice, id, 1)
	}
	upload(t, s, alice, "atc_1", []byte("one"))
	upload(t, s, alice, "atc_2", []byte("two"))
	newAttachment(t, s, bob, "atc_bob", 1)
	upload(t, s, bob, "atc_bob", []byte("bob"))

	for _, c := range []struct {
		what, owner, thread string
		ids                 []string
		want                error
	}{
		{"not uploaded", alice, "thr_a", []string{"atc_1", "atc_pending"}, threadstore.ErrNotFound},
		{"another owner's attachment", alice, "thr_a", []string{"atc_1", "atc_bob"}, threadstore.ErrNotFound},
		{"another owner's thread", alice, "thr_bob", []string{"atc_1"}, threadstore.ErrNotFound},
		{"missing", alice, "thr_a", []string{"atc_nope"}, threadstore.ErrNotFound},
		{"no ids", alice, "thr_a", nil, threadstore.ErrInvalid},
	} {
		_, err := s.AttachToThread(ctx, c.owner, c.thread, c.ids)
		wantErr(t, c.what, err, c.want)
	}
	// A refused call changed nothing: atc_1 is still free.
	if a, _ := s.Attachment(ctx, alice, "atc_1"); a.ThreadID != "" {
		t.Fatalf("a refused AttachToThread left atc_1 in %q", a.ThreadID)
	}

	got, err := s.AttachToThread(ctx, alice, "thr_a", []string{"atc_2", "atc_1"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, a := range got {
		ids = append(ids, a.ID)
		if a.ThreadID != "thr_a" || a.Data != nil || !a.Uploaded {
			t.Fatalf("attached %+v", a)
		}
	}
	if !slices.Equal(ids, []string{"atc_2", "atc_1"}) {
		t.Fatalf("AttachToThread returned %v", ids)
	}
	// Again in the same thread is fine; into another thread it is not.
	if _, err := s.AttachToThread(ctx, alice, "thr_a", []string{"atc_1"}); err != nil {
		t.Fatalf("attaching to the same thread again: %v", err)
	}
	_, err = s.AttachToThread(ctx, alice, "thr_b", []string{"atc_1"})
	wantErr(t, "attaching to a second thread", err, threadstore.ErrNotFound)
	if a, err := s.Attachment(ctx, alice, "atc_1"); err != nil || a.ThreadID != "thr_a" || string(a.Data) != "one" {
		t.Fatalf("attached attachment = %+v, %v", a, err)
	}
}

func testAttachmentsCascadeWithThread(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	newThread(t, s, alice, "thr_b", at(0))
	for _, id := range []string{"atc_1", "atc_2", "atc_3", "atc_free"} {
		newAttachment(t, s, alice, id, 1)
		upload(t, s, alice, id, []byte(id))
	}
	if _, err := s.AttachToThread(ctx, alice, "thr_a", []string{"atc_1", "atc_2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AttachToThread(ctx, alice, "thr_b", []string{"atc_3"}); err != nil {
		t.Fatal(err)
	}
	d, err := s.DeleteThread(ctx, alice, "thr_a")
	if err != nil {
		t.Fatal(err)
	}
	if d != (threadstore.Deleted{Threads: 1, Attachments: 2}) {
		t.Fatalf("DeleteThread = %+v", d)
	}
	for _, id := range []string{"atc_1", "atc_2"} {
		_, err := s.Attachment(ctx, alice, id)
		wantErr(t, "attachment of a deleted thread", err, threadstore.ErrNotFound)
	}
	for _, id := range []string{"atc_3", "atc_free"} {
		if _, err := s.Attachment(ctx, alice, id); err != nil {
			t.Fatalf("%s after deleting another thread: %v", id, err)
		}
	}
}

func testDeleteUnattached(t *testing.T, s threadstore.Store) {
	ctx := context.Background()
	newThread(t, s, alice, "thr_a", at(0))
	newAttachment(t, s, alice, "atc_old", 10)
	newAttachment(t, s, bob, "atc_old_bob", 10)
	newAttachment(t, s, alice, "atc_old_attached", 10)
	upload(t, s, alice, "atc_old_attached", []byte("x"))
	if _, err := s.AttachToThread(ctx, alice, "thr_a", []string{"atc_old_attached"}); err != nil {
		t.Fatal(err)
	}
	newAttachment(t, s, alice, "atc_new", 20)

	n, err := s.DeleteUnattached(ctx, at(20))
	if err != nil || n != 2 {
		t.Fatalf("DeleteUnattached = %d, %v; want 2", n, err)
	}
	for _, c := range []struct {
		owner, id string
		gone      bool
	}{{alice, "atc_old", true}, {bob, "atc_old_bob", true}, {alice, "atc_old_attached", false}, {alice, "atc_new", false}} {
		_, err := s.Attachment(ctx, c.owner, c.id)
		if gone := err != nil; gone != c.gone {
			t.Errorf("%s: gone = %v (%v), want %v", c.id, gone, err, c.gone)
		}
	}
}

package threadstore

import (
	"context"
	"time"
)

// Attachment is a file a user uploads for a message (ChatKit's two-phase upload):
// created first with what the browser declares, then given its bytes, then named by
// one message, which ties it to that message's thread.
type Attachment struct {
	// ID is chosen by the caller (random, at least 64 bits) and unique in the store.
	ID string
	// Owner is the namespaced user id of the uploader.
	Owner string
	// ThreadID is the thread of the message that named it; "" until then.
	ThreadID string
	// Name is the file name the browser gave.
	Name string
	// MimeType is the declared type until the upload, then the type the caller
	// decided from the bytes.
	MimeType string
	// Size is the declared size until the upload, then the stored length.
	Size int64
	// CreatedAt is when it was created (the unattached sweep counts from it). Zero on
	// CreateAttachment means the store's clock. Kept to the microsecond.
	CreatedAt time.Time
	// Uploaded reports whether the bytes are stored.
	Uploaded bool
	// Data is the file; nil unless Uploaded, and left out by AttachToThread.
	Data []byte
}

// AttachmentStore is the attachment part of a Store. An attachment that exists but
// belongs to another owner is answered as one that does not exist (ErrNotFound).
type AttachmentStore interface {
	// CreateAttachment inserts a without data (Data and Uploaded are ignored) and
	// returns it as stored. ErrExists if the id is taken, by any owner.
	CreateAttachment(ctx context.Context, a Attachment) (Attachment, error)
	// Attachment returns the owner's attachment with that id, with its data.
	Attachment(ctx context.Context, owner, id string) (Attachment, error)
	// LinkedAttachment returns the attachment with that id whoever owns it, with
	// its data: only for a request that a signed link authorizes in place of an
	// identity (an upload or preview link the store's caller issued to the owner).
	LinkedAttachment(ctx context.Context, id string) (Attachment, error)
	// UploadAttachment stores the bytes and the type decided from them. The bytes
	// of an attachment are written once: ErrExists if it was already uploaded.
	UploadAttachment(ctx context.Context, owner, id, mimeType string, data []byte) (Attachment, error)
	// AttachToThread ties the owner's uploaded attachments ids (1 to MaxPageLimit
	// of them) to the owner's thread and returns them in the order given, without
	// their data. An attachment already in that thread stays there; one that is
	// missing, not uploaded or in another thread is ErrNotFound, and then nothing
	// changes.
	AttachToThread(ctx context.Context, owner, threadID string, ids []string) ([]Attachment, error)
	// DeleteAttachment removes the owner's attachment, attached or not.
	DeleteAttachment(ctx context.Context, owner, id string) error
	// DeleteUnattached removes every attachment, of any owner, that no message
	// named and that was created before the cutoff, and says how many went.
	DeleteUnattached(ctx context.Context, before time.Time) (int64, error)
}

// checkAttachment validates an attachment for CreateAttachment.
func checkAttachment(a Attachment) error {
	switch {
	case a.ID == "":
		return invalid("empty attachment id")
	case a.Owner == "":
		return invalid("empty owner")
	case a.MimeType == "":
		return invalid("empty attachment type")
	case a.Size < 0:
		return invalid("negative attachment size")
	}
	return nil
}

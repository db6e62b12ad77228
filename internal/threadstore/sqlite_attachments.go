package threadstore

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// The attachment statements (checked by TestSQLiteQueryPlans).
const (
	attachmentCols = `id, owner, coalesce(thread_id, ''), name, mime_type, size, created_at, data IS NOT NULL`

	qCreateAttachment = `INSERT INTO attachments (id, owner, name, mime_type, size, created_at) VALUES (?, ?, ?, ?, ?, ?)`
	qAttachment       = `SELECT ` + attachmentCols + `, data FROM attachments WHERE id = ? AND owner = ?`
	qAttachmentMeta   = `SELECT ` + attachmentCols + ` FROM attachments WHERE id = ? AND owner = ?`
	qLinkedAttachment = `SELECT ` + attachmentCols + `, data FROM attachments WHERE id = ?`
	// Only once: an upload never replaces bytes already stored.
	qUploadAttachment = `UPDATE attachments SET mime_type = ?, size = ?, data = ? WHERE id = ? AND owner = ? AND data IS NULL
		RETURNING ` + attachmentCols
	qAttachAttachment = `UPDATE attachments SET thread_id = ?1 WHERE id = ?2 AND owner = ?3 AND data IS NOT NULL
		AND (thread_id IS NULL OR thread_id = ?1) RETURNING ` + attachmentCols
	qDeleteAttachment = `DELETE FROM attachments WHERE id = ? AND owner = ?`
	qDeleteUnattached = `DELETE FROM attachments WHERE thread_id IS NULL AND created_at < ?`
)

func scanAttachment(row scanner, withData bool) (Attachment, error) {
	var (
		a       Attachment
		created int64
		data    []byte
	)
	dest := []any{&a.ID, &a.Owner, &a.ThreadID, &a.Name, &a.MimeType, &a.Size, &created, &a.Uploaded}
	if withData {
		dest = append(dest, &data)
	}
	if err := row.Scan(dest...); err != nil {
		return Attachment{}, err
	}
	a.CreatedAt = fromMicros(created)
	if withData && a.Uploaded {
		if data == nil {
			data = []byte{}
		}
		a.Data = data
	}
	return a, nil
}

// CreateAttachment implements Store.
func (s *SQLiteStore) CreateAttachment(ctx context.Context, a Attachment) (Attachment, error) {
	if err := checkAttachment(a); err != nil {
		return Attachment{}, err
	}
	if a.CreatedAt.IsZero() {
		a.CreatedAt = s.now()
	}
	a.CreatedAt = fromMicros(micros(a.CreatedAt))
	a.ThreadID, a.Uploaded, a.Data = "", false, nil
	err := s.write(ctx, "create attachment", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, qCreateAttachment, a.ID, a.Owner, a.Name, a.MimeType, a.Size, micros(a.CreatedAt))
		return err
	})
	if err != nil {
		return Attachment{}, err
	}
	return a, nil
}

// Attachment implements Store.
func (s *SQLiteStore) Attachment(ctx context.Context, owner, id string) (Attachment, error) {
	if owner == "" {
		return Attachment{}, invalid("empty owner")
	}
	var a Attachment
	err := s.read(ctx, "load attachment", func(tx *sql.Tx) (err error) {
		a, err = scanAttachment(tx.QueryRowContext(ctx, qAttachment, id, owner), true)
		return err
	})
	return a, err
}

// LinkedAttachment implements Store.
func (s *SQLiteStore) LinkedAttachment(ctx context.Context, id string) (Attachment, error) {
	var a Attachment
	err := s.read(ctx, "load linked attachment", func(tx *sql.Tx) (err error) {
		a, err = scanAttachment(tx.QueryRowContext(ctx, qLinkedAttachment, id), true)
		return err
	})
	return a, err
}

// UploadAttachment implements Store.
func (s *SQLiteStore) UploadAttachment(ctx context.Context, owner, id, mimeType string, data []byte) (Attachment, error) {
	switch {
	case owner == "":
		return Attachment{}, invalid("empty owner")
	case mimeType == "":
		return Attachment{}, invalid("empty attachment type")
	}
	if data == nil {
		data = []byte{} // NULL means "not uploaded"
	}
	var a Attachment
	err := s.write(ctx, "upload attachment", func(tx *sql.Tx) (err error) {
		a, err = scanAttachment(tx.QueryRowContext(ctx, qUploadAttachment, mimeType, len(data), data, id, owner), false)
		if errors.Is(err, sql.ErrNoRows) {
			// Not the owner's (ErrNotFound), or uploaded already (ErrExists).
			if _, err := scanAttachment(tx.QueryRowContext(ctx, qAttachmentMeta, id, owner), false); err != nil {
				return err
			}
			return ErrExists
		}
		return err
	})
	if err != nil {
		return Attachment{}, err
	}
	a.Data = data
	return a, nil
}

// AttachToThread implements Store.
func (s *SQLiteStore) AttachToThread(ctx context.Context, owner, threadID string, ids []string) ([]Attachment, error) {
	if err := checkAttach(owner, ids); err != nil {
		return nil, err
	}
	out := make([]Attachment, 0, len(ids))
	err := s.write(ctx, "attach attachments", func(tx *sql.Tx) error {
		if err := s.touchThread(ctx, tx, owner, threadID); err != nil {
			return err
		}
		for _, id := range ids {
			a, err := scanAttachment(tx.QueryRowContext(ctx, qAttachAttachment, threadID, id, owner), false)
			if err != nil {
				return err // ErrNoRows: rolled back, nothing attached
			}
			out = append(out, a)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteAttachment implements Store.
func (s *SQLiteStore) DeleteAttachment(ctx context.Context, owner, id string) error {
	if owner == "" {
		return invalid("empty owner")
	}
	return s.write(ctx, "delete attachment", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, qDeleteAttachment, id, owner)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			if err != nil {
				return err
			}
			return ErrNotFound
		}
		return nil
	})
}

// DeleteUnattached implements Store.
func (s *SQLiteStore) DeleteUnattached(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, "delete unattached attachments", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, qDeleteUnattached, micros(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}

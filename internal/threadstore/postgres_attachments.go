package threadstore

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// The attachment statements.
const (
	pgAttachmentCols = `id, owner, coalesce(thread_id, ''), name, mime_type, size, created_at, data IS NOT NULL`

	pgCreateAttachment = `INSERT INTO chatkit.attachments (id, owner, name, mime_type, size, created_at)
		VALUES ($1, $2, $3, $4, $5, coalesce($6::timestamptz, clock_timestamp())) RETURNING created_at`
	pgAttachment       = `SELECT ` + pgAttachmentCols + `, data FROM chatkit.attachments WHERE id = $1 AND owner = $2`
	pgAttachmentExists = `SELECT id FROM chatkit.attachments WHERE id = $1 AND owner = $2`
	pgLinkedAttachment = `SELECT ` + pgAttachmentCols + `, data FROM chatkit.attachments WHERE id = $1`
	// Only once: an upload never replaces bytes already stored.
	pgUploadAttachment = `UPDATE chatkit.attachments SET mime_type = $3, size = $4, data = $5
		WHERE id = $1 AND owner = $2 AND data IS NULL RETURNING ` + pgAttachmentCols
	pgAttachAttachments = `UPDATE chatkit.attachments SET thread_id = $1 WHERE id = ANY($2) AND owner = $3 AND data IS NOT NULL
		AND (thread_id IS NULL OR thread_id = $1) RETURNING ` + pgAttachmentCols
	pgDeleteAttachment = `DELETE FROM chatkit.attachments WHERE id = $1 AND owner = $2`
	// Rows locked in id order, as every multi-row delete of attachments does,
	// so that two such deletes never deadlock.
	pgDeleteUnattached = `DELETE FROM chatkit.attachments WHERE id = ANY(ARRAY(
		SELECT id FROM chatkit.attachments WHERE thread_id IS NULL AND created_at < $1 ORDER BY id FOR UPDATE))`
)

func pgScanAttachment(row scanner, withData bool) (Attachment, error) {
	var (
		a    Attachment
		data []byte
	)
	dest := []any{&a.ID, &a.Owner, &a.ThreadID, &a.Name, &a.MimeType, &a.Size, &a.CreatedAt, &a.Uploaded}
	if withData {
		dest = append(dest, &data)
	}
	if err := row.Scan(dest...); err != nil {
		return Attachment{}, err
	}
	a.CreatedAt = a.CreatedAt.UTC()
	if withData && a.Uploaded {
		if data == nil {
			data = []byte{}
		}
		a.Data = data
	}
	return a, nil
}

// CreateAttachment implements Store.
func (s *PostgresStore) CreateAttachment(ctx context.Context, a Attachment) (Attachment, error) {
	if err := checkAttachment(a); err != nil {
		return Attachment{}, err
	}
	a.ThreadID, a.Uploaded, a.Data = "", false, nil
	err := s.bounded(ctx, "create attachment", func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, pgCreateAttachment, a.ID, a.Owner, a.Name, a.MimeType, a.Size, pgTime(a.CreatedAt)).Scan(&a.CreatedAt)
	})
	if err != nil {
		return Attachment{}, err
	}
	a.CreatedAt = a.CreatedAt.UTC()
	return a, nil
}

// Attachment implements Store.
func (s *PostgresStore) Attachment(ctx context.Context, owner, id string) (Attachment, error) {
	if owner == "" {
		return Attachment{}, invalid("empty owner")
	}
	var a Attachment
	err := s.bounded(ctx, "load attachment", func(ctx context.Context) (err error) {
		a, err = pgScanAttachment(s.pool.QueryRow(ctx, pgAttachment, id, owner), true)
		return err
	})
	return a, err
}

// LinkedAttachment implements Store.
func (s *PostgresStore) LinkedAttachment(ctx context.Context, id string) (Attachment, error) {
	var a Attachment
	err := s.bounded(ctx, "load linked attachment", func(ctx context.Context) (err error) {
		a, err = pgScanAttachment(s.pool.QueryRow(ctx, pgLinkedAttachment, id), true)
		return err
	})
	return a, err
}

// UploadAttachment implements Store.
func (s *PostgresStore) UploadAttachment(ctx context.Context, owner, id, mimeType string, data []byte) (Attachment, error) {
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
	err := s.bounded(ctx, "upload attachment", func(ctx context.Context) (err error) {
		a, err = pgScanAttachment(s.pool.QueryRow(ctx, pgUploadAttachment, id, owner, mimeType, len(data), data), false)
		if errors.Is(err, pgx.ErrNoRows) {
			// Not the owner's (ErrNotFound), or uploaded already (ErrExists).
			var found string
			if err := s.pool.QueryRow(ctx, pgAttachmentExists, id, owner).Scan(&found); err != nil {
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
func (s *PostgresStore) AttachToThread(ctx context.Context, owner, threadID string, ids []string) ([]Attachment, error) {
	if err := checkAttach(owner, ids); err != nil {
		return nil, err
	}
	want := distinct(ids)
	var out []Attachment
	err := s.inTx(ctx, "attach attachments", func(ctx context.Context, tx pgx.Tx) error {
		if err := pgTouch(ctx, tx, owner, threadID); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, pgAttachAttachments, threadID, want, owner)
		if err != nil {
			return err
		}
		byID, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Attachment, error) { return pgScanAttachment(row, false) })
		if err != nil {
			return err
		}
		if len(byID) != len(want) {
			return ErrNotFound // one is missing, not uploaded or elsewhere: rolled back
		}
		found := make(map[string]Attachment, len(byID))
		for _, a := range byID {
			found[a.ID] = a
		}
		out = make([]Attachment, 0, len(ids))
		for _, id := range ids {
			out = append(out, found[id])
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteAttachment implements Store.
func (s *PostgresStore) DeleteAttachment(ctx context.Context, owner, id string) error {
	if owner == "" {
		return invalid("empty owner")
	}
	return s.bounded(ctx, "delete attachment", func(ctx context.Context) error {
		tag, err := s.pool.Exec(ctx, pgDeleteAttachment, id, owner)
		if err == nil && tag.RowsAffected() == 0 {
			err = ErrNotFound
		}
		return err
	})
}

// DeleteUnattached implements Store.
func (s *PostgresStore) DeleteUnattached(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.bounded(ctx, "delete unattached attachments", func(ctx context.Context) error {
		tag, err := s.pool.Exec(ctx, pgDeleteUnattached, before.UTC())
		n = tag.RowsAffected()
		return err
	})
	return n, err
}

package chatkit

// The site owner's routes on Caddy's admin endpoint: a user's data
// exported or erased, and a backup of a SQLite store while it serves. They
// reach the thread stores the loaded configs opened through the store pool
// (agentStores); Caddy loads every admin.api module by itself, so the
// routes exist wherever the module is compiled in, with or without an agent.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// The admin routes.
const (
	adminUsersPrefix = "/chatkit/users/"
	adminBackupPath  = "/chatkit/backup"
	// maxAdminUserID bounds the user id in the path.
	maxAdminUserID = 1024
)

// AdminAPI adds the chatkit routes to Caddy's admin endpoint (`admin.api.chatkit`,
// loaded automatically; it has no configuration):
//
//   - `GET /chatkit/users/<user id>` exports everything the agent's stores
//     keep for one user, `DELETE` erases it. The user id is the namespaced
//     id (`user:alice`), path-escaped (`user%3Aalice`).
//   - `POST /chatkit/backup?to=<absolute path>[&store=<path>]` writes a
//     consistent copy of a SQLite store while it serves.
//
// Every store the loaded configs use is searched: an export merges them, a
// delete erases the user from each.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.chatkit",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes implements caddy.AdminRouter.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: adminUsersPrefix, Handler: caddy.AdminHandlerFunc(a.serveUser)},
		{Pattern: adminBackupPath, Handler: caddy.AdminHandlerFunc(a.serveBackup)},
	}
}

func (a *AdminAPI) logger() *zap.Logger { return caddy.Log().Named("admin.api.chatkit") }

// adminRefuse writes an error answer as the site's endpoints do, without a
// request id (the admin endpoint has none). It returns nil: the answer is
// written, Caddy's admin must not write its own.
func adminRefuse(w http.ResponseWriter, a answer) error {
	out := append(a.appendHead(make([]byte, 0, 64+len(a.message))), "}\n"...)
	return adminWrite(w, a.status, out)
}

func adminWrite(w http.ResponseWriter, status int, body []byte) error {
	adminHeaders(w)
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return nil
}

func adminHeaders(w http.ResponseWriter) {
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
}

// adminJSON encodes v as the answer, straight to the client (an export
// holds the user's files), without HTML escaping (the items are the JSON
// the widget reads, kept as they are). Nothing in v can fail to encode:
// the stored JSON was checked when it was saved.
func adminJSON(w http.ResponseWriter, v any) error {
	adminHeaders(w)
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // an error here is the client gone
	return nil
}

// adminStore is a pooled store as the admin routes see it.
type adminStore struct {
	path   string
	sqlite bool
	handle *agentStoreHandle
}

// adminStores lists the stores of the loaded configs, by path.
func adminStores() []adminStore {
	var out []adminStore
	agentStores.Range(func(key, value any) bool {
		if h, ok := value.(*agentStoreHandle); ok {
			k, _ := key.(string)
			out = append(out, adminStore{path: h.path, sqlite: strings.HasPrefix(k, agentStoreSQLite+":"), handle: h})
		}
		return true
	})
	slices.SortFunc(out, func(a, b adminStore) int { return strings.Compare(a.path, b.path) })
	return out
}

// eachStore runs fn on every loaded store that is open or opens; a store
// whose config went away meanwhile is skipped. The first failure stops.
func eachStore(ctx context.Context, fn func(st threadstore.Store) error) error {
	for _, s := range adminStores() {
		st, release, err := s.handle.acquire(ctx)
		if errors.Is(err, threadstore.ErrClosed) {
			continue
		}
		if err != nil {
			return err
		}
		err = fn(st)
		release()
		if err != nil {
			return err
		}
	}
	return nil
}

// storeAnswer is the answer to a store's failure.
func storeAnswer(err error) answer {
	if errors.Is(err, threadstore.ErrUnavailable) || errors.Is(err, errAgentStoreOpen) {
		return answerStoreUnavailable
	}
	return answerStoreFailed
}

// serveUser answers GET and DELETE on /chatkit/users/<user id>.
func (a *AdminAPI) serveUser(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodDelete {
		w.Header().Set("Allow", "GET, DELETE")
		return adminRefuse(w, answerAdminUserMethod)
	}
	// The escaped path, so that an id holding `/` (escaped %2F) stays one id.
	raw := strings.TrimPrefix(r.URL.EscapedPath(), adminUsersPrefix)
	user, err := url.PathUnescape(raw)
	if err != nil || user == "" || len(user) > maxAdminUserID || strings.ContainsAny(user, "\x00\r\n") {
		return adminRefuse(w, answerBadRequest.withMessage("name the user by its namespaced id, path-escaped: /chatkit/users/user%3Aalice"))
	}
	log := a.logger().With(zap.String("user_hash", userHash(user)))
	if r.Method == http.MethodDelete {
		return a.deleteUser(r.Context(), w, log, user)
	}
	return a.exportUser(r.Context(), w, log, user)
}

// The export's JSON: threads as the client sees them, with when they were
// last touched (what retention counts from), every item as stored (those
// the widget never shows included), their feedback, and the user's files
// with their bytes in base64.
type (
	adminExport struct {
		User        string            `json:"user"`
		Threads     []adminThread     `json:"threads"`
		Attachments []adminAttachment `json:"attachments"`
	}
	adminThread struct {
		Thread   adminThreadMeta   `json:"thread"`
		Items    []json.RawMessage `json:"items"`
		Feedback []adminFeedback   `json:"feedback"`
	}
	adminThreadMeta struct {
		ID        string          `json:"id"`
		Title     string          `json:"title,omitempty"`
		CreatedAt string          `json:"created_at"`
		UpdatedAt string          `json:"updated_at"`
		Status    json.RawMessage `json:"status"`
		Metadata  json.RawMessage `json:"metadata"`
	}
	adminFeedback struct {
		ItemID    string `json:"item_id"`
		Kind      string `json:"kind"`
		CreatedAt string `json:"created_at"`
	}
	adminAttachment struct {
		ID         string  `json:"id"`
		Name       string  `json:"name"`
		MimeType   string  `json:"mime_type"`
		Size       int64   `json:"size"`
		ThreadID   *string `json:"thread_id"`
		CreatedAt  string  `json:"created_at"`
		Uploaded   bool    `json:"uploaded"`
		DataBase64 *string `json:"data_base64"`
	}
)

func adminTime(t time.Time) string { return t.UTC().Format(agentTimeLayout) }

func (a *AdminAPI) exportUser(ctx context.Context, w http.ResponseWriter, log *zap.Logger, user string) error {
	var found []threadstore.OwnerExport
	err := eachStore(ctx, func(st threadstore.Store) error {
		exp, err := st.ExportOwner(ctx, user)
		switch {
		case errors.Is(err, threadstore.ErrNotFound):
			return nil
		case err != nil:
			return err
		}
		found = append(found, exp)
		return nil
	})
	if err != nil {
		// Never a partial export: it would look complete.
		log.Warn("could not export a user's data", zap.Error(err))
		return adminRefuse(w, storeAnswer(err))
	}
	if len(found) == 0 {
		log.Info("exported a user's data: nothing is stored", zap.String("outcome", outcomeNotFound))
		return adminRefuse(w, answerUserNotFound)
	}
	out := adminExport{User: user, Threads: []adminThread{}, Attachments: []adminAttachment{}}
	var threads []threadstore.ThreadExport
	for _, exp := range found {
		threads = append(threads, exp.Threads...)
		for _, at := range exp.Attachments {
			out.Attachments = append(out.Attachments, adminAttachmentOf(at))
		}
	}
	// Several stores: one list, oldest first, as one store gives it.
	slices.SortStableFunc(threads, func(a, b threadstore.ThreadExport) int { return a.Thread.CreatedAt.Compare(b.Thread.CreatedAt) })
	slices.SortStableFunc(out.Attachments, func(a, b adminAttachment) int { return strings.Compare(a.CreatedAt, b.CreatedAt) })
	items := 0
	for _, te := range threads {
		out.Threads = append(out.Threads, adminThreadOf(te))
		items += len(te.Items)
	}
	log.Info("exported a user's data", zap.String("outcome", outcomeSuccess),
		zap.Int("threads", len(out.Threads)), zap.Int("items", items), zap.Int("attachments", len(out.Attachments)))
	return adminJSON(w, out)
}

func adminThreadOf(te threadstore.ThreadExport) adminThread {
	t := te.Thread
	status := t.Status
	if len(status) == 0 {
		status = json.RawMessage(`{"type":"active"}`)
	}
	metadata := t.Metadata
	if len(metadata) == 0 {
		metadata = json.RawMessage(`{}`)
	}
	out := adminThread{
		Thread: adminThreadMeta{ID: t.ID, Title: t.Title, CreatedAt: adminTime(t.CreatedAt), UpdatedAt: adminTime(t.UpdatedAt),
			Status: status, Metadata: metadata},
		Items:    make([]json.RawMessage, 0, len(te.Items)),
		Feedback: make([]adminFeedback, 0, len(te.Feedback)),
	}
	for _, it := range te.Items {
		out.Items = append(out.Items, it.Data)
	}
	for _, f := range te.Feedback {
		out.Feedback = append(out.Feedback, adminFeedback{ItemID: f.ItemID, Kind: string(f.Kind), CreatedAt: adminTime(f.CreatedAt)})
	}
	return out
}

func adminAttachmentOf(at threadstore.Attachment) adminAttachment {
	out := adminAttachment{ID: at.ID, Name: at.Name, MimeType: at.MimeType, Size: at.Size,
		CreatedAt: adminTime(at.CreatedAt), Uploaded: at.Uploaded}
	if at.ThreadID != "" {
		out.ThreadID = &at.ThreadID
	}
	if at.Uploaded {
		data := base64.StdEncoding.EncodeToString(at.Data)
		out.DataBase64 = &data
	}
	return out
}

func (a *AdminAPI) deleteUser(ctx context.Context, w http.ResponseWriter, log *zap.Logger, user string) error {
	var total threadstore.Deleted
	err := eachStore(ctx, func(st threadstore.Store) error {
		d, err := st.DeleteOwner(ctx, user)
		total.Threads += d.Threads
		total.Items += d.Items
		total.Feedback += d.Feedback
		total.Attachments += d.Attachments
		return err
	})
	counts := []zap.Field{zap.Int64("threads", total.Threads), zap.Int64("items", total.Items),
		zap.Int64("feedback", total.Feedback), zap.Int64("attachments", total.Attachments)}
	if err != nil {
		// Some stores may be erased already; a second DELETE finishes the job.
		log.Warn("could not delete all of a user's data (what was deleted is counted)", append(counts, zap.Error(err))...)
		return adminRefuse(w, storeAnswer(err))
	}
	log.Info("deleted a user's data", append(counts, zap.String("outcome", outcomeSuccess))...)
	return adminJSON(w, map[string]map[string]int64{"deleted": {
		"threads": total.Threads, "items": total.Items, "feedback": total.Feedback, "attachments": total.Attachments,
	}})
}

// sqliteBackup is what a store that can copy itself offers (SQLiteStore);
// a PostgreSQL store is backed up with pg_dump.
type sqliteBackup interface {
	Backup(ctx context.Context, to string) error
}

// serveBackup answers POST /chatkit/backup?to=<absolute path>[&store=<path>].
func (a *AdminAPI) serveBackup(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return adminRefuse(w, answerMethodNotAllowed)
	}
	q := r.URL.Query()
	to := q.Get("to")
	if to == "" || !filepath.IsAbs(to) {
		return adminRefuse(w, answerBadRequest.withMessage("name the backup file by an absolute path: POST /chatkit/backup?to=/var/backups/threads.db"))
	}
	to = filepath.Clean(to)
	s, refusal, ok := pickBackupStore(adminStores(), q.Get("store"))
	if !ok {
		return adminRefuse(w, refusal)
	}
	log := a.logger().With(zap.String("store", s.path), zap.String("to", to))
	st, release, err := s.handle.acquire(r.Context())
	if err != nil {
		log.Warn("could not open the store to back it up", zap.Error(err))
		return adminRefuse(w, storeAnswer(err))
	}
	defer release()
	b, ok := st.(sqliteBackup)
	if !ok {
		return adminRefuse(w, answerBackupPostgres)
	}
	start := time.Now()
	err = b.Backup(r.Context(), to)
	switch {
	case errors.Is(err, threadstore.ErrExists):
		log.Info("refused a backup over an existing file", zap.String("outcome", outcomeBackupExists))
		return adminRefuse(w, answerBackupExists)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission):
		return adminRefuse(w, answerBadRequest.withMessage("the backup cannot be written there: its directory must exist and be writable by Caddy"))
	case err != nil:
		log.Warn("could not back up the store", zap.Error(err))
		return adminRefuse(w, storeAnswer(err))
	}
	var size int64
	if fi, err := os.Stat(to); err == nil {
		size = fi.Size()
	}
	log.Info("backed up the store", zap.String("outcome", outcomeSuccess), zap.Int64("bytes", size), zap.Duration("duration", time.Since(start)))
	return adminJSON(w, map[string]any{"backup": map[string]any{"path": to, "store": s.path, "bytes": size}})
}

// pickBackupStore chooses the store to back up: the one named, or the only
// SQLite store loaded.
func pickBackupStore(stores []adminStore, named string) (adminStore, answer, bool) {
	var (
		sqlite []adminStore
		paths  []string
		none   answer
	)
	for _, s := range stores {
		if s.sqlite {
			sqlite = append(sqlite, s)
			paths = append(paths, s.path)
		}
	}
	choices := "the loaded SQLite stores: " + strings.Join(paths, ", ")
	switch {
	case named != "":
		for _, s := range sqlite {
			if s.path == filepath.Clean(named) {
				return s, none, true
			}
		}
		if len(sqlite) == 0 {
			break
		}
		return adminStore{}, answerBadRequest.withMessage("no loaded SQLite store is " + named + "; " + choices), false
	case len(sqlite) == 1:
		return sqlite[0], none, true
	case len(sqlite) > 1:
		return adminStore{}, answerBadRequest.withMessage("several SQLite stores are loaded: name one with &store=<path>; " + choices), false
	}
	if len(stores) > 0 {
		return adminStore{}, answerBackupPostgres, false
	}
	return adminStore{}, answerBadRequest.withMessage("no agent thread store is loaded"), false
}

// Interface guards.
var (
	_ caddy.Module      = (*AdminAPI)(nil)
	_ caddy.AdminRouter = (*AdminAPI)(nil)
	_ sqliteBackup      = (*threadstore.SQLiteStore)(nil)
)

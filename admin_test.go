package chatkit

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
	"github.com/caddy-chatkit/caddy-chatkit/internal/pgtest"
	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

const adminURL = "http://localhost:2999"

// adminDo sends a request to the test Caddy's admin endpoint.
func adminDo(t *testing.T, method, path string) reply {
	t.Helper()
	req, err := http.NewRequest(method, adminURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := plainClient(t).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, body: string(raw)}
	if resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%s %s: Content-Type %q (body %s)", method, path, resp.Header.Get("Content-Type"), raw)
	}
	if err := json.Unmarshal(raw, &r.json); err != nil {
		t.Fatalf("%s %s: invalid JSON %q: %v", method, path, raw, err)
	}
	return r
}

// twoStoreSite runs two agents in one site, each on its own SQLite file:
// /api/chatkit (with attachments) on first and /two/api on second. Users
// are named by the X-Test-User header.
func twoStoreSite(t *testing.T, fake *fakeopenai.Server) (first, second string) {
	t.Helper()
	dir := t.TempDir()
	first, second = filepath.Join(dir, "first.db"), filepath.Join(dir, "second.db")
	common := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\trate_limit off\n\t\tuser {http.request.header.X-Test-User}", fake.URL(), fakeopenai.DefaultAPIKey)
	newTester(t, fmt.Sprintf(`{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
}
http://localhost:9080 {
	chatkit {
		%s
		agent {
			store sqlite %s
			model gpt-5-mini
			attachments on
		}
	}
	handle /two/* {
		chatkit {
			%s
			agent /two/api {
				store sqlite %s
				model gpt-5-mini
			}
		}
	}
	handle {
		respond "the next handler" 200
	}
}
`, common, first, common, second))
	return first, second
}

// streamAt posts a streaming request for user to an agent path.
func streamAt(t *testing.T, path, user, body string) agentStream {
	t.Helper()
	r := do(t, plainClient(t), "POST", path, body, "Content-Type", "application/json", "X-Test-User", user)
	s := agentStream{status: r.status, header: r.header, body: r.body}
	if r.status != http.StatusOK {
		t.Fatalf("POST %s: %d %s", path, r.status, r.body)
	}
	s.frames = agentParseStream(t, r.body)
	if e := s.errorFrame(); e != nil {
		t.Fatalf("POST %s: error event %s", path, e.raw)
	}
	return s
}

// adminTestExport is the export as the test reads it.
type adminTestExport struct {
	User    string `json:"user"`
	Threads []struct {
		Thread struct {
			ID        string          `json:"id"`
			Title     string          `json:"title"`
			CreatedAt string          `json:"created_at"`
			UpdatedAt string          `json:"updated_at"`
			Status    json.RawMessage `json:"status"`
		} `json:"thread"`
		Items    []json.RawMessage `json:"items"`
		Feedback []struct {
			ItemID string `json:"item_id"`
			Kind   string `json:"kind"`
		} `json:"feedback"`
	} `json:"threads"`
	Attachments []struct {
		ID         string  `json:"id"`
		Name       string  `json:"name"`
		MimeType   string  `json:"mime_type"`
		ThreadID   *string `json:"thread_id"`
		Uploaded   bool    `json:"uploaded"`
		DataBase64 *string `json:"data_base64"`
	} `json:"attachments"`
}

// TestAdminUserExportAndDelete: a user's data in two stores, made through
// the agent endpoints, exported and erased through the admin endpoint;
// another user's data is never in the answer and never touched.
func TestAdminUserExportAndDelete(t *testing.T) {
	fake := newFake(t)
	twoStoreSite(t, fake)
	alice := &userClient{t: t, c: client(t), user: "alice"}

	file := decodeAttachment(t, alice.post(createAttachmentBody("a.png", len(testPNG), "image/png")))
	if r := uploadMultipart(t, file.UploadDescriptor.URL, testPNG); r.status != http.StatusOK {
		t.Fatal(r.body)
	}
	first := alice.stream(createWith("my first question", file.ID))
	th1 := first.threadID(t)
	answer := first.doneItems(t)[1]
	if r := alice.post(`{"type":"items.feedback","params":{"thread_id":"` + th1 + `","item_ids":["` + answer.ID + `"],"kind":"positive"}}`); r.status != http.StatusOK {
		t.Fatal(r.body)
	}
	th2 := streamAt(t, "/two/api", "alice", createBody("my question on the second agent")).threadID(t)
	streamAt(t, "/two/api", "alice", addBody(th2, "and a follow-up"))
	bob := &userClient{t: t, c: client(t), user: "bob"}
	thBob := bob.stream(createBody("bob's secret plans")).threadID(t)
	thBob2 := streamAt(t, "/two/api", "bob", createBody("bob's other secret")).threadID(t)

	for _, path := range []string{"/chatkit/users/user%3Aalice", "/chatkit/users/user:alice"} {
		r := adminDo(t, "GET", path)
		if r.status != http.StatusOK || r.header.Get("Cache-Control") != "no-store" {
			t.Fatalf("GET %s = %d %s", path, r.status, r.body)
		}
		for _, bobs := range []string{"bob", thBob, thBob2} {
			if strings.Contains(r.body, bobs) {
				t.Fatalf("alice's export contains %q: %s", bobs, r.body)
			}
		}
		var exp adminTestExport
		if err := json.Unmarshal([]byte(r.body), &exp); err != nil {
			t.Fatal(err)
		}
		if exp.User != "user:alice" || len(exp.Threads) != 2 || exp.Threads[0].Thread.ID != th1 || exp.Threads[1].Thread.ID != th2 {
			t.Fatalf("export: user %q, threads %+v", exp.User, exp.Threads)
		}
		// Each thread's items are the ones the widget reads, in its order.
		for i, c := range []struct{ path, thread string }{{agentPath, th1}, {"/two/api", th2}} {
			list := decodePage(t, do(t, plainClient(t), "POST", c.path, listBody("items.list", c.thread, 100, "asc", ""), "Content-Type", "application/json", "X-Test-User", "alice"))
			// The widget's copy also carries freshly signed preview links.
			var got, want []string
			for _, it := range exp.Threads[i].Items {
				got = append(got, withoutPreviewLinks(t, it))
			}
			for _, it := range list.Data {
				want = append(want, withoutPreviewLinks(t, it))
			}
			if !slices.Equal(got, want) {
				t.Fatalf("thread %s: exported items\n%s\nwant the widget's\n%s", c.thread, got, want)
			}
		}
		if len(exp.Threads[1].Items) != 4 || exp.Threads[0].Thread.Title == "" || exp.Threads[0].Thread.UpdatedAt == "" {
			t.Fatalf("thread details: %+v", exp.Threads)
		}
		if fb := exp.Threads[0].Feedback; len(fb) != 1 || fb[0].ItemID != answer.ID || fb[0].Kind != "positive" {
			t.Fatalf("feedback %+v", fb)
		}
		if len(exp.Attachments) != 1 {
			t.Fatalf("attachments %+v", exp.Attachments)
		}
		a := exp.Attachments[0]
		data, err := base64.StdEncoding.DecodeString(deref(a.DataBase64))
		if a.ID != file.ID || a.Name != "a.png" || a.MimeType != "image/png" || deref(a.ThreadID) != th1 || !a.Uploaded || err != nil || !bytes.Equal(data, testPNG) {
			t.Fatalf("attachment %+v (%v)", a, err)
		}
	}

	// Unknown, malformed, wrong method.
	expectAdminError(t, adminDo(t, "GET", "/chatkit/users/user%3Anobody"), http.StatusNotFound, "not_found")
	expectAdminError(t, adminDo(t, "GET", "/chatkit/users/"), http.StatusBadRequest, "bad_request")
	expectAdminError(t, adminDo(t, "GET", "/chatkit/users/user%3A"+strings.Repeat("a", 2000)), http.StatusBadRequest, "bad_request")
	r := adminDo(t, "PUT", "/chatkit/users/user%3Aalice")
	expectAdminError(t, r, http.StatusMethodNotAllowed, "method_not_allowed")
	if r.header.Get("Allow") != "GET, DELETE" {
		t.Fatalf("Allow = %q", r.header.Get("Allow"))
	}

	// Erase: everything of alice's in both stores, counted; bob untouched.
	r = adminDo(t, "DELETE", "/chatkit/users/user%3Aalice")
	want := map[string]any{"threads": 2.0, "items": 6.0, "feedback": 1.0, "attachments": 1.0}
	if r.status != http.StatusOK || fmt.Sprint(r.json["deleted"]) != fmt.Sprint(want) {
		t.Fatalf("DELETE = %d %s; want deleted %v", r.status, r.body, want)
	}
	expectAdminError(t, adminDo(t, "GET", "/chatkit/users/user%3Aalice"), http.StatusNotFound, "not_found")
	expectError(t, alice.post(threadBody("threads.get_by_id", th1)), http.StatusNotFound, "not_found")
	if p := decodePage(t, do(t, plainClient(t), "POST", "/two/api", `{"type":"threads.list","params":{}}`, "Content-Type", "application/json", "X-Test-User", "alice")); len(p.Data) != 0 {
		t.Fatalf("alice still has threads on the second agent: %s", p.Data)
	}
	expectError(t, do(t, plainClient(t), "GET", sitePath(t, file.PreviewURL), ""), http.StatusNotFound, "not_found")
	if r := bob.post(threadBody("threads.get_by_id", thBob)); r.status != http.StatusOK {
		t.Fatalf("bob's thread after alice's erasure: %d %s", r.status, r.body)
	}
	if r := adminDo(t, "GET", "/chatkit/users/user%3Abob"); r.status != http.StatusOK || len(r.json["threads"].([]any)) != 2 {
		t.Fatalf("bob's export after alice's erasure: %d %s", r.status, r.body)
	}
	for _, who := range []string{"user%3Aalice", "user%3Anobody"} {
		r := adminDo(t, "DELETE", "/chatkit/users/"+who)
		if r.status != http.StatusOK || fmt.Sprint(r.json["deleted"]) != fmt.Sprint(map[string]any{"threads": 0.0, "items": 0.0, "feedback": 0.0, "attachments": 0.0}) {
			t.Fatalf("DELETE %s again = %d %s; want zeros", who, r.status, r.body)
		}
	}
}

// withoutPreviewLinks is an item's JSON, re-encoded without its attachments'
// preview_url.
func withoutPreviewLinks(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var it map[string]any
	if err := json.Unmarshal(raw, &it); err != nil {
		t.Fatal(err)
	}
	if atts, ok := it["attachments"].([]any); ok {
		for _, a := range atts {
			delete(a.(map[string]any), "preview_url")
		}
	}
	out, _ := json.Marshal(it)
	return string(out)
}

// expectAdminError checks an admin error answer: the endpoints' shape,
// without a request id (the admin endpoint has none).
func expectAdminError(t *testing.T, r reply, status int, code string) {
	t.Helper()
	if r.status != status || r.json["error"] != code || r.json["message"] == "" || len(r.json) != 2 {
		t.Fatalf("got %d %s, want %d with error %q and a message", r.status, r.body, status, code)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("Cache-Control = %q", r.header.Get("Cache-Control"))
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// TestAdminBackup: with two SQLite stores loaded the store must be named;
// the copy, taken while streams run, opens as a thread store with every
// thread made before it; an existing file is refused, as are a relative
// path and a missing directory.
func TestAdminBackup(t *testing.T) {
	fake := newFake(t)
	firstDB, secondDB := twoStoreSite(t, fake)
	var threads []string
	for i := range 5 {
		threads = append(threads, streamAt(t, agentPath, "alice", createBody(fmt.Sprintf("question %d", i))).threadID(t))
	}
	dir := t.TempDir()
	to := filepath.Join(dir, "backup.db")

	r := adminDo(t, "POST", "/chatkit/backup?to="+to)
	expectAdminError(t, r, http.StatusBadRequest, "bad_request")
	if msg := r.json["message"].(string); !strings.Contains(msg, firstDB) || !strings.Contains(msg, secondDB) {
		t.Fatalf("the refusal does not list the stores: %s", msg)
	}
	expectAdminError(t, adminDo(t, "POST", "/chatkit/backup?to=relative.db&store="+firstDB), http.StatusBadRequest, "bad_request")
	expectAdminError(t, adminDo(t, "POST", "/chatkit/backup?store="+firstDB), http.StatusBadRequest, "bad_request")
	expectAdminError(t, adminDo(t, "POST", "/chatkit/backup?to="+to+"&store=/no/such.db"), http.StatusBadRequest, "bad_request")
	expectAdminError(t, adminDo(t, "POST", "/chatkit/backup?to="+filepath.Join(dir, "missing", "b.db")+"&store="+firstDB), http.StatusBadRequest, "bad_request")
	r = adminDo(t, "GET", "/chatkit/backup?to="+to)
	expectAdminError(t, r, http.StatusMethodNotAllowed, "method_not_allowed")
	if r.header.Get("Allow") != "POST" {
		t.Fatalf("Allow = %q", r.header.Get("Allow"))
	}

	// Streams that are still answering while the copy is taken.
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: "a slow answer in many small parts", Deltas: 8, DeltaDelay: 50 * time.Millisecond, Times: 4})
	var wg sync.WaitGroup
	streams := make([]agentStream, 4)
	calls := fake.ResponsesCount()
	for i := range streams {
		wg.Go(func() {
			r := do(t, plainClient(t), "POST", agentPath, createBody(fmt.Sprintf("slow %d", i)), "Content-Type", "application/json", "X-Test-User", "alice")
			streams[i] = agentStream{status: r.status, body: r.body}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for fake.ResponsesCount() < calls+len(streams) {
		if time.Now().After(deadline) {
			t.Fatal("the slow streams never reached the model")
		}
		time.Sleep(time.Millisecond)
	}
	r = adminDo(t, "POST", "/chatkit/backup?to="+to+"&store="+firstDB)
	wg.Wait()
	if r.status != http.StatusOK {
		t.Fatalf("backup = %d %s", r.status, r.body)
	}
	b := r.json["backup"].(map[string]any)
	if b["path"] != to || b["store"] != firstDB || b["bytes"].(float64) <= 0 {
		t.Fatalf("backup answer %s", r.body)
	}
	for i, s := range streams {
		if s.status != http.StatusOK || !strings.Contains(s.body, `"type":"thread.item.done"`) || strings.Contains(s.body, `"type":"error"`) {
			t.Fatalf("stream %d during the backup: %d %s", i, s.status, s.body)
		}
	}

	// The copy is a sound thread store holding every thread made before it.
	raw, err := sql.Open("sqlite", to)
	if err != nil {
		t.Fatal(err)
	}
	var check string
	if err := raw.QueryRow(`PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check = %q, %v", check, err)
	}
	raw.Close()
	copied := openTestStore(t, to)
	for _, th := range threads {
		items, err := copied.ListItems(context.Background(), "user:alice", th, "", 10, threadstore.Asc)
		if err != nil || len(items.Data) != 2 {
			t.Fatalf("thread %s in the backup: %+v, %v", th, items, err)
		}
	}
	if p, err := copied.ListThreads(context.Background(), "user:alice", "", 100, threadstore.Asc); err != nil || len(p.Data) < len(threads) || len(p.Data) > len(threads)+len(streams) {
		t.Fatalf("threads in the backup: %d, %v", len(p.Data), err)
	}

	// Never over an existing file, the backup's or anyone's.
	before, _ := os.ReadFile(to)
	expectAdminError(t, adminDo(t, "POST", "/chatkit/backup?to="+to+"&store="+firstDB), http.StatusConflict, "backup_exists")
	if after, _ := os.ReadFile(to); !bytes.Equal(before, after) {
		t.Fatal("a refused backup changed the existing file")
	}
	other := filepath.Join(dir, "notes.txt")
	os.WriteFile(other, []byte("keep me"), 0o600)
	expectAdminError(t, adminDo(t, "POST", "/chatkit/backup?to="+other+"&store="+secondDB), http.StatusConflict, "backup_exists")
	if got, _ := os.ReadFile(other); string(got) != "keep me" {
		t.Fatalf("the existing file became %q", got)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*")); len(leftovers) != 0 {
		t.Fatalf("temporary files left beside the backups: %v", leftovers)
	}
}

// TestPickBackupStore: the choice of store without a running Caddy,
// PostgreSQL's refusal included.
func TestPickBackupStore(t *testing.T) {
	a := adminStore{path: "/data/a.db", sqlite: true}
	b := adminStore{path: "/data/b.db", sqlite: true}
	pg := adminStore{path: "postgres", sqlite: false}
	for _, c := range []struct {
		stores []adminStore
		named  string
		want   string // a path, or the refusal's message part
	}{
		{[]adminStore{a}, "", "/data/a.db"},
		{[]adminStore{a, pg}, "", "/data/a.db"},
		{[]adminStore{a, b}, "", "several SQLite stores"},
		{[]adminStore{a, b}, "/data/b.db", "/data/b.db"},
		{[]adminStore{a, b}, "/data/./b.db", "/data/b.db"},
		{[]adminStore{a, b}, "/data/c.db", "no loaded SQLite store is /data/c.db"},
		{[]adminStore{pg}, "", "pg_dump"},
		{[]adminStore{pg}, "/data/a.db", "pg_dump"},
		{nil, "", "no agent thread store is loaded"},
	} {
		s, refusal, ok := pickBackupStore(c.stores, c.named)
		got := s.path
		if !ok {
			got = refusal.message
			if refusal.status != http.StatusBadRequest {
				t.Errorf("%v %q: status %d", c.stores, c.named, refusal.status)
			}
		}
		if !strings.Contains(got, c.want) {
			t.Errorf("%v %q: got %q, want %q", c.stores, c.named, got, c.want)
		}
	}
}

// TestAdminWithPostgres: a PostgreSQL store in the pool beside a SQLite
// one is searched and erased like it, and a backup of it is refused with a
// pointer to pg_dump (alone) or skipped for the SQLite store (beside it).
func TestAdminWithPostgres(t *testing.T) {
	dsn := pgtest.FreshDatabase(t, "")
	ctx := context.Background()
	cfg, err := threadstore.ParsePostgres(dsn, threadstore.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pg, err := threadstore.OpenPostgres(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	key := "postgres:" + cfg.Describe()
	if _, loaded, err := agentStores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newAgentStoreHandle(cfg.Describe(), func(context.Context) (threadstore.Store, error) { return pg, nil }), nil
	}); err != nil || loaded {
		t.Fatalf("seeding the pool: %v %v", loaded, err)
	}
	t.Cleanup(func() { _, _ = agentStores.Delete(key) })
	if _, err := pg.CreateThread(ctx, threadstore.Thread{ID: "thr_pg", Owner: "user:alice", Title: "on postgres"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.AddItem(ctx, "user:alice", threadstore.Item{ID: "msg_pg", ThreadID: "thr_pg", Type: "user_message", Data: json.RawMessage(`{"id":"msg_pg","type":"user_message"}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.CreateThread(ctx, threadstore.Thread{ID: "thr_pg_bob", Owner: "user:bob"}); err != nil {
		t.Fatal(err)
	}

	// Only PostgreSQL loaded (a site without an agent): the backup points to pg_dump.
	startSite(t, newFake(t), "", "", "")
	r := adminDo(t, "POST", "/chatkit/backup?to="+filepath.Join(t.TempDir(), "b.db"))
	expectAdminError(t, r, http.StatusBadRequest, "bad_request")
	if msg := r.json["message"].(string); !strings.Contains(msg, "pg_dump") || strings.Contains(msg, dsn) {
		t.Fatalf("backup of a PostgreSQL store: %s", msg)
	}

	// Beside a SQLite agent: both are searched, merged and erased.
	site := startAgent(t, newFake(t), "", "user {http.request.header.X-Test-User}", "")
	alice := &userClient{t: t, c: client(t), user: "alice"}
	th := alice.stream(createBody("on sqlite")).threadID(t)
	r = adminDo(t, "GET", "/chatkit/users/user%3Aalice")
	var exp adminTestExport
	if err := json.Unmarshal([]byte(r.body), &exp); r.status != http.StatusOK || err != nil || len(exp.Threads) != 2 {
		t.Fatalf("export across stores: %d %s", r.status, r.body)
	}
	ids := []string{exp.Threads[0].Thread.ID, exp.Threads[1].Thread.ID}
	if !slices.Equal(ids, []string{"thr_pg", th}) || strings.Contains(r.body, "thr_pg_bob") {
		t.Fatalf("export across stores: threads %v (oldest first: postgres, then sqlite)", ids)
	}
	// The SQLite store is the only one a backup can take.
	to := filepath.Join(t.TempDir(), "b.db")
	if r := adminDo(t, "POST", "/chatkit/backup?to="+to); r.status != http.StatusOK || r.json["backup"].(map[string]any)["store"] != site.db {
		t.Fatalf("backup beside a PostgreSQL store: %d %s", r.status, r.body)
	}
	r = adminDo(t, "DELETE", "/chatkit/users/user%3Aalice")
	if fmt.Sprint(r.json["deleted"]) != fmt.Sprint(map[string]any{"threads": 2.0, "items": 3.0, "feedback": 0.0, "attachments": 0.0}) {
		t.Fatalf("delete across stores: %s", r.body)
	}
	if _, err := pg.Thread(ctx, "user:alice", "thr_pg"); err == nil {
		t.Fatal("the PostgreSQL thread survived the erasure")
	}
	if _, err := pg.Thread(ctx, "user:bob", "thr_pg_bob"); err != nil {
		t.Fatalf("bob's PostgreSQL thread: %v", err)
	}
}

// TestAdminStoreDown: a store that cannot be opened makes the export, the
// erasure and the backup 503 store_unavailable, never a partial answer,
// whatever other stores (an earlier test's config) are loaded.
func TestAdminStoreDown(t *testing.T) {
	key := agentStoreSQLite + ":/broken/threads.db"
	if _, loaded, err := agentStores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newAgentStoreHandle("/broken/threads.db", func(context.Context) (threadstore.Store, error) {
			return nil, fmt.Errorf("%w: disk on fire", threadstore.ErrUnavailable)
		}), nil
	}); err != nil || loaded {
		t.Fatalf("seeding the pool: %v %v", loaded, err)
	}
	defer agentStores.Delete(key)
	api := &AdminAPI{}
	for _, c := range []struct {
		method, target string
		serve          func(http.ResponseWriter, *http.Request) error
	}{
		{"GET", "/chatkit/users/user%3Aalice", api.serveUser},
		{"DELETE", "/chatkit/users/user%3Aalice", api.serveUser},
		{"POST", "/chatkit/backup?store=/broken/threads.db&to=" + filepath.Join(t.TempDir(), "b.db"), api.serveBackup},
	} {
		w := httptest.NewRecorder()
		if err := c.serve(w, httptest.NewRequest(c.method, c.target, nil)); err != nil {
			t.Fatalf("%s %s returned %v", c.method, c.target, err)
		}
		var body map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != http.StatusServiceUnavailable || body["error"] != "store_unavailable" {
			t.Fatalf("%s %s = %d %s, want 503 store_unavailable", c.method, c.target, w.Code, w.Body)
		}
		if strings.Contains(w.Body.String(), "fire") {
			t.Fatalf("the store's error reached the answer: %s", w.Body)
		}
	}
}

package chatkit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
	"github.com/caddy-chatkit/caddy-chatkit/internal/pgtest"
	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// The agent on PostgreSQL through a real Caddy: a fresh database on the
// shared test server, or a throwaway cluster for the faults
// (agent_postgres_faults_test.go).

// pgAgentEnv is the variable the test configs read the DSN from, as a site
// would ({env.DATABASE_URL}).
const pgAgentEnv = "CHATKIT_TEST_AGENT_DSN"

// pgAgentSite is a running config whose agent keeps its threads in the
// PostgreSQL database named by $CHATKIT_TEST_AGENT_DSN. Users are named by
// the X-Test-User header; Caddy's log (DEBUG, JSON) goes to log.
type pgAgentSite struct {
	fake *fakeopenai.Server
	log  string
}

func startPGAgent(t *testing.T, fake *fakeopenai.Server, logFile, storeBlock, agentExtra string) *pgAgentSite {
	t.Helper()
	if logFile == "" {
		logFile = filepath.Join(t.TempDir(), "caddy.log")
	}
	global := fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}", logFile)
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\trate_limit off\n\t\tuser {http.request.header.X-Test-User}\n\t\tagent {\n\t\t\tmodel gpt-5-mini\n\t\t\tstore postgres {env.%s} %s\n\t\t\t%s\n\t\t}",
		fake.URL(), fakeopenai.DefaultAPIKey, pgAgentEnv, storeBlock, agentExtra)
	newTester(t, caddyConfig(global, block, ""))
	return &pgAgentSite{fake: fake, log: logFile}
}

// logLines is Caddy's log so far.
func (s *pgAgentSite) logLines(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(s.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// pgCount counts the rows of a table of the store's schema.
func pgCount(t *testing.T, dsn, table string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM chatkit."+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// pgPooled is the pooled postgres store handles.
func pgPooled() []*agentStoreHandle {
	var out []*agentStoreHandle
	agentStores.Range(func(k, v any) bool {
		if strings.HasPrefix(k.(string), agentStorePostgres+":") {
			out = append(out, v.(*agentStoreHandle))
		}
		return true
	})
	return out
}

// TestAgentPostgresThroughCaddy: threads on PostgreSQL, read, paged and
// owned as on SQLite; one pool kept across a reload; the admin routes export
// and erase a user there and point the backup to pg_dump; and the DSN's
// password is in no log line, answer or the admin /config/.
func TestAgentPostgresThroughCaddy(t *testing.T) {
	dsn := pgtest.FreshDatabase(t, agentStoreSecret)
	t.Setenv(pgAgentEnv, dsn)
	fake := newFake(t)
	site := startPGAgent(t, fake, "", "{\n\t\t\t\tquery_timeout 3s\n\t\t\t\tmax_conns 4\n\t\t\t}", "")
	alice := &userClient{t: t, c: client(t), user: "alice"}
	bob := &userClient{t: t, c: client(t), user: "bob"}

	s := alice.stream(createBody("hello postgres"))
	if e := s.errorFrame(); s.status != http.StatusOK || e != nil {
		t.Fatalf("create: %d %s", s.status, s.body)
	}
	th := s.threadID(t)
	if s := alice.stream(addBody(th, "and again")); s.errorFrame() != nil {
		t.Fatalf("add: %s", s.body)
	}
	if in := fake.LastResponses().Input; len(in) != 3 || in[0].Text != "hello postgres" {
		t.Fatalf("history from PostgreSQL = %+v", in)
	}
	r := alice.post(listBody("items.list", th, 3, "desc", ""))
	p := decodePage(t, r)
	if len(p.Data) != 3 || !p.HasMore {
		t.Fatalf("items.list desc, limit 3: %s", r.body)
	}
	if got := pgCount(t, dsn, "items"); got != 4 {
		t.Fatalf("%d items in PostgreSQL, want 4", got)
	}
	expectError(t, bob.post(threadBody("threads.get_by_id", th)), http.StatusNotFound, "not_found")

	// A reload keeps the pool (and the thread).
	pooled := pgPooled()
	if len(pooled) != 1 {
		t.Fatalf("%d PostgreSQL pools, want 1", len(pooled))
	}
	startPGAgent(t, fake, site.log, "{\n\t\t\t\tquery_timeout 3s\n\t\t\t\tmax_conns 4\n\t\t\t}", "history 5")
	if again := pgPooled(); len(again) != 1 || again[0] != pooled[0] {
		t.Fatal("the reload opened another pool")
	}
	if r := alice.post(threadBody("threads.get_by_id", th)); r.status != http.StatusOK || r.json["title"] != "hello postgres" {
		t.Fatalf("after the reload: %d %s", r.status, r.body)
	}

	// The admin routes.
	r = adminDo(t, "GET", "/chatkit/users/user%3Aalice")
	var exp adminTestExport
	if err := json.Unmarshal([]byte(r.body), &exp); r.status != http.StatusOK || err != nil || len(exp.Threads) != 1 || exp.Threads[0].Thread.ID != th || len(exp.Threads[0].Items) != 4 {
		t.Fatalf("export: %d %s", r.status, r.body)
	}
	r = adminDo(t, "POST", "/chatkit/backup?to="+filepath.Join(t.TempDir(), "b.db"))
	expectAdminError(t, r, http.StatusBadRequest, "bad_request")
	if !strings.Contains(r.body, "pg_dump") {
		t.Fatalf("backup of PostgreSQL: %s", r.body)
	}
	r = adminDo(t, "DELETE", "/chatkit/users/user%3Aalice")
	if fmt.Sprint(r.json["deleted"]) != fmt.Sprint(map[string]any{"threads": 1.0, "items": 4.0, "feedback": 0.0, "attachments": 0.0}) {
		t.Fatalf("delete: %s", r.body)
	}
	if got := pgCount(t, dsn, "threads"); got != 0 {
		t.Fatalf("%d threads left in PostgreSQL after the erasure", got)
	}
	expectError(t, alice.post(threadBody("threads.get_by_id", th)), http.StatusNotFound, "not_found")

	// The config as the admin endpoint shows it holds the placeholder.
	resp, err := plainClient(t).Get(adminURL + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(cfg), "{env."+pgAgentEnv+"}") || strings.Contains(string(cfg), agentStoreSecret) {
		t.Fatalf("/config/ = %s", cfg)
	}
	logs := site.logLines(t)
	if strings.Contains(logs, agentStoreSecret) {
		t.Fatal("the DSN's password is in Caddy's log")
	}
	if !strings.Contains(logs, "deleted a user's data") || !strings.Contains(logs, "the agent's thread store is open") {
		t.Fatalf("the log file was not written to: %s", logs)
	}
}

// TestAgentPostgresRetentionSweep: the sweep of a PostgreSQL store removes
// the threads not touched within retention, and keeps the others.
func TestAgentPostgresRetentionSweep(t *testing.T) {
	dsn := pgtest.FreshDatabase(t, "")
	t.Setenv(pgAgentEnv, dsn)
	target, err := resolveAgentStore(&AgentStore{Type: agentStorePostgres, DSN: dsn}, caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	clock := newFakeSweepClock(time.Now())
	core, logs := observer.New(zap.InfoLevel)
	if _, loaded, err := agentStores.LoadOrNew(target.key, func() (caddy.Destructor, error) {
		return newAgentStoreHandle(target.name, target.open).startSweeperWith(zap.New(core), clock), nil
	}); err != nil || loaded {
		t.Fatalf("seeding the store pool: loaded=%v, %v", loaded, err)
	}
	t.Cleanup(func() { _, _ = agentStores.Delete(target.key) })

	startPGAgent(t, newFake(t), "", "", "retention 1h")
	alice := &userClient{t: t, c: client(t), user: "alice"}
	old := alice.stream(createBody("an old question")).threadID(t)
	ctx := context.Background()
	cfg, err := threadstore.ParsePostgres(dsn, threadstore.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := threadstore.OpenPostgres(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	oldThread, err := st.Thread(ctx, "user:alice", old)
	if err != nil {
		t.Fatal(err)
	}
	cutoff := oldThread.UpdatedAt.Add(time.Microsecond)
	kept := alice.stream(createBody("a question kept")).threadID(t)
	if k, err := st.Thread(ctx, "user:alice", kept); err != nil || k.UpdatedAt.Before(cutoff) {
		t.Fatalf("the kept thread: %+v %v", k, err)
	}

	clock.waitFor(t, "planned a sweep 6m out", func(_ int, d time.Duration) bool { return d == 6*time.Minute })
	clock.set(cutoff.Add(time.Hour))
	agentWaitUntil(t, "the sweep", func() bool {
		return logs.FilterMessage("removed the threads idle for longer than retention").Len() > 0
	})
	fields := logs.FilterMessage("removed the threads idle for longer than retention").All()[0].ContextMap()
	if fields["threads"] != int64(1) || fields["items"] != int64(2) || strings.Contains(fmt.Sprint(fields["path"]), "@") {
		t.Fatalf("sweep log fields %v; want 1 thread, 2 items, the store without credentials", fields)
	}
	expectError(t, alice.post(threadBody("threads.get_by_id", old)), http.StatusNotFound, "not_found")
	if r := alice.post(threadBody("threads.get_by_id", kept)); r.status != http.StatusOK {
		t.Fatalf("the kept thread: %d %s", r.status, r.body)
	}
}

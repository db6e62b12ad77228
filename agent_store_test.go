package chatkit

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// agentStoreSecret is a DSN password no error, log line, key or name may
// contain.
const agentStoreSecret = "pw-Canary-9c1e-DO-NOT-ECHO"

// TestAgentStoreCaddyfile: both store forms, the postgres block, and every
// way to get them wrong, each refused with its line.
func TestAgentStoreCaddyfile(t *testing.T) {
	parse := func(store string) (*Handler, error) {
		return cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\t" + store + "\n\t}\n}")
	}
	for store, want := range map[string]AgentStore{
		"store sqlite":                        {Type: "sqlite"},
		"store sqlite /var/lib/t.db":          {Type: "sqlite", Path: "/var/lib/t.db"},
		"store postgres {env.DB_URL}":         {Type: "postgres", DSN: "{env.DB_URL}"},
		`store postgres "host=db user=caddy"`: {Type: "postgres", DSN: "host=db user=caddy"},
		"store postgres {env.DB_URL} {\n\t\t\tquery_timeout 2s\n\t\t\tmax_conns 12\n\t\t}": {
			Type: "postgres", DSN: "{env.DB_URL}", QueryTimeout: caddy.Duration(2 * time.Second), MaxConns: 12,
		},
	} {
		h, err := parse(store)
		if err != nil {
			t.Errorf("%q: %v", store, err)
			continue
		}
		if got := *h.Agent.Store; got != want {
			t.Errorf("%q: %+v, want %+v", store, got, want)
		}
	}
	for store, want := range map[string]string{
		"store":                                             "wrong argument count",
		"store mysql x":                                     "agent store must be sqlite or postgres",
		"store postgres":                                    "store postgres needs a DSN",
		"store postgres a b":                                "wrong argument count",
		"store sqlite /t.db {\n max_conns 2\n}":             "store sqlite takes no block",
		"store sqlite {\n query_timeout 1s\n}":              "store sqlite takes no block",
		"store postgres d {\n pool 2\n}":                    `unrecognized store option "pool"`,
		"store postgres d {\n max_conns 2\n max_conns 3\n}": `duplicate store option "max_conns"`,
		"store postgres d {\n query_timeout 1s\n query_timeout 2s\n}": `duplicate store option "query_timeout"`,
		"store postgres d {\n query_timeout 0s\n}":                    "query_timeout must be positive",
		"store postgres d {\n query_timeout soon\n}":                  "query_timeout",
		"store postgres d {\n query_timeout\n}":                       "wrong argument count",
		"store postgres d {\n max_conns 0\n}":                         "max_conns must be at least 1",
		"store postgres d {\n max_conns many\n}":                      "not a whole number",
		"store postgres d\n\t\tstore sqlite":                          `duplicate agent option "store"`,
	} {
		_, err := parse(store)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", store, err, want)
		}
		if err != nil && !strings.Contains(err.Error(), "Testfile:") {
			t.Errorf("%q: the error has no line: %v", store, err)
		}
	}
}

// TestAgentStoreJSONRules: in JSON each store type takes its own fields.
func TestAgentStoreJSONRules(t *testing.T) {
	for store, want := range map[string]string{
		`{"type":"sqlite","dsn":"postgres://db/x"}`:            "are for store postgres",
		`{"path":"t.db","max_conns":3}`:                        "are for store postgres",
		`{"type":"sqlite","query_timeout":1000000000}`:         "are for store postgres",
		`{"type":"postgres"}`:                                  "needs a DSN",
		`{"type":"postgres","dsn":"  "}`:                       "needs a DSN",
		`{"type":"postgres","dsn":"x","path":"t.db"}`:          "takes a dsn, not a path",
		`{"type":"postgres","dsn":"x","query_timeout":-1}`:     "query_timeout must be positive",
		`{"type":"postgres","dsn":"x","max_conns":-2}`:         "max_conns must be at least 1",
		`{"type":"postgres","dsn":"x","max_conns":3000000000}`: "max_conns must be at least 1",
		`{"type":"redis"}`:                                     "must be sqlite or postgres",
	} {
		h := cfDecode(t, `{"api_key":"k","agent":{"model":"m","store":`+store+`}}`)
		if err := h.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", store, err, want)
		}
	}
	h := cfDecode(t, `{"api_key":"k","agent":{"model":"m","store":{"type":"postgres","dsn":"{env.X}","query_timeout":1000000000,"max_conns":4}}}`)
	if err := h.Validate(); err != nil {
		t.Fatalf("a valid postgres store: %v", err)
	}
}

// TestAgentStoreBadDSNIsAConfigError: a DSN that does not parse, written or
// from a placeholder, fails provisioning without quoting it; nothing is
// pooled for it.
func TestAgentStoreBadDSNIsAConfigError(t *testing.T) {
	for _, dsn := range []string{
		"postgres://alice:" + agentStoreSecret + "@db.internal:notaport/chat",
		"postgres://alice:" + agentStoreSecret + "@[::1/chat",
		"host=db password=" + agentStoreSecret + " port=x",
		"host=db password='" + agentStoreSecret,
		"postgres://alice:" + agentStoreSecret + "@db/chat?sslmode=sometimes",
		"", // an unset variable
	} {
		t.Setenv("CHATKIT_TEST_BAD_DSN", dsn)
		for _, written := range []string{"{env.CHATKIT_TEST_BAD_DSN}", dsn} {
			if written == "" {
				continue
			}
			h := cfDecode(t, `{"api_key":"k","agent":{"model":"m","store":{"type":"postgres","dsn":`+jsonString(written)+`}}}`)
			before := agentStoreKeys()
			err := cfProvision(t, h)
			if err == nil || !strings.Contains(err.Error(), "agent store postgres") {
				t.Errorf("%q: provision = %v, want a DSN error", written, err)
				continue
			}
			if strings.Contains(err.Error(), agentStoreSecret) {
				t.Errorf("%q: the error shows the password: %v", written, err)
			}
			if after := agentStoreKeys(); after != before {
				t.Errorf("%q: a store was pooled for a bad DSN (%d → %d)", written, before, after)
			}
			t.Logf("%v", err)
		}
	}
}

// agentStoreKeys counts the pooled stores.
func agentStoreKeys() int {
	n := 0
	agentStores.Range(func(any, any) bool { n++; return true })
	return n
}

// TestAgentStorePostgresPooling: handlers resolving to one DSN and options
// share one pool (none is opened by provisioning: the server here does not
// exist); other options are another pool. Neither the key nor the name the
// logs and admin routes show holds the password.
func TestAgentStorePostgresPooling(t *testing.T) {
	dsn := "postgres://alice:" + agentStoreSecret + "@db.invalid:5432/chat"
	t.Setenv("CHATKIT_TEST_DSN", dsn)
	repl := caddy.NewReplacer()
	a, err := resolveAgentStore(&AgentStore{Type: "postgres", DSN: "{env.CHATKIT_TEST_DSN}"}, repl)
	if err != nil {
		t.Fatal(err)
	}
	b, err := resolveAgentStore(&AgentStore{Type: "postgres", DSN: dsn, QueryTimeout: caddy.Duration(defaultAgentQueryTimeout)}, repl)
	if err != nil {
		t.Fatal(err)
	}
	c, err := resolveAgentStore(&AgentStore{Type: "postgres", DSN: dsn, MaxConns: 7}, repl)
	if err != nil {
		t.Fatal(err)
	}
	if a.key != b.key || a.key == c.key || !strings.HasPrefix(a.key, "postgres:") {
		t.Fatalf("keys: %q %q %q (the first two are one pool)", a.key, b.key, c.key)
	}
	for _, s := range []string{a.key, a.name, c.key} {
		if strings.Contains(s, agentStoreSecret) {
			t.Fatalf("%q holds the password", s)
		}
	}
	if a.name != "postgres://db.invalid:5432/chat (user alice)" {
		t.Fatalf("name = %q", a.name)
	}

	// Two handlers, one pool; the pool goes with the last of them.
	before := agentStoreKeys()
	json := `{"api_key":"k","user":"{http.request.header.X-User}","agent":{"model":"m","store":{"type":"postgres","dsn":"{env.CHATKIT_TEST_DSN}"}}}`
	h1, h2 := cfDecode(t, json), cfDecode(t, json)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	if err := h1.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h2.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if h1.agent.store != h2.agent.store || agentStoreKeys() != before+1 {
		t.Fatalf("two handlers on one DSN: shared %v, pooled %d more", h1.agent.store == h2.agent.store, agentStoreKeys()-before)
	}
	h1.Cleanup()
	if agentStoreKeys() != before+1 {
		t.Fatal("the pool went while a handler used it")
	}
	h2.Cleanup()
	if agentStoreKeys() != before {
		t.Fatal("the pool outlived its last handler")
	}
}

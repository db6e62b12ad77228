package chatkit

// Which pooled thread store an agent uses: the store block resolved (its
// placeholders replaced) into the pool's key, a name for logs and the
// admin routes, and how to open it. The pool itself (agentStores,
// agentStoreHandle) is in agent.go.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// agentStoreTarget is a resolved store: key in agentStores, a name without
// credentials (the SQLite path, or the PostgreSQL server, database and
// user) and the open the handle runs on first use.
type agentStoreTarget struct {
	key  string
	name string
	open func(context.Context) (threadstore.Store, error)
}

// resolveAgentStore resolves the store block. It does no I/O: a database
// that is down is found out, and answered with 503, on first use. A DSN
// that does not parse is a config error, worded without the DSN.
func resolveAgentStore(cfg *AgentStore, repl *caddy.Replacer) (agentStoreTarget, error) {
	if cfg != nil && cfg.Type == agentStorePostgres {
		return resolvePostgresStore(cfg, repl)
	}
	path := ""
	if cfg != nil {
		path = repl.ReplaceAll(cfg.Path, "")
	}
	switch {
	case path == "":
		path = filepath.Join(caddy.AppDataDir(), "chatkit", "threads.db")
	case !filepath.IsAbs(path):
		path = filepath.Join(caddy.AppDataDir(), path)
	}
	path = filepath.Clean(path)
	return agentStoreTarget{key: agentStoreSQLite + ":" + path, name: path, open: openSQLiteStore(path)}, nil
}

func resolvePostgresStore(cfg *AgentStore, repl *caddy.Replacer) (agentStoreTarget, error) {
	dsn := strings.TrimSpace(repl.ReplaceAll(cfg.DSN, ""))
	timeout := time.Duration(cfg.QueryTimeout)
	if timeout == 0 {
		timeout = defaultAgentQueryTimeout
	}
	pc, err := threadstore.ParsePostgres(dsn, threadstore.PostgresOptions{QueryTimeout: timeout, MaxConns: int32(cfg.MaxConns)})
	if err != nil {
		// Neither the DSN nor what it resolved to is quoted: either may
		// hold the password.
		return agentStoreTarget{}, fmt.Errorf("chatkit: agent store postgres: %w", err)
	}
	// The key holds the DSN only hashed: the pool's keys are not secret,
	// but nothing that holds the password in clear should outlive provision.
	sum := sha256.Sum256([]byte(dsn + "\x00" + timeout.String() + "\x00" + strconv.Itoa(cfg.MaxConns)))
	return agentStoreTarget{
		key:  agentStorePostgres + ":" + hex.EncodeToString(sum[:]),
		name: pc.Describe(),
		open: func(ctx context.Context) (threadstore.Store, error) {
			st, err := threadstore.OpenPostgres(ctx, pc)
			if err != nil {
				return nil, err // not a typed nil in the interface
			}
			return st, nil
		},
	}, nil
}

package chatkit

// Which pooled thread store an agent uses: the store block resolved (its
// placeholders replaced) into the pool's key, a name for logs and the
// admin routes, and how to open it. The pool itself (agentStores,
// agentStoreHandle) is in agent.go.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// agentStoreTarget is a resolved store: key in agentStores, a name without
// credentials (the SQLite path, or the PostgreSQL server, database and
// user) and the open the handle runs on first use. probe: open it in the
// background as soon as it is pooled.
type agentStoreTarget struct {
	key   string
	name  string
	open  func(context.Context) (threadstore.Store, error)
	probe bool
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
		// A server elsewhere may be down or refuse the password: the log
		// says so when Caddy starts, not at the first visitor.
		probe: true,
		open: func(ctx context.Context) (threadstore.Store, error) {
			st, err := threadstore.OpenPostgres(ctx, pc)
			if err != nil {
				return nil, err // not a typed nil in the interface
			}
			return st, nil
		},
	}, nil
}

// probe opens the store in the background and logs whether it could: the
// agent answers 503 until it can, and each request tries again (at most
// every agentStoreRetry).
func (s *agentStoreHandle) probe(logger *zap.Logger) {
	go func() {
		defer recoverInto(logger, "open the thread store")
		_, release, err := s.acquire(context.Background())
		switch {
		case err == nil:
			release()
			logger.Info("the agent's thread store is open", zap.String("path", s.path))
		case !errors.Is(err, threadstore.ErrClosed): // the config went meanwhile
			logger.Warn("the agent's thread store cannot be opened yet: the agent answers 503 store_unavailable until it can",
				zap.String("path", s.path), zap.Error(err))
		}
	}()
}

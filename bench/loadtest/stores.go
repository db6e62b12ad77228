package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
	"github.com/jackc/pgx/v5"
)

// The agent's thread stores the harness can put under Caddy: a SQLite file
// in the work directory, or a database of its own on a PostgreSQL server
// (-postgres-url, else a throwaway cluster the harness starts and stops).

const (
	storeSQLite   = "sqlite"
	storePostgres = "postgres"
	// pgURLEnv gives the PostgreSQL server when -postgres-url is not set.
	pgURLEnv = "CHATKIT_BENCH_POSTGRES_URL"
)

// benchStore is one fresh database for Caddy's agent.
type benchStore struct {
	kind string // storeSQLite or storePostgres
	path string // the SQLite file
	dsn  string // the PostgreSQL database (may hold the password of -postgres-url: never printed)
}

// parseStores reads -agent-store, a comma-separated list of store kinds.
func parseStores(list string) ([]string, error) {
	var out []string
	for _, k := range strings.Split(list, ",") {
		switch k = strings.TrimSpace(k); k {
		case storeSQLite, storePostgres:
			out = append(out, k)
		default:
			return nil, fmt.Errorf("-agent-store: unknown store %q (sqlite or postgres)", k)
		}
	}
	return out, nil
}

// newStore makes a fresh, empty store of kind: a new SQLite file, or a
// new PostgreSQL database on the harness's server (started on first use).
func (s *servers) newStore(kind, name string) (*benchStore, error) {
	if kind == storeSQLite {
		return &benchStore{kind: kind, path: s.freshDB(name)}, nil
	}
	pg, err := s.postgres()
	if err != nil {
		return nil, err
	}
	dsn, err := pg.newDatabase(fmt.Sprintf("%s_%d_%03d", name, os.Getpid(), s.next()))
	if err != nil {
		return nil, err
	}
	return &benchStore{kind: kind, dsn: dsn}, nil
}

// pgBenchOptions are the store options the harness gives Caddy and its own
// connections: a pool large enough that 1,000 streams starting within one
// event interval queue on the database, not on the pool.
const (
	pgQueryTimeout = 5 * time.Second
	pgMaxConns     = 16
)

// directive is the agent block's store line for Caddy.
func (b *benchStore) directive() string {
	if b.kind == storeSQLite {
		return "store sqlite " + b.path
	}
	return fmt.Sprintf("store postgres %q {\n\t\t\t\tquery_timeout %s\n\t\t\t\tmax_conns %d\n\t\t\t}", b.dsn, pgQueryTimeout, pgMaxConns)
}

// String names the store for the report, without any password.
func (b *benchStore) String() string {
	if b.kind == storeSQLite {
		return "SQLite " + b.path
	}
	if cfg, err := threadstore.ParsePostgres(b.dsn, threadstore.PostgresOptions{}); err == nil {
		return "PostgreSQL " + cfg.Describe()
	}
	return "PostgreSQL"
}

// open opens the store in this process, through the thread store's API (to
// fill it before Caddy starts, or read it back after).
func (b *benchStore) open(ctx context.Context) (threadstore.Store, error) {
	if b.kind == storeSQLite {
		return threadstore.OpenSQLite(ctx, b.path, threadstore.SQLiteOptions{})
	}
	cfg, err := threadstore.ParsePostgres(b.dsn, threadstore.PostgresOptions{QueryTimeout: 30 * time.Second, MaxConns: pgMaxConns})
	if err != nil {
		return nil, err
	}
	return threadstore.OpenPostgres(ctx, cfg)
}

// copyOf is a fresh store holding what b holds: a copy of the SQLite file,
// or a PostgreSQL database made from b as its template. b must be closed.
func (s *servers) copyOf(b *benchStore, name string) (*benchStore, error) {
	if b.kind == storeSQLite {
		c := &benchStore{kind: b.kind, path: s.freshDB(name)}
		data, err := os.ReadFile(b.path)
		if errors.Is(err, os.ErrNotExist) {
			return c, nil // b was never filled: the copy is as empty
		}
		if err != nil {
			return nil, err
		}
		return c, os.WriteFile(c.path, data, 0o644)
	}
	pg, err := s.postgres()
	if err != nil {
		return nil, err
	}
	dsn, err := pg.newDatabaseFrom(fmt.Sprintf("%s_%d_%03d", name, os.Getpid(), s.next()), b.dsn)
	if err != nil {
		return nil, err
	}
	return &benchStore{kind: b.kind, dsn: dsn}, nil
}

// pgServer is the PostgreSQL server of a run: the one of -postgres-url, or
// a throwaway cluster in the work directory.
type pgServer struct {
	adminDSN string   // the server's maintenance database
	dbs      []string // databases the harness created, dropped at the end
	// The throwaway cluster, when the harness runs its own.
	data, bin string
	runAs     []string // runuser prefix when the harness runs as root
}

// postgres returns the run's PostgreSQL server, starting it on first use.
func (s *servers) postgres() (*pgServer, error) {
	if s.pg != nil {
		return s.pg, nil
	}
	o := s.opts
	pg := &pgServer{adminDSN: o.postgresURL}
	if pg.adminDSN == "" {
		var err error
		if pg, err = startCluster(s); err != nil {
			return nil, err
		}
	} else if err := pg.ping(); err != nil {
		return nil, err
	}
	s.pg = pg
	atStop(pg.stop)
	return pg, nil
}

func (p *pgServer) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.adminDSN)
	if err != nil {
		return fmt.Errorf("PostgreSQL: %s", shortErr(err))
	}
	return conn.Close(ctx)
}

// startCluster initdbs a cluster in the work directory and starts it on a
// free loopback port, pinned beside the fake (-fakecpu): like the fake, it
// is a server the agent waits on, so it weighs on the load generator's core
// rather than taking Caddy's. PostgreSQL refuses to run as root, so as root
// the cluster belongs to the postgres user.
func startCluster(s *servers) (*pgServer, error) {
	o := s.opts
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.work, "postgres")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	pg := &pgServer{data: filepath.Join(dir, "data"), bin: o.postgresBin,
		adminDSN: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, errors.New("running as root and there is no postgres user to run the throwaway PostgreSQL cluster as; pass -postgres-url")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
		// The postgres user must reach its directory inside the work dir.
		if err := os.Chmod(s.work, 0o711); err != nil {
			return nil, err
		}
		pg.runAs = []string{"runuser", "-u", "postgres", "--"}
	}
	fmt.Printf("PostgreSQL: a throwaway cluster in %s on 127.0.0.1:%d (%s)\n", pg.data, port, pg.bin)
	if out, err := pg.command("initdb", "-D", pg.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v: %s", err, briefBody(out))
	}
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -k %s -c max_connections=200", port, dir)
	argv := []string{filepath.Join(pg.bin, "pg_ctl"), "-D", pg.data, "-l", filepath.Join(dir, "server.log"), "-o", opts, "-w", "-t", "60", "start"}
	if o.fakeCPUs != "" {
		argv = append([]string{"taskset", "-c", o.fakeCPUs}, argv...)
	}
	cmd := pg.commandPath(argv[0], argv[1:]...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pg_ctl start: %v: %s (see %s)", err, briefBody(out), filepath.Join(dir, "server.log"))
	}
	return pg, pg.ping()
}

// command runs one of the cluster's binaries, as the postgres user if need be.
func (p *pgServer) command(name string, args ...string) *exec.Cmd {
	return p.commandPath(filepath.Join(p.bin, name), args...)
}

func (p *pgServer) commandPath(path string, args ...string) *exec.Cmd {
	argv := append(append(append([]string{}, p.runAs...), path), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/" // the postgres user may not be able to enter ours
	return cmd
}

// newDatabase creates an empty database and returns its DSN.
func (p *pgServer) newDatabase(name string) (string, error) {
	return p.createDatabase(name, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// newDatabaseFrom creates a database as a copy of the one at templateDSN
// (which nobody may be connected to).
func (p *pgServer) newDatabaseFrom(name, templateDSN string) (string, error) {
	cfg, err := pgx.ParseConfig(templateDSN)
	if err != nil {
		return "", err
	}
	return p.createDatabase(name, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{cfg.Database}.Sanitize()))
}

func (p *pgServer) createDatabase(name, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.adminDSN)
	if err != nil {
		return "", fmt.Errorf("PostgreSQL: %s", shortErr(err))
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return "", fmt.Errorf("PostgreSQL: creating database %s: %s", name, shortErr(err))
	}
	p.dbs = append(p.dbs, name)
	return withDatabase(p.adminDSN, name)
}

// withDatabase is dsn naming another database.
func withDatabase(dsn, db string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", errors.New("-postgres-url does not parse as a URL")
		}
		u.Path = "/" + db
		return u.String(), nil
	}
	return dsn + " dbname=" + db, nil
}

// stop drops the databases the harness made on a server it was given, or
// stops its own cluster (whose directory goes with the work directory).
func (p *pgServer) stop() {
	if p.data != "" {
		if out, err := p.command("pg_ctl", "-D", p.data, "-m", "fast", "-w", "stop").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "pg_ctl stop: %v: %s\n", err, briefBody(out))
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.adminDSN)
	if err != nil {
		fmt.Fprintf(os.Stderr, "PostgreSQL: could not drop the bench databases %v: %s\n", p.dbs, shortErr(err))
		return
	}
	defer conn.Close(ctx)
	for _, db := range p.dbs {
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)"); err != nil {
			fmt.Fprintf(os.Stderr, "PostgreSQL: dropping %s: %s\n", db, shortErr(err))
		}
	}
}

// cpu is the CPU time the throwaway cluster has used so far: the
// postmaster with its reaped children (cutime, cstime) plus its live
// ones (the backends and the background processes). Zero for a server
// the harness did not start, whose CPU it cannot see.
func (p *pgServer) cpu() time.Duration {
	if p == nil || p.data == "" {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(p.data, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0
	}
	total := cpuTime(pm) + reapedCPU(pm)
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == pm {
			continue
		}
		if parentPID(pid) == pm {
			total += cpuTime(pid)
		}
	}
	return total
}

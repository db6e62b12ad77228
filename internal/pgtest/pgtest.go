// Package pgtest gives tests a PostgreSQL database: a fresh database on the
// shared test server (CHATKIT_TEST_POSTGRES_URL), or a throwaway cluster of
// the test's own that it may stop, stall and restart. Without a server (or
// without the server programs) a test is skipped, unless
// CHATKIT_REQUIRE_POSTGRES=1 makes that a failure.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
)

// required reports whether a missing PostgreSQL fails the test.
func required() bool { return os.Getenv("CHATKIT_REQUIRE_POSTGRES") == "1" }

// Server is the shared test server's DSN (a postgres:// URL), or a skip.
func Server(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("CHATKIT_TEST_POSTGRES_URL")
	if dsn == "" {
		if required() {
			t.Fatal("CHATKIT_REQUIRE_POSTGRES=1 but CHATKIT_TEST_POSTGRES_URL is not set")
		}
		t.Skip("CHATKIT_TEST_POSTGRES_URL is not set")
	}
	return dsn
}

// FreshDatabase creates a database of the test's own on the shared server,
// dropped at cleanup, and returns its DSN with password as the password
// (none when ""; the shared server trusts loopback and never asks).
func FreshDatabase(t testing.TB, password string) string {
	t.Helper()
	server := Server(t)
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("CHATKIT_TEST_POSTGRES_URL must be a postgres:// URL (%v)", err)
	}
	name := "chatkit_test_" + randomHex(6)
	exec := func(sql string) error {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, server)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("CREATE DATABASE: %v", err)
	}
	t.Cleanup(func() {
		if err := exec("DROP DATABASE " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("dropping %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	if password != "" {
		u.User = url.UserPassword(u.User.Username(), password)
	}
	return u.String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// FreePort is a loopback port nothing listens on (at the time of asking).
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Cluster is a throwaway PostgreSQL server in a temporary directory, on a
// free loopback port, asking for passwords (scram-sha-256): its superuser
// postgres has the password given to NewCluster. It is stopped and removed
// at cleanup.
type Cluster struct {
	t    testing.TB
	bin  string
	dir  string
	data string
	as   []string // runuser as postgres, when the test runs as root
	// Port is the server's TCP port on 127.0.0.1.
	Port    int
	stalled []int
}

// binDir finds the server programs: CHATKIT_TEST_POSTGRES_BIN, else the
// newest /usr/lib/postgresql/*/bin.
func binDir() string {
	if bin := os.Getenv("CHATKIT_TEST_POSTGRES_BIN"); bin != "" {
		return bin
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return va - vb
	})
	if len(dirs) == 0 {
		return ""
	}
	return dirs[len(dirs)-1]
}

// NewCluster creates the cluster (initdb) without starting it.
func NewCluster(t testing.TB, password string) *Cluster {
	t.Helper()
	bin := binDir()
	if _, err := os.Stat(filepath.Join(bin, "initdb")); bin == "" || err != nil {
		if required() {
			t.Fatal("CHATKIT_REQUIRE_POSTGRES=1 but there are no PostgreSQL server programs (set CHATKIT_TEST_POSTGRES_BIN)")
		}
		t.Skip("no PostgreSQL server programs under /usr/lib/postgresql/*/bin")
	}
	// Not t.TempDir: as root that is in a 0700 directory the postgres user
	// cannot enter.
	dir, err := os.MkdirTemp("", "chatkit-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, bin: bin, dir: dir, data: filepath.Join(dir, "data"), Port: FreePort(t)}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 { // PostgreSQL refuses to run as root
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, and no postgres user to run the server as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		c.as = []string{"runuser", "-u", "postgres", "--"}
	}
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.run("initdb", "-D", c.data, "-U", "postgres", "--pwfile", pwfile, "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Resume() // a stopped process would not stop
		_ = c.run("pg_ctl", "-D", c.data, "stop", "-m", "immediate")
	})
	return c
}

// StartCluster creates and starts a cluster.
func StartCluster(t testing.TB, password string) *Cluster {
	t.Helper()
	c := NewCluster(t, password)
	c.Start()
	return c
}

func (c *Cluster) run(name string, args ...string) error {
	argv := append(append(slices.Clone(c.as), filepath.Join(c.bin, name)), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = c.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", name, err, out)
	}
	return nil
}

// Start starts the server and waits until it accepts connections.
func (c *Cluster) Start() {
	c.t.Helper()
	if err := c.run("pg_ctl", "-D", c.data, "-l", filepath.Join(c.dir, "log"), "-w", "-t", "60", "-o",
		fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories=%s -c fsync=off", c.Port, c.dir), "start"); err != nil {
		c.t.Fatal(err)
	}
}

// Stop shuts the server down (fast: sessions are ended) and waits for it.
func (c *Cluster) Stop() {
	c.t.Helper()
	if err := c.run("pg_ctl", "-D", c.data, "-w", "-t", "60", "stop", "-m", "fast"); err != nil {
		c.t.Fatal(err)
	}
}

// Stall stops every process of the server with SIGSTOP: connections are
// still accepted by the kernel, and nothing ever answers. The postmaster
// is stopped first, so that it forks no more, then the children it has; a
// child that exits meanwhile (a connection that just closed) answers
// nothing either.
func (c *Cluster) Stall() {
	c.t.Helper()
	if c.stalled != nil {
		return
	}
	postmaster := c.postmaster()
	if err := syscall.Kill(postmaster, syscall.SIGSTOP); err != nil {
		c.t.Fatalf("stalling the postmaster %d: %v", postmaster, err)
	}
	c.stalled = []int{postmaster} // from here on, the cleanup resumes what it holds
	for _, pid := range c.children(postmaster) {
		switch err := syscall.Kill(pid, syscall.SIGSTOP); {
		case err == nil:
			c.stalled = append(c.stalled, pid)
		case !errors.Is(err, syscall.ESRCH):
			c.t.Fatalf("stalling process %d: %v", pid, err)
		}
	}
}

// Resume lets a stalled server go on (SIGCONT).
func (c *Cluster) Resume() {
	for _, pid := range slices.Backward(c.stalled) {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	c.stalled = nil
}

// postmaster is the server's main process.
func (c *Cluster) postmaster() int {
	c.t.Helper()
	raw, err := os.ReadFile(filepath.Join(c.data, "postmaster.pid"))
	if err != nil {
		c.t.Fatalf("the server is not running: %v", err)
	}
	first, _, _ := strings.Cut(string(raw), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		c.t.Fatalf("postmaster.pid: %q", first)
	}
	return pid
}

// children are the processes whose parent is pid.
func (c *Cluster) children(parent int) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces, never ')'.
		_, rest, ok := strings.Cut(string(stat), ") ")
		if f := strings.Fields(rest); ok && len(f) > 1 && f[1] == strconv.Itoa(parent) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// DSN is a postgres:// URL to the cluster's database postgres as user
// postgres with the given password (sslmode disabled: the cluster has no
// certificate).
func (c *Cluster) DSN(password string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", password),
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port)), Path: "/postgres", RawQuery: "sslmode=disable"}
	return u.String()
}

// Exec runs SQL on the running cluster as postgres with the given password.
func (c *Cluster) Exec(password, sql string) {
	c.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.DSN(password))
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		c.t.Fatal(err)
	}
}

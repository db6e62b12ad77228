package chatkit

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
	"github.com/caddy-chatkit/caddy-chatkit/internal/testcaddy"
)

// agentBinarySite runs the built Caddy (./cmd/caddy) as its own process on
// port 9082, with the agent's database at db.
type agentBinarySite struct {
	t      *testing.T
	config string
	dir    string
	cmd    *exec.Cmd
}

const agentBinaryURL = "http://localhost:9082"

func newAgentBinarySite(t *testing.T, fake *fakeopenai.Server, db string) *agentBinarySite {
	t.Helper()
	dir := t.TempDir()
	config := fmt.Sprintf(`{
	admin off
	http_port 9082
	storage file_system %s
}
http://localhost:9082 {
	chatkit {
		api_base %s
		api_key %s
		user {http.request.header.X-Test-User}
		rate_limit off
		agent {
			model gpt-5-mini
			store sqlite %s
		}
	}
	respond "the next handler" 200
}
`, filepath.Join(dir, "storage"), fake.URL(), fakeopenai.DefaultAPIKey, db)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return &agentBinarySite{t: t, config: path, dir: dir}
}

// start runs the binary and waits until it answers.
func (s *agentBinarySite) start() {
	s.t.Helper()
	s.cmd = exec.Command(testcaddy.Binary(s.t), "run", "--config", s.config, "--adapter", "caddyfile")
	s.cmd.Env = append(os.Environ(), "HOME="+s.dir, "XDG_DATA_HOME="+s.dir, "XDG_CONFIG_HOME="+s.dir)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	cmd := s.cmd
	s.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(agentBinaryURL + "/")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("Caddy did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the process the way a service manager does (SIGTERM: Caddy
// shuts down gracefully) and waits for it.
func (s *agentBinarySite) stop() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(os.Interrupt); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		s.t.Fatal("Caddy did not stop within 15s")
	}
}

func (s *agentBinarySite) post(user, body string) reply {
	s.t.Helper()
	req, err := http.NewRequest("POST", agentBinaryURL+agentPath, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Test-User", user)
	resp, err := plainClient(s.t).Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// The database is the truth: a thread written by one Caddy process is
// there, whole, for the next one on the same file, and still only its
// owner's.
func TestAgentThreadsSurviveABinaryRestart(t *testing.T) {
	fake := newFake(t)
	db := filepath.Join(t.TempDir(), "threads.db")
	site := newAgentBinarySite(t, fake, db)
	site.start()

	r := site.post("alice", createBody("remember the lighthouse"))
	if r.status != http.StatusOK {
		t.Fatalf("threads.create: %d %s", r.status, r.body)
	}
	created := agentStream{status: r.status, header: r.header, body: r.body, frames: agentParseStream(t, r.body)}
	th := created.threadID(t)
	if len(created.doneItems(t)) != 2 {
		t.Fatalf("want the user item and the answer done, got %q", created.types())
	}
	site.stop()

	site.start()
	r = site.post("alice", threadBody("threads.get_by_id", th))
	if r.status != http.StatusOK {
		t.Fatalf("threads.get_by_id after restart: %d %s", r.status, r.body)
	}
	for _, want := range []string{`"id":"` + th + `"`, "remember the lighthouse", "You said: remember the lighthouse"} {
		if !strings.Contains(r.body, want) {
			t.Errorf("after restart the thread lacks %q: %s", want, r.body)
		}
	}
	if r = site.post("alice", `{"type":"threads.list","params":{}}`); !strings.Contains(r.body, th) {
		t.Errorf("threads.list after restart lacks %s: %s", th, r.body)
	}
	if r = site.post("bob", threadBody("threads.get_by_id", th)); r.status != http.StatusNotFound {
		t.Errorf("another user reads the thread after restart: %d %s", r.status, r.body)
	}
	// The next turn runs on the restarted process with the saved history.
	r = site.post("alice", addBody(th, "and again"))
	if r.status != http.StatusOK || !strings.Contains(r.body, "You said: and again") {
		t.Fatalf("threads.add_user_message after restart: %d %s", r.status, r.body)
	}
	if in := fake.LastResponses(); in == nil || !strings.Contains(fmt.Sprint(in.Raw), "remember the lighthouse") {
		t.Errorf("the turn after restart did not send the saved history to the model")
	}
}

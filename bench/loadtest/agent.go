package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The agent mode's scenarios (-agent-streams, -agent-reads): Caddy is the
// ChatKit server, answering POST /api/chatkit, its threads in SQLite, the
// model the fake's streaming /v1/responses.

const (
	agentPath   = "/api/chatkit"
	agentModel  = "gpt-5-mini"
	benchUserHd = "X-Bench-User"
)

// agentCaddyfile is the bench site for the agent. The user id comes from
// the X-Bench-User header (user:<value>), so a virtual client can be any
// user without cookies. The streams run with rate limiting off, so they
// measure the streaming, not the limiter. The reads keep the default
// limits, and with them the agent's per-client read bucket: the client
// address comes from X-Forwarded-For (trusted_proxies), as behind a CDN.
//
// agentLines are more lines for the agent block (the soak's reloads vary
// one).
func (s *servers) agentCaddyfile(store *benchStore, limits bool, agentLines ...string) string {
	rateLimit := "\t\trate_limit off\n"
	if limits {
		rateLimit = ""
	}
	return fmt.Sprintf(`%s

http://127.0.0.1:%d {
	chatkit {
		api_key %s
		api_base %s/v1
		user {http.request.header.%s}
%s		agent {
			model %s
			%s
%s		}
	}

	respond "bench site" 200
}
`, s.globalOptions(), s.sitePort, apiKey, s.fakeURL(), benchUserHd, rateLimit, agentModel, store.directive(), indentLines(agentLines, "\t\t\t"))
}

// streamProxyCaddyfile is Caddy's own reverse_proxy in front of the fake's
// streaming /v1/responses: what Caddy costs per stream doing the least a
// streaming handler can (copy each event through, flushing it at once, as
// the proxy does for text/event-stream), for comparison with the agent.
func (s *servers) streamProxyCaddyfile() string {
	return fmt.Sprintf(`%s

http://127.0.0.1:%d {
	handle /v1/responses {
		reverse_proxy %s {
			flush_interval -1
		}
	}
	handle {
		respond "bench site" 200
	}
}
`, s.globalOptions(), s.sitePort, s.fakeURL())
}

// startAgentCaddy runs Caddy with the agent on a store.
func (s *servers) startAgentCaddy(store *benchStore, limits bool) (*proc, error) {
	return s.startCaddy(s.agentCaddyfile(store, limits))
}

// indentLines is each line on its own line after indent.
func indentLines(lines []string, indent string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(indent + l + "\n")
	}
	return b.String()
}

// agentRequest builds one ChatKit request for user.
func agentRequest(url, user, typ string, params any) *http.Request {
	body, err := json.Marshal(map[string]any{"type": typ, "params": params})
	if err != nil {
		panic(err) // our own maps only
	}
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header["Content-Type"] = []string{"application/json"}
	req.Header[benchUserHd] = []string{user}
	return req
}

// userInput is a threads.create / add_user_message input with text.
func userInput(text string) map[string]any {
	return map[string]any{
		"content":           []any{map[string]any{"type": "input_text", "text": text}},
		"attachments":       []any{},
		"inference_options": map[string]any{},
	}
}

// freshDB is a database path in the work directory that does not exist
// yet (with its -wal and -shm companions).
func (s *servers) freshDB(name string) string {
	p := filepath.Join(s.work, fmt.Sprintf("%s-%03d.db", name, s.next()))
	for _, suffix := range []string{"", "-wal", "-shm"} {
		_ = os.Remove(p + suffix)
	}
	return p
}

// jsonHas reports a 200 answer whose body holds every marker.
func jsonHas(markers ...string) func(int, []byte) bool {
	bs := make([][]byte, len(markers))
	for i, m := range markers {
		bs[i] = []byte(m)
	}
	return func(status int, body []byte) bool {
		if status != http.StatusOK {
			return false
		}
		for _, m := range bs {
			if !bytes.Contains(body, m) {
				return false
			}
		}
		return true
	}
}

// briefBody cuts a body for an error message.
func briefBody(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// fetchProfile saves one of Caddy's admin pprof answers in the work
// directory.
func fetchProfile(s *servers, path, file string) {
	b, status, err := httpGet(s.adminURL() + path)
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("status %d", status)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(s.work, file), b, 0o644)
	}
	if err != nil {
		fmt.Printf("profile %s: %v\n", path, err)
	}
}

// printPprof prints `go tool pprof args… <caddy binary> profile`.
func printPprof(s *servers, title string, args ...string) {
	args = append(args[:len(args)-1:len(args)-1], s.opts.caddyBin, args[len(args)-1])
	fmt.Printf("\n---- %s: go tool pprof %s\n", title, strings.Join(args, " "))
	cmd := exec.Command("go", append([]string{"tool", "pprof"}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Printf("(go tool pprof failed: %v)\n", err)
	}
}

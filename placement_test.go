package chatkit

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/http/fcgi"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// fastCGIBackend is a real FastCGI server (Go's net/http/fcgi) on a
// loopback TCP port, standing in for php-fpm: it records what reached it.
type fastCGIBackend struct {
	addr string
	mu   sync.Mutex
	seen []fastCGIRequest
}

type fastCGIRequest struct {
	requestURI     string // REQUEST_URI, as PHP reads it
	scriptFilename string
}

const fastCGIAnswer = "answered by php"

func newFastCGIBackend(t *testing.T) *fastCGIBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &fastCGIBackend{addr: ln.Addr().String()}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = fcgi.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.mu.Lock()
			b.seen = append(b.seen, fastCGIRequest{requestURI: r.URL.RequestURI(), scriptFilename: fcgi.ProcessEnv(r)["SCRIPT_FILENAME"]})
			b.mu.Unlock()
			fmt.Fprint(w, fastCGIAnswer)
		}))
	}()
	t.Cleanup(func() {
		ln.Close()
		<-served
	})
	return b
}

func (b *fastCGIBackend) requests() []fastCGIRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]fastCGIRequest(nil), b.seen...)
}

// wordPressRoot is a document root with WordPress's front controller and
// one static file.
func wordPressRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range map[string]string{
		"index.php":  "<?php require 'wp-blog-header.php';",
		"readme.txt": "a static file",
	} {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// wordPressCaddyfile is the common WordPress site: its top-level try_files
// rewrites every path that is not a file to /index.php before chatkit runs.
func wordPressCaddyfile(root string, fake *fakeopenai.Server, backend *fastCGIBackend, siteExtra, chatkitExtra string) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
}
http://localhost:9080 {
	root * %s
	%s
	chatkit {
		workflow wf_test
		api_base %s
		api_key %s
		rate_limit off
		%s
	}
	try_files {path} {path}/ /index.php?{query}
	php_fastcgi %s
	file_server
}
`, root, siteExtra, fake.URL(), fakeopenai.DefaultAPIKey, chatkitExtra, backend.addr)
}

// notPHP fails the test when r is the FastCGI backend's answer.
func notPHP(t *testing.T, r reply, path string) reply {
	t.Helper()
	if r.body == fastCGIAnswer {
		t.Fatalf("%s reached PHP instead of the module", path)
	}
	return r
}

func TestWordPressTryFilesKeepsModulePaths(t *testing.T) {
	fake, backend := newFake(t), newFastCGIBackend(t)
	newTester(t, wordPressCaddyfile(wordPressRoot(t), fake, backend, "", ""))
	browser := client(t)

	secret := expectSecret(t, notPHP(t, do(t, browser, "POST", "/api/chatkit/start", ""), "start"), fake)
	user := lastUser(t, fake)
	r := do(t, browser, "POST", "/api/chatkit/refresh", `{"currentClientSecret":"`+secret+`"}`, "Content-Type", "application/json")
	expectSecret(t, notPHP(t, r, "refresh"), fake)
	if fake.CreateCount() != 2 || lastUser(t, fake) != user {
		t.Fatalf("fake saw %d creates, last for %q; want 2 for %q", fake.CreateCount(), lastUser(t, fake), user)
	}
	r = notPHP(t, do(t, browser, "GET", "/api/health", ""), "health")
	if r.status != http.StatusOK || r.json["status"] != "ok" {
		t.Fatalf("health = %d %s", r.status, r.body)
	}
	if seen := backend.requests(); len(seen) != 0 {
		t.Fatalf("the module's own paths reached PHP: %+v", seen)
	}

	// Everything else is WordPress's: permalinks go to index.php through
	// FastCGI, files to the file server.
	r = do(t, browser, "GET", "/2024/05/hello-world/?utm=x", "")
	if r.status != http.StatusOK || r.body != fastCGIAnswer {
		t.Fatalf("permalink = %d %q, want PHP's answer", r.status, r.body)
	}
	seen := backend.requests()
	if len(seen) != 1 || seen[0].requestURI != "/2024/05/hello-world/?utm=x" || !strings.HasSuffix(seen[0].scriptFilename, "index.php") {
		t.Fatalf("PHP saw %+v, want the permalink run by index.php", seen)
	}
	// A path near the module's but not its own is WordPress's too.
	if r := do(t, browser, "POST", "/api/chatkit/start/extra", ""); r.body != fastCGIAnswer {
		t.Fatalf("/api/chatkit/start/extra = %d %q, want PHP's answer", r.status, r.body)
	}
	if r := do(t, browser, "GET", "/readme.txt", ""); r.status != http.StatusOK || r.body != "a static file" {
		t.Fatalf("static file = %d %q", r.status, r.body)
	}
	if n := fake.CreateCount(); n != 2 {
		t.Fatalf("other paths reached OpenAI: %d creates", n)
	}
}

func TestWordPressTryFilesWithBasicAuthUser(t *testing.T) {
	fake, backend := newFake(t), newFastCGIBackend(t)
	// bcrypt at the minimum cost (4), so the test stays fast; the
	// passwords are alice-secret and bob-secret.
	auth := `basic_auth {
		alice $2a$04$BXCijSRRakj1SpM0DBhVuO9JDWtsCJeIWXXH7N3PP8nlhDVvpQoYy
		bob $2a$04$B8cuLnHxO3ZVjmdjuHCaOur44L1A6yBSGrNI07dAdZ8eNUmTVmYDy
	}`
	newTester(t, wordPressCaddyfile(wordPressRoot(t), fake, backend, auth, "user {http.auth.user.id}"))
	basic := func(user, password string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
	}
	c := plainClient(t)

	if r := do(t, c, "POST", "/api/chatkit/start", ""); r.status != http.StatusUnauthorized || fake.CreateCount() != 0 {
		t.Fatalf("start without credentials = %d, %d creates", r.status, fake.CreateCount())
	}
	for _, who := range []string{"alice", "bob"} {
		r := do(t, c, "POST", "/api/chatkit/start", "", "Authorization", basic(who, who+"-secret"))
		expectSecret(t, notPHP(t, r, "start"), fake)
		if got := lastUser(t, fake); got != "user:"+who {
			t.Fatalf("start as %s minted for %q", who, got)
		}
	}
	if r := do(t, c, "POST", "/api/chatkit/start", "", "Authorization", basic("alice", "bob-secret")); r.status != http.StatusUnauthorized {
		t.Fatalf("start with a wrong password = %d", r.status)
	}
	if r := do(t, c, "GET", "/members/", "", "Authorization", basic("alice", "alice-secret")); r.body != fastCGIAnswer {
		t.Fatalf("a signed-in page = %d %q, want PHP's answer", r.status, r.body)
	}
	if seen := backend.requests(); len(seen) != 1 || seen[0].requestURI != "/members/" {
		t.Fatalf("PHP saw %+v, want only /members/", seen)
	}
}

package e2e

// Two Caddy processes (the built ./cmd/caddy binary), one PostgreSQL
// database and one Redis: what a site behind a load balancer runs. No
// browser: the two processes are driven over HTTP, the way a balancer
// alternates a visitor's requests between them. The instances listen on
// the same port on two loopback addresses, so their site blocks (and so
// their default rate-limit zones) are the same, as with one Caddyfile on
// two machines.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	pngenc "image/png"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
	"github.com/caddy-chatkit/caddy-chatkit/internal/pgtest"
	"github.com/caddy-chatkit/caddy-chatkit/internal/testcaddy"
)

const (
	// instanceAddrs are the two instances' loopback addresses.
	instanceAddr1, instanceAddr2 = "127.0.0.2", "127.0.0.3"
	// instanceCookieSecret is the cookie_secret both instances share, so
	// each accepts the anonymous id the other signed.
	instanceCookieSecret = "e2e-instances-cookie-secret-0123456789"
	agentEndpoint        = "/api/chatkit"
	startWait            = 30 * time.Second
)

// instancesRedis is the test script's Redis (CHATKIT_TEST_REDIS_URL).
func instancesRedis(t *testing.T) (string, *redis.Client) {
	t.Helper()
	u := os.Getenv("CHATKIT_TEST_REDIS_URL")
	if u == "" {
		if os.Getenv("CHATKIT_REQUIRE_REDIS") != "" {
			t.Fatal("CHATKIT_REQUIRE_REDIS is set but CHATKIT_TEST_REDIS_URL is not (run scripts/test.sh)")
		}
		t.Skip("no CHATKIT_TEST_REDIS_URL; scripts/test.sh starts a Redis")
	}
	opts, err := redis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return u, c
}

// sharedStoreLine is the agent's `store` line both instances use: a fresh
// database on the test PostgreSQL server, dropped after the test (after
// the instances have stopped: its cleanup runs last).
func sharedStoreLine(t *testing.T) string {
	t.Helper()
	return storeLine(pgtest.FreshDatabase(t, ""))
}

func storeLine(dsn string) string { return "store postgres " + dsn }

// instancePair is two Caddy processes with one Caddyfile but for their
// addresses (and storage, logs and admin endpoint, which stay their own).
type instancePair struct {
	t       *testing.T
	port    int
	block   string // the chatkit directive, the same on both
	storage string // Caddy's storage directory, if the two share one
	inst    [2]*instance
}

type instance struct {
	addr   string
	admin  string
	dir    string
	config string
	cmd    *exec.Cmd
	exited chan struct{}
}

// startInstances starts two instances serving block (a chatkit directive)
// and returns them ready. Redis keys of the site's default zone are
// deleted after the test.
func startInstances(t *testing.T, rc *redis.Client, block string) *instancePair {
	t.Helper()
	return startInstancesStorage(t, rc, block, "")
}

// startInstancesStorage is startInstances with one Caddy storage directory
// for both when storage is not "".
func startInstancesStorage(t *testing.T, rc *redis.Client, block, storage string) *instancePair {
	t.Helper()
	p := &instancePair{t: t, port: sharedFreePort(t, instanceAddr1, instanceAddr2), block: block, storage: storage}
	for i, addr := range []string{instanceAddr1, instanceAddr2} {
		// The admin endpoint on 127.0.0.1, whose Host Caddy's admin accepts.
		in := &instance{addr: addr, admin: "127.0.0.1:" + strconv.Itoa(freePort(t)), dir: t.TempDir()}
		in.config = filepath.Join(in.dir, "Caddyfile")
		if err := os.WriteFile(in.config, []byte(p.caddyfile(in, "v1")), 0o600); err != nil {
			t.Fatal(err)
		}
		p.inst[i] = in
		p.start(i)
	}
	site := fmt.Sprintf("chatkit:site:http://:%d|*", p.port)
	t.Cleanup(func() { deleteKeys(t, rc, site) })
	t.Cleanup(func() {
		if t.Failed() {
			for i, in := range p.inst {
				b, _ := os.ReadFile(filepath.Join(in.dir, "caddy.log"))
				t.Logf("instance %d log (last lines):\n%s", i+1, lastLines(string(b), 30))
			}
		}
	})
	return p
}

// caddyfile is one instance's config; version is what the catch-all
// route answers, so a test can tell when a reload has taken effect.
func (p *instancePair) caddyfile(in *instance, version string) string {
	storage := p.storage
	if storage == "" {
		storage = filepath.Join(in.dir, "storage")
	}
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	grace_period 30s
	storage file_system %s
	log default {
		output file %s
		format json
	}
}

http://:%d {
	bind %s
	%s
	respond "instance %s" 200
}
`, in.admin, storage, filepath.Join(in.dir, "caddy.log"), p.port, in.addr, p.block, version)
}

func (p *instancePair) base(i int) string {
	return fmt.Sprintf("http://%s:%d", p.inst[i].addr, p.port)
}

// start runs instance i and waits until it answers.
func (p *instancePair) start(i int) {
	t := p.t
	t.Helper()
	in := p.inst[i]
	cmd := exec.Command(testcaddy.Binary(t), "run", "--config", in.config, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+in.dir, "XDG_DATA_HOME="+in.dir, "XDG_CONFIG_HOME="+in.dir)
	out, err := os.OpenFile(filepath.Join(in.dir, "stderr.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(exited)
	}()
	in.cmd, in.exited = cmd, exited
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(startWait)
	for {
		resp, err := http.Get(p.base(i) + "/")
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(in.dir, "stderr.log"))
			t.Fatalf("instance %d exited at start:\n%s", i+1, lastLines(string(b), 30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %d did not answer within %v: %v", i+1, startWait, err)
		}
		time.Sleep(pollEvery)
	}
}

// kill ends instance i at once, as a crash or a `kill -9` would.
func (p *instancePair) kill(i int) {
	in := p.inst[i]
	_ = in.cmd.Process.Kill()
	<-in.exited
}

// reload posts instance i's config, with the catch-all answering version,
// to its admin endpoint (what `caddy reload` does) and waits until it
// serves it.
func (p *instancePair) reload(i int, version string) {
	t := p.t
	t.Helper()
	in := p.inst[i]
	cfg := p.caddyfile(in, version)
	req, err := http.NewRequest("POST", "http://"+in.admin+"/load", strings.NewReader(cfg))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("reload of instance %d: %d %s", i+1, resp.StatusCode, body)
	}
	waitUntil(t, fmt.Sprintf("instance %d to serve %s", i+1, version), func() bool {
		resp, err := http.Get(p.base(i) + "/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b) == "instance "+version
	})
}

// sharedFreePort is a port free on every one of addrs.
func sharedFreePort(t *testing.T, addrs ...string) int {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", addrs[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		free := true
		for _, a := range addrs[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		ln.Close()
		if free {
			return port
		}
	}
	t.Fatal("no port free on all of", addrs)
	return 0
}

func deleteKeys(t *testing.T, rc *redis.Client, pattern string) {
	ctx := context.Background()
	iter := rc.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		rc.Del(ctx, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Logf("cleaning Redis keys %s: %v", pattern, err)
	}
}

// uniqueName is a random name for a zone of this test's own.
func uniqueName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// ---- the agent's protocol, over plain HTTP --------------------------------

// visitor is one browser: the anonymous cookie it was given, and a client
// key for the rate limit.
type visitor struct {
	cookie string // "name=value", "" before the first answer
	client string
}

// agentAnswer is one answer of the agent endpoint.
type agentAnswer struct {
	status int
	header http.Header
	body   string
	frames []sseFrame
}

type sseFrame struct {
	raw     string
	Type    string          `json:"type"`
	Thread  json.RawMessage `json:"thread"`
	Item    json.RawMessage `json:"item"`
	Message string          `json:"message"`
	Update  struct {
		Type  string `json:"type"`
		Delta string `json:"delta"`
	} `json:"update"`
}

func (v *visitor) request(t *testing.T, ctx context.Context, base, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "POST", base+agentEndpoint, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if v.cookie != "" {
		req.Header.Set("Cookie", v.cookie)
	}
	if v.client != "" {
		req.Header.Set("X-Client", v.client)
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	// A load balancer hands the browser's cookie to whichever instance
	// answers next: keep what any instance set.
	for _, c := range resp.Cookies() {
		if c.Name == "chatkit_uid" {
			v.cookie = c.Name + "=" + c.Value
		}
	}
	return resp
}

// post sends one request and reads the whole answer.
func (v *visitor) post(t *testing.T, base, body string) agentAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), shortWait)
	defer cancel()
	resp := v.request(t, ctx, base, body)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := agentAnswer{status: resp.StatusCode, header: resp.Header, body: string(b)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		for _, chunk := range strings.Split(strings.TrimSuffix(a.body, "\n\n"), "\n\n") {
			a.frames = append(a.frames, parseFrame(t, chunk))
		}
	}
	return a
}

func parseFrame(t *testing.T, chunk string) sseFrame {
	t.Helper()
	data, ok := strings.CutPrefix(chunk, "data: ")
	if !ok {
		t.Fatalf("not an SSE data frame: %q", chunk)
	}
	f := sseFrame{raw: data}
	if err := json.Unmarshal([]byte(data), &f); err != nil {
		t.Fatalf("frame %q: %v", data, err)
	}
	return f
}

// threadID is the id of the thread a stream created.
func (a agentAnswer) threadID(t *testing.T) string {
	t.Helper()
	for _, f := range a.frames {
		if f.Type == "thread.created" {
			var th struct{ ID string }
			if err := json.Unmarshal(f.Thread, &th); err != nil {
				t.Fatal(err)
			}
			return th.ID
		}
	}
	t.Fatalf("no thread.created in %d %s", a.status, a.body)
	return ""
}

// refusal is the message of a refused turn (a stream of one error event),
// "" for a turn that was answered.
func (a agentAnswer) refusal(t *testing.T) string {
	t.Helper()
	if a.status != http.StatusOK || len(a.frames) == 0 {
		t.Fatalf("not a stream: %d %s", a.status, a.body)
	}
	if len(a.frames) == 1 && a.frames[0].Type == "error" {
		if a.header.Get("Retry-After") == "" {
			t.Fatalf("a refusal without Retry-After: %s", a.body)
		}
		return a.frames[0].Message
	}
	for _, f := range a.frames {
		if f.Type == "error" {
			t.Fatalf("a turn that started ended with an error: %s", a.body)
		}
	}
	return ""
}

func (a agentAnswer) answered(t *testing.T) bool { t.Helper(); return a.refusal(t) == "" }

func createBody(text string) string {
	return `{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":` + strconv.Quote(text) + `}],"attachments":[],"inference_options":{}}}}`
}

func addBody(threadID, text string) string {
	return `{"type":"threads.add_user_message","params":{"thread_id":` + strconv.Quote(threadID) + `,"input":{"content":[{"type":"input_text","text":` + strconv.Quote(text) + `}],"attachments":[],"quoted_text":null,"inference_options":{}}}}`
}

func threadBody(typ, threadID string) string {
	return `{"type":` + strconv.Quote(typ) + `,"params":{"thread_id":` + strconv.Quote(threadID) + `}}`
}

// threadSummary is get_by_id's thread as "type=text | …".
func threadSummary(t *testing.T, a agentAnswer) string {
	t.Helper()
	if a.status != http.StatusOK {
		t.Fatalf("get_by_id: %d %s", a.status, a.body)
	}
	var th struct {
		Items struct {
			Data []struct {
				Type    string
				Content []struct{ Text string }
			}
		}
	}
	if err := json.Unmarshal([]byte(a.body), &th); err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, it := range th.Items.Data {
		var text strings.Builder
		for _, c := range it.Content {
			text.WriteString(c.Text)
		}
		parts = append(parts, strings.TrimSuffix(it.Type, "_message")+"="+text.String())
	}
	return strings.Join(parts, " | ")
}

// instancesBlock is the chatkit directive both instances run.
func instancesBlock(fake *fakeopenai.Server, limits, agentExtra string, t *testing.T) string {
	return instancesBlockStore(fake, limits, agentExtra, sharedStoreLine(t))
}

// instancesBlockStore is instancesBlock with the given store line.
func instancesBlockStore(fake *fakeopenai.Server, limits, agentExtra, store string) string {
	return fmt.Sprintf(`chatkit {
		api_base %s
		api_key %s
		cookie_secret %s
		%s
		agent {
			model gpt-5-mini
			%s
			%s
		}
	}`, fake.URL(), fakeopenai.DefaultAPIKey, instanceCookieSecret, limits, store, agentExtra)
}

// ---- the tests --------------------------------------------------------------

func TestInstancesShareThreadsAndVisitors(t *testing.T) {
	redisURL, rc := instancesRedis(t)
	fake := newFake(t)
	p := startInstances(t, rc, instancesBlock(fake, "rate_limit off {\n\t\t\tredis "+redisURL+"\n\t\t}", "", t))
	one, two := p.base(0), p.base(1)

	// A visitor starts a thread on one instance and goes on on the other:
	// the same anonymous id (the cookie the first signed), the same thread.
	alice := &visitor{}
	th := alice.post(t, one, createBody("first")).threadID(t)
	if alice.cookie == "" {
		t.Fatal("no anonymous cookie from the first instance")
	}
	minted := alice.cookie
	if !alice.post(t, two, addBody(th, "second")).answered(t) {
		t.Fatal("the other instance refused the thread's next turn")
	}
	if alice.cookie != minted {
		t.Fatal("the other instance replaced the visitor's cookie: it did not accept the id")
	}
	want := "user=first | assistant=You said: first | user=second | assistant=You said: second"
	for i, base := range []string{one, two} {
		if got := threadSummary(t, alice.post(t, base, threadBody("threads.get_by_id", th))); got != want {
			t.Fatalf("get_by_id on instance %d: %s, want %s", i+1, got, want)
		}
		list := alice.post(t, base, `{"type":"threads.list","params":{}}`)
		if list.status != http.StatusOK || !strings.Contains(list.body, `"id":"`+th+`"`) {
			t.Fatalf("threads.list on instance %d: %d %s", i+1, list.status, list.body)
		}
	}
	// The thread belongs to that visitor, on both: a new one (no cookie)
	// or a forged cookie gets a fresh id and does not see it.
	for i, base := range []string{one, two} {
		for _, other := range []*visitor{{}, {cookie: "chatkit_uid=" + strings.Repeat("A", 75)}} {
			r := other.post(t, base, threadBody("threads.get_by_id", th))
			if r.status != http.StatusNotFound {
				t.Fatalf("another visitor on instance %d: %d %s", i+1, r.status, r.body)
			}
		}
	}
	// And the other way round: a visitor the second instance met first is
	// the same visitor on the first.
	bob := &visitor{}
	bth := bob.post(t, two, createBody("hello")).threadID(t)
	if got := threadSummary(t, bob.post(t, one, threadBody("threads.get_by_id", bth))); got != "user=hello | assistant=You said: hello" {
		t.Fatalf("bob's thread on the first instance: %s", got)
	}
	// OpenAI sees one visitor as one safety_identifier, whichever instance
	// asked (both derive it from the same api_key): alice's two turns
	// carry the same one, bob's another.
	var sids []string
	for _, r := range fake.Requests() {
		if r.Responses != nil && r.Responses.SafetyIdentifier != nil {
			sids = append(sids, *r.Responses.SafetyIdentifier)
		}
	}
	if len(sids) != 3 || sids[0] == "" || sids[0] != sids[1] || sids[2] == sids[0] {
		t.Fatalf("safety identifiers %q: want alice's twice, then bob's", sids)
	}
}

// TestInstancesVisitorsWithoutCookieSecret: without cookie_secret each
// instance signs with the key in its Caddy storage. Instances sharing one
// storage share the key it creates (under the storage's lock); with a
// storage each, the other instance takes the visitor for a new one.
func TestInstancesVisitorsWithoutCookieSecret(t *testing.T) {
	redisURL, rc := instancesRedis(t)
	for _, tc := range []struct {
		name    string
		storage string
		same    bool
	}{
		{"shared storage", t.TempDir(), true},
		{"a storage each", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(t)
			block := strings.Replace(instancesBlock(fake, "rate_limit off {\n\t\t\tredis "+redisURL+"\n\t\t}", "", t),
				"cookie_secret "+instanceCookieSecret, "", 1)
			p := startInstancesStorage(t, rc, block, tc.storage)
			// Both instances make their key at once, on their first
			// visitors.
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Go(func() { (&visitor{}).post(t, p.base(i), `{"type":"threads.list","params":{}}`) })
			}
			wg.Wait()
			alice := &visitor{}
			th := alice.post(t, p.base(0), createBody("hi")).threadID(t)
			minted := alice.cookie
			r := alice.post(t, p.base(1), threadBody("threads.get_by_id", th))
			if tc.same && (r.status != http.StatusOK || alice.cookie != minted) {
				t.Fatalf("with one storage the other instance did not know the visitor: %d %s", r.status, r.body)
			}
			if !tc.same && (r.status != http.StatusNotFound || alice.cookie == minted) {
				t.Fatalf("with a storage each the other instance accepted the cookie: %d %s", r.status, r.body)
			}
		})
	}
}

func TestInstancesShareAttachments(t *testing.T) {
	redisURL, rc := instancesRedis(t)
	fake := newFake(t)
	p := startInstances(t, rc, instancesBlock(fake, "rate_limit off {\n\t\t\tredis "+redisURL+"\n\t\t}", "attachments on", t))
	one, two := p.base(0), p.base(1)
	var png bytes.Buffer
	img := image.NewRGBA(image.Rect(0, 0, 2, 2))
	img.Set(1, 1, color.RGBA{R: 255, A: 255})
	if err := pngenc.Encode(&png, img); err != nil {
		t.Fatal(err)
	}

	// Created on one instance, uploaded through the other (the links are
	// signed with a key both derive from the api_key), previewed on the
	// first, sent with a message on the second.
	alice := &visitor{}
	created := alice.post(t, one, `{"type":"attachments.create","params":{"name":"dot.png","size":`+strconv.Itoa(png.Len())+`,"mime_type":"image/png"}}`)
	var att struct {
		ID         string `json:"id"`
		UploadURL  string `json:"upload_url"`
		PreviewURL string `json:"preview_url"`
	}
	if created.status != http.StatusOK || json.Unmarshal([]byte(created.body), &att) != nil || att.UploadURL == "" {
		t.Fatalf("attachments.create: %d %s", created.status, created.body)
	}
	onInstance := func(link, base string) string {
		t.Helper()
		for _, b := range []string{one, two} {
			if rest, ok := strings.CutPrefix(link, b); ok {
				return base + rest
			}
		}
		t.Fatalf("link %q is on neither instance", link)
		return ""
	}
	req, err := http.NewRequest("PUT", onInstance(att.UploadURL, two), bytes.NewReader(png.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "image/png")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload through the other instance: %d %s", resp.StatusCode, body)
	}
	resp, err = http.Get(onInstance(att.PreviewURL, one))
	if err != nil {
		t.Fatal(err)
	}
	preview, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(preview, png.Bytes()) {
		t.Fatalf("preview on the first instance: %d, %d bytes (want the %d uploaded)", resp.StatusCode, len(preview), png.Len())
	}
	withFile := `{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"look"}],"attachments":["` + att.ID + `"],"inference_options":{}}}}`
	if !alice.post(t, two, withFile).answered(t) {
		t.Fatal("a turn with the attachment refused on the other instance")
	}
	sent := false
	if last := fake.LastResponses(); last != nil {
		for _, in := range last.Input {
			for _, c := range in.Content {
				sent = sent || (c.Type == "input_image" && strings.HasPrefix(c.ImageURL, "data:image/png;base64,"))
			}
		}
	}
	if !sent {
		t.Fatal("the model did not get the image uploaded through the other instance")
	}
}

func TestInstancesShareRateLimitAndBudget(t *testing.T) {
	redisURL, rc := instancesRedis(t)
	fake := newFake(t)
	zone := uniqueName("e2e-instances-")
	t.Cleanup(func() { deleteKeys(t, rc, "chatkit:zone:"+zone+":*") })
	const burst, budget = 4, 6
	limits := fmt.Sprintf("rate_limit %d 1m {\n\t\t\tzone %s\n\t\t\tkey {http.request.header.X-Client}\n\t\t\tredis %s\n\t\t\ton_redis_error deny\n\t\t}\n\t\tbudget %d 1h",
		burst, zone, redisURL, budget)
	p := startInstances(t, rc, instancesBlock(fake, limits, "", t))

	// One client, 2×burst turns at once, half on each instance: exactly
	// burst are answered.
	results := make([]agentAnswer, 2*burst)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			results[i] = (&visitor{client: "one-client"}).post(t, p.base(i%2), createBody("q"))
		})
	}
	wg.Wait()
	answered, refusedRate := 0, 0
	for _, r := range results {
		switch msg := r.refusal(t); {
		case msg == "":
			answered++
		case strings.HasPrefix(msg, "You are sending messages faster than this site allows."):
			refusedRate++
		default:
			t.Fatalf("unexpected refusal: %s", msg)
		}
	}
	if answered != burst || refusedRate != burst {
		t.Fatalf("%d answered, %d rate-limited; want %d and %d", answered, refusedRate, burst, burst)
	}

	// The budget (6 model runs an hour) has 2 left; 6 new clients at once,
	// split across the instances: exactly 2 are answered.
	results = make([]agentAnswer, budget)
	for i := range results {
		wg.Go(func() {
			results[i] = (&visitor{client: "client-" + strconv.Itoa(i)}).post(t, p.base(i%2), createBody("q"))
		})
	}
	wg.Wait()
	answered = 0
	for _, r := range results {
		switch msg := r.refusal(t); {
		case msg == "":
			answered++
		case !strings.HasPrefix(msg, "The assistant has answered as many messages as this site allows for now."):
			t.Fatalf("unexpected refusal: %s", msg)
		}
	}
	if answered != budget-burst {
		t.Fatalf("%d answered past the rate limit, want the budget's last %d", answered, budget-burst)
	}
	if got := fake.ResponsesCount(); got != budget {
		t.Fatalf("the model ran %d times, want %d (the budget)", got, budget)
	}
}

func TestInstancesShareTokenBudgets(t *testing.T) {
	redisURL, rc := instancesRedis(t)
	for _, tc := range []struct{ name, limits string }{
		{"rate_limit", "rate_limit 100 1m {\n\t\t\tzone ZONE\n\t\t\tredis " + redisURL + "\n\t\t}"},
		{"rate_limit_off", "rate_limit off {\n\t\t\tredis " + redisURL + "\n\t\t\ton_redis_error deny\n\t\t}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(t)
			zone := uniqueName("e2e-tokens-")
			t.Cleanup(func() { deleteKeys(t, rc, "chatkit:zone:"+zone+":*") })
			// Each turn costs 30 tokens; a visitor may spend 50 an hour,
			// the site 100.
			fake.ScriptResponse(fakeopenai.ResponseScript{Usage: &fakeopenai.Usage{InputTokens: 20, OutputTokens: 10}, Times: 100})
			p := startInstances(t, rc, instancesBlock(fake, strings.ReplaceAll(tc.limits, "ZONE", zone),
				"token_budget user 50 1h\n\t\t\ttoken_budget site 100 1h", t))
			one, two := p.base(0), p.base(1)

			// Alice: 0 then 30 spent, both under 50: two turns, one on
			// each instance; at 60 neither starts a third.
			alice := &visitor{}
			th := alice.post(t, one, createBody("a1")).threadID(t)
			if !alice.post(t, two, addBody(th, "a2")).answered(t) {
				t.Fatal("alice's second turn (30 of 50 spent) refused on the other instance")
			}
			for i, base := range []string{one, two} {
				if msg := alice.post(t, base, addBody(th, "a3")).refusal(t); !strings.HasPrefix(msg, "You have used your share of the assistant for now.") {
					t.Fatalf("alice's third turn on instance %d: %q, want her budget's refusal", i+1, msg)
				}
			}
			// Bob brings the site from 60 to 90, then (still under 100)
			// to 120; then no visitor starts a turn on either instance.
			bob := &visitor{}
			bth := bob.post(t, two, createBody("b1")).threadID(t)
			if !bob.post(t, one, addBody(bth, "b2")).answered(t) {
				t.Fatal("bob's second turn (site at 90 of 100) refused")
			}
			for i, base := range []string{one, two} {
				if msg := (&visitor{}).post(t, base, createBody("c")).refusal(t); !strings.HasPrefix(msg, "The assistant has used this site's allowance for now.") {
					t.Fatalf("a new visitor on instance %d: %q, want the site's refusal", i+1, msg)
				}
			}
			if got := fake.ResponsesCount(); got != 4 {
				t.Fatalf("the model ran %d times, want 4", got)
			}
			// The count is in Redis, not in either process.
			keys, err := rc.Keys(context.Background(), "chatkit:*tokens:site").Result()
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, k := range keys {
				if strings.Contains(k, zone) || strings.Contains(k, fmt.Sprintf("http://:%d|", p.port)) {
					found = true
					if got, err := rc.HGet(context.Background(), k, "u").Int64(); err != nil || got != 120 {
						t.Fatalf("%s counts %d, %v; want 120", k, got, err)
					}
				}
			}
			if !found {
				t.Fatalf("no site token count in Redis among %v", keys)
			}
		})
	}
}

func TestInstancesReloadAndRestartKeepTheOthersStreams(t *testing.T) {
	redisURL, rc := instancesRedis(t)
	fake := newFake(t)
	dsn := pgtest.FreshDatabase(t, "")
	p := startInstances(t, rc, instancesBlockStore(fake, "rate_limit off {\n\t\t\tredis "+redisURL+"\n\t\t}", "", storeLine(dsn)))
	one, two := p.base(0), p.base(1)

	// A slow answer on the second instance: 24 words, 300 ms apart.
	words := make([]string, 24)
	for i := range words {
		words[i] = "w" + strconv.Itoa(i)
	}
	text := strings.Join(words, " ")
	fake.ScriptResponse(fakeopenai.ResponseScript{Text: text, DeltaDelay: 300 * time.Millisecond})
	alice := &visitor{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp := alice.request(t, ctx, two, createBody("tell me slowly"))
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	type event struct {
		frame sseFrame
		at    time.Time
		err   error
	}
	events := make(chan event, 256)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		sc.Split(splitFrames)
		for sc.Scan() {
			var f sseFrame
			data, _ := strings.CutPrefix(sc.Text(), "data: ")
			err := json.Unmarshal([]byte(data), &f)
			f.raw = data
			events <- event{f, time.Now(), err}
		}
		if err := sc.Err(); err != nil {
			events <- event{err: err, at: time.Now()}
		}
	}()
	var got strings.Builder
	var th string
	var doneAt time.Time
	// read takes the stream's events until cond holds or the stream ends.
	read := func(cond func(sseFrame) bool) {
		t.Helper()
		for ev := range events {
			if ev.err != nil {
				t.Fatalf("the stream broke: %v (text so far %q)", ev.err, got.String())
			}
			f := ev.frame
			switch {
			case f.Type == "error":
				t.Fatalf("the stream ended with an error: %s", f.raw)
			case f.Type == "thread.created":
				var v struct{ ID string }
				_ = json.Unmarshal(f.Thread, &v)
				th = v.ID
			case f.Update.Type == "assistant_message.content_part.text_delta":
				got.WriteString(f.Update.Delta)
			case f.Type == "thread.item.done" && strings.Contains(string(f.Item), `"assistant_message"`):
				doneAt = ev.at
			}
			if cond(f) {
				return
			}
		}
	}
	read(func(f sseFrame) bool { return f.Update.Type == "assistant_message.content_part.text_delta" })

	// Instance 1 reloads its config, then is killed and started again,
	// while instance 2 streams.
	p.reload(0, "v2")
	p.kill(0)
	p.start(0)
	restarted := time.Now()
	read(func(sseFrame) bool { return false })
	if doneAt.IsZero() || got.String() != text {
		t.Fatalf("instance 2's stream: text %q, done %v; want the whole answer %q", got.String(), !doneAt.IsZero(), text)
	}
	if !doneAt.After(restarted) {
		t.Fatalf("the answer was done %v before instance 1 was back: too fast to judge", restarted.Sub(doneAt))
	}
	// The restarted instance goes on with the thread.
	if !alice.post(t, one, addBody(th, "and now?")).answered(t) {
		t.Fatal("the restarted instance refused the thread's next turn")
	}
	if s := threadSummary(t, alice.post(t, one, threadBody("threads.get_by_id", th))); s != "user=tell me slowly | assistant="+text+" | user=and now? | assistant=You said: and now?" {
		t.Fatalf("the thread after the restart: %s", s)
	}
	// Every item is in the database, once.
	ctx = context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var items, distinct int
	if err := conn.QueryRow(ctx, "SELECT count(*), count(DISTINCT id) FROM chatkit.items WHERE thread_id = $1", th).Scan(&items, &distinct); err != nil {
		t.Fatal(err)
	}
	if items != 4 || distinct != 4 {
		t.Fatalf("%d items (%d distinct) in PostgreSQL, want the 4 of the thread", items, distinct)
	}
}

// splitFrames splits an event stream at blank lines.
func splitFrames(data []byte, atEOF bool) (int, []byte, error) {
	if i := strings.Index(string(data), "\n\n"); i >= 0 {
		return i + 2, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

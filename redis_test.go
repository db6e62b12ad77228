package chatkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
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

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
	"github.com/caddy-chatkit/caddy-chatkit/internal/testcaddy"
)

// redisServer is a real redis-server on a free loopback port, owned by one
// test: it can be stopped and started again on the same port.
type redisServer struct {
	t    *testing.T
	bin  string
	port int
	cmd  *exec.Cmd
}

// startRedis runs Debian's redis-server. The test script installs it and
// sets CHATKIT_REQUIRE_REDIS=1, so in CI a missing server is a failure.
func startRedis(t *testing.T) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CHATKIT_REQUIRE_REDIS") != "" {
			t.Fatal("redis-server is not installed (run scripts/test.sh, which installs it)")
		}
		t.Skip("redis-server not installed; scripts/test.sh installs it")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s := &redisServer{t: t, bin: bin, port: port}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

// sharedRedisURL is the test script's redis-server when it started one
// (CHATKIT_TEST_REDIS_URL), else one of this test's own. Tests using it keep
// to their own zones, so they never see each other's keys.
func sharedRedisURL(t *testing.T) (string, *redis.Client) {
	t.Helper()
	if u := os.Getenv("CHATKIT_TEST_REDIS_URL"); u != "" {
		opts, err := redis.ParseURL(u)
		if err != nil {
			t.Fatal(err)
		}
		c := redis.NewClient(opts)
		t.Cleanup(func() { c.Close() })
		return u, c
	}
	srv := startRedis(t)
	c := srv.client()
	t.Cleanup(func() { c.Close() })
	return srv.url(), c
}

// forgetZone deletes a zone's keys, so a rerun against the same server
// starts clean.
func forgetZone(t *testing.T, c *redis.Client, zone string) {
	t.Helper()
	for _, k := range redisKeys(t, c, "*chatkit:zone:"+zone+":*") {
		c.Del(context.Background(), k)
	}
}

func redisKeys(t *testing.T, c *redis.Client, pattern string) []string {
	t.Helper()
	keys, err := c.Keys(context.Background(), pattern).Result()
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func (s *redisServer) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.t.TempDir())
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	client := s.client()
	defer client.Close()
	deadline := time.Now().Add(5 * time.Second)
	for client.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			s.t.Fatal("redis-server did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *redisServer) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

func (s *redisServer) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.port)})
}

func (s *redisServer) keys(t *testing.T, pattern string) []string {
	t.Helper()
	c := s.client()
	defer c.Close()
	keys, err := c.Keys(context.Background(), pattern).Result()
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// startSecondCaddy runs a separate Caddy process on port 9081 with the same
// chatkit block as the in-process one.
func startSecondCaddy(t *testing.T, chatkitBlock string) {
	t.Helper()
	dir := t.TempDir()
	config := fmt.Sprintf(`{
	admin off
	http_port 9081
	storage file_system %s
}
http://localhost:9081 {
	chatkit {
		%s
	}
	handle {
		respond "the next handler" 200
	}
}
`, filepath.Join(dir, "storage"), chatkitBlock)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testcaddy.Binary(t), "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://localhost:9081/")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("second Caddy did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// postAs posts an empty body as the client named in X-Client.
func postAs(t *testing.T, c *http.Client, base, path, clientID string) reply {
	t.Helper()
	req, err := http.NewRequest("POST", base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Client", clientID)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return reply{status: resp.StatusCode, header: resp.Header}
}

func TestRedisSharesLimitsAcrossInstances(t *testing.T) {
	redisURL, rc := sharedRedisURL(t)
	forgetZone(t, rc, "shared")
	fake := newFake(t)
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\tworkflow wf_test\n\t\tbudget 8 1h\n\t\trevoke_on_refresh on\n\t\trate_limit 4 2s {\n\t\t\tzone shared\n\t\t\tkey {http.request.header.X-Client}\n\t\t\tredis %s\n\t\t}",
		fake.URL(), fakeopenai.DefaultAPIKey, redisURL)
	newTester(t, caddyConfig("", block, ""))
	startSecondCaddy(t, block)
	bases := []string{siteURL, "http://localhost:9081"}
	c := plainClient(t)
	// Warm both instances' Redis connections with another client's key
	// (they also spend 2 of the budget's 8).
	for _, base := range bases {
		if r := postAs(t, c, base, "/api/chatkit/start", "warm-up"); r.status != http.StatusOK {
			t.Fatalf("warm-up via %s: %d", base, r.status)
		}
	}

	// A client alternating between the instances gets exactly the burst.
	for i := 0; i < 6; i++ {
		r := postAs(t, c, bases[i%2], "/api/chatkit/start", "client-a")
		want := http.StatusOK
		if i >= 4 {
			want = http.StatusTooManyRequests
		}
		if r.status != want {
			t.Fatalf("request %d via %s: %d, want %d", i, bases[i%2], r.status, want)
		}
	}
	// The same refill as on one instance: one token per interval. (Redis
	// keeps its own clock, so this waits in real time.)
	time.Sleep(2100 * time.Millisecond)
	if r := postAs(t, c, bases[1], "/api/chatkit/start", "client-a"); r.status != http.StatusOK {
		t.Fatalf("after one interval: %d", r.status)
	}
	if r := postAs(t, c, bases[0], "/api/chatkit/start", "client-a"); r.status != http.StatusTooManyRequests {
		t.Fatalf("second request after one interval: %d", r.status)
	}
	if n := len(redisKeys(t, rc, "*chatkit:zone:shared:*")); n < 2 {
		t.Fatalf("%d chatkit keys in Redis: the limits did not go there", n)
	}

	// The budget (8 per hour) is counted across both instances: 7 sessions
	// so far; a fresh client gets the eighth, then the budget refuses.
	if r := postAs(t, c, bases[0], "/api/chatkit/start", "client-b"); r.status != http.StatusOK {
		t.Fatalf("eighth session: %d", r.status)
	}
	if r := postAs(t, c, bases[1], "/api/chatkit/start", "client-b"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("ninth session past a budget of 8: %d", r.status)
	}
}

func TestRedisRevokeRegistryAcrossInstances(t *testing.T) {
	redisURL, rc := sharedRedisURL(t)
	forgetZone(t, rc, "revoke-shared")
	fake := newFake(t)
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\tworkflow wf_test\n\t\tuser {http.request.header.X-Test-User}\n\t\trevoke_on_refresh on\n\t\trate_limit 100 1s {\n\t\t\tzone revoke-shared\n\t\t\tredis %s\n\t\t}",
		fake.URL(), fakeopenai.DefaultAPIKey, redisURL)
	newTester(t, caddyConfig("", block, ""))
	startSecondCaddy(t, block)

	req, _ := http.NewRequest("POST", siteURL+"/api/chatkit/start", nil)
	req.Header.Set("X-Test-User", "alice")
	resp, err := plainClient(t).Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("start: %v %v", err, resp)
	}
	resp.Body.Close()
	first := fake.Sessions()[0]

	req, _ = http.NewRequest("POST", "http://localhost:9081/api/chatkit/refresh", strings.NewReader(`{"currentClientSecret":"`+first.ClientSecret+`"}`))
	req.Header.Set("X-Test-User", "alice")
	resp, err = plainClient(t).Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("refresh on the other instance: %v %v", err, resp)
	}
	resp.Body.Close()
	// The fake records the cancel when it arrives and applies it when it
	// answers: wait for the session's status, then count the calls.
	deadline := time.Now().Add(3 * time.Second)
	for fake.Sessions()[0].Status != "cancelled" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if countCancels(fake) != 1 || fake.Sessions()[0].Status != "cancelled" {
		t.Fatalf("the other instance did not cancel %s (%d cancels)", first.ID, countCancels(fake))
	}
	for _, k := range redisKeys(t, rc, "chatkit:zone:revoke-shared:sess:*") {
		if strings.Contains(k, first.ClientSecret) {
			t.Fatal("a client secret is stored in Redis in the clear")
		}
	}
}

func TestRedisDownOrStalledNeverHangs(t *testing.T) {
	fake := newFake(t)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedURL := "redis://" + closed.Addr().String()
	closed.Close()

	// A server that accepts connections and never answers.
	stalled, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			conn, err := stalled.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		stalled.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})

	for _, tc := range []struct {
		name, url, onError string
		want               int
	}{
		{"down-local", closedURL, "local", http.StatusOK},
		{"stalled-local", "redis://" + stalled.Addr().String(), "local", http.StatusOK},
		{"down-deny", closedURL, "deny", http.StatusServiceUnavailable},
		{"stalled-deny", "redis://" + stalled.Addr().String(), "deny", http.StatusServiceUnavailable},
	} {
		startSite(t, fake, "", fmt.Sprintf("rate_limit 2 1m {\n\t\t\tzone %s\n\t\t\tredis %s\n\t\t\ton_redis_error %s\n\t\t}", tc.name, tc.url, tc.onError), "")
		c := client(t)
		started := time.Now()
		r := do(t, c, "POST", "/api/chatkit/start", "")
		if elapsed := time.Since(started); elapsed > time.Second {
			t.Fatalf("%s: a request waited %s on Redis", tc.name, elapsed)
		}
		if r.status != tc.want {
			t.Fatalf("%s: status %d, want %d (%s)", tc.name, r.status, tc.want, r.body)
		}
		if tc.onError == "deny" {
			expectError(t, r, http.StatusServiceUnavailable, "rate_limit_unavailable")
			continue
		}
		// The local fallback still limits.
		do(t, c, "POST", "/api/chatkit/start", "")
		expectError(t, do(t, c, "POST", "/api/chatkit/start", ""), http.StatusTooManyRequests, "rate_limit_exceeded")
	}
}

func TestRedisRestartMidRun(t *testing.T) {
	srv := startRedis(t)
	fake := newFake(t)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	global := "log {\n\t\toutput file " + logFile + "\n\t\tformat json\n\t}"
	startSite(t, fake, global, fmt.Sprintf("rate_limit 3 1m {\n\t\t\tzone restart-test\n\t\t\tredis %s\n\t\t}", srv.url()), "")
	c := client(t)
	for i := 0; i < 3; i++ {
		expectSecret(t, do(t, c, "POST", "/api/chatkit/start", ""), fake)
	}
	expectError(t, do(t, c, "POST", "/api/chatkit/start", ""), http.StatusTooManyRequests, "rate_limit_exceeded")

	srv.stop()
	// Redis is gone: requests fall back to this instance's buckets, fast.
	for i := 0; i < 5; i++ {
		started := time.Now()
		r := do(t, c, "POST", "/api/chatkit/start", "")
		if time.Since(started) > time.Second || (r.status != 200 && r.status != 429) {
			t.Fatalf("during the outage: %d after %s", r.status, time.Since(started))
		}
	}

	srv.start()
	// Recovery within 10 s of Redis returning: decisions go to Redis again.
	deadline := time.Now().Add(10 * time.Second)
	for len(srv.keys(t, "*chatkit:zone:restart-test:*")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("limits did not return to Redis within 10s")
		}
		do(t, c, "POST", "/api/chatkit/start", "")
		time.Sleep(200 * time.Millisecond)
	}

	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	outages := strings.Count(string(raw), "Redis is unreachable")
	recoveries := strings.Count(string(raw), "Redis answers again")
	if outages != 1 || recoveries != 1 {
		t.Fatalf("want one outage warning and one recovery line, got %d and %d", outages, recoveries)
	}
	if strings.Contains(string(raw), `"level":"error"`) {
		t.Fatal("an outage logged at error level")
	}
}

// BenchmarkRedisDecision measures what a rate-limit decision costs in Redis
// mode (one script round trip to a loopback redis-server) against the
// in-process store, in the same run:
//
//	go test -run '^$' -bench RedisDecision -benchmem .
func BenchmarkRedisDecision(b *testing.B) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		b.Skip("redis-server not installed")
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", b.TempDir())
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	backend, err := newRedisBackend(fmt.Sprintf("redis://127.0.0.1:%d/0", port), "bench", "local", zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer backend.release()
	for deadline := time.Now().Add(5 * time.Second); backend.client.Ping(context.Background()).Err() != nil; {
		if time.Now().After(deadline) {
			b.Fatal("redis-server did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	l := limit{burst: 1 << 30, interval: time.Millisecond}
	keys := make([]bucketKey, 1024)
	for i := range keys {
		keys[i] = stringBucketKey(strconv.Itoa(i))
	}
	b.Run("redis", func(b *testing.B) {
		ctx := context.Background()
		for i := 0; b.Loop(); i++ {
			if _, err := backend.run(ctx, backend.prefix+hex.EncodeToString(keys[i%len(keys)][:]), l, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("local", func(b *testing.B) {
		store, clock := newBucketStore(4096), newMonoClock()
		for i := 0; b.Loop(); i++ {
			store.allow(keys[i%len(keys)], l, clock.nanos(time.Now()))
		}
	})
}

// ---- the budget's exact window in Redis ----------------------------------

func TestRedisBudgetExactWindow(t *testing.T) {
	redisURL, rc := sharedRedisURL(t)
	forgetZone(t, rc, "budget-window")
	fake := newFake(t)
	const n, interval = 4, 1500 * time.Millisecond
	h := unitHandler(t, fake, time.Now, `,"rate_limit":{"burst":100,"zone":"budget-window","redis":"`+redisURL+
		`","on_redis_error":"deny"},"budget":{"sessions":4,"interval":"1500ms"}`)
	ctx := context.Background()
	spend := func() (limitVerdict, time.Time, time.Time) {
		sent := time.Now()
		v := h.limiter.spendBudget(ctx, time.Now())
		return v, sent, time.Now()
	}
	// Warm the connection, then spend the whole budget at once.
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	var firstSent, firstDone, lastDone time.Time
	for i := range n {
		v, sent, done := spend()
		if v.result != limitAllowed {
			t.Fatalf("admission %d: %+v", i, v)
		}
		if i == 0 {
			firstSent, firstDone = sent, done
		}
		lastDone = done
	}
	// Two thirds of the window later a bucket of 4 refilled over 1.5s
	// would have 2 tokens again; the window has none until the first
	// admission is 1.5s old, and says exactly when that is.
	time.Sleep(time.Until(firstSent.Add(interval * 2 / 3)))
	v, sent, done := spend()
	if done.After(firstSent.Add(interval)) {
		t.Fatalf("the check took until %v after the first admission: too slow to judge", done.Sub(firstSent))
	}
	if v.result != limitBudgetExhausted {
		t.Fatalf("two thirds into the window: %+v, want budget_exhausted", v)
	}
	// The first admission happened in [firstSent, firstDone] and this
	// decision in [sent, done], both on Redis's clock (µs).
	lo, hi := firstSent.Add(interval).Sub(done), firstDone.Add(interval).Sub(sent)
	if v.retryAfter < lo-time.Millisecond || v.retryAfter > hi+time.Millisecond {
		t.Fatalf("retryAfter %v, want the time until the first admission leaves: %v..%v", v.retryAfter, lo, hi)
	}
	// The log is a list of n times under the zone's prefix, expiring with
	// the window.
	key := "chatkit:zone:budget-window:budget:log"
	if got, err := rc.LLen(ctx, key).Result(); err != nil || got != n {
		t.Fatalf("LLEN %s = %d, %v; want %d", key, got, err, n)
	}
	if ttl, err := rc.PTTL(ctx, key).Result(); err != nil || ttl <= 0 || ttl > interval {
		t.Fatalf("PTTL %s = %v, %v; want at most the window", key, ttl, err)
	}
	// Once all four have left, exactly four more get in.
	time.Sleep(time.Until(lastDone.Add(interval + 20*time.Millisecond)))
	for i := range n {
		if v, _, _ := spend(); v.result != limitAllowed {
			t.Fatalf("next window, admission %d: %+v", i, v)
		}
	}
	if v, _, _ := spend(); v.result != limitBudgetExhausted {
		t.Fatalf("a fifth admission in the next window: %+v", v)
	}
}

func TestRedisBudgetClockBackCountsAsNow(t *testing.T) {
	redisURL, rc := sharedRedisURL(t)
	forgetZone(t, rc, "budget-clock-back")
	fake := newFake(t)
	h := unitHandler(t, fake, time.Now, `,"rate_limit":{"burst":100,"zone":"budget-clock-back","redis":"`+redisURL+
		`","on_redis_error":"deny"},"budget":{"sessions":2,"interval":"1m"}`)
	ctx := context.Background()
	// Two admissions logged an hour ahead of Redis's clock: its clock has
	// been stepped back an hour since.
	now, err := rc.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	key := "chatkit:zone:budget-clock-back:budget:log"
	ahead := strconv.FormatInt(now.Add(time.Hour).UnixMicro(), 10)
	if err := rc.RPush(ctx, key, ahead, ahead).Err(); err != nil {
		t.Fatal(err)
	}
	v := h.limiter.spendBudget(ctx, time.Now())
	if v.result != limitBudgetExhausted || v.retryAfter > time.Minute || v.retryAfter < time.Minute-time.Second {
		t.Fatalf("after Redis's clock went back: %+v, want a wait of one window, not an hour more", v)
	}
	times, err := rc.LRange(ctx, key, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range times {
		if us, _ := strconv.ParseInt(s, 10, 64); us > now.Add(time.Second).UnixMicro() {
			t.Fatalf("a logged time stays in the future: %s", s)
		}
	}
}

func TestRedisBudgetExactAcrossInstances(t *testing.T) {
	redisURL, rc := sharedRedisURL(t)
	forgetZone(t, rc, "budget-instances")
	fake := newFake(t)
	const interval = 3 * time.Second
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\tworkflow wf_test\n\t\tbudget 4 3s\n\t\trate_limit 100 1s {\n\t\t\tzone budget-instances\n\t\t\tkey {http.request.header.X-Client}\n\t\t\tredis %s\n\t\t\ton_redis_error deny\n\t\t}",
		fake.URL(), fakeopenai.DefaultAPIKey, redisURL)
	newTester(t, caddyConfig("", block, ""))
	startSecondCaddy(t, block)
	bases := []string{siteURL, "http://localhost:9081"}
	c := plainClient(t)
	// Four sessions, two through each instance.
	firstSent := time.Now()
	for i := range 4 {
		if r := postAs(t, c, bases[i%2], "/api/chatkit/start", "client-"+strconv.Itoa(i)); r.status != http.StatusOK {
			t.Fatalf("session %d via %s: %d", i, bases[i%2], r.status)
		}
	}
	lastDone := time.Now()
	// Half a window later (a bucket of 4 refilled over 3s would have 2
	// tokens again) both instances refuse, with the time left.
	time.Sleep(time.Until(firstSent.Add(interval / 2)))
	for i, base := range bases {
		r := postAs(t, c, base, "/api/chatkit/start", "late-"+strconv.Itoa(i))
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("half a window later via %s: %d, want 503", base, r.status)
		}
		if ra := r.header.Get("Retry-After"); ra != "1" && ra != "2" {
			t.Fatalf("Retry-After %q via %s, want the 1.5s left, rounded up", ra, base)
		}
	}
	if time.Since(firstSent) >= interval {
		t.Fatal("the refusals came a whole window after the first session: too slow to judge")
	}
	// When all four have left, four more (two each) and no fifth.
	time.Sleep(time.Until(lastDone.Add(interval + 50*time.Millisecond)))
	for i := range 4 {
		if r := postAs(t, c, bases[i%2], "/api/chatkit/start", "next-"+strconv.Itoa(i)); r.status != http.StatusOK {
			t.Fatalf("next window, session %d via %s: %d", i, bases[i%2], r.status)
		}
	}
	for _, base := range bases {
		if r := postAs(t, c, base, "/api/chatkit/start", "next-extra"); r.status != http.StatusServiceUnavailable {
			t.Fatalf("a fifth session in the next window via %s: %d", base, r.status)
		}
	}
	if got := fake.CreateCount(); got != 8 {
		t.Fatalf("%d sessions minted, want 8", got)
	}
}

// ---- wall-clock steps with Redis ------------------------------------------

func TestRedisBackoffIgnoresWallClockSteps(t *testing.T) {
	b, err := newRedisBackend("redis://127.0.0.1:1/0", "backoff-clock", "local", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer b.release()
	at := time.Now()
	b.failed(context.Background(), at, fmt.Errorf("injected"))
	if b.usable(at.Add(redisRetryBackoff / 2)) {
		t.Fatal("Redis tried again during the backoff")
	}
	// The clock steps back an hour; the backoff still ends on time.
	if after := wallSteppedBack(t, at.Add(redisRetryBackoff), time.Hour); !b.usable(after) {
		t.Fatal("after a wall-clock step back, Redis is skipped for another hour")
	}
}

func TestRedisFallbackIgnoresWallClockSteps(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "redis://" + closed.Addr().String()
	closed.Close()
	fake := newFake(t)
	clock := newTestClock(time.Now())
	h := unitHandler(t, fake, clock.now, `,"rate_limit":{"burst":10,"interval":"1s","zone":"fallback-clock","redis":"`+down+
		`"},"budget":{"sessions":2,"interval":"1h"}`)
	expectUnitStatus(t, serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.1"), 200, "on the fallback, before the step")
	clock.set(wallSteppedBack(t, clock.now().Add(3*time.Second), time.Hour))
	expectUnitStatus(t, serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.1"), 200, "the same client after the step")
	w := serveUnit(t, h, "POST", "/api/chatkit/start", "192.0.2.2")
	expectUnitStatus(t, w, http.StatusServiceUnavailable, "a third session in the hour")
	if got := w.Header().Get("Retry-After"); got != "3597" {
		t.Fatalf("Retry-After %s, want 3597 (the first session leaves the window then)", got)
	}
}

// ---- the agent's token budgets in Redis -------------------------------------

// tokenZone is a zone name of this test's own on the shared Redis, with its
// keys deleted before and after.
func tokenZone(t *testing.T, rc *redis.Client) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	zone := "tokens-" + hex.EncodeToString(b[:])
	forgetZone(t, rc, zone)
	t.Cleanup(func() { forgetZone(t, rc, zone) })
	return zone
}

// tokenBackend is a zone's Redis backend, as an instance has it.
func tokenBackend(t *testing.T, redisURL, zone, onError string) *redisBackend {
	t.Helper()
	b, err := newRedisBackend(redisURL, "zone:"+zone, onError, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.release)
	return b
}

// redisWindowLeft is how long Redis's clock has until the end of the
// window (aligned to the epoch) it is in now.
func redisWindowLeft(t *testing.T, rc *redis.Client, interval time.Duration) time.Duration {
	t.Helper()
	now, err := rc.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	us, iv := now.UnixMicro(), interval.Microseconds()
	return time.Duration((us/iv+1)*iv-us) * time.Microsecond
}

func TestRedisTokenBudgetsAcrossInstances(t *testing.T) {
	redisURL, rc := sharedRedisURL(t)
	zone := tokenZone(t, rc)
	// Two instances' views of one zone.
	one, two := tokenBackend(t, redisURL, zone, "deny"), tokenBackend(t, redisURL, zone, "deny")
	ctx := context.Background()
	user := &tokenLimit{tokens: 30, interval: time.Hour}
	site := &tokenLimit{tokens: 100, interval: time.Hour}
	admit := func(b *redisBackend, who string) (tokenScope, time.Duration) {
		t.Helper()
		scope, wait, err := b.admitTokens(ctx, who, user, site, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return scope, wait
	}
	charge := func(b *redisBackend, who string, n int64) {
		t.Helper()
		if err := b.chargeTokens(ctx, who, n, user, site, time.Now()); err != nil {
			t.Fatal(err)
		}
	}

	if scope, _ := admit(one, "user:alice"); scope != tokenScopeNone {
		t.Fatal("a user who spent nothing was refused")
	}
	charge(one, "user:alice", 20)
	if scope, _ := admit(two, "user:alice"); scope != tokenScopeNone {
		t.Fatal("refused under the budget (20 of 30) on the other instance")
	}
	// A turn admitted under the budget finishes over it, on the other
	// instance; then neither admits alice, until the window ends on
	// Redis's clock.
	charge(two, "user:alice", 15)
	before := redisWindowLeft(t, rc, time.Hour)
	scope, wait := admit(one, "user:alice")
	after := redisWindowLeft(t, rc, time.Hour)
	if scope != tokenScopeUser || wait > before || wait < after {
		t.Fatalf("over the budget: scope %d, wait %s; want the user's, %s..%s (the rest of Redis's window)", scope, wait, after, before)
	}
	if scope, _ := admit(two, "user:alice"); scope != tokenScopeUser {
		t.Fatalf("the other instance: scope %d, want the user's", scope)
	}
	// Bob has his own budget; the site's is shared, and counts both.
	if scope, _ := admit(two, "user:bob"); scope != tokenScopeNone {
		t.Fatal("bob refused for alice's spending")
	}
	charge(two, "user:bob", 64) // 35 + 64 = 99: under the site's 100
	if scope, _ := admit(one, "user:carol"); scope != tokenScopeNone {
		t.Fatal("refused at 99 of the site's 100")
	}
	charge(one, "user:carol", 1)
	for i, b := range []*redisBackend{one, two} {
		if scope, _ := admit(b, "user:dave"); scope != tokenScopeSite {
			t.Fatalf("instance %d at the site's budget: scope %d, want the site's", i+1, scope)
		}
	}

	// What Redis holds: the counts, expiring with the window, and no user
	// id in a key.
	prefix := "chatkit:zone:" + zone + ":"
	if got, err := rc.HGet(ctx, prefix+"tokens:site", "u").Int64(); err != nil || got != 100 {
		t.Fatalf("site count %d, %v; want 100", got, err)
	}
	if ttl, err := rc.PTTL(ctx, prefix+"tokens:site").Result(); err != nil || ttl <= 0 || ttl > time.Hour {
		t.Fatalf("PTTL %v, %v; want at most the window", ttl, err)
	}
	keys := redisKeys(t, rc, prefix+"tokens:user:*")
	if len(keys) != 3 {
		t.Fatalf("user keys %v, want alice's, bob's and carol's", keys)
	}
	for _, k := range keys {
		if strings.Contains(k, "alice") || strings.Contains(k, "bob") || strings.Contains(k, "carol") {
			t.Fatalf("a user id in a Redis key: %s", k)
		}
	}
}

func TestRedisTokenChargesAreAtomic(t *testing.T) {
	redisURL, rc := sharedRedisURL(t)
	zone := tokenZone(t, rc)
	backends := []*redisBackend{tokenBackend(t, redisURL, zone, "deny"), tokenBackend(t, redisURL, zone, "deny")}
	site := &tokenLimit{tokens: 200, interval: time.Hour}
	ctx := context.Background()
	// 2 instances × 50 concurrent charges of 2: exactly 200, none lost.
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			errs <- backends[i%2].chargeTokens(ctx, "user:u"+strconv.Itoa(i), 2, nil, site, time.Now())
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got, err := rc.HGet(ctx, "chatkit:zone:"+zone+":tokens:site", "u").Int64(); err != nil || got != 200 {
		t.Fatalf("site count %d, %v; want 200", got, err)
	}
	for _, b := range backends {
		if scope, _, err := b.admitTokens(ctx, "user:new", nil, site, time.Now()); err != nil || scope != tokenScopeSite {
			t.Fatalf("at the budget: scope %d, %v", scope, err)
		}
	}
}

func TestRedisTokenWindowEndsOnRedisClock(t *testing.T) {
	redisURL, rc := sharedRedisURL(t)
	zone := tokenZone(t, rc)
	one, two := tokenBackend(t, redisURL, zone, "deny"), tokenBackend(t, redisURL, zone, "deny")
	const interval = 400 * time.Millisecond
	user := &tokenLimit{tokens: 10, interval: interval}
	ctx := context.Background()
	// Start early in a window, so the refusal below comes inside it.
	if left := redisWindowLeft(t, rc, interval); left < interval*3/4 {
		time.Sleep(left + 5*time.Millisecond)
	}
	if err := one.chargeTokens(ctx, "user:alice", 10, user, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	scope, wait, err := two.admitTokens(ctx, "user:alice", user, nil, time.Now())
	if err != nil || scope != tokenScopeUser || wait <= 0 || wait > interval {
		t.Fatalf("at the budget: scope %d, wait %s, %v; want the user's, within one window", scope, wait, err)
	}
	// The window both instances count in ends when Redis says.
	time.Sleep(wait + 10*time.Millisecond)
	if scope, _, err := one.admitTokens(ctx, "user:alice", user, nil, time.Now()); err != nil || scope != tokenScopeNone {
		t.Fatalf("the next window: scope %d, %v; want admitted", scope, err)
	}
	if err := two.chargeTokens(ctx, "user:alice", 3, user, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	keys := redisKeys(t, rc, "chatkit:zone:"+zone+":tokens:user:*")
	if len(keys) != 1 {
		t.Fatalf("keys %v", keys)
	}
	if got, err := rc.HGet(ctx, keys[0], "u").Int64(); err != nil || got != 3 {
		t.Fatalf("the new window counts %d, %v; want 3", got, err)
	}
}

func TestRedisTokenClockBackNeverRefunds(t *testing.T) {
	redisURL, rc := sharedRedisURL(t)
	zone := tokenZone(t, rc)
	b := tokenBackend(t, redisURL, zone, "deny")
	ctx := context.Background()
	site := &tokenLimit{tokens: 10, interval: time.Minute}
	// The budget was spent in a window a minute ahead of Redis's clock:
	// its clock has been stepped back since.
	now, err := rc.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	key := "chatkit:zone:" + zone + ":tokens:site"
	ahead := now.UnixMicro()/time.Minute.Microseconds() + 1
	if err := rc.HSet(ctx, key, "w", ahead, "u", 10).Err(); err != nil {
		t.Fatal(err)
	}
	if scope, _, err := b.admitTokens(ctx, "user:alice", nil, site, time.Now()); err != nil || scope != tokenScopeSite {
		t.Fatalf("after Redis's clock went back: scope %d, %v; want the spent budget kept", scope, err)
	}
	if err := b.chargeTokens(ctx, "user:alice", 5, nil, site, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, err := rc.HMGet(ctx, key, "w", "u").Result(); err != nil || fmt.Sprint(got) != fmt.Sprintf("[%d 15]", ahead) {
		t.Fatalf("the window ahead holds %v, %v; want it kept with 15", got, err)
	}
}

// tokenHandler is a unit Handler with the agent and a token budget of 10 a
// user per hour, its limits in Redis at redisURL.
func tokenHandler(t *testing.T, fake *fakeopenai.Server, rateLimit string) *Handler {
	t.Helper()
	db := filepath.Join(t.TempDir(), "threads.db")
	return unitHandler(t, fake, time.Now, `,"rate_limit":`+rateLimit+
		`,"agent":{"model":"gpt-5-mini","store":{"path":"`+db+`"},"token_budget":{"user":{"tokens":10,"interval":"1h"}}}`)
}

func TestRedisTokenBudgetOnRedisError(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "redis://" + closed.Addr().String()
	closed.Close()
	fake := newFake(t)
	ctx := context.Background()

	t.Run("local", func(t *testing.T) {
		h := tokenHandler(t, fake, `{"burst":100,"zone":"tokens-down-local","redis":"`+down+`"}`)
		fallbacks := counterValue(t, redisFallbacks)
		if scope, _ := h.admitTokens(ctx, "user:alice", time.Now()); scope != tokenScopeNone {
			t.Fatalf("scope %d: the fallback refused a user who spent nothing", scope)
		}
		h.chargeTokens("user:alice", 10, time.Now())
		// This instance's own ledger still limits.
		if scope, _ := h.admitTokens(ctx, "user:alice", time.Now()); scope != tokenScopeUser {
			t.Fatalf("scope %d: the fallback did not count what alice spent", scope)
		}
		if u, _ := h.agent.zone.tokens.spent("user:alice", h.agent.userBudget, nil, h.limiter.zone.clock.nanos(time.Now())); u != 10 {
			t.Fatalf("the local ledger holds %d, want 10", u)
		}
		if got := counterValue(t, redisFallbacks) - fallbacks; got != 3 {
			t.Fatalf("%v fallbacks counted, want 3 (two admissions, one charge)", got)
		}
	})
	t.Run("deny", func(t *testing.T) {
		// rate_limit off still keeps the token budgets in Redis.
		h := tokenHandler(t, fake, `{"disabled":true,"redis":"`+down+`","on_redis_error":"deny"}`)
		scope, wait := h.admitTokens(ctx, "user:alice", time.Now())
		if scope != tokenScopeUnavailable || wait != redisRetryBackoff {
			t.Fatalf("scope %d, wait %s; want unavailable for %s", scope, wait, redisRetryBackoff)
		}
		if a := tokenRefusals[scope].turn; a.code != "rate_limit_unavailable" || a.status != http.StatusServiceUnavailable {
			t.Fatalf("the refusal is %+v", a)
		}
	})
}

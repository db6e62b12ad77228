package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// stalledBase is where the many-address phase's client addresses start
// (shared address space; they only appear in X-Forwarded-For on loopback).
var stalledBase = [4]byte{100, 80, 0, 0}

// stalledOutcome is what became of one stalled connection.
type stalledOutcome struct {
	status   int    // 0: never answered
	code     string // the module's `error` code
	after    time.Duration
	closed   bool   // the server closed the connection after answering
	dialFail string // could not connect
}

// stalledPhase is one run of the scenario against a fresh Caddy.
type stalledPhase struct {
	name      string
	addresses int // distinct client addresses, the connections spread over them
}

// runStalled opens many connections that send a protected request's
// headers and the start of a body promising much more, then stall: the
// attack of issue 11 §2, where 800 of them from one address took Caddy to
// 2 GB RSS on a `rate_limit 2 1h` site. It measures Caddy's RSS while they
// are held and what each connection was answered, once from one address
// and once from one address per connection.
func runStalled(s *servers) error {
	o := s.opts
	fmt.Printf("stalled bodies: %d connections per phase, each sending POST /chatkit headers with Content-Length: %d and %d bytes of body, then nothing;\n",
		o.stalledConns, o.stalledLength, o.stalledSent)
	fmt.Printf("                held up to %s, then closed by the harness; site: chatkit { protect /chatkit; rate_limit %s }\n\n", o.stalledHold, o.stalledLimit)
	phases := []stalledPhase{
		{name: "one address", addresses: 1},
		{name: "one address per connection", addresses: o.stalledConns},
	}
	pass := true
	for _, ph := range phases {
		ok, err := runStalledPhase(s, ph)
		if err != nil {
			return err
		}
		pass = pass && ok
	}
	if !pass {
		fmt.Println("\nstalled: some checks FAILED")
	}
	return nil
}

func runStalledPhase(s *servers, ph stalledPhase) (bool, error) {
	o := s.opts
	if o.quietWait > 0 {
		waitQuiet(o.quietWait)
	}
	fake, err := s.startFake()
	if err != nil {
		return false, err
	}
	defer fake.stop()
	caddy, err := s.startCaddy(s.protectCaddyfile(o.stalledLimit))
	if err != nil {
		return false, err
	}
	defer caddy.stop()
	time.Sleep(time.Second) // let start-up garbage settle before the baseline
	before, _, _ := memKB(caddy.pid())

	var peakMu sync.Mutex
	peak := before
	stopSampler := make(chan struct{})
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSampler:
				return
			case <-tick.C:
				if rss, _, err := memKB(caddy.pid()); err == nil {
					peakMu.Lock()
					peak = max(peak, rss)
					peakMu.Unlock()
				}
			}
		}
	}()

	addr := fmt.Sprintf("127.0.0.1:%d", s.sitePort)
	outcomes := make([]stalledOutcome, o.stalledConns)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range outcomes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outcomes[i] = stallOne(addr, addIP(stalledBase, i%ph.addresses), o.stalledLength, o.stalledSent, start.Add(o.stalledHold))
		}()
	}
	wg.Wait()
	close(stopSampler)
	<-samplerDone
	time.Sleep(time.Second)
	after, hwm, _ := memKB(caddy.pid())

	// Report.
	if ph.addresses == 1 {
		fmt.Printf("phase %q: %d connections from %s\n", ph.name, o.stalledConns, addIP(stalledBase, 0))
	} else {
		fmt.Printf("phase %q: %d connections from %s and up\n", ph.name, o.stalledConns, addIP(stalledBase, 0))
	}
	groups := map[string][]stalledOutcome{}
	var dialFailures, unanswered int
	for _, oc := range outcomes {
		switch {
		case oc.dialFail != "":
			dialFailures++
		case oc.status == 0:
			unanswered++
		default:
			key := fmt.Sprintf("%d %s", oc.status, oc.code)
			groups[key] = append(groups[key], oc)
		}
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	immediate := 0
	for _, k := range keys {
		g := groups[k]
		closed, slowest, fastest := 0, time.Duration(0), g[0].after
		for _, oc := range g {
			if oc.closed {
				closed++
			}
			slowest, fastest = max(slowest, oc.after), min(fastest, oc.after)
			if oc.after < stalledAtOnce {
				immediate++
			}
		}
		fmt.Printf("  %4d × %-22s answered after %s to %s; connection closed by Caddy: %d\n",
			len(g), k, fmtDur(fastest), fmtDur(slowest), closed)
	}
	if unanswered > 0 {
		fmt.Printf("  %4d × never answered within %s (closed by the harness)\n", unanswered, o.stalledHold)
	}
	if dialFailures > 0 {
		fmt.Printf("  %4d × could not connect\n", dialFailures)
	}
	fmt.Printf("  Caddy RSS: %s before, peak %s while stalled (+%s), %s after; VmHWM %s\n\n",
		fmtMB(before), fmtMB(peak), fmtMB(max(peak-before, 0)), fmtMB(after), fmtMB(hwm))

	pass := true
	check := func(ok bool, format string, args ...any) {
		v := "PASS"
		if !ok {
			v, pass = "FAIL", false
		}
		fmt.Printf("  %s  %s\n", v, fmt.Sprintf(format, args...))
	}
	allClosed := unanswered == 0 && dialFailures == 0
	for _, g := range groups {
		for _, oc := range g {
			allClosed = allClosed && oc.closed
		}
	}
	check(allClosed, "every stalled connection was answered and closed by Caddy before the harness gave up")
	accepted := stalledAcceptedBound(ph, o.stalledConns, o.stalledLength)
	// "At once" is long before the 10 s body timeout: on two shared cores
	// the harness pushing the bodies slows the refusals down.
	check(immediate >= o.stalledConns-accepted, "the %d connections past the bound (%d may wait) were answered without waiting for their body (%d answered within %s)",
		o.stalledConns-accepted, accepted, immediate, stalledAtOnce)
	// What the waiting ones may buffer, twice (the garbage of their growth,
	// and the Go heap's headroom), plus 32 MB for connections and goroutines.
	body := int64(min(o.stalledLength, 1<<20))
	limitKB := int64(accepted)*body*2/1024 + 32*1024
	check(peak-before < limitKB, "RSS grew by %s while the bodies stalled (< %s: %d waiting bodies of at most %d bytes, ×2, + 32 MB)",
		fmtMB(max(peak-before, 0)), fmtMB(limitKB), accepted, body)
	fmt.Println()
	return pass, nil
}

// stalledAtOnce is what counts as answered at once: long before the
// module's 10 s body timeout.
const stalledAtOnce = 5 * time.Second

// stalledAcceptedBound is how many of a phase's connections the module's
// defaults let wait for their body: 4 per client, and 64 MiB of bodies
// (each reserving its Content-Length, at most max_body = 1 MiB) in all.
func stalledAcceptedBound(ph stalledPhase, conns, length int) int {
	perAddress := (conns + ph.addresses - 1) / ph.addresses
	return min(ph.addresses*min(perAddress, 4), (64<<20)/min(max(length, 1), 1<<20))
}

// stallOne sends the headers and the first sent bytes of a body promising
// length bytes from client ip (through trusted_proxies), then reads
// whatever answer comes before giveUp.
func stallOne(addr, ip string, length, sent int, giveUp time.Time) stalledOutcome {
	begin := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return stalledOutcome{dialFail: err.Error()}
	}
	defer c.Close()
	head := fmt.Sprintf("POST /chatkit HTTP/1.1\r\nHost: %s\r\nX-Forwarded-For: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		addr, ip, length)
	body := `{"type":"threads.create","params":{"input":"` + strings.Repeat("x", max(sent-40, 0))
	// Written meanwhile: a refused connection is closed before it has
	// taken the whole body, and the write then fails, as it should.
	go func() { _, _ = io.WriteString(c, head+body) }()
	_ = c.SetReadDeadline(giveUp)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return stalledOutcome{}
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	oc := stalledOutcome{status: resp.StatusCode, after: time.Since(begin)}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil {
		oc.code = e.Error
	}
	_, err = br.ReadByte()
	oc.closed = errors.Is(err, io.EOF) || (err != nil && !errors.Is(err, os.ErrDeadlineExceeded))
	return oc
}

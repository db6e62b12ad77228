package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// runProfile takes a CPU profile and a delta allocation profile of Caddy
// from its admin API (/debug/pprof/profile?seconds=N and
// /debug/pprof/allocs?seconds=N) while each target runs, and prints the
// top entries with `go tool pprof -top`.
func runProfile(s *servers) error {
	o := s.opts
	ts := targets(s)
	clients := newClients(o.concurrency, [4]byte{10, 1, 0, 1})
	defer closeClients(clients)
	if err := checkTargets(s, clients, ts); err != nil {
		return err
	}
	secs := o.profile
	for _, k := range o.profileTargets {
		t := ts[string(k)]
		if t == nil || !t.caddy {
			return fmt.Errorf("-profile-targets: %q is not a Caddy target (a or b)", k)
		}
		if err := profileTarget(s, clients, t, secs); err != nil {
			return err
		}
	}
	fmt.Printf("profiles kept in %s\n", o.work)
	return nil
}

func profileTarget(s *servers, clients []*vclient, t *target, secs int) error {
	o := s.opts
	if o.quietWait > 0 {
		waitQuiet(o.quietWait)
	}
	fake, caddy, err := s.startStack(benchConf)
	if err != nil {
		return err
	}
	defer fake.stop()
	defer caddy.stop()

	cpuFile := filepath.Join(o.work, "cpu-"+t.key+".pprof")
	allocFile := filepath.Join(o.work, "allocs-"+t.key+".pprof")
	errs := make(chan error, 2)
	fetch := func(path, file string) {
		b, status, err := httpGet(s.adminURL() + path)
		if err == nil && status != 200 {
			err = fmt.Errorf("%s: status %d: %s", path, status, b)
		}
		if err == nil {
			err = os.WriteFile(file, b, 0o644)
		}
		errs <- err
	}
	var m0, m1 map[string]float64
	var c0, c1, f0, f1, b0, b1 time.Duration
	res := closedLoop(clients, t, o.warmup, time.Duration(secs)*time.Second+500*time.Millisecond,
		func() {
			m0, _ = metrics(s.adminURL())
			c0 = cpuTime(caddy.pid())
			f0, b0 = cpuTime(fake.pid()), systemBusy()
			q := "?seconds=" + strconv.Itoa(secs)
			go fetch("/debug/pprof/profile"+q, cpuFile)
			go fetch("/debug/pprof/allocs"+q, allocFile)
		},
		func() {
			m1, _ = metrics(s.adminURL())
			c1 = cpuTime(caddy.pid())
			f1, b1 = cpuTime(fake.pid()), systemBusy()
		})
	closeClients(clients)
	for range 2 {
		if err := <-errs; err != nil {
			return err
		}
	}
	n := float64(res.ok + res.failed())
	fmt.Printf("==== (%s) %s: %d requests in %s (%.0f req/s), p50 %s, p99 %s, failed %d; Caddy CPU %s/req, %.0f allocs/req, %.0f B/req\n",
		t.key, t.name, res.ok+res.failed(), res.window.Round(time.Millisecond), res.rps(), fmtDur(res.pct(0.5)), fmtDur(res.pct(0.99)), res.failed(),
		fmtDur(time.Duration(float64(c1-c0)/n)),
		(m1["go_memstats_mallocs_total"]-m0["go_memstats_mallocs_total"])/n,
		(m1["go_memstats_alloc_bytes_total"]-m0["go_memstats_alloc_bytes_total"])/n)
	other := max((b1-b0)-(c1-c0)-(f1-f0)-res.loadCPU, 0)
	fmt.Printf("     (a profile second of CPU is %.1f µs per request at this rate; other processes used %.0f%% of a core meanwhile)\n\n",
		1e6/res.rps(), 100*other.Seconds()/res.window.Seconds())

	pprof := func(title string, args ...string) {
		fmt.Printf("---- (%s) %s: go tool pprof %v\n", t.key, title, args)
		cmd := exec.Command("go", append([]string{"tool", "pprof"}, args...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Printf("(go tool pprof failed: %v)\n", err)
		}
		fmt.Println()
	}
	bin := o.caddyBin
	// The target's own code: the chatkit package for (a), the proxy's
	// handlers for (b).
	own, ownName := `caddy-chatkit/caddy-chatkit\.`, "the chatkit package's functions"
	if t.key == "b" {
		own, ownName = `caddyhttp/(reverseproxy|requestbody|rewrite)\.`, "the reverse_proxy, request_body and rewrite handlers"
	}
	pprof("CPU, top 25 by flat time", "-top", "-nodecount=25", bin, cpuFile)
	pprof("CPU, top 25 by cumulative time", "-top", "-cum", "-nodecount=25", bin, cpuFile)
	pprof("CPU, "+ownName+" by cumulative time (flat includes the library code they call directly)", "-top", "-cum", "-nodecount=30", "-show="+own, bin, cpuFile)
	if t.key == "a" {
		pprof("CPU, what the module's costliest functions call", "-peek",
			`caddy-chatkit\.\(\*Handler\)\.(mint|finish)$|caddy-chatkit\.\(\*upstreamClient\)\.post$|caddy-chatkit\.decodeSession$|caddy-chatkit\.\(\*exchange\)\.writeJSON$`, bin, cpuFile)
	}
	pprof("allocations, top 25 by objects", "-top", "-nodecount=25", "-sample_index=alloc_objects", bin, allocFile)
	pprof("allocations, top 25 by bytes", "-top", "-nodecount=25", "-sample_index=alloc_space", bin, allocFile)
	pprof("allocations by "+ownName+", cumulative objects", "-top", "-cum", "-nodecount=30", "-sample_index=alloc_objects", "-show="+own, bin, allocFile)
	return nil
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// proc is a server process the harness started (Caddy or the fake).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

var (
	procsMu sync.Mutex
	procs   = map[*proc]bool{}
	// stoppers run after the processes stop (atStop).
	stoppers []func()
)

// startProc runs argv pinned to cpus (a taskset list, "" for no pinning)
// with GOMAXPROCS set to gomaxprocs (0 leaves it alone), output to logPath.
func startProc(name string, argv []string, cpus string, gomaxprocs int, env []string, logPath string, stdout io.Writer) (*proc, error) {
	if cpus != "" {
		argv = append([]string{"taskset", "-c", cpus}, argv...)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	if gomaxprocs > 0 {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(gomaxprocs))
	}
	cmd.Stderr = logf
	cmd.Stdout = logf
	if stdout != nil {
		cmd.Stdout = io.MultiWriter(logf, stdout)
	}
	// Own process group, so a Ctrl-C at the terminal reaches the harness
	// first and it stops the servers in order; and SIGTERM if the harness
	// dies without doing so (killed, or a closed stdout pipe).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	procsMu.Lock()
	procs[p] = true
	procsMu.Unlock()
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to 10 s, then SIGKILL. Only this process
// (by its pid) is signalled.
func (p *proc) stop() {
	procsMu.Lock()
	delete(procs, p)
	procsMu.Unlock()
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// atStop registers f to run once by stopAll, after the processes are
// stopped (the PostgreSQL cluster, which outlives every Caddy).
func atStop(f func()) {
	procsMu.Lock()
	stoppers = append(stoppers, f)
	procsMu.Unlock()
}

// kill ends the process at once (SIGKILL, as a crash) and waits for it.
func (p *proc) kill() {
	procsMu.Lock()
	delete(procs, p)
	procsMu.Unlock()
	_ = p.cmd.Process.Kill()
	<-p.done
}

func stopAll() {
	procsMu.Lock()
	list := make([]*proc, 0, len(procs))
	for p := range procs {
		list = append(list, p)
	}
	after := stoppers
	stoppers = nil
	procsMu.Unlock()
	for _, p := range list {
		p.stop()
	}
	for _, f := range after {
		f()
	}
}

// memKB returns VmRSS and VmHWM of pid in kB.
func memKB(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	if hwm == 0 {
		return 0, 0, fmt.Errorf("no VmHWM for pid %d", pid)
	}
	return rss, hwm, nil
}

// cpuTime is the user+system CPU time pid has used so far.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// After the comm field: state is f[0], utime is field 14 overall = f[11].
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / clockTicks
}

// statFields are the fields of /proc/<pid>/stat after the command name
// (f[0] is field 3, the state), nil when pid is gone.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// parentPID is pid's parent, 0 when pid is gone.
func parentPID(pid int) int {
	f := statFields(pid)
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// reapedCPU is the user+system CPU time of pid's children that have ended
// and been waited for (cutime, cstime).
func reapedCPU(pid int) time.Duration {
	f := statFields(pid)
	if len(f) < 15 {
		return 0
	}
	u, _ := strconv.ParseInt(f[13], 10, 64)
	st, _ := strconv.ParseInt(f[14], 10, 64)
	return time.Duration(u+st) * time.Second / clockTicks
}

// selfCPU is the harness's own CPU time (all threads).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// ctlClient talks to admin APIs and the fake's control paths; it never
// shares connections with the load.
var ctlClient = &http.Client{Timeout: 120 * time.Second, Transport: &http.Transport{DisableCompression: true}}

func httpGet(url string) ([]byte, int, error) {
	resp, err := ctlClient.Get(url)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

func httpPost(url, contentType string, body []byte) ([]byte, int, error) {
	resp, err := ctlClient.Post(url, contentType, bytes.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

// waitHTTP polls url until it answers (any status) or the deadline passes.
func waitHTTP(p *proc, url string, timeout time.Duration) error {
	return waitHTTPWith(&http.Client{Timeout: time.Second}, p, url, timeout)
}

func waitHTTPWith(c *http.Client, p *proc, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited during startup (%v); see %s", p.name, p.err, p.log)
		}
		resp, err := c.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not answering at %s after %s", p.name, url, timeout)
}

// metrics scrapes the admin /metrics endpoint into name -> value for
// unlabelled series and name{labels} -> value for labelled ones.
func metrics(adminURL string) (map[string]float64, error) {
	b, status, err := httpGet(adminURL + "/metrics")
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("/metrics: status %d", status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// goroutines reads the first line of /debug/pprof/goroutine?debug=1,
// "goroutine profile: total N".
func goroutines(adminURL string) (int, error) {
	b, _, err := httpGet(adminURL + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	first, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(first))
	if len(f) == 0 {
		return 0, errors.New("empty goroutine profile")
	}
	return strconv.Atoi(f[len(f)-1])
}

// servers is the fixed layout of one run: ports stay the same across the
// Caddy and fake restarts so cookies, origins and api_base stay valid.
type servers struct {
	opts      *options
	work      string
	fakePort  int
	sitePort  int
	adminPort int
	// seq numbers the files of the run; shared by copies of servers that
	// differ in their ports (the soak's second Caddy).
	seq *int
	// pg is the run's PostgreSQL server, once a store needed it.
	pg *pgServer
	// streamFake is the fake of the agent streams run (its CPU is ours).
	streamFake *proc
	// fakeTLS, when set, makes the fakes serve HTTPS and Caddy trust them.
	fakeTLS *fakeTLS
}

// next is the next number for a file of the run.
func (s *servers) next() int {
	*s.seq++
	return *s.seq
}

func (s *servers) fakeURL() string {
	if s.fakeTLS != nil {
		return fmt.Sprintf("https://127.0.0.1:%d", s.fakePort)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", s.fakePort)
}

// fakeClient reaches the fake, over TLS when it serves it.
func (s *servers) fakeClient(timeout time.Duration) *http.Client {
	c := &http.Client{Timeout: timeout}
	if s.fakeTLS != nil {
		c.Transport = s.fakeTLS.transport()
	}
	return c
}
func (s *servers) siteURL() string  { return fmt.Sprintf("http://127.0.0.1:%d", s.sitePort) }
func (s *servers) adminURL() string { return fmt.Sprintf("http://127.0.0.1:%d", s.adminPort) }

// startFake runs the fake upstream with extra fakeserver flags.
func (s *servers) startFake(extra ...string) (*proc, error) {
	seq := s.next()
	argv := append([]string{s.opts.fakeBin, "-listen", fmt.Sprintf("127.0.0.1:%d", s.fakePort)}, extra...)
	if s.fakeTLS != nil {
		argv = append(argv, "-tls-cert", s.fakeTLS.certFile, "-tls-key", s.fakeTLS.keyFile)
	}
	p, err := startProc("fakeserver", argv,
		s.opts.fakeCPUs, 1, nil, filepath.Join(s.work, fmt.Sprintf("fake-%03d.log", seq)), nil)
	if err != nil {
		return nil, err
	}
	if err := waitHTTPWith(s.fakeClient(time.Second), p, s.fakeURL()+"/bench/count", 10*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// startCaddy writes caddyfile and runs Caddy on it.
// startStack starts the fake upstream and a Caddy running conf, the pair
// most runs need; on error nothing is left running.
func (s *servers) startStack(conf caddyConf) (fake, caddy *proc, err error) {
	if fake, err = s.startFake(); err != nil {
		return nil, nil, err
	}
	if caddy, err = s.startCaddy(s.caddyfile(conf)); err != nil {
		fake.stop()
		return nil, nil, err
	}
	return fake, caddy, nil
}

func (s *servers) startCaddy(caddyfile string) (*proc, error) {
	seq := s.next()
	cfg := filepath.Join(s.work, fmt.Sprintf("Caddyfile-%03d", seq))
	if err := os.WriteFile(cfg, []byte(caddyfile), 0o644); err != nil {
		return nil, err
	}
	home := filepath.Join(s.work, "home")
	env := []string{
		"HOME=" + home,
		"XDG_DATA_HOME=" + filepath.Join(home, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(home, "config"),
	}
	if s.fakeTLS != nil {
		env = append(env, "SSL_CERT_FILE="+s.fakeTLS.certFile)
	}
	p, err := startProc("caddy", []string{s.opts.caddyBin, "run", "--config", cfg, "--adapter", "caddyfile"},
		s.opts.serverCPUs, s.opts.serverProcs, env, filepath.Join(s.work, fmt.Sprintf("caddy-%03d.log", seq)), nil)
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(p, s.adminURL()+"/config/", 30*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	if err := waitHTTP(p, s.siteURL()+"/", 30*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// reload posts a new Caddyfile to the admin API's /load.
func (s *servers) reload(ctx context.Context, caddyfile string) (time.Duration, error) {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.adminURL()+"/load", strings.NewReader(caddyfile))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := ctlClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return time.Since(start), fmt.Errorf("/load: status %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	return time.Since(start), nil
}

// systemBusy is the CPU time all CPUs spent outside idle and iowait since
// boot, from the first line of /proc/stat.
func systemBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	// user nice system idle iowait irq softirq steal
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// waitQuiet waits, up to maxWait, until the machine is nearly idle (other
// processes using under 15% of one core over a second), so that other work
// on a shared machine does not end up in the numbers. It returns the
// share of a core others were using when it gave up or went ahead.
func waitQuiet(maxWait time.Duration) float64 {
	deadline := time.Now().Add(maxWait)
	warned := false
	for {
		b0, s0 := systemBusy(), selfCPU()
		time.Sleep(time.Second)
		busy := (systemBusy() - b0) - (selfCPU() - s0)
		share := busy.Seconds()
		if share < 0.15 {
			return share
		}
		if time.Now().After(deadline) {
			fmt.Printf("WARNING: other processes still use %.0f%% of a core after waiting %s; measuring anyway\n", 100*share, maxWait)
			return share
		}
		if !warned {
			fmt.Printf("waiting for the machine to quiet down (other processes use %.0f%% of a core)…\n", 100*share)
			warned = true
		}
	}
}

// Command fakeserver runs the fake OpenAI API (internal/fakeopenai)
// as its own process for the load harness (bench/loadtest), so its CPU is
// neither the load generator's nor Caddy's and it can be pinned to a core.
//
//	fakeserver -listen 127.0.0.1:0 -event-interval 20ms
//
// It prints "listening http://127.0.0.1:PORT" once it serves (https with
// -tls-cert). Paths:
//
//	/v1/...         the fake API: create and cancel sessions, answering at once;
//	                POST /v1/responses, streaming an event every -event-interval
//	                (with -stamp-deltas each text delta starts with the time it
//	                was written, for timing the events' trip)
//	/bench/arm      capture the next create request (POST)
//	/bench/last     the captured create request as JSON (method, path, status,
//	                header, body), to check two targets make the same call
//	/bench/count    create requests received since start
//
// The fake keeps a record of every request in memory; fakeserver drops the
// records every -reset interval so a long run stays flat. The capture is off
// unless armed, so the hot path only counts.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

const createPath = "/v1/chatkit/sessions"

type captured struct {
	Method string      `json:"method"`
	Path   string      `json:"path"`
	Status int         `json:"status"`
	Header http.Header `json:"header"`
	Body   string      `json:"body"`
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback host:port to serve on")
	reset := flag.Duration("reset", 250*time.Millisecond, "how often the fake's request and session records are dropped")
	eventInterval := flag.Duration("event-interval", 0, "wait between the events of a /v1/responses stream")
	stamp := flag.Bool("stamp-deltas", false, "start every streamed text delta with \"~<unix ns>~\", the time it was written")
	tlsCert := flag.String("tls-cert", "", "serve HTTPS (and HTTP/2, as OpenAI does) with this PEM certificate; needs -tls-key")
	tlsKey := flag.String("tls-key", "", "the PEM key of -tls-cert")
	flag.Parse()

	host, _, err := net.SplitHostPort(*listen)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		log.Fatalf("fakeserver: -listen must be a loopback ip:port, got %q", *listen)
	}

	fake := fakeopenai.New(fakeopenai.Options{EventInterval: *eventInterval})
	defer fake.Close()
	api := fake.Handler()
	if *stamp {
		api = stampDeltas(api)
	}

	var (
		creates atomic.Int64
		armed   atomic.Bool
		mu      sync.Mutex
		last    *captured
	)
	go func() {
		t := time.NewTicker(*reset)
		defer t.Stop()
		for range t.C {
			fake.Reset()
		}
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		isCreate := r.Method == http.MethodPost && r.URL.Path == createPath
		if isCreate {
			creates.Add(1)
		}
		if !isCreate || !armed.Load() {
			api.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, fakeopenai.MaxBodyBytes))
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := &statusRecorder{ResponseWriter: w}
		api.ServeHTTP(rec, r)
		if armed.CompareAndSwap(true, false) {
			mu.Lock()
			last = &captured{Method: r.Method, Path: r.URL.Path, Status: rec.status, Header: r.Header.Clone(), Body: string(body)}
			mu.Unlock()
		}
	})
	mux.HandleFunc("/bench/arm", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		last = nil
		mu.Unlock()
		armed.Store(true)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/bench/last", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(last)
	})
	mux.HandleFunc("/bench/count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, creates.Load())
	})

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("fakeserver: %v", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	scheme := "http"
	if *tlsCert != "" {
		scheme = "https"
	}
	fmt.Printf("listening %s://%s\n", scheme, ln.Addr())

	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		<-ch
		_ = srv.Close()
	}()
	if *tlsCert != "" {
		// ServeTLS negotiates h2 by ALPN.
		err = srv.ServeTLS(ln, *tlsCert, *tlsKey)
	} else {
		err = srv.Serve(ln)
	}
	if err != nil && err != http.ErrServerClosed {
		log.Fatalf("fakeserver: %v", err)
	}
}

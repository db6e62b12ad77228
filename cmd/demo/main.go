// Command demo runs Caddy with the chatkit module in-process as a ChatKit
// server (the agent mode) and serves a small chat page for it:
//
//	go run ./cmd/demo
//
// then open http://localhost:8080/. With OPENAI_API_KEY set the agent talks
// to OpenAI for real (model gpt-5-mini unless -model says otherwise);
// otherwise it starts the built-in fake OpenAI API on 127.0.0.1, which
// searches caddyserver.com (a hosted web search, shown while it runs) and
// answers "You said: …" word by word, citing the page it found. Threads are kept in SQLite under the
// demo's cache directory. With CHATKIT_WORKFLOW_ID set the block also mints
// ChatKit client secrets for that workflow (hosted mode) and the page shows
// the token flow. Ctrl-C stops it.
package main

import (
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"math"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-chatkit/caddy-chatkit"
	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

//go:embed page
var pageFS embed.FS

const (
	// defaultModel is the model the agent asks OpenAI for.
	defaultModel = "gpt-5-mini"
	// fakeEventInterval paces the fake's answer so it visibly streams.
	fakeEventInterval = 60 * time.Millisecond
	// threadsFile is the agent's SQLite database, in the storage directory.
	threadsFile = "threads.db"
	// instructions are the agent's system prompt.
	instructions = "You are the assistant of the caddy-chatkit demo page. Answer briefly and plainly."
)

// options configure one run of the demo.
type options struct {
	// Listen is host:port for the demo site, e.g. "localhost:8080".
	Listen string
	// StorageDir is Caddy's storage (it keeps the cookie signing key) and
	// holds the agent's threads (threads.db).
	StorageDir string
	// Model is the OpenAI model the agent uses with a real key; default
	// gpt-5-mini.
	Model string
	// FakeEventInterval is the wait between the fake's stream events;
	// default 60ms.
	FakeEventInterval time.Duration
	// Getenv reads the environment; os.Getenv when nil.
	Getenv func(string) string
	// Logf prints the demo's own messages; log.Printf when nil.
	Logf func(format string, args ...any)
	// OnReady, when set, is called with the site's URL once Caddy serves.
	OnReady func(siteURL string)
}

func main() {
	listen := flag.String("listen", "localhost:8080", "host:port the demo site listens on")
	model := flag.String("model", defaultModel, "OpenAI model the agent uses when OPENAI_API_KEY is set")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	err := run(ctx, options{Listen: *listen, StorageDir: defaultStorageDir(), Model: *model})
	if err != nil {
		log.Printf("demo: %v", err)
		os.Exit(1)
	}
}

// defaultStorageDir is under the user's cache directory, so the anonymous
// cookie key (and with it the visitor ids) and the threads survive restarts
// of the demo.
func defaultStorageDir() string {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "caddy-chatkit-demo")
}

// run serves the demo until ctx is done, then stops Caddy and the fake.
func run(ctx context.Context, opts options) error {
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	logf := opts.Logf
	if logf == nil {
		logf = log.Printf
	}
	host, port, err := net.SplitHostPort(opts.Listen)
	if err != nil {
		return fmt.Errorf("-listen must be host:port: %v", err)
	}
	if opts.StorageDir == "" {
		return errors.New("no storage directory")
	}
	if err := os.MkdirAll(opts.StorageDir, 0o700); err != nil {
		return err
	}

	// The page is embedded in the binary; file_server needs it on disk.
	root, err := os.MkdirTemp("", "caddy-chatkit-demo-page-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	page, _ := fs.Sub(pageFS, "page")
	if err := os.CopyFS(root, page); err != nil {
		return fmt.Errorf("writing the demo page: %v", err)
	}

	// The upstream: OpenAI with a key, else the fake. Placeholders, not the
	// values: Caddy resolves them when it loads the config, so the key never
	// appears in the config itself.
	apiKey := strings.TrimSpace(getenv("OPENAI_API_KEY"))
	minting := strings.TrimSpace(getenv("CHATKIT_WORKFLOW_ID")) != ""
	cfg := demoConfig{Backend: "openai", Model: cmp.Or(opts.Model, defaultModel), Minting: minting}
	var upstream string
	// Files go to the model inline, so the demo takes them with either
	// backend (the fake checks how they are sent, as OpenAI would).
	tools := "attachments on"
	if apiKey != "" {
		upstream = "api_key {env.OPENAI_API_KEY}"
		logf("OPENAI_API_KEY is set: the agent talks to OpenAI for real, model %s", cfg.Model)
	} else {
		cfg.Backend = "fake"
		interval := cmp.Or(opts.FakeEventInterval, fakeEventInterval)
		fake := fakeopenai.New(fakeopenai.Options{EventInterval: interval})
		defer fake.Close()
		upstream = fmt.Sprintf("api_base %s\n\t\tapi_key %s", fake.URL(), fakeopenai.DefaultAPIKey)
		// Every fake answer searches caddyserver.com first and cites it, so
		// the page shows a tool in progress and a cited answer.
		tools += "\n\t\t\tweb_search " + demoSearchDomain
		fake.ScriptResponse(demoFakeScript())
		logf("no OPENAI_API_KEY: the agent answers from the built-in fake OpenAI at %s, which echoes \"You said: …\" word by word every %v (no model runs)", fake.URL(), interval)
	}
	if minting {
		upstream += "\n\t\tworkflow {env.CHATKIT_WORKFLOW_ID}"
		if apiKey == "" {
			logf("CHATKIT_WORKFLOW_ID is set: the block also mints client secrets, from the fake (they are not real)")
		} else {
			logf("CHATKIT_WORKFLOW_ID is set: the block also mints client secrets for that workflow")
		}
	}
	// The page reads this to say what it talks to.
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "demo-config.json"), append(cfgJSON, '\n'), 0o644); err != nil {
		return err
	}

	threads := filepath.Join(opts.StorageDir, threadsFile)
	caddyfile := demoCaddyfile(host, port, opts.StorageDir, root, upstream, cfg.Model, threads, tools)
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		return errors.New("the caddyfile adapter is not registered")
	}
	caddyJSON, warnings, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": "demo"})
	if err != nil {
		return fmt.Errorf("adapting the demo Caddyfile: %v", err)
	}
	for _, w := range warnings {
		logf("caddyfile warning: %s", w.String())
	}
	if err := caddy.Load(caddyJSON, true); err != nil {
		return fmt.Errorf("starting Caddy (is %s already in use? try -listen): %v", opts.Listen, err)
	}
	defer func() {
		if err := caddy.Stop(); err != nil {
			logf("stopping Caddy: %v", err)
		}
	}()

	site := "http://" + net.JoinHostPort(displayHost(host), port) + "/"
	logf("demo ready: open %s (Ctrl-C to stop); threads in %s", site, threads)
	if opts.OnReady != nil {
		opts.OnReady(site)
	}
	<-ctx.Done()
	logf("stopping")
	return nil
}

// demoConfig is demo-config.json, what the page shows about the setup.
type demoConfig struct {
	// Backend is "fake" or "openai".
	Backend string `json:"backend"`
	// Model is the model the agent asks for (the fake takes any name).
	Model string `json:"model"`
	// Minting is true when the block also has a workflow.
	Minting bool `json:"minting"`
}

// demoSearchDomain is the one domain the fake's web search covers.
const demoSearchDomain = "caddyserver.com"

// demoFakeScript makes every fake answer (the echo) come after a web
// search, citing the page it "found" at the end of "You said".
func demoFakeScript() fakeopenai.ResponseScript {
	return fakeopenai.ResponseScript{
		Times:  math.MaxInt32,
		Hosted: []fakeopenai.HostedCall{{Type: fakeopenai.HostedWebSearch}},
		Annotations: []fakeopenai.Annotation{{Type: "url_citation", URL: "https://caddyserver.com/docs/",
			Title: "Caddy documentation", StartIndex: 0, EndIndex: len("You said")}},
	}
}

// demoCaddyfile is the whole demo site: the chatkit handler (the agent,
// and minting when upstream names a workflow) in front of a file server for
// the page. tools are extra agent options (the fake's web search).
func demoCaddyfile(host, port, storageDir, pageRoot, upstream, model, threads, tools string) string {
	bind := ""
	if host != "" {
		bind = "bind " + host
	}
	return fmt.Sprintf(`{
	admin off
	persist_config off
	grace_period 2s
	storage file_system %s
}

http://:%s {
	%s
	chatkit {
		%s
		agent {
			model %s
			instructions %q
			store sqlite %s
			%s
		}
	}
	root * %s
	file_server
}
`, quote(storageDir), port, bind, upstream, model, instructions, quote(threads), tools, quote(pageRoot))
}

// quote makes a path one Caddyfile token.
func quote(s string) string {
	if strings.ContainsAny(s, " \t\"{}#") && !strings.Contains(s, "`") {
		return "`" + s + "`"
	}
	return s
}

func displayHost(host string) string {
	if host == "" || host == "0.0.0.0" || host == "::" {
		return "localhost"
	}
	return host
}

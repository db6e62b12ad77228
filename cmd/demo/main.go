// Command demo runs Caddy with the chatkit module in-process and serves a
// small page for trying the token flow:
//
//	go run ./cmd/demo
//
// then open http://localhost:8080/. With OPENAI_API_KEY and
// CHATKIT_WORKFLOW_ID both set it mints real ChatKit sessions; otherwise it
// starts the built-in fake OpenAI API on 127.0.0.1 and the secrets it shows
// are not real. Ctrl-C stops it.
package main

import (
	"context"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-chatkit/caddy-chatkit"
	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

//go:embed page
var pageFS embed.FS

// fakeWorkflow is the workflow id sent to the fake, which knows every wf_ id.
const fakeWorkflow = "wf_demo"

// options configure one run of the demo.
type options struct {
	// Listen is host:port for the demo site, e.g. "localhost:8080".
	Listen string
	// StorageDir is Caddy's storage (it keeps the cookie signing key).
	StorageDir string
	// Getenv reads the environment; os.Getenv when nil.
	Getenv func(string) string
	// Logf prints the demo's own messages; log.Printf when nil.
	Logf func(format string, args ...any)
	// OnReady, when set, is called with the site's URL once Caddy serves.
	OnReady func(siteURL string)
}

func main() {
	listen := flag.String("listen", "localhost:8080", "host:port the demo site listens on")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	err := run(ctx, options{Listen: *listen, StorageDir: defaultStorageDir()})
	if err != nil {
		log.Printf("demo: %v", err)
		os.Exit(1)
	}
}

// defaultStorageDir is under the user's cache directory, so the anonymous
// cookie key (and with it the visitor ids) survives restarts of the demo.
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

	// The upstream: OpenAI when both variables are set, else the fake.
	apiKey := strings.TrimSpace(getenv("OPENAI_API_KEY"))
	workflow := strings.TrimSpace(getenv("CHATKIT_WORKFLOW_ID"))
	var chatkit, backend string
	if apiKey != "" && workflow != "" {
		backend = "openai"
		// Placeholders, not the values: Caddy resolves them when it loads
		// the config, so the key never appears in the config itself.
		chatkit = "api_key {env.OPENAI_API_KEY}\n\t\tworkflow {env.CHATKIT_WORKFLOW_ID}"
		logf("using OpenAI for real: api_key {env.OPENAI_API_KEY}, workflow {env.CHATKIT_WORKFLOW_ID}")
	} else {
		backend = "fake"
		fake := fakeopenai.New(fakeopenai.Options{})
		defer fake.Close()
		if apiKey != "" || workflow != "" {
			logf("only one of OPENAI_API_KEY and CHATKIT_WORKFLOW_ID is set; both are needed to use OpenAI")
		}
		logf("no OPENAI_API_KEY/CHATKIT_WORKFLOW_ID: using the built-in fake OpenAI at %s, secrets are not real", fake.URL())
		chatkit = fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\tworkflow %s", fake.URL(), fakeopenai.DefaultAPIKey, fakeWorkflow)
	}
	// The page reads this to say which backend it talks to.
	if err := os.WriteFile(filepath.Join(root, "demo-config.json"), []byte(`{"backend":"`+backend+`"}`+"\n"), 0o644); err != nil {
		return err
	}

	caddyfile := demoCaddyfile(host, port, opts.StorageDir, root, chatkit)
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		return errors.New("the caddyfile adapter is not registered")
	}
	cfgJSON, warnings, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": "demo"})
	if err != nil {
		return fmt.Errorf("adapting the demo Caddyfile: %v", err)
	}
	for _, w := range warnings {
		logf("caddyfile warning: %s", w.String())
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		return fmt.Errorf("starting Caddy (is %s already in use? try -listen): %v", opts.Listen, err)
	}
	defer func() {
		if err := caddy.Stop(); err != nil {
			logf("stopping Caddy: %v", err)
		}
	}()

	site := "http://" + net.JoinHostPort(displayHost(host), port) + "/"
	logf("demo ready: open %s (Ctrl-C to stop); Caddy storage in %s", site, opts.StorageDir)
	if opts.OnReady != nil {
		opts.OnReady(site)
	}
	<-ctx.Done()
	logf("stopping")
	return nil
}

// demoCaddyfile is the whole demo site: the chatkit handler in front of a
// file server for the page.
func demoCaddyfile(host, port, storageDir, pageRoot, chatkit string) string {
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
	}
	root * %s
	file_server
}
`, quote(storageDir), port, bind, chatkit, quote(pageRoot))
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

package chatkit

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	// The golden Caddyfiles use standard directives (file_server,
	// php_fastcgi, basic_auth, ...).
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// updateAdaptGolden rewrites the expected JSON of the golden adapt files:
//
//	go test -run TestAdapt -update
//
// Read the diff before committing it.
var updateAdaptGolden = flag.Bool("update", false, "rewrite the expected JSON in testdata/adapt/*.caddytest")

// adaptSeparator divides a golden file's Caddyfile from its expected JSON.
const adaptSeparator = "----------"

// splitAdaptGolden returns the Caddyfile and expected JSON of a golden file.
func splitAdaptGolden(data string) (caddyfileText, expected string, ok bool) {
	data = strings.ReplaceAll(data, "\r\n", "\n")
	before, after, found := strings.Cut(data, "\n"+adaptSeparator+"\n")
	if !found {
		return "", "", false
	}
	return strings.TrimSpace(before) + "\n", strings.TrimSpace(after), true
}

// adaptCaddyfile adapts a Caddyfile to JSON indented the way
// caddytest.CompareAdapt prints it.
func adaptCaddyfile(t *testing.T, caddyfileText string) (string, []caddyconfig.Warning) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("caddyfile adapter not registered")
	}
	raw, warnings, err := adapter.Adapt([]byte(caddyfileText), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "\t"); err != nil {
		t.Fatalf("indenting %s: %v", raw, err)
	}
	return buf.String(), warnings
}

func TestAdaptGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "adapt", "*.caddytest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 5 {
		t.Fatalf("found %d golden files in testdata/adapt, want at least 5", len(files))
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".caddytest"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			cf, expected, ok := splitAdaptGolden(string(data))
			if !ok {
				t.Fatalf("%s: no %q line between the Caddyfile and the JSON", file, adaptSeparator)
			}
			if !strings.Contains(cf, "chatkit") {
				t.Fatalf("%s: the Caddyfile does not use chatkit", file)
			}

			got, warnings := adaptCaddyfile(t, cf)
			// Warnings include "input is not formatted", so golden
			// Caddyfiles stay in `caddy fmt` shape.
			for _, w := range warnings {
				t.Errorf("adapt warning: %s:%d: %s: %s", file, w.Line, w.Directive, w.Message)
			}
			if !strings.Contains(got, `"handler": "chatkit"`) {
				t.Errorf("adapted JSON has no chatkit handler:\n%s", got)
			}

			if *updateAdaptGolden {
				out := cf + adaptSeparator + "\n" + got + "\n"
				if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				t.Logf("rewrote %s", file)
				return
			}
			// file_server hides the Caddyfile by an OS-specific path.
			hidden, _ := json.Marshal("." + string(filepath.Separator) + "Caddyfile")
			expected = strings.ReplaceAll(expected, `"./Caddyfile"`, string(hidden))
			if !caddytest.CompareAdapt(t, file, cf, "caddyfile", expected) {
				t.Errorf("%s: adapted JSON differs from the golden JSON (diff above; -update rewrites it)", file)
			}
		})
	}
}

// TestAdaptGoldenDecodes checks that the chatkit handlers in every golden
// JSON decode strictly into Handler, so the golden files cannot hold
// fields the module does not know.
func TestAdaptGoldenDecodes(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "adapt", "*.caddytest"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		_, expected, ok := splitAdaptGolden(string(data))
		if !ok {
			t.Fatalf("%s: no separator", file)
		}
		var doc any
		if err := json.Unmarshal([]byte(expected), &doc); err != nil {
			t.Fatalf("%s: expected JSON does not parse: %v", file, err)
		}
		handlers := adaptFindChatkit(doc)
		if len(handlers) == 0 {
			t.Errorf("%s: no chatkit handler in the expected JSON", file)
		}
		for _, m := range handlers {
			delete(m, "handler")
			raw, _ := json.Marshal(m)
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			var h Handler
			if err := dec.Decode(&h); err != nil {
				t.Errorf("%s: chatkit handler %s: %v", file, raw, err)
			} else if (h.Workflow == nil || h.Workflow.ID == "") && len(h.Protect) == 0 && h.Agent == nil {
				t.Errorf("%s: chatkit handler with neither a workflow id, protect nor agent: %s", file, raw)
			}
		}
	}
}

// adaptFindChatkit returns every object with "handler": "chatkit" in v.
func adaptFindChatkit(v any) []map[string]any {
	var found []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == "chatkit" {
			found = append(found, v)
		}
		for _, child := range v {
			found = append(found, adaptFindChatkit(child)...)
		}
	case []any:
		for _, child := range v {
			found = append(found, adaptFindChatkit(child)...)
		}
	}
	return found
}

// adaptHandlerOrder lists the handlers of a site's routes in order,
// descending into subroutes.
func adaptHandlerOrder(v any) []string {
	var names []string
	switch v := v.(type) {
	case map[string]any:
		if name, ok := v["handler"].(string); ok {
			names = append(names, name)
		}
		// Visit "routes" and "handle" in document order; map order is
		// irrelevant because a route holds one or the other.
		for _, key := range []string{"routes", "handle"} {
			if child, ok := v[key]; ok {
				names = append(names, adaptHandlerOrder(child)...)
			}
		}
	case []any:
		for _, child := range v {
			names = append(names, adaptHandlerOrder(child)...)
		}
	}
	return names
}

// TestAdaptDirectiveOrder checks that chatkit runs ahead of the handlers
// that answer requests, wherever it is written in the site block and
// without a global `order` option.
func TestAdaptDirectiveOrder(t *testing.T) {
	const cf = `example.com {
	respond /ping "pong"
	handle /docs/* {
		file_server
	}
	reverse_proxy /backend/* localhost:9000
	php_fastcgi localhost:9001
	file_server
	encode
	chatkit {
		workflow wf_1
	}
}
`
	got, _ := adaptCaddyfile(t, cf)
	var doc any
	if err := json.Unmarshal([]byte(got), &doc); err != nil {
		t.Fatal(err)
	}
	servers, _ := doc.(map[string]any)["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
	if len(servers) != 1 {
		t.Fatalf("want one server, got %d:\n%s", len(servers), got)
	}
	var order []string
	for _, srv := range servers {
		order = adaptHandlerOrder(srv)
	}
	index := func(name string) int {
		for i, n := range order {
			if n == name {
				return i
			}
		}
		t.Fatalf("no %s handler in %v", name, order)
		return -1
	}
	ck := index("chatkit")
	for _, later := range []string{"static_response", "reverse_proxy", "file_server", "rewrite"} {
		if i := index(later); i < ck {
			t.Errorf("%s (position %d) runs before chatkit (position %d): %v", later, i, ck, order)
		}
	}
	// encode wraps the responses of everything after it, chatkit included.
	if i := index("encode"); i > ck {
		t.Errorf("encode (position %d) runs after chatkit (position %d): %v", i, ck, order)
	}
}

package chatkit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// cfBool returns a pointer to b (struct literals need addressable bools).
func cfBool(b bool) *bool { return &b }

// cfJSON renders v for failure messages.
func cfJSON(v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Sprintf("%#v (marshal error: %v)", v, err)
	}
	return string(b)
}

// cfParse runs the Caddyfile parser over input.
func cfParse(input string) (*Handler, error) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return h, err
}

func TestParseCaddyfile(t *testing.T) {
	wf := func(id string) *Workflow { return &Workflow{ID: id} }

	tests := []struct {
		name  string
		input string
		want  Handler
	}{
		{
			name: "minimal",
			input: `chatkit {
				workflow wf_123
			}`,
			want: Handler{Workflow: wf("wf_123")},
		},
		{
			name: "workflow placeholder",
			input: `chatkit {
				workflow {env.CHATKIT_WORKFLOW_ID}
			}`,
			want: Handler{Workflow: wf("{env.CHATKIT_WORKFLOW_ID}")},
		},
		{
			name: "workflow with pinned version",
			input: `chatkit {
				workflow wf_123 7
			}`,
			want: Handler{Workflow: &Workflow{ID: "wf_123", Version: "7"}},
		},
		{
			name: "api_key",
			input: `chatkit {
				workflow wf_1
				api_key {file./run/secrets/openai}
			}`,
			want: Handler{Workflow: wf("wf_1"), APIKey: "{file./run/secrets/openai}"},
		},
		{
			name: "api_base",
			input: `chatkit {
				workflow wf_1
				api_base https://proxy.example.com/v1
			}`,
			want: Handler{Workflow: wf("wf_1"), APIBase: "https://proxy.example.com/v1"},
		},
		{
			name: "organization and project",
			input: `chatkit {
				workflow wf_1
				organization org_abc
				project proj_def
			}`,
			want: Handler{Workflow: wf("wf_1"), Organization: "org_abc", Project: "proj_def"},
		},
		{
			name: "tracing off",
			input: `chatkit {
				workflow wf_1
				tracing off
			}`,
			want: Handler{Workflow: &Workflow{ID: "wf_1", Tracing: cfBool(false)}},
		},
		{
			name: "tracing on before workflow",
			input: `chatkit {
				tracing on
				workflow wf_1
			}`,
			want: Handler{Workflow: &Workflow{ID: "wf_1", Tracing: cfBool(true)}},
		},
		{
			name: "state_variable repeated, before and after workflow",
			input: `chatkit {
				state_variable plan pro
				workflow wf_1 3
				state_variable user_name {http.auth.user.id}
				state_variable greeting "hello there"
				state_variable count 42
			}`,
			want: Handler{Workflow: &Workflow{
				ID:      "wf_1",
				Version: "3",
				StateVariables: map[string]any{
					"plan":      "pro",
					"user_name": "{http.auth.user.id}",
					"greeting":  "hello there",
					// The Caddyfile has no number syntax: values stay strings.
					"count": "42",
				},
			}},
		},
		{
			name: "paths",
			input: `chatkit {
				workflow wf_1
				start_path /chat/start
				refresh_path /chat/refresh
				health_path /chat/health
			}`,
			want: Handler{Workflow: wf("wf_1"), StartPath: "/chat/start", RefreshPath: "/chat/refresh", HealthPath: "/chat/health"},
		},
		{
			name: "health_path off",
			input: `chatkit {
				workflow wf_1
				health_path off
			}`,
			want: Handler{Workflow: wf("wf_1"), HealthPath: "off"},
		},
		{
			name: "user",
			input: `chatkit {
				workflow wf_1
				user {http.auth.user.id}
			}`,
			want: Handler{Workflow: wf("wf_1"), User: "{http.auth.user.id}"},
		},
		{
			name: "cookie options",
			input: `chatkit {
				workflow wf_1
				cookie_name visitor
				cookie_secret {env.CHATKIT_COOKIE_SECRET}
				cookie_max_age 7d
			}`,
			want: Handler{Workflow: wf("wf_1"), Cookie: &CookieConfig{
				Name:   "visitor",
				Secret: "{env.CHATKIT_COOKIE_SECRET}",
				MaxAge: caddy.Duration(7 * 24 * time.Hour),
			}},
		},
		{
			name: "cookie_max_age alone",
			input: `chatkit {
				workflow wf_1
				cookie_max_age 90m
			}`,
			want: Handler{Workflow: wf("wf_1"), Cookie: &CookieConfig{MaxAge: caddy.Duration(90 * time.Minute)}},
		},
		{
			name: "session_ttl and max_requests_per_minute",
			input: `chatkit {
				workflow wf_1
				session_ttl 5m
				max_requests_per_minute 25
			}`,
			want: Handler{Workflow: wf("wf_1"), SessionTTL: caddy.Duration(5 * time.Minute), MaxRequestsPerMinute: 25},
		},
		{
			name: "file_upload on without block",
			input: `chatkit {
				workflow wf_1
				file_upload on
			}`,
			want: Handler{Workflow: wf("wf_1"), ChatKitConfiguration: &ChatKitConfiguration{
				FileUpload: &FileUpload{Enabled: cfBool(true)},
			}},
		},
		{
			name: "file_upload off",
			input: `chatkit {
				workflow wf_1
				file_upload off
			}`,
			want: Handler{Workflow: wf("wf_1"), ChatKitConfiguration: &ChatKitConfiguration{
				FileUpload: &FileUpload{Enabled: cfBool(false)},
			}},
		},
		{
			name: "file_upload block",
			input: `chatkit {
				workflow wf_1
				file_upload on {
					max_file_size 20
					max_files 3
				}
				timeout 4s
			}`,
			want: Handler{Workflow: wf("wf_1"), Timeout: caddy.Duration(4 * time.Second), ChatKitConfiguration: &ChatKitConfiguration{
				FileUpload: &FileUpload{Enabled: cfBool(true), MaxFileSize: 20, MaxFiles: 3},
			}},
		},
		{
			name: "file_upload block with range bounds",
			input: `chatkit {
				workflow wf_1
				file_upload on {
					max_file_size 512
				}
			}`,
			want: Handler{Workflow: wf("wf_1"), ChatKitConfiguration: &ChatKitConfiguration{
				FileUpload: &FileUpload{Enabled: cfBool(true), MaxFileSize: 512},
			}},
		},
		{
			name: "file_upload empty block",
			input: `chatkit {
				workflow wf_1
				file_upload on {
				}
				max_body 1KiB
			}`,
			want: Handler{Workflow: wf("wf_1"), MaxBody: 1024, ChatKitConfiguration: &ChatKitConfiguration{
				FileUpload: &FileUpload{Enabled: cfBool(true)},
			}},
		},
		{
			name: "history block",
			input: `chatkit {
				workflow wf_1
				history off {
					recent_threads 5
				}
			}`,
			want: Handler{Workflow: wf("wf_1"), ChatKitConfiguration: &ChatKitConfiguration{
				History: &History{Enabled: cfBool(false), RecentThreads: 5},
			}},
		},
		{
			name: "history on without block",
			input: `chatkit {
				workflow wf_1
				history on
			}`,
			want: Handler{Workflow: wf("wf_1"), ChatKitConfiguration: &ChatKitConfiguration{
				History: &History{Enabled: cfBool(true)},
			}},
		},
		{
			name: "thread_titling",
			input: `chatkit {
				workflow wf_1
				thread_titling off
			}`,
			want: Handler{Workflow: wf("wf_1"), ChatKitConfiguration: &ChatKitConfiguration{
				AutomaticThreadTitling: &Toggle{Enabled: cfBool(false)},
			}},
		},
		{
			name: "all chatkit_configuration blocks together",
			input: `chatkit {
				workflow wf_1
				history on {
					recent_threads 12
				}
				thread_titling on
				file_upload off {
					max_files 2
				}
			}`,
			want: Handler{Workflow: wf("wf_1"), ChatKitConfiguration: &ChatKitConfiguration{
				AutomaticThreadTitling: &Toggle{Enabled: cfBool(true)},
				FileUpload:             &FileUpload{Enabled: cfBool(false), MaxFiles: 2},
				History:                &History{Enabled: cfBool(true), RecentThreads: 12},
			}},
		},
		{
			name: "timeout",
			input: `chatkit {
				workflow wf_1
				timeout 1m30s
			}`,
			want: Handler{Workflow: wf("wf_1"), Timeout: caddy.Duration(90 * time.Second)},
		},
		{
			name: "max_body SI and IEC units",
			input: `chatkit {
				workflow wf_1
				max_body 16KiB
			}`,
			want: Handler{Workflow: wf("wf_1"), MaxBody: 16 << 10},
		},
		{
			name: "max_body plain bytes",
			input: `chatkit {
				workflow wf_1
				max_body 2000
			}`,
			want: Handler{Workflow: wf("wf_1"), MaxBody: 2000},
		},
		{
			name: "max_body megabytes",
			input: `chatkit {
				workflow wf_1
				max_body 1MB
			}`,
			want: Handler{Workflow: wf("wf_1"), MaxBody: 1000 * 1000},
		},
		{
			name: "allow_origins repeated with several arguments",
			input: `chatkit {
				workflow wf_1
				allow_origins https://app.example.com
				allow_origins https://*.example.net http://localhost:3000
			}`,
			want: Handler{Workflow: wf("wf_1"), AllowOrigins: []string{
				"https://app.example.com", "https://*.example.net", "http://localhost:3000",
			}},
		},
		{
			name: "every option",
			input: `chatkit {
				workflow wf_all 12
				api_key {env.MY_OPENAI_KEY}
				api_base https://openai.internal/v1
				organization org_1
				project proj_1
				tracing off
				state_variable tier gold
				state_variable uid {http.auth.user.id}
				start_path /s
				refresh_path /r
				health_path /h
				user {http.auth.user.id}
				cookie_name cid
				cookie_secret 0123456789abcdef0123456789abcdef
				cookie_max_age 24h
				session_ttl 2m
				max_requests_per_minute 60
				file_upload on {
					max_file_size 1
					max_files 10
				}
				history off {
					recent_threads 1
				}
				thread_titling on
				timeout 20s
				max_body 64KB
				allow_origins https://a.example https://b.example:8443
			}`,
			want: Handler{
				APIKey:       "{env.MY_OPENAI_KEY}",
				APIBase:      "https://openai.internal/v1",
				Organization: "org_1",
				Project:      "proj_1",
				Workflow: &Workflow{
					ID:             "wf_all",
					Version:        "12",
					StateVariables: map[string]any{"tier": "gold", "uid": "{http.auth.user.id}"},
					Tracing:        cfBool(false),
				},
				StartPath:   "/s",
				RefreshPath: "/r",
				HealthPath:  "/h",
				User:        "{http.auth.user.id}",
				Cookie: &CookieConfig{
					Name:   "cid",
					Secret: "0123456789abcdef0123456789abcdef",
					MaxAge: caddy.Duration(24 * time.Hour),
				},
				SessionTTL:           caddy.Duration(2 * time.Minute),
				MaxRequestsPerMinute: 60,
				ChatKitConfiguration: &ChatKitConfiguration{
					AutomaticThreadTitling: &Toggle{Enabled: cfBool(true)},
					FileUpload:             &FileUpload{Enabled: cfBool(true), MaxFileSize: 1, MaxFiles: 10},
					History:                &History{Enabled: cfBool(false), RecentThreads: 1},
				},
				Timeout:      caddy.Duration(20 * time.Second),
				MaxBody:      64000,
				AllowOrigins: []string{"https://a.example", "https://b.example:8443"},
			},
		},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cfParse(tc.input)
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("parsed handler differs\n got: %s\nwant: %s", cfJSON(got), cfJSON(tc.want))
			}
		})
	}
}

// TestParseCaddyfileJSONRoundTrip checks that what the parser produces
// survives the JSON encoding Caddy stores it in.
func TestParseCaddyfileJSONRoundTrip(t *testing.T) {
	h, err := cfParse(`chatkit {
		workflow wf_rt 2
		tracing on
		state_variable a b
		cookie_max_age 1h
		session_ttl 90s
		file_upload on {
			max_file_size 8
		}
		history off
		thread_titling off
		allow_origins https://*.example.com
	}`)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var back Handler
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&back); err != nil {
		t.Fatalf("decoding %s: %v", raw, err)
	}
	if !reflect.DeepEqual(*h, back) {
		t.Errorf("round trip changed the handler\nbefore: %s\n after: %s", cfJSON(h), cfJSON(back))
	}
	for _, want := range []string{`"session_ttl":90000000000`, `"max_age":3600000000000`, `"enabled":false`, `"max_file_size":8`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("JSON %s lacks %s", raw, want)
		}
	}
}

func TestParseCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		wantErr string // substring of the error
		line    int    // line the error must point at; 0 to skip
	}{
		{
			name: "unknown subdirective",
			input: `chatkit {
	workflow wf_1
	api_keys sk-x
}`,
			wantErr: `unrecognized chatkit subdirective "api_keys"`,
			line:    3,
		},
		{
			name:    "arguments after directive name",
			input:   "chatkit wf_1 {\n\tworkflow wf_1\n}",
			wantErr: "wrong argument count",
			line:    1,
		},
		{
			name:    "missing workflow, empty block",
			input:   "chatkit {\n}",
			wantErr: "workflow is required: add workflow <id>, or protect <path>",
			line:    1,
		},
		{
			name:    "missing workflow, no block",
			input:   "chatkit",
			wantErr: "workflow is required: add workflow <id>, or protect <path>",
			line:    1,
		},
		{
			name:    "missing workflow, other options present",
			input:   "chatkit {\n\ttracing on\n\tstate_variable a b\n\tapi_key x\n}",
			wantErr: "tracing is a workflow option, but no workflow is set: add workflow <id>",
			line:    2,
		},
		{
			name:    "workflow without id",
			input:   "chatkit {\n\tworkflow\n}",
			wantErr: "wrong argument count",
			line:    2,
		},
		{
			name:    "workflow with too many arguments",
			input:   "chatkit {\n\tworkflow wf_1 2 3\n}",
			wantErr: "wrong argument count",
			line:    2,
		},
		{
			name:    "workflow version latest",
			input:   "chatkit {\n\tworkflow wf_x latest\n}",
			wantErr: `workflow version "latest"`,
			line:    2,
		},
		{
			name:    "workflow version LATEST",
			input:   "chatkit {\n\tworkflow wf_x LATEST\n}",
			wantErr: `workflow version "latest"`,
			line:    2,
		},
		{name: "api_key without value", input: "chatkit {\n\tworkflow w\n\tapi_key\n}", wantErr: "wrong argument count", line: 3},
		{name: "api_key with two values", input: "chatkit {\n\tworkflow w\n\tapi_key a b\n}", wantErr: "wrong argument count", line: 3},
		{name: "api_base with two values", input: "chatkit {\n\tworkflow w\n\tapi_base https://a https://b\n}", wantErr: "wrong argument count", line: 3},
		{name: "organization without value", input: "chatkit {\n\tworkflow w\n\torganization\n}", wantErr: "wrong argument count", line: 3},
		{name: "project with two values", input: "chatkit {\n\tworkflow w\n\tproject a b\n}", wantErr: "wrong argument count", line: 3},
		{name: "start_path with two values", input: "chatkit {\n\tworkflow w\n\tstart_path /a /b\n}", wantErr: "wrong argument count", line: 3},
		{name: "refresh_path without value", input: "chatkit {\n\tworkflow w\n\trefresh_path\n}", wantErr: "wrong argument count", line: 3},
		{name: "health_path with two values", input: "chatkit {\n\tworkflow w\n\thealth_path off /h\n}", wantErr: "wrong argument count", line: 3},
		{name: "user without value", input: "chatkit {\n\tworkflow w\n\tuser\n}", wantErr: "wrong argument count", line: 3},
		{name: "cookie_name with two values", input: "chatkit {\n\tworkflow w\n\tcookie_name a b\n}", wantErr: "wrong argument count", line: 3},
		{name: "cookie_secret without value", input: "chatkit {\n\tworkflow w\n\tcookie_secret\n}", wantErr: "wrong argument count", line: 3},
		{name: "state_variable with one argument", input: "chatkit {\n\tworkflow w\n\tstate_variable a\n}", wantErr: "wrong argument count", line: 3},
		{name: "state_variable with three arguments", input: "chatkit {\n\tworkflow w\n\tstate_variable a b c\n}", wantErr: "wrong argument count", line: 3},
		{name: "allow_origins without value", input: "chatkit {\n\tworkflow w\n\tallow_origins\n}", wantErr: "wrong argument count", line: 3},
		{name: "tracing without value", input: "chatkit {\n\tworkflow w\n\ttracing\n}", wantErr: "wrong argument count", line: 3},
		{name: "tracing with two values", input: "chatkit {\n\tworkflow w\n\ttracing on off\n}", wantErr: "wrong argument count", line: 3},
		{name: "thread_titling without value", input: "chatkit {\n\tworkflow w\n\tthread_titling\n}", wantErr: "wrong argument count", line: 3},
		{name: "file_upload without value", input: "chatkit {\n\tworkflow w\n\tfile_upload\n}", wantErr: "wrong argument count", line: 3},
		{name: "file_upload block without on/off", input: "chatkit {\n\tworkflow w\n\tfile_upload {\n\t\tmax_files 2\n\t}\n}", wantErr: "wrong argument count", line: 3},
		{name: "history with two values", input: "chatkit {\n\tworkflow w\n\thistory on off\n}", wantErr: "wrong argument count", line: 3},
		{name: "session_ttl without value", input: "chatkit {\n\tworkflow w\n\tsession_ttl\n}", wantErr: "wrong argument count", line: 3},
		{name: "timeout with two values", input: "chatkit {\n\tworkflow w\n\ttimeout 1s 2s\n}", wantErr: "wrong argument count", line: 3},
		{name: "max_requests_per_minute with two values", input: "chatkit {\n\tworkflow w\n\tmax_requests_per_minute 1 2\n}", wantErr: "wrong argument count", line: 3},
		{name: "max_body without value", input: "chatkit {\n\tworkflow w\n\tmax_body\n}", wantErr: "wrong argument count", line: 3},

		{name: "duplicate state_variable name", input: "chatkit {\n\tworkflow w\n\tstate_variable a 1\n\tstate_variable b 2\n\tstate_variable a 3\n}", wantErr: `duplicate state_variable "a"`, line: 5},

		{name: "tracing typo", input: "chatkit {\n\tworkflow w\n\ttracing yes\n}", wantErr: `expected on or off, got "yes"`, line: 3},
		{name: "tracing upper case", input: "chatkit {\n\tworkflow w\n\ttracing ON\n}", wantErr: `expected on or off, got "ON"`, line: 3},
		{name: "thread_titling typo", input: "chatkit {\n\tworkflow w\n\tthread_titling of\n}", wantErr: `expected on or off, got "of"`, line: 3},
		{name: "file_upload typo", input: "chatkit {\n\tworkflow w\n\tfile_upload true\n}", wantErr: `expected on or off, got "true"`, line: 3},
		{name: "history typo", input: "chatkit {\n\tworkflow w\n\thistory enabled {\n\t\trecent_threads 2\n\t}\n}", wantErr: `expected on or off, got "enabled"`, line: 3},

		{name: "bad duration", input: "chatkit {\n\tworkflow w\n\ttimeout 10 seconds\n}", wantErr: "wrong argument count", line: 3},
		{name: "timeout not a duration", input: "chatkit {\n\tworkflow w\n\ttimeout soon\n}", wantErr: `timeout: "soon" is not a duration`, line: 3},
		{name: "timeout without unit", input: "chatkit {\n\tworkflow w\n\ttimeout 10\n}", wantErr: `timeout: "10" is not a duration`, line: 3},
		{name: "timeout zero", input: "chatkit {\n\tworkflow w\n\ttimeout 0s\n}", wantErr: "timeout must be positive, got 0s", line: 3},
		{name: "timeout negative", input: "chatkit {\n\tworkflow w\n\ttimeout -5s\n}", wantErr: "timeout must be positive, got -5s", line: 3},
		{name: "session_ttl bad unit", input: "chatkit {\n\tworkflow w\n\tsession_ttl 5mins\n}", wantErr: `session_ttl: "5mins" is not a duration`, line: 3},
		{name: "cookie_max_age bad", input: "chatkit {\n\tworkflow w\n\tcookie_max_age 1y\n}", wantErr: `cookie_max_age: "1y" is not a duration`, line: 3},

		{name: "max_requests_per_minute not a number", input: "chatkit {\n\tworkflow w\n\tmax_requests_per_minute ten\n}", wantErr: `max_requests_per_minute: "ten" is not a whole number`, line: 3},
		{name: "max_requests_per_minute zero", input: "chatkit {\n\tworkflow w\n\tmax_requests_per_minute 0\n}", wantErr: "max_requests_per_minute must be at least 1, got 0", line: 3},
		{name: "max_requests_per_minute fraction", input: "chatkit {\n\tworkflow w\n\tmax_requests_per_minute 2.5\n}", wantErr: `max_requests_per_minute: "2.5" is not a whole number`, line: 3},
		{name: "max_requests_per_minute overflow", input: "chatkit {\n\tworkflow w\n\tmax_requests_per_minute 99999999999999999999\n}", wantErr: "is not a whole number", line: 3},
		{name: "max_file_size zero", input: "chatkit {\n\tworkflow w\n\tfile_upload on {\n\t\tmax_file_size 0\n\t}\n}", wantErr: "file_upload max_file_size must be 1 to 512 (MB), got 0", line: 4},
		{name: "max_file_size 513", input: "chatkit {\n\tworkflow w\n\tfile_upload on {\n\t\tmax_file_size 513\n\t}\n}", wantErr: "max_file_size must be 1 to 512 (MB), got 513", line: 4},
		{name: "max_file_size with unit", input: "chatkit {\n\tworkflow w\n\tfile_upload on {\n\t\tmax_file_size 20MB\n\t}\n}", wantErr: `max_file_size: "20MB" is not a whole number`, line: 4},
		{name: "max_files zero", input: "chatkit {\n\tworkflow w\n\tfile_upload on {\n\t\tmax_files 0\n\t}\n}", wantErr: "file_upload max_files must be at least 1, got 0", line: 4},
		{name: "max_files negative", input: "chatkit {\n\tworkflow w\n\tfile_upload on {\n\t\tmax_files -1\n\t}\n}", wantErr: "file_upload max_files must be at least 1, got -1", line: 4},
		{name: "max_files without value", input: "chatkit {\n\tworkflow w\n\tfile_upload on {\n\t\tmax_files\n\t}\n}", wantErr: "wrong argument count", line: 4},
		{name: "recent_threads zero", input: "chatkit {\n\tworkflow w\n\thistory on {\n\t\trecent_threads 0\n\t}\n}", wantErr: "history recent_threads must be at least 1, got 0", line: 4},
		{name: "recent_threads not a number", input: "chatkit {\n\tworkflow w\n\thistory on {\n\t\trecent_threads all\n\t}\n}", wantErr: `recent_threads: "all" is not a whole number`, line: 4},
		{name: "recent_threads with two values", input: "chatkit {\n\tworkflow w\n\thistory on {\n\t\trecent_threads 1 2\n\t}\n}", wantErr: "wrong argument count", line: 4},

		{name: "max_body not a size", input: "chatkit {\n\tworkflow w\n\tmax_body lots\n}", wantErr: `max_body: "lots" is not a size in bytes`, line: 3},
		{name: "max_body zero", input: "chatkit {\n\tworkflow w\n\tmax_body 0\n}", wantErr: "max_body must be positive, got 0", line: 3},
		{name: "max_body negative", input: "chatkit {\n\tworkflow w\n\tmax_body -1KB\n}", wantErr: `max_body: "-1KB" is not a size in bytes`, line: 3},
		{name: "max_body larger than int64", input: "chatkit {\n\tworkflow w\n\tmax_body 10EiB\n}", wantErr: `max_body: "10EiB" is not a size in bytes`, line: 3},

		{name: "unknown file_upload option", input: "chatkit {\n\tworkflow w\n\tfile_upload on {\n\t\tmax_files 2\n\t\tmax_size 3\n\t}\n}", wantErr: `unrecognized file_upload option "max_size"`, line: 5},
		{name: "history option inside file_upload", input: "chatkit {\n\tworkflow w\n\tfile_upload on {\n\t\trecent_threads 3\n\t}\n}", wantErr: `unrecognized file_upload option "recent_threads"`, line: 4},
		{name: "unknown history option", input: "chatkit {\n\tworkflow w\n\thistory on {\n\t\tthreads 3\n\t}\n}", wantErr: `unrecognized history option "threads"`, line: 4},
		{name: "file_upload option inside history", input: "chatkit {\n\tworkflow w\n\thistory on {\n\t\tmax_files 3\n\t}\n}", wantErr: `unrecognized history option "max_files"`, line: 4},
		{name: "duplicate max_file_size", input: "chatkit {\n\tworkflow w\n\tfile_upload on {\n\t\tmax_file_size 3\n\t\tmax_file_size 4\n\t}\n}", wantErr: `duplicate file_upload option "max_file_size"`, line: 5},
		{name: "duplicate max_files", input: "chatkit {\n\tworkflow w\n\tfile_upload on {\n\t\tmax_files 3\n\t\tmax_files 4\n\t}\n}", wantErr: `duplicate file_upload option "max_files"`, line: 5},
		{name: "duplicate recent_threads", input: "chatkit {\n\tworkflow w\n\thistory on {\n\t\trecent_threads 3\n\t\trecent_threads 4\n\t}\n}", wantErr: `duplicate history option "recent_threads"`, line: 5},
		{name: "subdirective after block is still checked", input: "chatkit {\n\tworkflow w\n\thistory on {\n\t\trecent_threads 3\n\t}\n\tbogus 1\n}", wantErr: `unrecognized chatkit subdirective "bogus"`, line: 6},
		{name: "block after a flag-only subdirective", input: "chatkit {\n\tworkflow w\n\ttracing on {\n\t\tx 1\n\t}\n}", wantErr: "unrecognized chatkit subdirective", line: 3},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := cfParse(tc.input)
			if err == nil {
				t.Fatalf("expected an error containing %q, got none; handler: %s", tc.wantErr, cfJSON(h))
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if tc.line > 0 {
				if want := fmt.Sprintf("Testfile:%d", tc.line); !strings.HasSuffix(err.Error(), want) {
					t.Errorf("error %q does not point at %s", err, want)
				}
			}
		})
	}
}

// cfSubdirectiveSamples holds one valid line for every subdirective,
// used to build duplicate and coverage cases. A subdirective added to the
// UnmarshalCaddyfile godoc needs a sample here (see
// TestParseCaddyfileSubdirectivesDocumented).
var cfSubdirectiveSamples = map[string]string{
	"workflow":                "workflow wf_1",
	"api_key":                 "api_key {env.K}",
	"api_base":                "api_base https://a.example/v1",
	"organization":            "organization org_1",
	"project":                 "project proj_1",
	"tracing":                 "tracing on",
	"state_variable":          "state_variable k v",
	"start_path":              "start_path /s",
	"refresh_path":            "refresh_path /r",
	"health_path":             "health_path off",
	"user":                    "user {http.auth.user.id}",
	"cookie_name":             "cookie_name c",
	"cookie_secret":           "cookie_secret {env.S}",
	"cookie_max_age":          "cookie_max_age 1h",
	"session_ttl":             "session_ttl 1m",
	"max_requests_per_minute": "max_requests_per_minute 5",
	"file_upload":             "file_upload on {\n\t\tmax_files 2\n\t}",
	"history":                 "history on {\n\t\trecent_threads 2\n\t}",
	"thread_titling":          "thread_titling off",
	"timeout":                 "timeout 3s",
	"max_body":                "max_body 4KB",
	"allow_origins":           "allow_origins https://a.example",
	"rate_limit":              "rate_limit 10 1m",
	"budget":                  "budget 100 1h",
	"retries":                 "retries 2",
	"circuit_breaker":         "circuit_breaker 5 30s",
	"error_cache":             "error_cache 5s",
	"revoke_on_refresh":       "revoke_on_refresh on",
	"protect":                 "protect /chatkit /chatkit-upload",
	"identity_header":         "identity_header X-User-Id",
	"max_upload":              "max_upload 5MB",
	"agent":                   "agent {\n\t\tmodel gpt-5-mini\n\t}",
}

// cfSampleNeeds returns what a sample needs besides a workflow to have an
// effect (options of protected paths need protect).
func cfSampleNeeds(name string) string {
	if name == "identity_header" || name == "max_upload" {
		return "\n\tprotect /chatkit"
	}
	return ""
}

// cfRepeatable are the subdirectives that may appear more than once.
var cfRepeatable = []string{"state_variable", "allow_origins", "protect"}

func TestParseCaddyfileDuplicates(t *testing.T) {
	for name, sample := range cfSubdirectiveSamples {
		t.Run(name, func(t *testing.T) {
			second := sample
			if name == "state_variable" {
				second = "state_variable k2 v" // a different name is fine
			}
			base := "chatkit {\n\t" + sample + "\n\t" + second + "\n"
			if name != "workflow" {
				base += "\tworkflow wf_dup\n"
			}
			base += "}"
			h, err := cfParse(base)
			if slices.Contains(cfRepeatable, name) {
				if err != nil {
					t.Fatalf("repeating %s: unexpected error: %v", name, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("repeating %s was accepted: %s", name, cfJSON(h))
			}
			if want := fmt.Sprintf("duplicate subdirective %q", name); !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
		})
	}
}

// TestParseCaddyfileSubdirectivesDocumented keeps the syntax in the
// UnmarshalCaddyfile godoc, the samples above and the parser in step:
// every documented subdirective parses and changes the handler, and
// nothing undocumented has a sample.
func TestParseCaddyfileSubdirectivesDocumented(t *testing.T) {
	documented := cfDocumentedSubdirectives(t)
	if len(documented) < 20 {
		t.Fatalf("found only %d subdirectives in the godoc: %v", len(documented), documented)
	}
	for _, name := range documented {
		sample, ok := cfSubdirectiveSamples[name]
		if !ok {
			t.Errorf("documented subdirective %q has no test sample", name)
			continue
		}
		base, err := cfParse("chatkit {\n\tworkflow wf_doc" + cfSampleNeeds(name) + "\n}")
		if err != nil {
			t.Fatalf("%s: the sample's context does not parse: %v", name, err)
		}
		input := "chatkit {\n\tworkflow wf_doc\n\t" + sample + cfSampleNeeds(name) + "\n}"
		if name == "workflow" {
			input = "chatkit {\n\tworkflow wf_doc 4\n}"
		}
		h, err := cfParse(input)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if reflect.DeepEqual(h, base) {
			t.Errorf("%s: parsing %q changed nothing", name, sample)
		}
	}
	for name := range cfSubdirectiveSamples {
		if !slices.Contains(documented, name) {
			t.Errorf("sample for %q, which the godoc does not document", name)
		}
	}
}

// cfDocumentedSubdirectives reads the first-level subdirective names out
// of the syntax block in UnmarshalCaddyfile's doc comment.
func cfDocumentedSubdirectives(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "caddyfile.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var doc string
	for _, decl := range f.Decls {
		if fn, ok := decl.(*ast.FuncDecl); ok && fn.Name.Name == "UnmarshalCaddyfile" && fn.Doc != nil {
			doc = fn.Doc.Text()
		}
	}
	if doc == "" {
		t.Fatal("no doc comment on UnmarshalCaddyfile")
	}
	var names []string
	for line := range strings.SplitSeq(doc, "\n") {
		// The syntax block is indented one tab; subdirectives one more.
		rest, ok := strings.CutPrefix(line, "\t\t")
		if !ok || rest == "" || rest[0] == '\t' || rest == "}" {
			continue
		}
		// A subdirective may be documented on several lines.
		if name := strings.Fields(rest)[0]; !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// ---- Provision and Validate ----

// cfCanaryKey is an API key no error message may ever contain.
const cfCanaryKey = "sk-canary-123"

// cfDecode builds a handler from its JSON config the way Caddy does
// (unknown fields are refused, so a typo in a test fails loudly).
func cfDecode(t *testing.T, raw string) *Handler {
	t.Helper()
	h := new(Handler)
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(h); err != nil {
		t.Fatalf("decoding %s: %v", raw, err)
	}
	return h
}

// cfProvision provisions h and, when that succeeds, validates it.
func cfProvision(t *testing.T, h *Handler) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	// As Caddy does, Cleanup follows a failed Provision too: it releases
	// what provisioning took (pooled zones, the breaker's metrics entry).
	defer h.Cleanup()
	if err := h.Provision(ctx); err != nil {
		return err
	}
	return h.Validate()
}

func TestProvisionDefaults(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", "  "+cfCanaryKey+"\n")
	t.Setenv("CHATKIT_TEST_WORKFLOW", "wf_from_env")
	h := cfDecode(t, `{"workflow":{"id":"{env.CHATKIT_TEST_WORKFLOW}"},"user":"{http.auth.user.id}"}`)
	if err := cfProvision(t, h); err != nil {
		t.Fatal(err)
	}
	if h.apiKey != cfCanaryKey {
		t.Errorf("apiKey = %q, want the trimmed OPENAI_API_KEY", h.apiKey)
	}
	if h.startPath != defaultStartPath || h.refreshPath != defaultRefreshPath || h.healthPath != defaultHealthPath {
		t.Errorf("paths = %q %q %q, want the defaults", h.startPath, h.refreshPath, h.healthPath)
	}
	if h.timeout != defaultTimeout {
		t.Errorf("timeout = %v, want %v", h.timeout, defaultTimeout)
	}
	if h.maxBody != defaultMaxBody {
		t.Errorf("maxBody = %d, want %d", h.maxBody, defaultMaxBody)
	}
	// The JSON config itself must not be rewritten with resolved values.
	if h.APIKey != "" || h.Workflow.ID != "{env.CHATKIT_TEST_WORKFLOW}" {
		t.Errorf("Provision rewrote the config: api_key %q, workflow %q", h.APIKey, h.Workflow.ID)
	}
}

func TestProvisionCustomValues(t *testing.T) {
	t.Setenv("CHATKIT_TEST_KEY", cfCanaryKey)
	h := cfDecode(t, `{
		"api_key": "{env.CHATKIT_TEST_KEY}",
		"workflow": {"id": "wf_1"},
		"start_path": "/go",
		"refresh_path": "/again",
		"health_path": "off",
		"timeout": "3s",
		"max_body": 100,
		"cookie": {"secret": "0123456789abcdef0123456789abcdef"}
	}`)
	if err := cfProvision(t, h); err != nil {
		t.Fatal(err)
	}
	if h.apiKey != cfCanaryKey {
		t.Errorf("apiKey = %q, want the api_key placeholder resolved", h.apiKey)
	}
	if h.startPath != "/go" || h.refreshPath != "/again" {
		t.Errorf("paths = %q %q", h.startPath, h.refreshPath)
	}
	if h.healthPath != "" {
		t.Errorf("health_path off left healthPath = %q, want disabled", h.healthPath)
	}
	if h.timeout != 3*time.Second || h.maxBody != 100 {
		t.Errorf("timeout %v, maxBody %d", h.timeout, h.maxBody)
	}
}

func TestProvisionEmptyAPIKey(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		apiKey  string
		wantErr string
	}{
		{
			name:    "default key, variable empty",
			env:     map[string]string{"OPENAI_API_KEY": ""},
			wantErr: "OPENAI_API_KEY",
		},
		{
			name:    "default key, variable blank",
			env:     map[string]string{"OPENAI_API_KEY": " \t "},
			wantErr: "OPENAI_API_KEY",
		},
		{
			name:    "custom placeholder empty",
			env:     map[string]string{"OPENAI_API_KEY": cfCanaryKey, "CHATKIT_TEST_KEY": ""},
			apiKey:  "{env.CHATKIT_TEST_KEY}",
			wantErr: "api_key resolved to an empty value",
		},
		{
			name:    "key file blank",
			env:     map[string]string{"OPENAI_API_KEY": cfCanaryKey},
			apiKey:  "{file." + keyFile + "}",
			wantErr: "api_key resolved to an empty value",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			h := &Handler{APIKey: tc.apiKey, Workflow: &Workflow{ID: "wf_1"}, User: "{http.auth.user.id}"}
			err := cfProvision(t, h)
			if err == nil {
				t.Fatal("an empty API key was accepted")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), cfCanaryKey) {
				t.Errorf("error %q leaks a key", err)
			}
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", cfCanaryKey)
	name64 := strings.Repeat("v", 64)
	tests := []struct {
		name string
		json string
	}{
		{"minimal with user", `{"workflow":{"id":"wf_1"},"user":"{http.auth.user.id}"}`},
		{"minimal with cookie secret", `{"workflow":{"id":"wf_1"},"cookie":{"secret":"` + strings.Repeat("s", 32) + `"}}`},
		{"pinned version", `{"workflow":{"id":"wf_1","version":"3"},"user":"u"}`},
		{"session_ttl 1s", `{"workflow":{"id":"wf_1"},"user":"u","session_ttl":"1s"}`},
		{"session_ttl 10m", `{"workflow":{"id":"wf_1"},"user":"u","session_ttl":"10m"}`},
		{"max_file_size 512", `{"workflow":{"id":"wf_1"},"user":"u","chatkit_configuration":{"file_upload":{"enabled":true,"max_file_size":512,"max_files":1}}}`},
		{"max_file_size 1", `{"workflow":{"id":"wf_1"},"user":"u","chatkit_configuration":{"file_upload":{"max_file_size":1}}}`},
		{"history recent_threads", `{"workflow":{"id":"wf_1"},"user":"u","chatkit_configuration":{"history":{"enabled":false,"recent_threads":3}}}`},
		{"state variable name of 64", `{"workflow":{"id":"wf_1","state_variables":{"` + name64 + `":"x"}},"user":"u"}`},
		{"state variable types", `{"workflow":{"id":"wf_1","state_variables":{"s":"{http.request.host}","n":4.5,"b":true}},"user":"u"}`},
		{"allow_origins", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["https://app.example.com","http://localhost:3000","https://*.example.net","https://[::1]:8443","HTTPS://UPPER.example"]}`},
		{"health_path off", `{"workflow":{"id":"wf_1"},"user":"u","health_path":"off"}`},
		{"health_path off frees its default path", `{"workflow":{"id":"wf_1"},"user":"u","health_path":"off","start_path":"/api/health"}`},
		{"custom paths", `{"workflow":{"id":"wf_1"},"user":"u","start_path":"/a","refresh_path":"/b","health_path":"/c"}`},
		{"http api_base", `{"workflow":{"id":"wf_1"},"user":"u","api_base":"http://127.0.0.1:9999/v1/"}`},
		{"every positive number", `{"workflow":{"id":"wf_1","tracing":false},"user":"u","max_requests_per_minute":1,"timeout":"1ms","max_body":1,"cookie":{"max_age":"1s","secret":"` + strings.Repeat("k", 40) + `"}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := cfProvision(t, cfDecode(t, tc.json)); err != nil {
				t.Errorf("valid config refused: %v", err)
			}
		})
	}
}

func TestValidateRefuses(t *testing.T) {
	// Every failure below runs with a real-looking key available from
	// each source; no error may repeat it.
	t.Setenv("OPENAI_API_KEY", cfCanaryKey)
	t.Setenv("CHATKIT_TEST_KEY", cfCanaryKey)
	t.Setenv("CHATKIT_TEST_EMPTY", "")
	t.Setenv("CHATKIT_TEST_VERSION", "Latest")
	t.Setenv("CHATKIT_TEST_SECRET", "too-short-secret-canary")
	name65 := strings.Repeat("v", 65)

	tests := []struct {
		name    string
		json    string
		wantErr string
	}{
		{"no workflow", `{"user":"u"}`, "workflow is required"},
		{"workflow id resolves empty", `{"workflow":{"id":"{env.CHATKIT_TEST_EMPTY}"},"user":"u"}`, "resolved to an empty value"},
		{"version latest", `{"workflow":{"id":"wf_1","version":"latest"},"user":"u"}`, `"latest"`},
		{"version latest from a placeholder", `{"workflow":{"id":"wf_1","version":"{env.CHATKIT_TEST_VERSION}"},"user":"u"}`, `"latest"`},
		{"session_ttl 0.5s", `{"workflow":{"id":"wf_1"},"user":"u","session_ttl":"0.5s"}`, "session_ttl must be between 1s and 10m"},
		{"session_ttl 11m", `{"workflow":{"id":"wf_1"},"user":"u","session_ttl":"11m"}`, "session_ttl must be between 1s and 10m"},
		{"session_ttl negative", `{"workflow":{"id":"wf_1"},"user":"u","session_ttl":"-1m"}`, "session_ttl must be between 1s and 10m"},
		{"max_file_size 600", `{"workflow":{"id":"wf_1"},"user":"u","chatkit_configuration":{"file_upload":{"enabled":true,"max_file_size":600}}}`, "max_file_size must be 1 to 512"},
		{"max_file_size negative", `{"workflow":{"id":"wf_1"},"user":"u","chatkit_configuration":{"file_upload":{"max_file_size":-1}}}`, "max_file_size must be 1 to 512"},
		{"max_files negative", `{"workflow":{"id":"wf_1"},"user":"u","chatkit_configuration":{"file_upload":{"max_files":-2}}}`, "max_files must be at least 1"},
		{"recent_threads negative", `{"workflow":{"id":"wf_1"},"user":"u","chatkit_configuration":{"history":{"recent_threads":-1}}}`, "recent_threads must be at least 1"},
		{"state variable name of 65", `{"workflow":{"id":"wf_1","state_variables":{"` + name65 + `":"x"}},"user":"u"}`, "state variable names must be 1 to 64 characters"},
		{"state variable empty name", `{"workflow":{"id":"wf_1","state_variables":{"":"x"}},"user":"u"}`, "state variable names must be 1 to 64 characters"},
		{"state variable object", `{"workflow":{"id":"wf_1","state_variables":{"o":{"a":1}}},"user":"u"}`, `state variable "o" must be a string, number or boolean`},
		{"state variable array", `{"workflow":{"id":"wf_1","state_variables":{"a":[1]}},"user":"u"}`, `state variable "a" must be a string, number or boolean`},
		{"state variable null", `{"workflow":{"id":"wf_1","state_variables":{"z":null}},"user":"u"}`, `state variable "z" must be a string, number or boolean`},
		{"allow_origins bare host", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["example.com"]}`, `allow_origins entry "example.com"`},
		{"allow_origins with path", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["https://example.com/app"]}`, `allow_origins entry "https://example.com/app"`},
		{"allow_origins other scheme", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["ftp://example.com"]}`, `allow_origins entry "ftp://example.com"`},
		{"allow_origins null", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["null"]}`, `allow_origins entry "null"`},
		{"allow_origins star", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["*"]}`, `allow_origins entry "*"`},
		{"allow_origins user info", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["https://me@example.com"]}`, `allow_origins entry "https://me@example.com"`},
		{"allow_origins query", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["https://example.com?x=1"]}`, `allow_origins entry`},
		{"allow_origins wildcard without domain", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["https://*."]}`, "must look like https://*.example.com"},
		{"allow_origins double wildcard", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["https://*.*.example.com"]}`, "must look like https://*.example.com"},
		{"allow_origins wildcard with path", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["https://*.example.com/x"]}`, "must look like https://*.example.com"},
		{"allow_origins one bad among good", `{"workflow":{"id":"wf_1"},"user":"u","allow_origins":["https://ok.example","bad"]}`, `allow_origins entry "bad"`},
		{"start_path relative", `{"workflow":{"id":"wf_1"},"user":"u","start_path":"api/start"}`, "start_path must start with '/'"},
		{"refresh_path relative", `{"workflow":{"id":"wf_1"},"user":"u","refresh_path":"refresh"}`, "refresh_path must start with '/'"},
		{"start_path off", `{"workflow":{"id":"wf_1"},"user":"u","start_path":"off"}`, "start_path must start with '/'"},
		{"health_path relative", `{"workflow":{"id":"wf_1"},"user":"u","health_path":"health"}`, "health_path must start with '/' or be 'off'"},
		{"start equals refresh", `{"workflow":{"id":"wf_1"},"user":"u","start_path":"/x","refresh_path":"/x"}`, "must differ"},
		{"start equals default refresh", `{"workflow":{"id":"wf_1"},"user":"u","start_path":"/api/chatkit/refresh"}`, "must differ"},
		{"start equals health", `{"workflow":{"id":"wf_1"},"user":"u","start_path":"/h","health_path":"/h"}`, "must differ"},
		{"refresh equals default health", `{"workflow":{"id":"wf_1"},"user":"u","refresh_path":"/api/health"}`, "must differ"},
		{"api_base not http", `{"workflow":{"id":"wf_1"},"user":"u","api_base":"ftp://api.example.com"}`, "api_base must be an http(s) URL"},
		{"api_base without host", `{"workflow":{"id":"wf_1"},"user":"u","api_base":"api.openai.com/v1"}`, "api_base must be an http(s) URL"},
		{"max_requests_per_minute negative", `{"workflow":{"id":"wf_1"},"user":"u","max_requests_per_minute":-1}`, "max_requests_per_minute must be at least 1"},
		{"timeout negative", `{"workflow":{"id":"wf_1"},"user":"u","timeout":"-1s"}`, "timeout must be positive"},
		{"max_body negative", `{"workflow":{"id":"wf_1"},"user":"u","max_body":-5}`, "max_body must be positive"},
		{"cookie max_age negative", `{"workflow":{"id":"wf_1"},"user":"u","cookie":{"max_age":"-1h"}}`, "cookie max_age must be positive"},
		{"cookie secret too short", `{"workflow":{"id":"wf_1"},"cookie":{"secret":"` + strings.Repeat("s", 31) + `"}}`, "at least 32 characters"},
		{"cookie secret too short once resolved", `{"workflow":{"id":"wf_1"},"cookie":{"secret":"{env.CHATKIT_TEST_SECRET}"}}`, "at least 32 characters"},
	}
	// The key comes from the default variable, a placeholder and a literal.
	keySources := map[string]string{"default": "", "placeholder": `"{env.CHATKIT_TEST_KEY}"`, "literal": `"` + cfCanaryKey + `"`}
	for _, tc := range tests {
		for source, key := range keySources {
			t.Run(tc.name+"/"+source, func(t *testing.T) {
				raw := tc.json
				if key != "" {
					raw = `{"api_key":` + key + `,` + strings.TrimPrefix(raw, "{")
				}
				err := cfProvision(t, cfDecode(t, raw))
				if err == nil {
					t.Fatalf("invalid config accepted: %s", raw)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q does not contain %q", err, tc.wantErr)
				}
				for _, secret := range []string{cfCanaryKey, "too-short-secret-canary"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error %q leaks %q", err, secret)
					}
				}
			})
		}
	}
}

// TestProvisionParsedCaddyfile checks that a Caddyfile using every option
// yields a handler that provisions and validates.
func TestProvisionParsedCaddyfile(t *testing.T) {
	t.Setenv("CHATKIT_TEST_KEY", cfCanaryKey)
	h, err := cfParse(`chatkit {
		workflow wf_all 12
		api_key {env.CHATKIT_TEST_KEY}
		api_base https://openai.internal/v1
		organization org_1
		project proj_1
		tracing off
		state_variable tier gold
		start_path /s
		refresh_path /r
		health_path off
		user {http.auth.user.id}
		cookie_name cid
		cookie_max_age 24h
		session_ttl 10m
		max_requests_per_minute 60
		file_upload on {
			max_file_size 512
			max_files 10
		}
		history off {
			recent_threads 1
		}
		thread_titling on
		timeout 20s
		max_body 64KB
		allow_origins https://a.example https://*.b.example:8443
	}`)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfProvision(t, h); err != nil {
		t.Fatalf("parsed Caddyfile does not provision: %v", err)
	}
	if h.maxBody != 64000 || h.timeout != 20*time.Second || h.healthPath != "" {
		t.Errorf("maxBody %d, timeout %v, healthPath %q", h.maxBody, h.timeout, h.healthPath)
	}
}

func TestParseRateLimitOffWithRedis(t *testing.T) {
	h, err := cfParse("chatkit {\n\tworkflow wf_x\n\trate_limit off {\n\t\tredis {env.REDIS_URL}\n\t\ton_redis_error deny\n\t}\n}")
	if err != nil {
		t.Fatal(err)
	}
	if rl := h.RateLimit; rl == nil || !rl.Disabled || rl.Redis != "{env.REDIS_URL}" || rl.OnRedisError != "deny" {
		t.Fatalf("rate_limit = %+v", h.RateLimit)
	}
	if _, err := cfParse("chatkit {\n\tworkflow wf_x\n\trate_limit off {\n\t\tmax_keys 5\n\t}\n}"); err == nil {
		t.Fatal("rate_limit off accepted a limit option")
	}
	if _, err := cfParse("chatkit {\n\tworkflow wf_x\n\trate_limit 1 1s {\n\t\tredis http://x\n\t}\n}"); err == nil {
		t.Fatal("a non-redis URL was accepted")
	}
}

// cfAdaptErr adapts a whole Caddyfile and returns the adapter's error.
func cfAdaptErr(t *testing.T, caddyfileText string) error {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("caddyfile adapter not registered")
	}
	_, _, err := adapter.Adapt([]byte(caddyfileText), nil)
	return err
}

// TestParseDirectiveProtectRefusesMatcher: a matcher on a protect block
// would let the requests it skips reach the backend with the client's own
// identity header, so the directive refuses it at load, pointing at it.
func TestParseDirectiveProtectRefusesMatcher(t *testing.T) {
	for _, tc := range []struct{ name, site, wantHeader string }{
		{"named matcher", "\t@chat path /chatkit*\n\tchatkit @chat {\n\t\tprotect /chatkit\n\t}\n", "X-ChatKit-User"},
		{"path matcher", "\tchatkit /chatkit* {\n\t\tprotect /chatkit\n\t}\n", "X-ChatKit-User"},
		{"with a workflow too", "\t@chat path /chatkit* /api/*\n\tchatkit @chat {\n\t\tworkflow wf_1\n\t\tprotect /chatkit\n\t\tidentity_header X-Site-User\n\t}\n", "X-Site-User"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := cfAdaptErr(t, "example.com {\n"+tc.site+"\treverse_proxy /chatkit* 127.0.0.1:8000\n}\n")
			if err == nil {
				t.Fatal("protect with a matcher was accepted")
			}
			for _, want := range []string{"protect cannot be used with a matcher", "the client's own " + tc.wantHeader + " header"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			// The directive is on line 2 or 3: the error names its line.
			line := 2
			if strings.HasPrefix(tc.site, "\t@") {
				line = 3
			}
			if want := fmt.Sprintf("Caddyfile:%d", line); !strings.HasSuffix(err.Error(), want) {
				t.Errorf("error %q does not point at %s", err, want)
			}
		})
	}
	// The catch-all matcher skips nothing; blocks without protect keep
	// their matchers (testdata/adapt/matcher.caddytest).
	for _, ok := range []string{
		"example.com {\n\tchatkit * {\n\t\tprotect /chatkit\n\t}\n}\n",
		"example.com {\n\t@chat path /api/*\n\tchatkit @chat {\n\t\tworkflow wf_1\n\t}\n}\n",
	} {
		if err := cfAdaptErr(t, ok); err != nil {
			t.Errorf("refused %q: %v", ok, err)
		}
	}
}

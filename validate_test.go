package chatkit

import (
	"fmt"
	"strings"
	"testing"
)

// vRuleCases are refused settings written both ways: a Caddyfile block
// body (the offending setting on line cfLine) and the same handler in JSON.
var vRuleCases = []struct {
	name      string
	caddyfile string // block body; the refused setting is on line cfLine
	cfLine    int
	json      string
	wantErr   string
}{
	{"session_ttl range", "workflow wf_1\n\tsession_ttl 11m", 3, `{"workflow":{"id":"wf_1"},"session_ttl":"11m"}`, "session_ttl must be between 1s and 10m, got 11m0s"},
	{"max_requests_per_minute", "workflow wf_1\n\tmax_requests_per_minute -1", 3, `{"workflow":{"id":"wf_1"},"max_requests_per_minute":-1}`, "max_requests_per_minute must be at least 1"},
	{"timeout", "workflow wf_1\n\ttimeout -1s", 3, `{"workflow":{"id":"wf_1"},"timeout":"-1s"}`, "timeout must be positive"},
	{"retries", "workflow wf_1\n\tretries 11", 3, `{"workflow":{"id":"wf_1"},"retries":11}`, "retries must be 0 to 10, got 11"},
	{"error_cache", "workflow wf_1\n\terror_cache 31s", 3, `{"workflow":{"id":"wf_1"},"error_cache":"31s"}`, "error_cache must be off or at most 30s"},
	{"cookie max_age", "workflow wf_1\n\tcookie_max_age -1h", 3, `{"workflow":{"id":"wf_1"},"cookie":{"max_age":"-1h"}}`, "cookie max_age must be positive"},
	{"max_file_size", "workflow wf_1\n\tfile_upload on {\n\t\tmax_file_size 600\n\t}", 4, `{"workflow":{"id":"wf_1"},"chatkit_configuration":{"file_upload":{"enabled":true,"max_file_size":600}}}`, "file_upload max_file_size must be 1 to 512 (MB), got 600"},
	{"max_files", "workflow wf_1\n\tfile_upload on {\n\t\tmax_files -2\n\t}", 4, `{"workflow":{"id":"wf_1"},"chatkit_configuration":{"file_upload":{"enabled":true,"max_files":-2}}}`, "file_upload max_files must be at least 1"},
	{"recent_threads", "workflow wf_1\n\thistory on {\n\t\trecent_threads -1\n\t}", 4, `{"workflow":{"id":"wf_1"},"chatkit_configuration":{"history":{"enabled":true,"recent_threads":-1}}}`, "history recent_threads must be at least 1"},
	{"rate_limit burst", "workflow wf_1\n\trate_limit -1 1s", 3, `{"workflow":{"id":"wf_1"},"rate_limit":{"burst":-1,"interval":"1s"}}`, "rate_limit burst must be at least 1"},
	{"rate_limit interval", "workflow wf_1\n\trate_limit 5 -1s", 3, `{"workflow":{"id":"wf_1"},"rate_limit":{"burst":5,"interval":"-1s"}}`, "rate_limit interval must be positive"},
	{"ipv4_prefix", "workflow wf_1\n\trate_limit 5 1s {\n\t\tipv4_prefix 33\n\t}", 4, `{"workflow":{"id":"wf_1"},"rate_limit":{"ipv4_prefix":33}}`, "rate_limit ipv4_prefix must be 1 to 32, got 33"},
	{"ipv6_prefix", "workflow wf_1\n\trate_limit 5 1s {\n\t\tipv6_prefix 129\n\t}", 4, `{"workflow":{"id":"wf_1"},"rate_limit":{"ipv6_prefix":129}}`, "rate_limit ipv6_prefix must be 1 to 128, got 129"},
	{"max_keys", "workflow wf_1\n\trate_limit 5 1s {\n\t\tmax_keys -1\n\t}", 4, `{"workflow":{"id":"wf_1"},"rate_limit":{"max_keys":-1}}`, "rate_limit max_keys must be at least 1"},
	{"rate_limit off with a limit option", "workflow wf_1\n\trate_limit off {\n\t\tkey {http.auth.user.id}\n\t}", 4, `{"workflow":{"id":"wf_1"},"rate_limit":{"disabled":true,"key":"{http.auth.user.id}"}}`, "rate_limit off takes only redis and on_redis_error, not key"},
	{"redis URL", "workflow wf_1\n\trate_limit 5 1s {\n\t\tredis http://cache:6379\n\t}", 4, `{"workflow":{"id":"wf_1"},"rate_limit":{"redis":"http://cache:6379"}}`, "rate_limit redis: not a valid redis:// or rediss:// URL"},
	{"on_redis_error", "workflow wf_1\n\trate_limit 5 1s {\n\t\ton_redis_error maybe\n\t}", 4, `{"workflow":{"id":"wf_1"},"rate_limit":{"on_redis_error":"maybe"}}`, `rate_limit on_redis_error must be local or deny, got "maybe"`},
	{"budget", "workflow wf_1\n\tbudget 0 1h", 3, `{"workflow":{"id":"wf_1"},"budget":{"sessions":0,"interval":"1h"}}`, "budget sessions must be at least 1, got 0"},
	{"budget interval", "workflow wf_1\n\tbudget 10 -1h", 3, `{"workflow":{"id":"wf_1"},"budget":{"sessions":10,"interval":"-1h"}}`, "budget interval must be positive"},
	{"circuit_breaker", "workflow wf_1\n\tcircuit_breaker -1 30s", 3, `{"workflow":{"id":"wf_1"},"circuit_breaker":{"failures":-1,"cooldown":"30s"}}`, "circuit_breaker failures must be at least 1"},
	{"workflow version latest", "workflow wf_1 Latest", 2, `{"workflow":{"id":"wf_1","version":"Latest"}}`, `workflow version "latest" breaks chats`},
	{"state variable name", "workflow wf_1\n\tstate_variable " + strings.Repeat("v", 65) + " x", 3, `{"workflow":{"id":"wf_1","state_variables":{"` + strings.Repeat("v", 65) + `":"x"}}}`, "state variable names must be 1 to 64 characters"},
	{"start_path", "workflow wf_1\n\tstart_path api/start", 3, `{"workflow":{"id":"wf_1"},"start_path":"api/start"}`, "start_path must start with '/'"},
	{"health_path", "workflow wf_1\n\thealth_path health", 3, `{"workflow":{"id":"wf_1"},"health_path":"health"}`, "health_path must start with '/' or be 'off'"},
	{"paths differ", "workflow wf_1\n\tstart_path /x\n\trefresh_path /x", 4, `{"workflow":{"id":"wf_1"},"start_path":"/x","refresh_path":"/x"}`, "start_path, refresh_path and health_path must differ"},
	{"paths differ with a default", "workflow wf_1\n\trefresh_path /api/health", 3, `{"workflow":{"id":"wf_1"},"refresh_path":"/api/health"}`, "must differ"},
	{"allow_origins", "workflow wf_1\n\tallow_origins https://ok.example bad", 3, `{"workflow":{"id":"wf_1"},"allow_origins":["https://ok.example","bad"]}`, `allow_origins entry "bad"`},
	{"protect path", "protect chatkit", 2, `{"protect":["chatkit"]}`, `protect paths must start with '/': "chatkit"`},
	{"identity_header not a name", "protect /chatkit\n\tidentity_header \"X User\"", 3, `{"protect":["/chatkit"],"identity_header":"X User"}`, `identity_header "X User" is not an HTTP header name`},
	{"identity_header hop-by-hop", "protect /chatkit\n\tidentity_header keep-alive", 3, `{"protect":["/chatkit"],"identity_header":"keep-alive"}`, `identity_header "keep-alive" cannot carry the user id: proxies remove hop-by-hop headers`},

	// The modes: minting (a workflow) and protect.
	{"no workflow, no protect", "", 1, `{}`, "workflow is required: add workflow <id>, or protect <path> for a self-hosted ChatKit server"},
	{"tracing without a workflow", "protect /chatkit\n\ttracing off", 3, `{"protect":["/chatkit"],"workflow":{"tracing":false}}`, "tracing is a workflow option, but no workflow is set: add workflow <id>"},
	{"state_variable without a workflow", "state_variable plan pro\n\tprotect /chatkit", 2, `{"protect":["/chatkit"],"workflow":{"state_variables":{"plan":"pro"}}}`, "state_variable (workflow.state_variables) is a workflow option, but no workflow is set"},
	{"protect alone: session_ttl", "protect /chatkit\n\tsession_ttl 5m", 3, `{"protect":["/chatkit"],"session_ttl":"5m"}`, "session_ttl has no effect without a workflow: with protect alone the module mints no sessions and calls no OpenAI API (add workflow <id>, or remove session_ttl)"},
	{"protect alone: file_upload", "file_upload on\n\tprotect /chatkit", 2, `{"protect":["/chatkit"],"chatkit_configuration":{"file_upload":{"enabled":true}}}`, "file_upload (chatkit_configuration.file_upload) has no effect without a workflow"},
	{"protect alone: thread_titling", "protect /chatkit\n\tthread_titling off", 3, `{"protect":["/chatkit"],"chatkit_configuration":{"automatic_thread_titling":{"enabled":false}}}`, "thread_titling (chatkit_configuration.automatic_thread_titling) has no effect without a workflow"},
	{"protect alone: revoke_on_refresh", "protect /chatkit\n\trevoke_on_refresh on", 3, `{"protect":["/chatkit"],"revoke_on_refresh":true}`, "revoke_on_refresh has no effect without a workflow"},
	{"protect alone: api_key", "protect /chatkit\n\tapi_key {env.OPENAI_API_KEY}", 3, `{"protect":["/chatkit"],"api_key":"{env.OPENAI_API_KEY}"}`, "api_key has no effect without a workflow"},
	{"identity_header without protect", "workflow wf_1\n\tidentity_header X-User", 3, `{"workflow":{"id":"wf_1"},"identity_header":"X-User"}`, "identity_header has no effect without protect: it applies only to protected paths (add protect <path>, or remove identity_header)"},
	{"max_upload without protect", "max_upload 5MB\n\tworkflow wf_1", 2, `{"workflow":{"id":"wf_1"},"max_upload":5000000}`, "max_upload has no effect without protect"},
}

// TestRuleSameMessageFromJSONAndCaddyfile: each rule lives once, so a JSON
// config and the Caddyfile that means the same are refused with the same
// message, the Caddyfile's with the line of the setting.
func TestRuleSameMessageFromJSONAndCaddyfile(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", cfCanaryKey)
	for _, tc := range vRuleCases {
		t.Run(tc.name, func(t *testing.T) {
			// A user placeholder keeps Provision away from Caddy's storage.
			raw := tc.json
			if raw == "{}" {
				raw = `{"user":"u"}`
			} else {
				raw = `{"user":"u",` + strings.TrimPrefix(raw, "{")
			}
			jsonErr := cfProvision(t, cfDecode(t, raw))
			if jsonErr == nil {
				t.Fatalf("JSON %s accepted", raw)
			}
			if !strings.Contains(jsonErr.Error(), tc.wantErr) {
				t.Errorf("JSON error %q does not contain %q", jsonErr, tc.wantErr)
			}
			input := "chatkit {\n\t" + tc.caddyfile + "\n}"
			_, cfErr := cfParse(input)
			if cfErr == nil {
				t.Fatalf("Caddyfile %q accepted", input)
			}
			if want := fmt.Sprintf("%s, at Testfile:%d", jsonErr, tc.cfLine); cfErr.Error() != want {
				t.Errorf("Caddyfile error\n  %q\nwant the JSON one at its line\n  %q", cfErr, want)
			}
		})
	}
}

// TestModesAcceptWhatHasAnEffect: settings used by the block's modes pass,
// in either order.
func TestModesAcceptWhatHasAnEffect(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", cfCanaryKey)
	for _, body := range []string{
		// protect alone: identity, origins, limits, the budget (model-running
		// protected requests spend it) and health.
		"protect /chatkit\n\tuser {http.auth.user.id}\n\tallow_origins https://a.example\n\trate_limit 5 1s\n\tbudget 100 1h\n\tmax_body 2MB\n\tmax_upload 5MB\n\tidentity_header X-Site-User\n\thealth_path /h",
		"protect /chatkit\n\tcookie_name c\n\tcookie_max_age 1h\n\thealth_path off",
		// Both modes: every option has an effect.
		"workflow wf_1\n\tprotect /chatkit\n\tsession_ttl 5m\n\tretries 1\n\tidentity_header X-Site-User\n\tmax_upload 5MB\n\trevoke_on_refresh on",
		// Settings judged together are judged once the block is known.
		"workflow wf_1\n\tstart_path /api/health\n\thealth_path off",
		"workflow wf_1\n\terror_cache 0s\n\tretries 0",
	} {
		h, err := cfParse("chatkit {\n\t" + body + "\n}")
		if err != nil {
			t.Errorf("refused %q: %v", body, err)
			continue
		}
		if h.Workflow == nil {
			h.User = "{http.auth.user.id}" // keeps Provision off Caddy's storage
		} else if h.User == "" {
			h.User = "u"
		}
		if err := cfProvision(t, h); err != nil {
			t.Errorf("%q parses but does not provision: %v", body, err)
		}
	}
}

func TestIdentityHeaderNames(t *testing.T) {
	for _, ok := range []string{"X-ChatKit-User", "x-site-user", "X_User", "X-User.Id", "Remote-User"} {
		if err := checkIdentityHeader(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for name, why := range map[string]string{
		"":                    "not an HTTP header name",
		"X User":              "not an HTTP header name",
		"X-User:":             "not an HTTP header name",
		"X-Üser":              "not an HTTP header name",
		"X-User\r\nHost":      "not an HTTP header name",
		":authority":          "not an HTTP header name",
		"Connection":          "hop-by-hop",
		"keep-alive":          "hop-by-hop",
		"TE":                  "hop-by-hop",
		"Trailer":             "hop-by-hop",
		"Upgrade":             "hop-by-hop",
		"Proxy-Connection":    "hop-by-hop",
		"proxy-authorization": "hop-by-hop",
		"Transfer-Encoding":   "frames the request body",
		"Content-Length":      "frames the request body",
		"host":                "names the site",
		"Cookie":              "browser's cookies",
		"X-Forwarded-For":     "reverse_proxy rewrites it",
		"Forwarded":           "reverse_proxy rewrites it",
	} {
		err := checkIdentityHeader(name)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("identity_header %q: error %v, want one saying %q", name, err, why)
		}
	}
}

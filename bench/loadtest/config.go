package main

import (
	"fmt"
	"strings"
)

// caddyConf varies the one Caddyfile every mode uses.
type caddyConf struct {
	// rateLimit is the `rate_limit <burst> <interval>` arguments.
	rateLimit string
	// maxKeys, when > 0, sets `rate_limit { max_keys }`.
	maxKeys int
	// sessionTTL, when set, adds `session_ttl` (the soak run alternates it).
	sessionTTL string
}

// caddyfile renders the bench site. One site serves both Caddy targets:
//
//   - (a) POST /api/chatkit/start: the chatkit handler (anonymous visitors,
//     signed cookie; client address from X-Forwarded-For via
//     trusted_proxies, so every virtual client has its own rate-limit
//     bucket as behind a CDN).
//   - (b) POST /proxy/chatkit/start: a plain reverse_proxy to the fake's
//     /v1/chatkit/sessions that sends the same call the module makes: the
//     same method, path, body (`{"user":"anon:…","workflow":{"id":…}}`) and
//     request headers (Authorization, OpenAI-Beta, Content-Type, Accept,
//     User-Agent), with the browser's Cookie, Origin and forwarding
//     headers removed. A proxy cannot verify the signed cookie, so the
//     virtual clients also send the id the module derives from it as
//     X-Bench-User (to both (a) and (b), so their requests stay identical)
//     and the proxy copies that into `user`.
func (s *servers) caddyfile(c caddyConf) string {
	var b strings.Builder
	fmt.Fprintf(&b, `%s

http://127.0.0.1:%d {
	chatkit {
		workflow %s
		api_key %s
		api_base %s/v1
`, s.globalOptions(), s.sitePort, workflowID, apiKey, s.fakeURL())
	if c.sessionTTL != "" {
		fmt.Fprintf(&b, "\t\tsession_ttl %s\n", c.sessionTTL)
	}
	if c.maxKeys > 0 {
		fmt.Fprintf(&b, "\t\trate_limit %s {\n\t\t\tmax_keys %d\n\t\t}\n", c.rateLimit, c.maxKeys)
	} else {
		fmt.Fprintf(&b, "\t\trate_limit %s\n", c.rateLimit)
	}
	fmt.Fprintf(&b, `	}

	handle %s {
		rewrite * %s
		request_body {
			set `+"`"+`{"user":"{http.request.header.X-Bench-User}","workflow":{"id":"%s"}}`+"`"+`
		}
		reverse_proxy 127.0.0.1:%d {
			header_up Authorization "Bearer %s"
			header_up OpenAI-Beta %s
			header_up Content-Type application/json
			header_up Accept application/json
			header_up User-Agent %s
			header_up -Cookie
			header_up -X-Bench-User
			header_up -Origin
			header_up -X-Forwarded-For
			header_up -X-Forwarded-Proto
			header_up -X-Forwarded-Host
			header_up -Via
		}
	}

	respond "bench site" 200
}
`, proxyPath, fakeSessions, workflowID, s.fakePort, apiKey, betaHeader, moduleUserAgent)
	return b.String()
}

// moduleLogOption drops the module's per-request log line when the run
// asks for it (-module-log=false), to measure what that line costs.
func (s *servers) moduleLogOption() string {
	if s.opts.moduleLog {
		return ""
	}
	return "\tlog default {\n\t\texclude http.handlers.chatkit\n\t}\n"
}

// protectCaddyfile renders the site of the stalled-bodies scenario: a
// self-hosted ChatKit server behind `protect /chatkit` (the fake stands in
// for it; no stalled body ever reaches it), client addresses from
// X-Forwarded-For through trusted_proxies.
func (s *servers) protectCaddyfile(rateLimit string) string {
	return fmt.Sprintf(`%s

http://127.0.0.1:%d {
	chatkit {
		protect /chatkit
		rate_limit %s
	}
	reverse_proxy /chatkit* 127.0.0.1:%d
	respond "bench site" 200
}
`, s.globalOptions(), s.sitePort, rateLimit, s.fakePort)
}

// globalOptions is the Caddyfile's global block every benchmark config
// shares: its own admin port and storage, no automatic HTTPS, and the
// load generator as a trusted proxy.
func (s *servers) globalOptions() string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	storage file_system %s/storage
	servers {
		trusted_proxies static 127.0.0.1/32
	}
%s}`, s.adminPort, s.work, s.moduleLogOption())
}

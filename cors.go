package chatkit

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/net/publicsuffix"
)

// CORS answers for the minting endpoints. Credentials are allowed because
// the anonymous cookie must travel cross-origin too; that is why the
// allowed origin is always echoed exactly and never `*`.
const (
	corsMaxAge        = "600"
	corsExposeHeaders = "Retry-After, RateLimit, RateLimit-Policy, " + requestIDHeader
)

// originPolicy decides which browser origins may call the minting
// endpoints. The site's own origin is always allowed.
type originPolicy struct {
	exact     map[string]struct{}
	wildcards []wildcardOrigin
}

// wildcardOrigin matches `scheme://*.domain[:port]`: any subdomain at any
// depth, never the bare domain.
type wildcardOrigin struct {
	scheme string
	suffix string // ".example.com"
	port   string // always explicit, the scheme's default when not written
}

func newOriginPolicy(origins []string) (originPolicy, error) {
	p := originPolicy{exact: make(map[string]struct{})}
	for _, o := range origins {
		if rest, ok := strings.CutPrefix(o, "https://*."); ok {
			w, err := wildcardFor("https", rest)
			if err != nil {
				return p, err
			}
			p.wildcards = append(p.wildcards, w)
			continue
		}
		if rest, ok := strings.CutPrefix(o, "http://*."); ok {
			w, err := wildcardFor("http", rest)
			if err != nil {
				return p, err
			}
			p.wildcards = append(p.wildcards, w)
			continue
		}
		norm, ok := normalizeOrigin(o)
		if !ok {
			return p, fmt.Errorf("chatkit: allow_origins entry %q is not scheme://host[:port]", o)
		}
		p.exact[norm] = struct{}{}
	}
	return p, nil
}

// wildcardFor parses the part of `scheme://*.domain[:port]` after "*.".
// Credentials are allowed cross-origin, so the wildcard must stay inside
// one owner's sites: the domain must be registrable or below, never a
// public suffix (`com`, `co.uk`, `github.io`, `vercel.app`, and by the
// list's default rule any single label, such as `localhost`).
func wildcardFor(scheme, hostport string) (wildcardOrigin, error) {
	pattern := scheme + "://*." + hostport
	host, port := splitHostPort(strings.ToLower(hostport))
	if port == "" {
		port = defaultPort(scheme)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 ||
		host == "" || strings.ContainsAny(host, "*/@ ") || net.ParseIP(host) != nil {
		return wildcardOrigin{}, fmt.Errorf("chatkit: allow_origins wildcard %q must look like https://*.example.com", pattern)
	}
	if _, err := publicsuffix.EffectiveTLDPlusOne(host); err != nil {
		if suffix, _ := publicsuffix.PublicSuffix(host); suffix == host {
			return wildcardOrigin{}, fmt.Errorf("chatkit: allow_origins wildcard %q is a public suffix (%s): every site under it "+
				"is someone else's; name a domain you own below it, such as %s://*.yours.%s", pattern, host, scheme, host)
		}
		return wildcardOrigin{}, fmt.Errorf("chatkit: allow_origins wildcard %q must look like https://*.example.com", pattern)
	}
	return wildcardOrigin{scheme: scheme, suffix: "." + host, port: port}, nil
}

// allows reports whether origin (already normalized) may call.
func (p *originPolicy) allows(origin string) bool {
	if _, ok := p.exact[origin]; ok {
		return true
	}
	if len(p.wildcards) == 0 {
		return false
	}
	scheme, hostport, _ := strings.Cut(origin, "://")
	host, port := splitHostPort(hostport)
	if port == "" {
		port = defaultPort(scheme)
	}
	for _, w := range p.wildcards {
		if w.scheme == scheme && w.port == port && len(host) > len(w.suffix) && strings.HasSuffix(host, w.suffix) {
			return true
		}
	}
	return false
}

// normalizeOrigin lower-cases an origin and drops the scheme's default
// port; ok is false for anything that is not a plain http(s) origin
// (including the opaque "null").
func normalizeOrigin(o string) (string, bool) {
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", false
	}
	return joinOrigin(strings.ToLower(u.Scheme), u.Host), true
}

func joinOrigin(scheme, hostport string) string {
	host, port := splitHostPort(strings.ToLower(hostport))
	if port == defaultPort(scheme) {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		return scheme + "://" + host + ":" + port
	}
	return scheme + "://" + host
}

func splitHostPort(hostport string) (host, port string) {
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		return h, p
	}
	return strings.Trim(hostport, "[]"), ""
}

func defaultPort(scheme string) string {
	if scheme == "https" {
		return "443"
	}
	return "80"
}

// fromTrustedProxy reports whether the direct peer is one of the server's
// trusted_proxies, which alone may speak for the browser through
// X-Forwarded-Proto and X-Forwarded-Host.
func fromTrustedProxy(r *http.Request) bool {
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	return trusted
}

// firstForwarded returns the first (client-side) entry of a forwarded
// header, or "" when absent.
func firstForwarded(r *http.Request, name string) string {
	v := r.Header.Get(name)
	if i := strings.IndexByte(v, ','); i >= 0 {
		v = v[:i]
	}
	return strings.TrimSpace(v)
}

// browserScheme is the scheme the browser used: TLS at Caddy, or
// X-Forwarded-Proto from a trusted proxy such as a TLS-terminating CDN.
func browserScheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	if fromTrustedProxy(r) && strings.EqualFold(firstForwarded(r, "X-Forwarded-Proto"), "https") {
		return "https"
	}
	return "http"
}

// siteHost is the host (and port) the browser asked for.
func siteHost(r *http.Request) string {
	if fromTrustedProxy(r) {
		if fh := firstForwarded(r, "X-Forwarded-Host"); fh != "" {
			return fh
		}
	}
	return r.Host
}

// isSiteOrigin is the common case checked without allocating: the browser's
// Origin is exactly scheme://host as the request names it.
func isSiteOrigin(raw, scheme, host string) bool {
	return len(raw) == len(scheme)+3+len(host) && strings.HasPrefix(raw, scheme) &&
		raw[len(scheme):len(scheme)+3] == "://" && raw[len(scheme)+3:] == host
}

// originVerdict is what the origin rules say about one request.
type originVerdict struct {
	origin  string // the normalized Origin header, "" when absent
	allowed bool
	cors    bool // the answer needs CORS headers (an allowed, present Origin)
}

func (p *originPolicy) judge(r *http.Request, scheme string) originVerdict {
	raw := r.Header.Get("Origin")
	if raw == "" {
		// Server-to-server and curl send no Origin. A browser that sends
		// none on a cross-site request still says so in Sec-Fetch-Site.
		return originVerdict{allowed: r.Header.Get("Sec-Fetch-Site") != "cross-site"}
	}
	host := siteHost(r)
	if isSiteOrigin(raw, scheme, host) {
		return originVerdict{origin: raw, allowed: true, cors: true}
	}
	origin, ok := normalizeOrigin(raw)
	if !ok {
		return originVerdict{}
	}
	allowed := origin == joinOrigin(scheme, host) || p.allows(origin)
	return originVerdict{origin: origin, allowed: allowed, cors: allowed}
}

// setCORS adds the headers every answer to an allowed origin carries.
func setCORS(h http.Header, v originVerdict) {
	h.Add("Vary", "Origin")
	setCORSValues(h, v)
}

func setCORSValues(h http.Header, v originVerdict) {
	if !v.cors {
		return
	}
	h.Set("Access-Control-Allow-Origin", v.origin)
	h.Set("Access-Control-Allow-Credentials", "true")
	h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
}

// corsPreflight is how one endpoint answers a CORS preflight.
type corsPreflight struct {
	allow   string // Allow, for a plain OPTIONS (as on the endpoint's 405)
	methods string // Access-Control-Allow-Methods
	headers string // Access-Control-Allow-Headers; "" reflects a valid requested list
}

// The preflight answers: the minting endpoints take only JSON POSTs; the
// ChatKit web component sends its own headers (chatkit-frame-instance-id
// and any a page's custom fetch adds), which are reflected when they are a
// plain header list; a self-hosted server also serves previews with GET.
var (
	mintPreflight    = corsPreflight{allow: "OPTIONS, POST", methods: "POST, OPTIONS", headers: "Content-Type"}
	agentPreflight   = corsPreflight{allow: "OPTIONS, POST", methods: "POST, OPTIONS"}
	protectPreflight = corsPreflight{allow: "GET, POST, OPTIONS", methods: "GET, POST, OPTIONS"}
)

// servePreflight answers OPTIONS: a plain one (no Origin) gets the
// endpoint's Allow; a CORS preflight from an allowed origin gets the
// endpoint's methods and headers, and one from any other origin 403.
func (h *Handler) servePreflight(x *exchange, p corsPreflight) {
	x.outcome = outcomePreflight
	hdr := x.w.Header()
	if x.r.Header.Get("Origin") == "" {
		hdr.Set("Allow", p.allow)
		x.writeStatus(http.StatusNoContent)
		return
	}
	if !x.verdict.cors {
		x.refuse(answerOriginDenied)
		return
	}
	hdr.Set("Access-Control-Allow-Methods", p.methods)
	allowHeaders := p.headers
	if requested := x.r.Header.Get("Access-Control-Request-Headers"); allowHeaders == "" && requested != "" && isHeaderList(requested) {
		allowHeaders = requested
	}
	if allowHeaders != "" {
		hdr.Set("Access-Control-Allow-Headers", allowHeaders)
	}
	hdr.Set("Access-Control-Max-Age", corsMaxAge)
	x.writeStatus(http.StatusNoContent)
}

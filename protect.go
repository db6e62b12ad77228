package chatkit

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Defaults for protected (self-hosted ChatKit server) paths.
const (
	defaultIdentityHeader   = "X-ChatKit-User"
	defaultProtectedMaxBody = 1 << 20
	defaultMaxUpload        = 20 << 20
	// corsProtectedMethods are what the ChatKit web component uses against
	// a custom server: JSON POSTs, plus GETs for attachment previews.
	corsProtectedMethods = "GET, POST, OPTIONS"
)

// runsModel reports whether a ChatKit request type runs the model and so
// spends a rate-limit token; reading and listing threads are free.
func runsModel(requestType string) bool {
	switch requestType {
	case "threads.create", "threads.add_user_message", "threads.add_client_tool_output",
		"threads.retry_after_item", "threads.custom_action":
		return true
	}
	return false
}

// metricType bounds the `type` metric label: an unknown type is "other".
func metricType(requestType string) string {
	switch requestType {
	case "threads.get_by_id", "threads.list", "threads.update", "threads.delete",
		"items.list", "items.feedback", "attachments.create", "attachments.delete":
		return requestType
	}
	return "other"
}

// protectedPaths matches requests for the self-hosted ChatKit server with
// Caddy's own path matcher, so `protect /chatkit` covers exactly what
// `reverse_proxy /chatkit*` forwards (same case folding and escaping rules).
type protectedPaths struct {
	matcher caddyhttp.MatchPath
}

func newProtectedPaths(ctx caddy.Context, prefixes []string) (protectedPaths, error) {
	var m caddyhttp.MatchPath
	// Each starts with "/" (checkProtectPath, run before Provision).
	for _, p := range prefixes {
		if !strings.HasSuffix(p, "*") {
			p += "*"
		}
		m = append(m, p)
	}
	if err := m.Provision(ctx); err != nil {
		return protectedPaths{}, err
	}
	return protectedPaths{matcher: m}, nil
}

func (p protectedPaths) match(r *http.Request) bool {
	if len(p.matcher) == 0 {
		return false
	}
	ok, _ := p.matcher.MatchWithError(r)
	return ok
}

// serveProtected guards one request for the self-hosted ChatKit server and
// hands it to the next handler with a trustworthy identity header.
func (h *Handler) serveProtected(x *exchange, next caddyhttp.Handler) error {
	r := x.r
	x.scheme = browserScheme(r)
	x.verdict = h.origins.judge(r, x.scheme)
	setCORS(x.w.Header(), x.verdict)
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		h.serveProtectedPreflight(x)
		return nil
	}
	if !x.verdict.allowed {
		x.refuse(answerOriginDenied)
		return nil
	}

	requestType, charge, ok := h.inspectProtectedBody(x)
	if !ok {
		return nil
	}
	x.requestType = requestType
	if charge {
		verdict, state := h.limiter.chargeClient(r.Context(), r, x.repl, h.now())
		x.rateLimit = state
		if !x.admitted(verdict) {
			return nil
		}
	}

	v, err := h.identity.identify(r.Context(), r, x.repl, x.secure())
	if errors.Is(err, errNoUser) {
		x.refuse(answerUnauthorized)
		return nil
	}
	if err != nil {
		h.logger.Error("cannot load the anonymous cookie signing key", zap.Error(err))
		x.refuse(answerNoIdentity)
		return nil
	}
	x.user = v.user
	if v.cookie != nil {
		http.SetCookie(x.w, v.cookie)
	}
	// Exactly one identity header, ours: the client's copies are gone.
	dropIdentityHeaders(r.Header, h.identityHeader)
	r.Header[h.identityHeader] = []string{v.user}
	// Placeholders are set now, so reverse_proxy and later handlers see them.
	x.outcome = outcomeProxied
	h.publishPlaceholders(x)
	x.rateLimit.apply(x.w.Header())

	rec := &protectedResponse{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: x.w}, verdict: x.verdict}
	err = next.ServeHTTP(rec, r)
	x.status = cmp.Or(rec.status, http.StatusOK) // a handler that writes nothing sends 200
	x.outcome = outcomeProxied
	if err != nil {
		if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig && !rec.wroteHeader {
			x.refuse(answerTooLarge.withMessage("upload exceeds " + strconv.FormatInt(h.maxUpload, 10) + " bytes"))
			return nil
		}
		x.outcome = outcomeBackendError
		if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok {
			x.status = he.StatusCode
		}
		return err
	}
	return nil
}

// inspectProtectedBody applies the size limits and learns the ChatKit
// request type, leaving the backend the identical bytes. charge reports
// whether the request spends a token.
func (h *Handler) inspectProtectedBody(x *exchange) (requestType string, charge, ok bool) {
	r := x.r
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return "none", false, true
	}
	mediaType, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if strings.HasPrefix(mediaType, "multipart/") && params["boundary"] != "" {
		// Attachment uploads: larger limit, streamed through untouched, and
		// free. Only a body that really starts as multipart counts: a JSON
		// request merely labelled multipart must not escape the charge.
		if r.ContentLength > h.maxUpload {
			x.refuse(answerTooLarge.withMessage("upload exceeds " + strconv.FormatInt(h.maxUpload, 10) + " bytes"))
			return "", false, false
		}
		delimiter := "--" + params["boundary"]
		head := make([]byte, len(delimiter))
		n, _ := io.ReadFull(r.Body, head)
		head = head[:n]
		r.Body = readCloser{io.MultiReader(bytes.NewReader(head), r.Body), r.Body}
		if string(head) == delimiter {
			r.Body = http.MaxBytesReader(x.w, r.Body, h.maxUpload)
			return "upload", false, true
		}
	}
	body, tooLarge, err := readBody(r, h.protectedMaxBody)
	if tooLarge {
		x.refuse(answerTooLarge.withMessage("request body exceeds " + strconv.FormatInt(h.protectedMaxBody, 10) + " bytes"))
		return "", false, false
	}
	if err != nil {
		x.refuse(answerUnreadableBody)
		return "", false, false
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))

	t, valid := chatKitRequestType(body)
	if !valid {
		// The backend refuses it, but probing is not free.
		return "malformed", true, true
	}
	if runsModel(t) {
		return t, true, true
	}
	return metricType(t), false, true
}

// chatKitRequestType reads the top-level `type` of a ChatKit request. The
// key is matched exactly, as the ChatKit server does: encoding/json would
// fold case into a struct field and read another key than the server.
func chatKitRequestType(body []byte) (string, bool) {
	trimmed := trimJSONSpace(body)
	var fields map[string]json.RawMessage
	if len(trimmed) == 0 || trimmed[0] != '{' || json.Unmarshal(trimmed, &fields) != nil {
		return "", false
	}
	var t string
	if json.Unmarshal(fields["type"], &t) != nil || t == "" {
		return "", false
	}
	return t, true
}

// readCloser reads from one reader and closes another: the original body
// behind the bytes already peeked.
type readCloser struct {
	io.Reader
	io.Closer
}

func (h *Handler) serveProtectedPreflight(x *exchange) {
	x.outcome = outcomePreflight
	if !x.verdict.cors {
		x.refuse(answerOriginDenied)
		return
	}
	hdr := x.w.Header()
	hdr.Set("Access-Control-Allow-Methods", corsProtectedMethods)
	if requested := x.r.Header.Get("Access-Control-Request-Headers"); requested != "" && isHeaderList(requested) {
		hdr.Set("Access-Control-Allow-Headers", requested)
	}
	hdr.Set("Access-Control-Max-Age", corsMaxAge)
	x.writeStatus(http.StatusNoContent)
}

// isHeaderList accepts a comma-separated list of header names, so nothing
// else is reflected into a response header.
func isHeaderList(s string) bool {
	if len(s) > 512 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != ',' && c != ' ' && c != '-' && c != '_' && !('a' <= c && c <= 'z') && !('A' <= c && c <= 'Z') && !('0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// protectedResponse passes the backend's answer through unbuffered
// (Unwrap keeps http.ResponseController's Flush working for event streams)
// while making the module's CORS answer the only one: a backend that sets
// its own would give the browser duplicate headers, which it rejects.
type protectedResponse struct {
	*caddyhttp.ResponseWriterWrapper
	verdict     originVerdict
	status      int
	wroteHeader bool
}

func (p *protectedResponse) WriteHeader(status int) {
	if !p.wroteHeader && status >= 200 {
		p.wroteHeader = true
		p.status = status
		hdr := p.Header()
		for _, name := range []string{"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Expose-Headers"} {
			hdr.Del(name)
		}
		setCORSValues(hdr, p.verdict)
	}
	p.ResponseWriterWrapper.WriteHeader(status)
}

func (p *protectedResponse) Write(b []byte) (int, error) {
	if !p.wroteHeader {
		p.WriteHeader(http.StatusOK)
	}
	return p.ResponseWriterWrapper.Write(b)
}

func (p *protectedResponse) ReadFrom(r io.Reader) (int64, error) {
	if !p.wroteHeader {
		p.WriteHeader(http.StatusOK)
	}
	return p.ResponseWriterWrapper.ReadFrom(r)
}

// dropIdentityHeaders removes every client-sent spelling of the identity
// header: CGI-style gateways (FastCGI, WSGI) map `X_ChatKit_User` and
// `X-ChatKit-User` to the same variable, so both must go.
func dropIdentityHeaders(hdr http.Header, name string) {
	for key := range hdr {
		if len(key) == len(name) && sameHeaderName(key, name) {
			delete(hdr, key)
		}
	}
}

func sameHeaderName(a, b string) bool {
	for i := 0; i < len(a); i++ {
		ca, cb := a[i], b[i]
		if ca == '_' {
			ca = '-'
		}
		if cb == '_' {
			cb = '-'
		}
		if 'A' <= ca && ca <= 'Z' {
			ca += 'a' - 'A'
		}
		if 'A' <= cb && cb <= 'Z' {
			cb += 'a' - 'A'
		}
		if ca != cb {
			return false
		}
	}
	return true
}

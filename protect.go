package chatkit

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Defaults for protected (self-hosted ChatKit server) paths.
const (
	defaultIdentityHeader   = "X-ChatKit-User"
	defaultProtectedMaxBody = 1 << 20
	defaultMaxUpload        = 20 << 20
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
// `reverse_proxy /chatkit*` forwards (same case folding and escaping rules),
// and bounds the bodies the module reads there before anything is charged.
type protectedPaths struct {
	matcher caddyhttp.MatchPath
	pending *pendingBodies
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
	return protectedPaths{matcher: m, pending: newPendingBodies()}, nil
}

func (p protectedPaths) match(r *http.Request) bool {
	if len(p.matcher) == 0 {
		return false
	}
	ok, _ := p.matcher.MatchWithError(r)
	return ok
}

// cost is what a protected request spends before it is passed on.
type cost uint8

const (
	costFree     cost = iota // reading and listing threads
	costToken                // an upload or a malformed body: one token from the client's bucket
	costModelRun             // a model run: a token, and one unit of the site budget
)

// serveProtected guards one request for the self-hosted ChatKit server and
// hands it to the next handler with a trustworthy identity header.
func (h *Handler) serveProtected(x *exchange, next caddyhttp.Handler) error {
	r := x.r
	h.judgeOrigin(x)
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		h.servePreflight(x, protectPreflight)
		return nil
	}
	if !x.verdict.allowed {
		x.refuse(answerOriginDenied)
		return nil
	}
	spend, ok := h.inspectProtectedBody(x)
	if !ok || !h.chargeProtected(x, spend) || !h.identifyVisitor(x) {
		return nil
	}
	guardIdentity(r, h.identityHeader, x.user)
	// Placeholders are set now, so reverse_proxy and later handlers see them.
	x.outcome = outcomeProxied
	h.publishPlaceholders(x)
	x.rateLimit.apply(x.w.Header())

	rec := &protectedResponse{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: x.w}, verdict: x.verdict}
	err := next.ServeHTTP(rec, r)
	x.status = cmp.Or(rec.status, http.StatusOK) // a handler that writes nothing sends 200
	x.outcome = outcomeProxied
	if err != nil {
		if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig && !rec.wroteHeader {
			x.refuse(h.uploadTooLarge())
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

// chargeProtected spends what the request costs, and answers it itself
// when the client's bucket or the site budget refuses.
func (h *Handler) chargeProtected(x *exchange, spend cost) bool {
	if spend == costFree {
		return true
	}
	verdict, state := h.limiter.chargeClient(x.r.Context(), x.r, x.repl, h.now())
	x.rateLimit = state
	if !x.admitted(verdict) {
		return false
	}
	return spend != costModelRun || x.admitted(h.limiter.spendBudget(x.r.Context(), h.now()))
}

// inspectProtectedBody applies the size limits and learns the ChatKit
// request type (into x.requestType), leaving the backend the identical
// bytes, and says what the request costs. Nothing is charged yet, so the
// reads are bounded per client and in total, and in time.
func (h *Handler) inspectProtectedBody(x *exchange) (cost, bool) {
	r := x.r
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		x.requestType = "none"
		return costFree, true
	}
	// What this read may buffer: its length, or max_body when chunked.
	release, ok := h.holdPending(x, h.protectedMaxBody)
	if !ok {
		return costFree, false
	}
	defer release()

	if upload, ok := h.peekUpload(x); !ok {
		return costFree, false
	} else if upload {
		// Uploads run no model but are stored by the backend: one token.
		x.requestType = "upload"
		return costToken, true
	}
	body, ok := h.readRequestBody(x, h.protectedMaxBody)
	if !ok {
		return costFree, false
	}
	r.Body = &spentBody{rest: body}
	r.ContentLength = int64(len(body))

	t, valid := chatKitRequestType(body)
	switch {
	case !valid:
		// The backend refuses it, but probing is not free.
		x.requestType = "malformed"
		return costToken, true
	case runsModel(t):
		x.requestType = t
		return costModelRun, true
	}
	x.requestType = metricType(t)
	return costFree, true
}

// peekUpload tells an attachment upload (streamed through untouched, under
// max_upload) by how its body really starts: a JSON request merely
// labelled multipart must not pass as an upload.
func (h *Handler) peekUpload(x *exchange) (upload, ok bool) {
	r := x.r
	mediaType, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if !strings.HasPrefix(mediaType, "multipart/") || params["boundary"] == "" {
		return false, true
	}
	if r.ContentLength > h.maxUpload {
		x.refuse(h.uploadTooLarge())
		return false, false
	}
	delimiter := "--" + params["boundary"]
	head := make([]byte, len(delimiter))
	undo := bodyDeadline(x, h.protected.pending.readTimeout())
	n, err := 0, error(nil)
	for n < len(head) && err == nil {
		var k int
		k, err = r.Body.Read(head[n:])
		n += k
	}
	// A body that stalled or broke here fails the same way in
	// readRequestBody, which answers it.
	undo(err != nil)
	head = head[:n]
	r.Body = readCloser{io.MultiReader(bytes.NewReader(head), r.Body), r.Body}
	if string(head) != delimiter {
		return false, true
	}
	r.Body = http.MaxBytesReader(x.w, r.Body, h.maxUpload)
	return true, true
}

func (h *Handler) uploadTooLarge() answer {
	return answerTooLarge.withMessage("upload exceeds " + strconv.FormatInt(h.maxUpload, 10) + " bytes")
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

// guardIdentity makes the module the only voice for the user on r. Every
// client-sent spelling of the identity header goes: from the headers, from
// the declared trailers, and from the trailers that arrive at the end of a
// chunked body (net/http merges them into r.Trailer then, and reverse_proxy
// forwards them). A non-empty user is then set as the one value, and the
// Connection header may no longer name it: reverse_proxy deletes every
// header the client's Connection header names, after the module ran.
func guardIdentity(r *http.Request, name, user string) {
	dropIdentityHeaders(r.Header, name)
	if r.Trailer != nil {
		dropIdentityHeaders(r.Trailer, name)
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &trailerGuard{ReadCloser: r.Body, trailer: r.Trailer, name: name}
		}
	}
	if user == "" {
		return
	}
	dropConnectionTokens(r.Header, name)
	r.Header[name] = []string{user}
}

// trailerGuard drops the identity header from the trailers when the body
// ends, before whoever reads the body (reverse_proxy) copies them.
type trailerGuard struct {
	io.ReadCloser
	trailer http.Header
	name    string
}

func (g *trailerGuard) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	if err == io.EOF {
		dropIdentityHeaders(g.trailer, g.name)
	}
	return n, err
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

// dropConnectionTokens removes the tokens naming the identity header (in
// any spelling) from the Connection header, keeping the others.
func dropConnectionTokens(hdr http.Header, name string) {
	values, ok := hdr["Connection"]
	if !ok {
		return
	}
	kept := make([]string, 0, len(values))
	for _, v := range values {
		var tokens []string
		changed := false
		for token := range strings.SplitSeq(v, ",") {
			t := textproto.TrimString(token)
			if len(t) == len(name) && sameHeaderName(t, name) {
				changed = true
				continue
			}
			if t != "" {
				tokens = append(tokens, t)
			}
		}
		switch {
		case !changed:
			kept = append(kept, v)
		case len(tokens) > 0:
			kept = append(kept, strings.Join(tokens, ", "))
		}
	}
	if len(kept) == 0 {
		delete(hdr, "Connection")
		return
	}
	hdr["Connection"] = kept
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

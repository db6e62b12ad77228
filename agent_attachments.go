package chatkit

// Attachments on the agent: ChatKit's two-phase upload. attachments.create
// (on the agent endpoint, charged like a turn) answers the attachment with
// an upload link; the browser sends the bytes there; a user message names
// the attachment by id, which ties it to the thread; the model gets it
// inline (an image as input_image, any other file as input_file, both data
// URLs). The upload and preview links are capabilities: absolute,
// short-lived, HMAC-signed URLs under the agent path, since the preview
// loads inside OpenAI's cross-site iframe where the visitor's SameSite=Lax
// cookie is not sent. The bytes live in the thread store with the thread.

import (
	"archive/zip"
	"bytes"
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-chatkit/caddy-chatkit/internal/threadstore"
)

// Attachment defaults and bounds.
const (
	defaultAttachmentMaxSize  = 10 << 20
	defaultAttachmentMaxFiles = 4
	// maxAttachmentFiles bounds max_files: the store attaches at most a
	// page of ids at once.
	maxAttachmentFiles = threadstore.MaxPageLimit
	// agentUploadLinkTTL is how long an upload link works: the browser
	// uploads right after attachments.create.
	agentUploadLinkTTL = 15 * time.Minute
	// agentPreviewLinkTTL is how long a preview link works; every read of a
	// thread signs fresh ones.
	agentPreviewLinkTTL = time.Hour
	// agentUnattachedTTL is how long an upload no message named is kept
	// (the sweep, agent_sweep.go, removes it after).
	agentUnattachedTTL = 24 * time.Hour
	// agentMultipartSlack is what a multipart upload may add around the
	// file (boundaries and part headers).
	agentMultipartSlack = 16 << 10
	// agentUploadRate is the slowest upload waited for, in bytes a second.
	agentUploadRate = 128 << 10
	// agentMaxFileName bounds a file name, in characters.
	agentMaxFileName = 255
	// agentLinkLabel derives the link-signing key from the API key, so the
	// key itself never signs anything a browser sees.
	agentLinkLabel = "caddy-chatkit agent attachment links v1"

	agentUploadsDir  = "uploads"
	agentPreviewsDir = "previews"
)

// defaultAttachmentTypes are what the model reads as images, and PDF.
var defaultAttachmentTypes = []string{"image/png", "image/jpeg", "image/webp", "image/gif", "application/pdf"}

// agentRecognizedTypes are the types the module can tell from a file's
// bytes (sniffAttachmentType); a `types` entry must match one of them.
// The images are those OpenAI's input_image takes (PNG, JPEG, WEBP, GIF);
// the others are file inputs the Responses API reads
// (developers.openai.com/api/docs/guides/file-inputs).
var agentRecognizedTypes = []string{
	"image/png", "image/jpeg", "image/webp", "image/gif",
	"application/pdf", "text/plain", "text/csv", "text/markdown", "text/html", "application/json",
	"application/vnd.openxmlformats-officedocument.wordprocessingml.document",
	"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
	"application/vnd.openxmlformats-officedocument.presentationml.presentation",
}

// AgentAttachments lets visitors attach files to their messages (ChatKit's
// two-phase upload). Files are kept in the thread store with their thread,
// sent to the model inline with every turn whose history holds them, and
// removed with the thread; uploads no message names are removed after a
// day.
type AgentAttachments struct {
	// Whether visitors may attach files.
	Enabled bool `json:"enabled"`

	// The largest file accepted, in bytes. Default: 10 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// How many files one message may carry. Default: 4.
	MaxFiles int `json:"max_files,omitempty"`

	// The MIME types accepted, each exact (`application/pdf`) or a type
	// with any subtype (`image/*`). The type is decided from the file's
	// bytes, not from what the browser says. Default: `image/png`,
	// `image/jpeg`, `image/webp`, `image/gif` and `application/pdf`.
	Types []string `json:"types,omitempty"`
}

// The attachments' rules (see validate.go): each names the subdirective it
// judges.

func checkAttachmentMaxSize(n int64) error { return positiveSize("max_size", n) }

func checkAttachmentMaxFiles(n int) error {
	return within("max_files", "attachments max_files", n, 1, maxAttachmentFiles, "1 to "+strconv.Itoa(maxAttachmentFiles))
}

// checkAttachmentType refuses a pattern that is not `type/subtype` or
// `type/*`, or that matches no type the module can recognize.
func checkAttachmentType(pattern string) error {
	p := strings.ToLower(pattern)
	top, sub, ok := strings.Cut(p, "/")
	if !ok || top == "" || sub == "" || strings.ContainsAny(p, " ;,") || strings.Count(p, "/") != 1 || (strings.Contains(sub, "*") && sub != "*") {
		return refuse("types", "attachments types entry %q is not a MIME type (type/subtype or type/*)", pattern)
	}
	for _, t := range agentRecognizedTypes {
		if attachmentTypeMatches(p, t) {
			return nil
		}
	}
	return refuse("types", "attachments types entry %q matches no type the module can recognize from a file's bytes (%s)",
		pattern, strings.Join(agentRecognizedTypes, ", "))
}

// validate applies the attachments' rules.
func (c *AgentAttachments) validate() error {
	if !c.Enabled {
		if c.MaxSize != 0 || c.MaxFiles != 0 || len(c.Types) > 0 {
			return refuse("attachments", "attachments are off: max_size, max_files and types have no effect")
		}
		return nil
	}
	if c.MaxSize != 0 {
		if err := checkAttachmentMaxSize(c.MaxSize); err != nil {
			return err
		}
	}
	if c.MaxFiles != 0 {
		if err := checkAttachmentMaxFiles(c.MaxFiles); err != nil {
			return err
		}
	}
	for _, t := range c.Types {
		if err := checkAttachmentType(t); err != nil {
			return err
		}
	}
	return nil
}

// parseAttachments parses `attachments on|off { max_size <size>; max_files
// <n>; types <mime pattern>... }` in the agent block.
func (a *Agent) parseAttachments(d *caddyfile.Dispenser) error {
	on, err := onOff(d)
	if err != nil {
		return err
	}
	c := &AgentAttachments{Enabled: on}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return d.Errf("duplicate attachments option %q", name)
		}
		seen[name] = true
		switch name {
		case "max_size":
			err = sizeArg(d, &c.MaxSize, checkAttachmentMaxSize)
		case "max_files":
			err = intArg(d, &c.MaxFiles, checkAttachmentMaxFiles)
		case "types":
			c.Types = d.RemainingArgs()
			if len(c.Types) == 0 {
				return d.ArgErr()
			}
			for _, t := range c.Types {
				if err := checkAttachmentType(t); err != nil {
					return d.WrapErr(err)
				}
			}
		default:
			err = d.Errf("unrecognized attachments option %q", name)
		}
		if err != nil {
			return err
		}
	}
	a.Attachments = c
	return check(d, c.validate())
}

// attachmentTypeMatches reports whether a (lower-case) pattern matches t.
func attachmentTypeMatches(pattern, t string) bool {
	if top, ok := strings.CutSuffix(pattern, "/*"); ok {
		return strings.HasPrefix(t, top+"/")
	}
	return pattern == t
}

// attachmentIsImage reports whether a decided type goes to the model as an
// image (every recognized image type is one input_image takes).
func attachmentIsImage(t string) bool { return strings.HasPrefix(t, "image/") }

// agentAttachmentExtensions are the file name extensions of the
// recognized types, for the composer's file picker (ChatKit's
// ComposerOption.attachments.accept: MIME type to extensions).
var agentAttachmentExtensions = map[string][]string{
	"image/png":        {".png"},
	"image/jpeg":       {".jpg", ".jpeg"},
	"image/webp":       {".webp"},
	"image/gif":        {".gif"},
	"application/pdf":  {".pdf"},
	"text/plain":       {".txt"},
	"text/csv":         {".csv"},
	"text/markdown":    {".md", ".markdown"},
	"text/html":        {".html", ".htm"},
	"application/json": {".json"},
	"application/vnd.openxmlformats-officedocument.wordprocessingml.document":   {".docx"},
	"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet":         {".xlsx"},
	"application/vnd.openxmlformats-officedocument.presentationml.presentation": {".pptx"},
}

// embedAttachmentsFor is what embed.js tells the composer when
// attachments are on: the same bounds the server enforces, so the widget
// refuses a file before uploading it.
func embedAttachmentsFor(cfg *AgentAttachments) *embedAttachments {
	c := newAgentAttachments(cfg, "")
	accept := map[string][]string{}
	for _, t := range agentRecognizedTypes {
		if c.allows(t) {
			accept[t] = agentAttachmentExtensions[t]
		}
	}
	return &embedAttachments{Enabled: true, MaxSize: c.maxSize, MaxCount: c.maxFiles, Accept: accept}
}

// ---------------------------------------------------------------- runtime

// agentAttachments is the attachments configuration ready to serve; nil
// when attachments are off.
type agentAttachments struct {
	maxSize  int64
	maxFiles int
	types    []string // lower-case patterns
	linkKey  []byte
}

func newAgentAttachments(cfg *AgentAttachments, apiKey string) *agentAttachments {
	if cfg == nil || !cfg.Enabled {
		return nil
	}
	c := &agentAttachments{
		maxSize:  cmp.Or(cfg.MaxSize, defaultAttachmentMaxSize),
		maxFiles: cmp.Or(cfg.MaxFiles, defaultAttachmentMaxFiles),
		types:    defaultAttachmentTypes,
		linkKey:  agentLinkKey(apiKey),
	}
	if len(cfg.Types) > 0 {
		c.types = make([]string, len(cfg.Types))
		for i, t := range cfg.Types {
			c.types[i] = strings.ToLower(t)
		}
	}
	return c
}

// maxFilesPerMessage is the decoder's bound: 0 when attachments are off.
func (c *agentAttachments) maxFilesPerMessage() int {
	if c == nil {
		return 0
	}
	return c.maxFiles
}

func (c *agentAttachments) allows(t string) bool {
	return slices.ContainsFunc(c.types, func(p string) bool { return attachmentTypeMatches(p, t) })
}

// agentLinkKey derives the key that signs upload and preview links.
func agentLinkKey(apiKey string) []byte {
	mac := hmac.New(sha256.New, []byte(apiKey))
	mac.Write([]byte(agentLinkLabel))
	return mac.Sum(nil)
}

// agentLinkBase is the agent path the links' directories hang from (an
// agent path written with a trailing slash gets no double one).
func agentLinkBase(agentPath string) string { return strings.TrimSuffix(agentPath, "/") }

// route names the attachment endpoint at path (as the request arrived).
func (c *agentAttachments) route(agentPath, path string) endpoint {
	if c == nil {
		return endpointNone
	}
	rest, ok := strings.CutPrefix(path, agentLinkBase(agentPath)+"/")
	if !ok {
		return endpointNone
	}
	dir, id, _ := strings.Cut(rest, "/")
	if !agentLinkID(id) {
		return endpointNone
	}
	switch dir {
	case agentUploadsDir:
		return endpointAgentUpload
	case agentPreviewsDir:
		return endpointAgentPreview
	}
	return endpointNone
}

// agentLinkID reports whether s can be an attachment id in a link.
func agentLinkID(s string) bool {
	if s == "" || len(s) > agentMaxIDLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		if b := s[i]; !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '_') {
			return false
		}
	}
	return true
}

// linkSignature is the HMAC of one link: its kind, id and expiry.
func (c *agentAttachments) linkSignature(kind, id string, exp int64) string {
	mac := hmac.New(sha256.New, c.linkKey)
	mac.Write([]byte(kind))
	mac.Write([]byte{0})
	mac.Write([]byte(id))
	mac.Write([]byte{0})
	mac.Write(strconv.AppendInt(nil, exp, 10))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// link is an absolute signed URL under the agent path, on the origin the
// browser used (scheme and host as Caddy saw them, forwarded ones only from
// trusted proxies): the SDK's types refuse relative URLs.
func (c *agentAttachments) link(x *exchange, agentPath, kind, id string, expires time.Time) string {
	exp := expires.Unix()
	return x.scheme + "://" + siteHost(x.r) + agentLinkBase(agentPath) + "/" + kind + "/" + id +
		"?exp=" + strconv.FormatInt(exp, 10) + "&sig=" + c.linkSignature(kind, id, exp)
}

// verifyLink checks a link's signature (in constant time) and expiry.
func (c *agentAttachments) verifyLink(kind, id string, q url.Values, now time.Time) bool {
	exp, err := strconv.ParseInt(q.Get("exp"), 10, 64)
	if err != nil {
		return false
	}
	want := c.linkSignature(kind, id, exp)
	return hmac.Equal([]byte(want), []byte(q.Get("sig"))) && now.Unix() < exp
}

// arrivedURL is the request's URL as it reached Caddy (see arrivedPath).
func arrivedURL(r *http.Request) *url.URL {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL
	}
	return r.URL
}

// ---------------------------------------------------------------- the protocol

// agentFileParams is what attachments.create declares.
type agentFileParams struct {
	Name     string
	Size     int64
	MimeType string
}

// decodeParam reads one of attachments.create's params.
func (f *agentFileParams) decodeParam(bit uint16, val []byte, field string) error {
	var err error
	switch bit {
	case agentKeyName:
		if f.Name, err = agentString(val, field); err != nil {
			return err
		}
		f.Name = agentFileName(f.Name)
	case agentKeySize:
		n, perr := strconv.ParseInt(string(val), 10, 64)
		if perr != nil || n < 0 {
			return agentInvalid(field, "must be a whole number of bytes")
		}
		f.Size = n
	case agentKeyMimeType:
		if f.MimeType, err = agentString(val, field); err != nil {
			return err
		}
		base, _, perr := mime.ParseMediaType(f.MimeType)
		if perr != nil || strings.Count(base, "/") != 1 {
			return agentInvalid(field, "is not a MIME type")
		}
		f.MimeType = base
	}
	return nil
}

// agentFileName is a file name fit to show and to send to the model: no
// directories, no control characters, at most agentMaxFileName characters,
// "file" when nothing is left.
func agentFileName(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.TrimSpace(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return -1
		}
		return r
	}, name))
	if utf8.RuneCountInString(name) > agentMaxFileName {
		name = string([]rune(name)[:agentMaxFileName])
	}
	if name == "" || name == "." || name == ".." {
		return "file"
	}
	return name
}

// decodeAttachments reads a message's attachment ids (max 0: none allowed).
func (in *agentUserInput) decodeAttachments(v []byte, field string, max int) error {
	if !agentIsArray(v) {
		return agentInvalid(field, "must be a list")
	}
	n := agentArrayLen(v)
	switch {
	case n == 0:
		return nil
	case max == 0:
		return agentInvalid(field, "attachments are not supported")
	case n > max:
		return agentInvalid(field, "a message may carry at most "+strconv.Itoa(max)+" attachments")
	}
	in.Attachments = make([]string, 0, n)
	return agentEachElement(v, func(i int, el []byte) error {
		f := agentElementField(field, i)
		id, err := agentID(el, f)
		if err != nil {
			return err
		}
		if slices.Contains(in.Attachments, id) {
			return agentInvalid(f, "names an attachment already listed")
		}
		in.Attachments = append(in.Attachments, id)
		return nil
	})
}

// agentAttachment is an attachment as the client sees it (chatkit-python's
// FileAttachment and ImageAttachment, without metadata).
type agentAttachment struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	MimeType string `json:"mime_type"`
	ThreadID string `json:"thread_id"`
}

func agentAttachmentOf(a threadstore.Attachment) agentAttachment {
	return agentAttachment{ID: a.ID, Name: a.Name, MimeType: a.MimeType, ThreadID: a.ThreadID}
}

func (a *agentAttachment) kind() string {
	if attachmentIsImage(a.MimeType) {
		return "image"
	}
	return "file"
}

// appendJSON encodes the attachment in the reference server's field order.
// uploadURL adds the upload descriptor (and the older upload_url beside
// it, for clients from before chatkit-python 1.5.0); either link may be "".
func (a *agentAttachment) appendJSON(buf []byte, uploadURL, previewURL string) []byte {
	buf = append(buf, `{"id":`...)
	buf = appendAgentString(buf, a.ID)
	buf = append(buf, `,"name":`...)
	buf = appendAgentString(buf, a.Name)
	buf = append(buf, `,"mime_type":`...)
	buf = appendAgentString(buf, a.MimeType)
	if uploadURL != "" {
		buf = append(buf, `,"upload_descriptor":{"url":`...)
		buf = appendAgentString(buf, uploadURL)
		buf = append(buf, `,"method":"POST","headers":{}},"upload_url":`...)
		buf = appendAgentString(buf, uploadURL)
	}
	if a.ThreadID != "" {
		buf = append(buf, `,"thread_id":`...)
		buf = appendAgentString(buf, a.ThreadID)
	}
	buf = append(buf, `,"type":`...)
	buf = appendAgentString(buf, a.kind())
	if previewURL != "" {
		buf = append(buf, `,"preview_url":`...)
		buf = appendAgentString(buf, previewURL)
	}
	return append(buf, '}')
}

// previewLink is a fresh preview link for an image ("" for other files).
func (c *agentAttachments) previewLink(x *exchange, agentPath string, a *agentAttachment, now time.Time) string {
	if !attachmentIsImage(a.MimeType) {
		return ""
	}
	return c.link(x, agentPath, agentPreviewsDir, a.ID, now.Add(agentPreviewLinkTTL))
}

// agentAttachmentsKey finds a stored user message's attachments: the last
// occurrence is the item's own member, since in compact JSON a quote inside
// a string is escaped and quoted_text and inference_options, which follow
// it, hold only strings.
var agentAttachmentsKey = []byte(`"attachments":[`)

// itemsOut gives the images of stored items fresh preview links, as they
// go to the browser (links are not stored: they expire).
func (h *Handler) agentItemsOut(x *exchange, items []json.RawMessage) []json.RawMessage {
	a := h.agent
	if a.attach == nil {
		return items
	}
	now := h.now()
	for i := range items {
		items[i] = a.attach.itemOut(x, a.path, items[i], now)
	}
	return items
}

func (c *agentAttachments) itemOut(x *exchange, agentPath string, raw json.RawMessage, now time.Time) json.RawMessage {
	i := bytes.LastIndex(raw, agentAttachmentsKey)
	if i < 0 || i+len(agentAttachmentsKey) >= len(raw) || raw[i+len(agentAttachmentsKey)] != '{' {
		return raw
	}
	start := i + len(agentAttachmentsKey) - 1
	end := agentValueEnd(raw, start)
	var atts []agentAttachment
	if end > len(raw) || json.Unmarshal(raw[start:end], &atts) != nil {
		return raw
	}
	out := make([]byte, 0, len(raw)+len(atts)*256)
	out = append(out, raw[:start]...)
	out = append(out, '[')
	for j := range atts {
		if j > 0 {
			out = append(out, ',')
		}
		out = atts[j].appendJSON(out, "", c.previewLink(x, agentPath, &atts[j], now))
	}
	out = append(out, ']')
	return append(out, raw[end:]...)
}

// ---------------------------------------------------------------- JSON requests

// serveAgentAttachment answers attachments.create and attachments.delete.
// Creating reserves room for a file in the database, so it costs a
// rate_limit token as a turn does; deleting spends from the read bucket.
func (h *Handler) serveAgentAttachment(x *exchange, req *agentRequest) {
	a := h.agent
	c := a.attach
	r := x.r
	if req.Type == agentAttachmentsCreate {
		verdict, state := h.limiter.chargeClient(r.Context(), r, x.repl, h.now())
		x.rateLimit = state
		if !x.admitted(verdict) {
			return
		}
	} else if !h.agentReadAllowed(x) {
		return
	}
	if !h.identifyVisitor(x) {
		return
	}
	if req.Type == agentAttachmentsCreate {
		f := req.File
		if f.Size > c.maxSize {
			x.refuse(answerTooLarge.withMessage(agentTooLargeMessage(c.maxSize)))
			return
		}
		// The bytes decide in the end; a declared type already refused
		// saves the upload.
		if !c.allows(f.MimeType) {
			x.refuse(answerUnsupportedMedia.withMessage(c.typeMessage(f.MimeType)))
			return
		}
	}
	st, release, ok := h.openAgentStore(x)
	if !ok {
		return
	}
	defer release()
	ctx := r.Context()
	if req.Type == agentAttachmentsDelete {
		x.logFields = append(x.logFields, zap.String("attachment_id", req.AttachmentID))
		if err := st.DeleteAttachment(ctx, x.user, req.AttachmentID); err != nil {
			h.failAgentAttachment(x, "delete attachment", err)
			return
		}
		x.outcome = outcomeSuccess
		x.writeJSON(http.StatusOK, []byte(agentEmptyObject))
		return
	}
	now := h.now()
	var stored threadstore.Attachment
	var err error
	for attempt := 0; ; attempt++ {
		stored, err = st.CreateAttachment(ctx, threadstore.Attachment{
			ID: agentNewID("atc"), Owner: x.user, Name: req.File.Name, MimeType: req.File.MimeType,
			Size: req.File.Size, CreatedAt: now,
		})
		if !errors.Is(err, threadstore.ErrExists) || attempt >= 3 {
			break
		}
	}
	if err != nil {
		h.failAgentAttachment(x, "create attachment", err)
		return
	}
	x.logFields = append(x.logFields, zap.String("attachment_id", stored.ID))
	att := agentAttachmentOf(stored)
	out := att.appendJSON(make([]byte, 0, 768),
		c.link(x, a.path, agentUploadsDir, att.ID, now.Add(agentUploadLinkTTL)),
		c.previewLink(x, a.path, &att, now))
	x.outcome = outcomeSuccess
	x.writeJSON(http.StatusOK, out)
}

// failAgentAttachment answers a store error about an attachment.
func (h *Handler) failAgentAttachment(x *exchange, op string, err error) {
	if errors.Is(err, threadstore.ErrNotFound) {
		x.refuse(answerNotFound.withMessage("no such attachment"))
		return
	}
	h.failAgentStore(x, op, err)
}

func agentTooLargeMessage(max int64) string {
	return "the file is larger than the " + strconv.FormatInt(max, 10) + " bytes this site accepts"
}

func (c *agentAttachments) typeMessage(t string) string {
	return "files of type " + agentQuoteShort(t) + " are not accepted here; accepted: " + strings.Join(c.types, ", ")
}

// ---------------------------------------------------------------- upload and preview

// agentLinkCORS lets any page use a link: it is the credential, and no
// cookie is read or set on these paths, so a page whose fetch sends
// credentials (a cross-origin embed) may read the answer too: its origin
// is echoed, since browsers refuse `*` with credentials.
func agentLinkCORS(x *exchange) {
	hdr := x.w.Header()
	if origin := x.r.Header.Get("Origin"); origin != "" {
		hdr.Set("Access-Control-Allow-Origin", origin)
		hdr.Set("Access-Control-Allow-Credentials", "true")
		hdr.Add("Vary", "Origin")
	} else {
		hdr.Set("Access-Control-Allow-Origin", "*")
	}
	hdr.Set("Cross-Origin-Resource-Policy", "cross-origin")
}

// serveAgentLinkPreflight answers a CORS preflight on a link path.
func serveAgentLinkPreflight(x *exchange, methods string) {
	hdr := x.w.Header()
	hdr.Set("Access-Control-Allow-Methods", methods)
	if reqHeaders := x.r.Header.Get("Access-Control-Request-Headers"); reqHeaders != "" {
		hdr.Set("Access-Control-Allow-Headers", reqHeaders)
	}
	hdr.Set("Access-Control-Max-Age", "600")
	x.requestType = "preflight"
	x.outcome = outcomePreflight
	x.writeStatus(http.StatusNoContent)
}

// checkLink verifies the request's link and returns its attachment id; it
// answers the request itself when the link is not valid.
func (h *Handler) checkLink(x *exchange, kind string) (string, bool) {
	id := strings.TrimPrefix(arrivedPath(x.r), agentLinkBase(h.agent.path)+"/"+kind+"/")
	x.logFields = append(x.logFields, zap.String("attachment_id", id))
	if !h.agent.attach.verifyLink(kind, id, arrivedURL(x.r).Query(), h.now()) {
		x.refuse(answerLinkInvalid)
		return "", false
	}
	return id, true
}

// linkedAttachment loads the attachment a verified link names; it answers
// the request itself when it cannot.
func (h *Handler) linkedAttachment(x *exchange, id string) (threadstore.Attachment, threadstore.Store, func(), bool) {
	st, release, ok := h.openAgentStore(x)
	if !ok {
		return threadstore.Attachment{}, nil, nil, false
	}
	att, err := st.LinkedAttachment(x.r.Context(), id)
	if err != nil {
		release()
		h.failAgentAttachment(x, "load attachment", err)
		return threadstore.Attachment{}, nil, nil, false
	}
	return att, st, release, true
}

// serveAgentUpload takes the bytes of an attachment: a multipart/form-data
// body with a `file` part, as chatkit-python's guide describes, or the raw
// file, as the official sample also accepts; POST (what the upload
// descriptor says) or PUT. The answer is the attachment, with its type as
// decided from the bytes.
func (h *Handler) serveAgentUpload(x *exchange) {
	c := h.agent.attach
	x.scheme = browserScheme(x.r)
	agentLinkCORS(x)
	switch x.r.Method {
	case http.MethodOptions:
		serveAgentLinkPreflight(x, "POST, PUT, OPTIONS")
		return
	case http.MethodPost, http.MethodPut:
	default:
		x.w.Header().Set("Allow", "OPTIONS, POST, PUT")
		x.refuse(answerMethodNotAllowed.withMessage("use POST or PUT"))
		return
	}
	id, ok := h.checkLink(x, agentUploadsDir)
	if !ok {
		return
	}
	// Its own bound, not the agent's small max_body.
	limit := c.maxSize + agentMultipartSlack
	release, held := h.holdPending(x, limit)
	if !held {
		return
	}
	body, ok := h.readRequestBodyWithin(x, limit, agentUploadReadTimeout(h.protected.pending.readTimeout(), limit))
	release()
	if !ok {
		return
	}
	data, tooLarge, err := uploadedFile(x.r.Header.Get("Content-Type"), body, c.maxSize)
	switch {
	case tooLarge:
		x.refuse(answerTooLarge.withMessage(agentTooLargeMessage(c.maxSize)))
		return
	case err != nil:
		x.refuse(answerBadRequest.withMessage(err.Error()))
		return
	}
	att, st, releaseStore, ok := h.linkedAttachment(x, id)
	if !ok {
		return
	}
	defer releaseStore()
	t := sniffAttachmentType(data, att.MimeType)
	if !c.allows(t) {
		x.refuse(answerUnsupportedMedia.withMessage(c.typeMessage(t)))
		return
	}
	up, err := st.UploadAttachment(x.r.Context(), att.Owner, att.ID, t, data)
	switch {
	case errors.Is(err, threadstore.ErrExists):
		x.refuse(answerAttachmentConflict.withMessage("this attachment's file was already uploaded"))
		return
	case err != nil:
		h.failAgentAttachment(x, "upload attachment", err)
		return
	}
	out := agentAttachmentOf(up)
	x.outcome = outcomeSuccess
	x.writeJSON(http.StatusOK, out.appendJSON(make([]byte, 0, 512), "", c.previewLink(x, h.agent.path, &out, h.now())))
}

// agentUploadReadTimeout is how long an upload's body may take: the
// module's read timeout, plus a second for every agentUploadRate bytes of
// the largest upload (a 10 MiB file on a 1 Mbit/s uplink).
func agentUploadReadTimeout(base time.Duration, limit int64) time.Duration {
	return base + time.Duration(limit/agentUploadRate)*time.Second
}

// errNoFilePart: a multipart upload without its `file` part.
var errNoFilePart = errors.New("the multipart body has no file part")

// uploadedFile is the file in an upload body: the `file` part of a
// multipart/form-data body, or the body itself.
func uploadedFile(contentType string, body []byte, max int64) (data []byte, tooLarge bool, err error) {
	mt, params, _ := mime.ParseMediaType(contentType)
	if mt != "multipart/form-data" {
		return body, int64(len(body)) > max, nil
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return nil, false, errNoFilePart
		}
		if err != nil {
			return nil, false, errors.New("the multipart body is malformed")
		}
		if part.FormName() != "file" {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(part, max+1))
		if err != nil {
			return nil, false, errors.New("the multipart body is malformed")
		}
		return data, int64(len(data)) > max, nil
	}
}

// serveAgentPreview sends an uploaded image to whoever holds a valid
// preview link (the web component's iframe, without cookies).
func (h *Handler) serveAgentPreview(x *exchange) {
	agentLinkCORS(x)
	switch x.r.Method {
	case http.MethodOptions:
		serveAgentLinkPreflight(x, "GET, HEAD, OPTIONS")
		return
	case http.MethodGet, http.MethodHead:
	default:
		x.w.Header().Set("Allow", "OPTIONS, GET, HEAD")
		x.refuse(answerHealthMethod)
		return
	}
	if !h.agentReadAllowed(x) {
		return
	}
	id, ok := h.checkLink(x, agentPreviewsDir)
	if !ok {
		return
	}
	att, _, release, ok := h.linkedAttachment(x, id)
	if !ok {
		return
	}
	defer release()
	if !att.Uploaded || !attachmentIsImage(att.MimeType) {
		x.refuse(answerNotFound.withMessage("no such attachment"))
		return
	}
	exp, _ := strconv.ParseInt(arrivedURL(x.r).Query().Get("exp"), 10, 64)
	hdr := x.w.Header()
	hdr["Content-Type"] = []string{att.MimeType}
	hdr["Content-Length"] = []string{strconv.Itoa(len(att.Data))}
	hdr["Cache-Control"] = []string{"private, max-age=" + strconv.FormatInt(max(exp-h.now().Unix(), 0), 10)}
	hdr["X-Content-Type-Options"] = []string{"nosniff"}
	hdr["Content-Security-Policy"] = []string{"default-src 'none'; sandbox"}
	x.outcome = outcomeSuccess
	x.status = http.StatusOK
	x.w.WriteHeader(http.StatusOK)
	if x.r.Method != http.MethodHead {
		_, _ = x.w.Write(att.Data)
	}
}

// sniffAttachmentType decides a file's type from its bytes
// (http.DetectContentType, which knows the images and PDF), refining what
// it cannot tell: Office documents are zip files with a known part, and
// plain text may be the text type the browser declared (CSV, Markdown,
// JSON carry no signature). It never takes the declared type otherwise.
func sniffAttachmentType(data []byte, declared string) string {
	sniffed, _, _ := strings.Cut(http.DetectContentType(data), ";")
	switch sniffed {
	case "application/zip":
		if t := officeType(data); t != "" {
			return t
		}
	case "text/plain":
		switch declared {
		case "text/csv", "text/markdown", "application/json":
			if utf8.Valid(data) {
				return declared
			}
		}
	}
	return sniffed
}

// officeType names the Office Open XML document a zip file is, or "".
func officeType(data []byte) string {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return ""
	}
	types, kind := false, ""
	for _, f := range zr.File {
		switch {
		case f.Name == "[Content_Types].xml":
			types = true
		case strings.HasPrefix(f.Name, "word/"):
			kind = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
		case strings.HasPrefix(f.Name, "xl/"):
			kind = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
		case strings.HasPrefix(f.Name, "ppt/"):
			kind = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
		}
	}
	if !types {
		return ""
	}
	return kind
}

// ---------------------------------------------------------------- turns

// checkTurnAttachments loads the attachments a message names before
// anything is saved: each must be the caller's, uploaded, and free or
// already in this thread. It answers the request itself when one is not.
func (h *Handler) checkTurnAttachments(x *exchange, st threadstore.Store, threadID string, ids []string) ([]threadstore.Attachment, bool) {
	out := make([]threadstore.Attachment, 0, len(ids))
	for _, id := range ids {
		att, err := st.Attachment(x.r.Context(), x.user, id)
		if err != nil {
			h.failAgentAttachment(x, "load attachment", err)
			return nil, false
		}
		switch {
		case !att.Uploaded:
			x.refuse(answerAttachmentConflict.withMessage("attachment " + agentQuoteShort(id) + " has not been uploaded yet"))
			return nil, false
		case att.ThreadID != "" && att.ThreadID != threadID:
			x.refuse(answerAttachmentConflict.withMessage("attachment " + agentQuoteShort(id) + " belongs to another thread"))
			return nil, false
		}
		att.Data = nil // loaded again, when the history is sent
		out = append(out, att)
	}
	return out, true
}

// attachToMessage ties the message's attachments to the thread and sets
// them on the message; false once it could not (the turn then ended with
// an error event).
func (t *agentTurn) attachToMessage(msg *agentUserMessage) bool {
	ids := t.req.Input.Attachments
	if len(ids) == 0 {
		return true
	}
	ctx, cancel := t.saveContext()
	defer cancel()
	atts, err := t.st.AttachToThread(ctx, t.owner, t.thread.ID, ids)
	if err != nil {
		t.storeFailed("attach attachments", err)
		return false
	}
	msg.Attachments = make([]agentAttachment, len(atts))
	for i := range atts {
		msg.Attachments[i] = agentAttachmentOf(atts[i])
	}
	return true
}

// agentFiles are the uploaded files a turn's history names, by id.
type agentFiles map[string]threadstore.Attachment

// loadFiles reads the files of the attachments in the history's newest n
// user messages (only those go to the model). A file deleted since is
// left out.
func (t *agentTurn) loadFiles(history []threadstore.Item, n int) (agentFiles, error) {
	if t.a.attach == nil {
		return nil, nil
	}
	if n > 0 && len(history) > n {
		history = history[len(history)-n:]
	}
	var files agentFiles
	ctx, cancel := t.saveContext()
	defer cancel()
	for i := range history {
		it := &history[i]
		if it.Type != agentItemUserMessage || !bytes.Contains(it.Data, []byte(`"attachments":[{`)) {
			continue
		}
		var stored struct {
			Attachments []agentAttachment `json:"attachments"`
		}
		if json.Unmarshal(it.Data, &stored) != nil {
			continue
		}
		for _, ref := range stored.Attachments {
			att, err := t.st.Attachment(ctx, t.owner, ref.ID)
			if errors.Is(err, threadstore.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if !att.Uploaded || att.ThreadID != t.thread.ID {
				continue
			}
			if files == nil {
				files = agentFiles{}
			}
			files[att.ID] = att
		}
	}
	return files, nil
}

// size is how many bytes the files add to a request (base64 and framing).
func (f agentFiles) size() int {
	n := 0
	for _, a := range f {
		n += base64.StdEncoding.EncodedLen(len(a.Data)) + len(a.Name) + 128
	}
	return n
}

// appendAgentUserParts appends a user message's content parts for the
// Responses API: the text as input_text, then each attachment whose file
// is in files, inline: an image as input_image with a data URL
// (developers.openai.com/api/docs/guides/images-vision: `{"type":
// "input_image","image_url":"data:image/jpeg;base64,…"}`), any other file as
// input_file with file_data and its filename
// (developers.openai.com/api/docs/guides/file-inputs: `{"type":"input_file",
// "filename":"document.pdf","file_data":"data:application/pdf;base64,…"}`).
// The text part is left out only when it is empty and a file is sent.
func appendAgentUserParts(buf []byte, text string, atts []agentAttachment, files agentFiles) []byte {
	sent := 0
	for i := range atts {
		if _, ok := files[atts[i].ID]; ok {
			sent++
		}
	}
	first := true
	if text != "" || sent == 0 {
		buf = append(buf, `{"type":"input_text","text":`...)
		buf = appendAgentString(buf, text)
		buf = append(buf, '}')
		first = false
	}
	for i := range atts {
		f, ok := files[atts[i].ID]
		if !ok {
			continue
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		if attachmentIsImage(f.MimeType) {
			buf = append(buf, `{"type":"input_image","image_url":"data:`...)
			buf = append(buf, f.MimeType...)
			buf = append(buf, ";base64,"...)
			buf = base64.StdEncoding.AppendEncode(buf, f.Data)
			buf = append(buf, `","detail":"auto"}`...)
			continue
		}
		buf = append(buf, `{"type":"input_file","filename":`...)
		buf = appendAgentString(buf, f.Name)
		buf = append(buf, `,"file_data":"data:`...)
		buf = append(buf, f.MimeType...)
		buf = append(buf, ";base64,"...)
		buf = base64.StdEncoding.AppendEncode(buf, f.Data)
		buf = append(buf, `"}`...)
	}
	return buf
}

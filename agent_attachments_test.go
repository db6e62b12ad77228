package chatkit

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// Files that the sniffer tells by their signatures.
var (
	testPNG = append([]byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), bytes.Repeat([]byte{7}, 64)...)
	testPDF = []byte("%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n")
)

// agentAttachmentSite starts an agent with attachments on and the given
// attachments block body.
func agentAttachmentSite(t *testing.T, block string) *agentSite {
	t.Helper()
	return startAgent(t, newFake(t), "", "", "attachments on {\n"+block+"\n}")
}

// testAttachment is an attachment as the tests read it.
type testAttachment struct {
	ID               string `json:"id"`
	Name             string `json:"name"`
	MimeType         string `json:"mime_type"`
	ThreadID         string `json:"thread_id"`
	Type             string `json:"type"`
	PreviewURL       string `json:"preview_url"`
	UploadURL        string `json:"upload_url"`
	UploadDescriptor *struct {
		URL     string            `json:"url"`
		Method  string            `json:"method"`
		Headers map[string]string `json:"headers"`
	} `json:"upload_descriptor"`
}

func decodeAttachment(t *testing.T, r reply) testAttachment {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	var a testAttachment
	if err := json.Unmarshal([]byte(r.body), &a); err != nil {
		t.Fatalf("attachment %s: %v", r.body, err)
	}
	return a
}

func createAttachmentBody(name string, size int, mimeType string) string {
	return `{"type":"attachments.create","params":{"name":` + jsonString(name) + `,"size":` + strconv.Itoa(size) + `,"mime_type":` + jsonString(mimeType) + `}}`
}

func createAttachment(t *testing.T, c *http.Client, name string, size int, mimeType string) testAttachment {
	t.Helper()
	return decodeAttachment(t, agentPost(t, c, createAttachmentBody(name, size, mimeType)))
}

// sitePath turns an absolute link of the test site into a path for do.
func sitePath(t *testing.T, link string) string {
	t.Helper()
	rest, ok := strings.CutPrefix(link, siteURL)
	if !ok {
		t.Fatalf("link %q is not an absolute URL of %s", link, siteURL)
	}
	return rest
}

// uploadMultipart sends data as the `file` part, without cookies.
func uploadMultipart(t *testing.T, link string, data []byte) reply {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("file", "upload.bin")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(data)
	mw.Close()
	return do(t, plainClient(t), "POST", sitePath(t, link), body.String(), "Content-Type", mw.FormDataContentType())
}

func messageWith(text string, ids ...string) string {
	list, _ := json.Marshal(ids)
	return `{"content":[{"type":"input_text","text":` + jsonString(text) + `}],"attachments":` + string(list) + `,"inference_options":{}}`
}

func createWith(text string, ids ...string) string {
	return `{"type":"threads.create","params":{"input":` + messageWith(text, ids...) + `}}`
}

func addWith(threadID, text string, ids ...string) string {
	return `{"type":"threads.add_user_message","params":{"thread_id":` + jsonString(threadID) + `,"input":` + messageWith(text, ids...) + `}}`
}

// userAttachments is the attachments of a stored or streamed user message.
func userAttachments(t *testing.T, raw json.RawMessage) []testAttachment {
	t.Helper()
	var it struct {
		Type        string           `json:"type"`
		Attachments []testAttachment `json:"attachments"`
	}
	if err := json.Unmarshal(raw, &it); err != nil || it.Type != "user_message" {
		t.Fatalf("not a user message: %s (%v)", raw, err)
	}
	return it.Attachments
}

// withQuery sets one query value of a link.
func withQuery(t *testing.T, link, key, value string) string {
	t.Helper()
	u, err := url.Parse(link)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// TestAgentAttachmentRoundTrip: create, upload without cookies, send with
// a message (the model gets the file inline), read it back with a fresh
// preview that loads without cookies and refuses altered or expired links,
// the history re-sends it, delete.
func TestAgentAttachmentRoundTrip(t *testing.T) {
	site := agentAttachmentSite(t, "")
	fake := site.fake
	c := client(t)

	img := createAttachment(t, c, "../cat.png", len(testPNG), "image/png")
	if !strings.HasPrefix(img.ID, "atc_") || img.Name != "cat.png" || img.MimeType != "image/png" || img.Type != "image" || img.ThreadID != "" {
		t.Fatalf("created %+v", img)
	}
	d := img.UploadDescriptor
	if d == nil || d.Method != "POST" || !strings.HasPrefix(d.URL, siteURL+agentPath+"/uploads/"+img.ID+"?") || img.UploadURL != d.URL {
		t.Fatalf("upload descriptor %+v, upload_url %q", d, img.UploadURL)
	}
	if !strings.HasPrefix(img.PreviewURL, siteURL+agentPath+"/previews/"+img.ID+"?") {
		t.Fatalf("preview_url %q", img.PreviewURL)
	}
	// Nothing to preview before the upload.
	expectError(t, do(t, plainClient(t), "GET", sitePath(t, img.PreviewURL), ""), http.StatusNotFound, "not_found")

	up := uploadMultipart(t, d.URL, testPNG)
	if got := decodeAttachment(t, up); got.ID != img.ID || got.MimeType != "image/png" || got.UploadDescriptor != nil || got.PreviewURL == "" {
		t.Fatalf("upload answered %s", up.body)
	}
	if up.header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("upload CORS %q", up.header.Get("Access-Control-Allow-Origin"))
	}
	expectError(t, uploadMultipart(t, d.URL, testPNG), http.StatusConflict, "attachment_conflict")

	// A PDF, sent as the raw body with PUT.
	pdf := createAttachment(t, c, "report.pdf", len(testPDF), "application/pdf")
	if pdf.Type != "file" || pdf.PreviewURL != "" {
		t.Fatalf("pdf %+v", pdf)
	}
	if r := do(t, plainClient(t), "PUT", sitePath(t, pdf.UploadDescriptor.URL), string(testPDF), "Content-Type", "application/pdf"); r.status != http.StatusOK {
		t.Fatalf("raw upload: %d %s", r.status, r.body)
	}

	s := agentStreamPost(t, c, createWith("what is in these?", img.ID, pdf.ID))
	expectStreamHeaders(t, s)
	if f := s.errorFrame(); f != nil {
		t.Fatalf("error event %s", f.raw)
	}
	th := s.threadID(t)
	var userItem json.RawMessage
	for _, f := range s.frames {
		if f.Type == "thread.item.done" && strings.Contains(string(f.Item), `"user_message"`) {
			userItem = f.Item
		}
	}
	atts := userAttachments(t, userItem)
	if len(atts) != 2 || atts[0].ID != img.ID || atts[0].ThreadID != th || atts[0].PreviewURL == "" || atts[1].ID != pdf.ID || atts[1].PreviewURL != "" {
		t.Fatalf("streamed user message attachments %+v", atts)
	}

	// The model got both files inline, as OpenAI documents them.
	checkModelFiles := func(what string) {
		t.Helper()
		in := fake.LastResponses().Input
		if len(in) == 0 || len(in[0].Content) != 3 {
			t.Fatalf("%s: model input %+v", what, in)
		}
		parts := in[0].Content
		if parts[0].Type != "input_text" || parts[0].Text != "what is in these?" {
			t.Errorf("%s: text part %+v", what, parts[0])
		}
		if parts[1].Type != "input_image" || parts[1].ImageURL != "data:image/png;base64,"+base64.StdEncoding.EncodeToString(testPNG) || parts[1].Detail != "auto" {
			t.Errorf("%s: image part %+v", what, parts[1])
		}
		if parts[2].Type != "input_file" || parts[2].Filename != "report.pdf" || parts[2].FileData != "data:application/pdf;base64,"+base64.StdEncoding.EncodeToString(testPDF) {
			t.Errorf("%s: file part %+v", what, parts[2])
		}
	}
	checkModelFiles("first turn")

	// The stored message shows them, with a fresh preview link.
	got := agentPost(t, c, threadBody("threads.get_by_id", th))
	var thread struct {
		Items struct{ Data []json.RawMessage } `json:"items"`
	}
	if err := json.Unmarshal([]byte(got.body), &thread); err != nil || len(thread.Items.Data) < 1 {
		t.Fatalf("get_by_id %s", got.body)
	}
	stored := userAttachments(t, thread.Items.Data[0])
	if len(stored) != 2 || stored[0].ThreadID != th || stored[0].Name != "cat.png" || stored[0].Type != "image" || stored[1].Type != "file" {
		t.Fatalf("stored attachments %+v", stored)
	}
	preview := stored[0].PreviewURL
	r := do(t, plainClient(t), "GET", sitePath(t, preview), "")
	if r.status != http.StatusOK || r.body != string(testPNG) || r.header.Get("Content-Type") != "image/png" ||
		r.header.Get("X-Content-Type-Options") != "nosniff" || r.header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("preview without cookies: %d %v", r.status, r.header)
	}
	if !strings.Contains(r.header.Get("Content-Security-Policy"), "sandbox") {
		t.Errorf("preview CSP %q", r.header.Get("Content-Security-Policy"))
	}

	// Altered or expired links are refused.
	u, _ := url.Parse(preview)
	exp, _ := strconv.ParseInt(u.Query().Get("exp"), 10, 64)
	key := &agentAttachments{linkKey: agentLinkKey(fakeopenai.DefaultAPIKey)}
	past := time.Now().Add(-time.Minute).Unix()
	for name, link := range map[string]string{
		"signature": withQuery(t, preview, "sig", strings.Repeat("A", 43)),
		"expiry":    withQuery(t, preview, "exp", strconv.FormatInt(exp+3600, 10)),
		"id":        strings.Replace(preview, img.ID, pdf.ID, 1),
		"kind":      strings.Replace(preview, "/previews/", "/uploads/", 1),
		"expired":   withQuery(t, withQuery(t, preview, "exp", strconv.FormatInt(past, 10)), "sig", key.linkSignature(agentPreviewsDir, img.ID, past)),
		"no query":  strings.SplitN(preview, "?", 2)[0],
	} {
		method := "GET"
		if name == "kind" {
			method = "POST"
		}
		expectError(t, do(t, plainClient(t), method, sitePath(t, link), ""), http.StatusForbidden, "link_invalid")
	}
	// The same key signs a valid link: the expired one fails only by its time.
	future := time.Now().Add(time.Minute).Unix()
	ok := withQuery(t, withQuery(t, preview, "exp", strconv.FormatInt(future, 10)), "sig", key.linkSignature(agentPreviewsDir, img.ID, future))
	if r := do(t, plainClient(t), "GET", sitePath(t, ok), ""); r.status != http.StatusOK {
		t.Fatalf("a link signed with the derived key: %d %s", r.status, r.body)
	}

	// The next turn sends the files again, with the history.
	s = agentStreamPost(t, c, addBody(th, "and now?"))
	if f := s.errorFrame(); f != nil {
		t.Fatalf("error event %s", f.raw)
	}
	checkModelFiles("second turn")

	// Deleted: the preview goes, and the next turn no longer sends it.
	if r := agentPost(t, c, `{"type":"attachments.delete","params":{"attachment_id":"`+img.ID+`"}}`); r.status != http.StatusOK || r.body != "{}" {
		t.Fatalf("attachments.delete: %d %s", r.status, r.body)
	}
	expectError(t, do(t, plainClient(t), "GET", sitePath(t, preview), ""), http.StatusNotFound, "not_found")
	expectError(t, agentPost(t, c, `{"type":"attachments.delete","params":{"attachment_id":"`+img.ID+`"}}`), http.StatusNotFound, "not_found")
	agentStreamPost(t, c, addBody(th, "again"))
	if in := fake.LastResponses().Input; len(in[0].Content) != 2 || in[0].Content[1].Type != "input_file" {
		t.Fatalf("after deleting the image the history sends %+v", in[0].Content)
	}
}

// TestAgentAttachmentRefusals: size, declared and sniffed type, ownership,
// max_files, attachments not uploaded or in another thread.
func TestAgentAttachmentRefusals(t *testing.T) {
	site := agentAttachmentSite(t, "max_size 1KiB\nmax_files 2\ntypes image/*")
	alice, mallory := client(t), client(t)

	expectError(t, agentPost(t, alice, createAttachmentBody("big.png", 1025, "image/png")), http.StatusRequestEntityTooLarge, "payload_too_large")
	r := agentPost(t, alice, createAttachmentBody("a.pdf", 10, "application/pdf"))
	expectError(t, r, http.StatusUnsupportedMediaType, "unsupported_media_type")
	if !strings.Contains(r.json["message"].(string), "image/*") {
		t.Errorf("the refusal does not say what is accepted: %s", r.body)
	}

	// Declared a PNG, the bytes are a PDF: sniffed, and refused.
	fake := createAttachment(t, alice, "cat.png", len(testPDF), "image/png")
	r = uploadMultipart(t, fake.UploadDescriptor.URL, testPDF)
	expectError(t, r, http.StatusUnsupportedMediaType, "unsupported_media_type")
	if !strings.Contains(r.json["message"].(string), "application/pdf") {
		t.Errorf("the refusal does not name the sniffed type: %s", r.body)
	}
	// Too large while reading, raw or multipart.
	big := append(append([]byte{}, testPNG...), make([]byte, 1024)...)
	expectError(t, do(t, plainClient(t), "POST", sitePath(t, fake.UploadDescriptor.URL), string(big), "Content-Type", "image/png"),
		http.StatusRequestEntityTooLarge, "payload_too_large")
	expectError(t, uploadMultipart(t, fake.UploadDescriptor.URL, big), http.StatusRequestEntityTooLarge, "payload_too_large")
	// Still nothing stored: a message cannot use it.
	expectError(t, agentPost(t, alice, createWith("look", fake.ID)), http.StatusConflict, "attachment_conflict")

	upload := func(c *http.Client) testAttachment {
		a := createAttachment(t, c, "a.png", len(testPNG), "image/png")
		if r := uploadMultipart(t, a.UploadDescriptor.URL, testPNG); r.status != http.StatusOK {
			t.Fatalf("upload %d %s", r.status, r.body)
		}
		return a
	}
	a1, a2, a3 := upload(alice), upload(alice), upload(alice)

	// Another visitor's attachment is one that does not exist.
	calls := site.fake.ResponsesCount()
	for name, body := range map[string]string{
		"create":   createWith("mine now", a1.ID),
		"delete":   `{"type":"attachments.delete","params":{"attachment_id":"` + a1.ID + `"}}`,
		"no such":  createWith("x", "atc_000000000000000000000000"),
		"no such2": `{"type":"attachments.delete","params":{"attachment_id":"atc_000000000000000000000000"}}`,
	} {
		r := agentPost(t, mallory, body)
		expectError(t, r, http.StatusNotFound, "not_found")
		if r.json["message"] != "no such attachment" {
			t.Errorf("%s: message %q", name, r.json["message"])
		}
	}
	if site.fake.ResponsesCount() != calls {
		t.Fatal("a refused message called OpenAI")
	}

	// max_files per message.
	r = agentPost(t, alice, createWith("three", a1.ID, a2.ID, a3.ID))
	expectError(t, r, http.StatusBadRequest, "bad_request")
	if !strings.Contains(r.json["message"].(string), "at most 2") {
		t.Errorf("max_files refusal %s", r.body)
	}
	expectError(t, agentPost(t, alice, createWith("twice", a1.ID, a1.ID)), http.StatusBadRequest, "bad_request")

	// Once in a thread, an attachment stays there.
	s := agentStreamPost(t, alice, createWith("two", a1.ID, a2.ID))
	if f := s.errorFrame(); f != nil || s.status != http.StatusOK {
		t.Fatalf("create with two: %d %s", s.status, s.body)
	}
	th := s.threadID(t)
	r = agentPost(t, alice, createWith("elsewhere", a1.ID))
	expectError(t, r, http.StatusConflict, "attachment_conflict")
	if s := agentStreamPost(t, alice, addWith(th, "same thread again", a1.ID)); s.errorFrame() != nil || s.status != http.StatusOK {
		t.Fatalf("naming it again in its own thread: %d %s", s.status, s.body)
	}
	// A message of attachments alone is a message.
	if s := agentStreamPost(t, alice, `{"type":"threads.add_user_message","params":{"thread_id":"`+th+`","input":{"content":[{"type":"input_text","text":""}],"attachments":["`+a3.ID+`"],"inference_options":{}}}}`); s.status != http.StatusOK || s.errorFrame() != nil {
		t.Fatalf("attachments without text: %d %s", s.status, s.body)
	}
	if in := site.fake.LastResponses().Input; in[len(in)-1].Content[0].Type != "input_image" {
		t.Fatalf("the file-only message went as %+v", in[len(in)-1].Content)
	}
}

// TestAgentAttachmentsCascadeWithThread: deleting the thread removes its
// files; a free upload stays.
func TestAgentAttachmentsCascadeWithThread(t *testing.T) {
	agentAttachmentSite(t, "")
	c := client(t)
	a := createAttachment(t, c, "a.png", len(testPNG), "image/png")
	free := createAttachment(t, c, "b.png", len(testPNG), "image/png")
	for _, x := range []testAttachment{a, free} {
		if r := uploadMultipart(t, x.UploadDescriptor.URL, testPNG); r.status != http.StatusOK {
			t.Fatal(r.body)
		}
	}
	th := agentStreamPost(t, c, createWith("hi", a.ID)).threadID(t)
	if r := do(t, plainClient(t), "GET", sitePath(t, a.PreviewURL), ""); r.status != http.StatusOK {
		t.Fatalf("preview before the delete: %d", r.status)
	}
	if r := agentPost(t, c, threadBody("threads.delete", th)); r.status != http.StatusOK {
		t.Fatal(r.body)
	}
	expectError(t, do(t, plainClient(t), "GET", sitePath(t, a.PreviewURL), ""), http.StatusNotFound, "not_found")
	if r := do(t, plainClient(t), "GET", sitePath(t, free.PreviewURL), ""); r.status != http.StatusOK {
		t.Fatalf("another attachment went with the thread: %d", r.status)
	}
}

// TestAgentAttachmentSweep: an upload no message named goes after a day,
// on the sweep's clock; an attached one stays.
func TestAgentAttachmentSweep(t *testing.T) {
	site := agentAttachmentSite(t, "")
	c := client(t)
	free := createAttachment(t, c, "a.png", len(testPNG), "image/png")
	used := createAttachment(t, c, "b.png", len(testPNG), "image/png")
	for _, x := range []testAttachment{free, used} {
		if r := uploadMultipart(t, x.UploadDescriptor.URL, testPNG); r.status != http.StatusOK {
			t.Fatal(r.body)
		}
	}
	agentStreamPost(t, c, createWith("hi", used.ID))

	// A handle on the same file, as the sweep uses it; it opens no database.
	hd := newAgentStoreHandle(site.db, openSQLiteStore(site.db))
	defer hd.Destruct()
	if n, err := hd.sweepUnattached(context.Background(), time.Now().Add(48*time.Hour)); n != 0 || err != nil {
		t.Fatalf("sweep of an unopened database: %d, %v", n, err)
	}
	_, release, err := hd.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	release()
	if n, err := hd.sweepUnattached(context.Background(), time.Now().Add(agentUnattachedTTL-time.Minute)); n != 0 || err != nil {
		t.Fatalf("sweep within the day removed %d (%v)", n, err)
	}
	if r := do(t, plainClient(t), "GET", sitePath(t, free.PreviewURL), ""); r.status != http.StatusOK {
		t.Fatalf("the free upload went within the day: %d", r.status)
	}
	if n, err := hd.sweepUnattached(context.Background(), time.Now().Add(agentUnattachedTTL+time.Minute)); n != 1 || err != nil {
		t.Fatalf("sweep after a day removed %d (%v), want 1", n, err)
	}
	expectError(t, do(t, plainClient(t), "GET", sitePath(t, free.PreviewURL), ""), http.StatusNotFound, "not_found")
	if r := do(t, plainClient(t), "GET", sitePath(t, used.PreviewURL), ""); r.status != http.StatusOK {
		t.Fatalf("the attached upload was swept: %d", r.status)
	}
}

// TestAgentAttachmentPaths: the links' directories answer only with
// attachments on and only for an id; anything else goes on.
func TestAgentAttachmentPaths(t *testing.T) {
	startAgent(t, newFake(t), "", "", "")
	for _, p := range []string{agentPath + "/uploads/atc_1?exp=1&sig=x", agentPath + "/previews/atc_1"} {
		if r := do(t, plainClient(t), "GET", p, ""); r.status != http.StatusOK || r.body != "the next handler" {
			t.Fatalf("attachments off, %s answered %d %s", p, r.status, r.body)
		}
	}
	r := agentPost(t, client(t), createAttachmentBody("a.png", 1, "image/png"))
	expectError(t, r, http.StatusBadRequest, "bad_request")
	if !strings.Contains(r.body, "not enabled") {
		t.Errorf("attachments off: %s", r.body)
	}
	expectError(t, agentPost(t, client(t), createWith("x", "atc_1")), http.StatusBadRequest, "bad_request")

	agentAttachmentSite(t, "")
	for _, p := range []string{agentPath + "/uploads/", agentPath + "/previews/a/b", agentPath + "/other/atc_1", agentPath + "/uploads/ATC"} {
		if r := do(t, plainClient(t), "GET", p, ""); r.status != http.StatusOK || r.body != "the next handler" {
			t.Fatalf("%s answered %d %s", p, r.status, r.body)
		}
	}
	// Preflights from any page: the link is the credential.
	r = do(t, plainClient(t), "OPTIONS", agentPath+"/uploads/atc_1", "", "Origin", "https://cdn.platform.openai.com",
		"Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "content-type")
	if r.status != http.StatusNoContent || r.header.Get("Access-Control-Allow-Origin") != "https://cdn.platform.openai.com" ||
		r.header.Get("Access-Control-Allow-Credentials") != "true" ||
		!strings.Contains(r.header.Get("Access-Control-Allow-Methods"), "PUT") || r.header.Get("Access-Control-Allow-Headers") != "content-type" {
		t.Fatalf("upload preflight %d %v", r.status, r.header)
	}
	expectError(t, do(t, plainClient(t), "DELETE", agentPath+"/uploads/atc_1", ""), http.StatusMethodNotAllowed, "method_not_allowed")
}

// TestAgentAttachmentLinksFollowTheOrigin: the links name the scheme and
// host the browser used, forwarded ones only from a trusted proxy.
func TestAgentAttachmentLinksFollowTheOrigin(t *testing.T) {
	agentAttachmentSite(t, "")
	c := client(t)
	r := agentPost(t, c, createAttachmentBody("a.png", 1, "image/png"), "X-Forwarded-Proto", "https", "X-Forwarded-Host", "evil.example")
	if a := decodeAttachment(t, r); !strings.HasPrefix(a.UploadDescriptor.URL, "http://localhost:9080/") {
		t.Fatalf("an untrusted peer's forwarded headers were believed: %s", a.UploadDescriptor.URL)
	}

	// Behind a trusted proxy, the forwarded scheme and host are the browser's.
	req := httptest.NewRequest("POST", "http://10.0.0.2:8080/chat", nil)
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("X-Forwarded-Host", "chat.example.com")
	req = req.WithContext(context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.TrustedProxyVarKey: true}))
	x := &exchange{r: req, scheme: browserScheme(req)}
	link := (&agentAttachments{linkKey: agentLinkKey("k")}).link(x, "/chat", agentUploadsDir, "atc_1", time.Unix(60, 0))
	if want := "https://chat.example.com/chat/uploads/atc_1?exp=60&sig="; !strings.HasPrefix(link, want) {
		t.Fatalf("link %q, want %q…", link, want)
	}
}

func TestAgentAttachmentsConfig(t *testing.T) {
	h, err := cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\tattachments on {\n\t\t\tmax_size 2MB\n\t\t\tmax_files 3\n\t\t\ttypes image/* Application/PDF\n\t\t}\n\t}\n}")
	if err != nil {
		t.Fatal(err)
	}
	want := &AgentAttachments{Enabled: true, MaxSize: 2000000, MaxFiles: 3, Types: []string{"image/*", "Application/PDF"}}
	if got, exp := cfJSON(h.Agent.Attachments), cfJSON(want); got != exp {
		t.Fatalf("parsed %s, want %s", got, exp)
	}
	rt := newAgentAttachments(h.Agent.Attachments, "k")
	if !rt.allows("image/webp") || !rt.allows("application/pdf") || rt.allows("text/plain") || rt.maxFilesPerMessage() != 3 {
		t.Fatalf("runtime %+v", rt)
	}
	def := newAgentAttachments(&AgentAttachments{Enabled: true}, "k")
	if def.maxSize != 10<<20 || def.maxFiles != 4 || !def.allows("image/gif") || !def.allows("application/pdf") || def.allows("text/csv") {
		t.Fatalf("defaults %+v", def)
	}
	if newAgentAttachments(&AgentAttachments{}, "k") != nil || newAgentAttachments(nil, "k").maxFilesPerMessage() != 0 {
		t.Fatal("attachments off still has a runtime")
	}
	if bytes.Equal(def.linkKey, []byte("k")) || bytes.Equal(def.linkKey, agentSafetyKey("k")) {
		t.Fatal("the link key is the API key or the safety key")
	}

	for name, tc := range map[string]string{
		"unknown":       "attachments on {\nmax_bytes 1\n}|unrecognized attachments option \"max_bytes\"",
		"duplicate":     "attachments on {\nmax_files 1\nmax_files 2\n}|duplicate attachments option \"max_files\"",
		"twice":         "attachments on\nattachments off|duplicate agent option \"attachments\"",
		"not on off":    "attachments yes|expected on or off",
		"bad size":      "attachments on {\nmax_size lots\n}|not a size in bytes",
		"zero size":     "attachments on {\nmax_size 0\n}|max_size must be positive",
		"files":         "attachments on {\nmax_files 0\n}|max_files must be 1 to 100",
		"many files":    "attachments on {\nmax_files 101\n}|max_files must be 1 to 100",
		"no types":      "attachments on {\ntypes\n}|wrong argument count",
		"not a type":    "attachments on {\ntypes png\n}|is not a MIME type",
		"half wildcard": "attachments on {\ntypes image/p*\n}|is not a MIME type",
		"unknowable":    "attachments on {\ntypes video/*\n}|matches no type the module can recognize",
		"off options":   "attachments off {\nmax_files 2\n}|attachments are off",
	} {
		t.Run(name, func(t *testing.T) {
			block, want, _ := strings.Cut(tc, "|")
			cf := "example.com {\n\tchatkit {\nagent {\nmodel m\n" + block + "\n}\n\t}\n}\n"
			err := cfAdaptErr(t, cf)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error = %v, want %q", err, want)
			}
		})
	}
	// JSON is held to the same rules, and the links' directories are the
	// agent's own.
	for raw, want := range map[string]string{
		`{"agent":{"model":"m","attachments":{"enabled":true,"types":["audio/*"]}}}`:                                          "matches no type",
		`{"agent":{"model":"m","attachments":{"enabled":true,"max_files":500}}}`:                                              "max_files must be",
		`{"workflow":{"id":"wf"},"start_path":"/api/chatkit/uploads/x","agent":{"model":"m","attachments":{"enabled":true}}}`: "lies in the agent's uploads directory",
	} {
		h := cfDecode(t, raw)
		if err := h.validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: validate = %v, want %q", raw, err, want)
		}
	}
}

func TestSniffAttachmentType(t *testing.T) {
	office := func(dir string) []byte {
		var b bytes.Buffer
		zw := zip.NewWriter(&b)
		for _, name := range []string{"[Content_Types].xml", dir + "document.xml"} {
			w, _ := zw.Create(name)
			io.WriteString(w, "<x/>")
		}
		zw.Close()
		return b.Bytes()
	}
	plainZip := func() []byte {
		var b bytes.Buffer
		zw := zip.NewWriter(&b)
		w, _ := zw.Create("word/evil.xml")
		io.WriteString(w, "<x/>")
		zw.Close()
		return b.Bytes()
	}()
	for _, c := range []struct {
		name     string
		data     []byte
		declared string
		want     string
	}{
		{"png", testPNG, "image/png", "image/png"},
		{"png declared jpeg", testPNG, "image/jpeg", "image/png"},
		{"jpeg", []byte("\xff\xd8\xff\xe0\x00\x10JFIF\x00"), "image/png", "image/jpeg"},
		{"gif", []byte("GIF89a\x01\x00\x01\x00"), "", "image/gif"},
		{"webp", []byte("RIFF\x00\x00\x00\x00WEBPVP8 "), "", "image/webp"},
		{"pdf declared png", testPDF, "image/png", "application/pdf"},
		{"docx", office("word/"), "application/octet-stream", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
		{"xlsx", office("xl/"), "", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"},
		{"zip without content types", plainZip, "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "application/zip"},
		{"csv", []byte("a,b\n1,2\n"), "text/csv", "text/csv"},
		{"text declared png", []byte("just text"), "image/png", "text/plain"},
		{"html", []byte("<html><script>x</script>"), "image/png", "text/html"},
		{"svg is not an image", []byte(`<svg xmlns="http://www.w3.org/2000/svg"></svg>`), "image/svg+xml", "text/plain"},
		{"binary", []byte{0, 1, 2, 3}, "image/png", "application/octet-stream"},
	} {
		if got := sniffAttachmentType(c.data, c.declared); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

func TestAgentAttachmentItemOut(t *testing.T) {
	c := &agentAttachments{linkKey: agentLinkKey("k")}
	x := &exchange{scheme: "https", r: &http.Request{Host: "example.com", Header: http.Header{}}}
	msg := newAgentUserMessage("msg_1", "thr_1", time.Unix(0, 0), agentUserInput{
		Content: []agentUserContent{{Type: "input_tag", ID: "t", Text: "x", Data: json.RawMessage(`{"attachments":[{"id":"decoy"}]}`)}},
	})
	msg.Attachments = []agentAttachment{{ID: "atc_1", Name: "a.png", MimeType: "image/png", ThreadID: "thr_1"}, {ID: "atc_2", Name: "b.pdf", MimeType: "application/pdf", ThreadID: "thr_1"}}
	raw := msg.appendJSON(nil)
	if strings.Contains(string(raw), "preview_url") {
		t.Fatalf("stored with a link: %s", raw)
	}
	out := c.itemOut(x, "/chat", raw, time.Unix(1000, 0))
	var it struct {
		Content []struct {
			Data json.RawMessage `json:"data"`
		} `json:"content"`
		Attachments []testAttachment `json:"attachments"`
	}
	if err := json.Unmarshal(out, &it); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if string(it.Content[0].Data) != `{"attachments":[{"id":"decoy"}]}` {
		t.Errorf("the tag's data changed: %s", it.Content[0].Data)
	}
	want := "https://example.com/chat/previews/atc_1?exp=" + strconv.FormatInt(1000+int64(agentPreviewLinkTTL/time.Second), 10) + "&sig="
	if len(it.Attachments) != 2 || !strings.HasPrefix(it.Attachments[0].PreviewURL, want) || it.Attachments[1].PreviewURL != "" || it.Attachments[1].Type != "file" {
		t.Fatalf("out %s", out)
	}
	// Without attachments the item is passed as it is.
	plain := newAgentUserMessage("msg_2", "thr_1", time.Unix(0, 0), agentUserInput{Content: []agentUserContent{{Type: "input_text", Text: `"attachments":[{`}}}).appendJSON(nil)
	if got := c.itemOut(x, "/chat", plain, time.Unix(1000, 0)); !bytes.Equal(got, plain) {
		t.Fatalf("changed %s", got)
	}
}

func TestAgentAttachmentsDecode(t *testing.T) {
	lim := agentRequestLimits{MaxAttachments: 2}
	req, err := decodeAgentRequest([]byte(createWith("x", "atc_1", "atc_2")), lim)
	if err != nil || len(req.Input.Attachments) != 2 {
		t.Fatalf("%+v %v", req.Input, err)
	}
	// The canonical form reads back the same.
	again, err := decodeAgentRequest(req.appendJSON(nil), lim)
	if err != nil || strings.Join(again.Input.Attachments, ",") != "atc_1,atc_2" {
		t.Fatalf("round trip %+v %v", again.Input, err)
	}
	req, err = decodeAgentRequest([]byte(createAttachmentBody(`C:\dir\a`+"\x07"+`.png`, 5, "Image/PNG; charset=x")), lim)
	if err != nil || req.File != (agentFileParams{Name: "a.png", Size: 5, MimeType: "image/png"}) {
		t.Fatalf("create %+v %v", req.File, err)
	}
	if again, err := decodeAgentRequest(req.appendJSON(nil), lim); err != nil || again.File != req.File {
		t.Fatalf("create round trip %+v %v", again.File, err)
	}
	for name, body := range map[string]string{
		"too many":      createWith("x", "a", "b", "c"),
		"twice":         createWith("x", "a", "a"),
		"size negative": createAttachmentBody("a", -1, "image/png"),
		"size fraction": `{"type":"attachments.create","params":{"name":"a","size":1.5,"mime_type":"image/png"}}`,
		"bad type":      createAttachmentBody("a", 1, "png"),
		"no size":       `{"type":"attachments.create","params":{"name":"a","mime_type":"image/png"}}`,
		"no id":         `{"type":"attachments.delete","params":{}}`,
	} {
		if _, err := decodeAgentRequest([]byte(body), lim); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := decodeAgentRequest([]byte(createWith("x", "a")), agentRequestLimits{}); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("attachments off: %v", err)
	}
}

// TestAgentStoreHandleSweeperStops: the sweep's goroutine ends with the
// handle.
func TestAgentStoreHandleSweeperStops(t *testing.T) {
	db := filepath.Join(t.TempDir(), "t.db")
	hd := newAgentStoreHandle(db, openSQLiteStore(db)).startSweeper(zap.NewNop())
	done := hd.sweeper.done
	hd.Destruct()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the sweeper did not stop")
	}
}

// TestAgentAttachmentsInEmbed: with attachments on, embed.js turns on the
// composer's paperclip with the server's bounds and the two-phase upload;
// off, neither.
func TestAgentAttachmentsInEmbed(t *testing.T) {
	h, err := cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\tattachments on {\n\t\t\tmax_size 2MiB\n\t\t\tmax_files 3\n\t\t\ttypes image/png application/pdf\n\t\t}\n\t}\n}")
	if err != nil {
		t.Fatal(err)
	}
	c := buildEmbedConfig(h.Agent, "/api/chatkit", "k")
	if s := c.Options.API.UploadStrategy; s == nil || s.Type != "two_phase" {
		t.Fatalf("upload strategy %+v", s)
	}
	at := c.Options.Composer.Attachments
	if at == nil || !at.Enabled || at.MaxSize != 2<<20 || at.MaxCount != 3 || len(at.Accept) != 2 ||
		strings.Join(at.Accept["image/png"], ",") != ".png" || strings.Join(at.Accept["application/pdf"], ",") != ".pdf" {
		t.Fatalf("composer attachments %+v", at)
	}
	h, err = cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\tattachments off\n\t}\n}")
	if err != nil {
		t.Fatal(err)
	}
	if c := buildEmbedConfig(h.Agent, "/api/chatkit", "k"); c.Options.API.UploadStrategy != nil || c.Options.Composer != nil {
		t.Fatalf("attachments off: %+v", c.Options)
	}
}

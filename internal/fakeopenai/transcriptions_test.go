package fakeopenai

import (
	"bytes"
	"errors"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// formPart is one part of a test form; a file when filename is set.
type formPart struct {
	name, filename, contentType, value string
}

// form encodes parts as multipart/form-data.
func form(t *testing.T, parts ...formPart) (contentType, body string) {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		disp := `form-data; name="` + p.name + `"`
		if p.filename != "" {
			disp += `; filename="` + p.filename + `"`
		}
		h.Set("Content-Disposition", disp)
		if p.contentType != "" {
			h.Set("Content-Type", p.contentType)
		}
		pw, err := w.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = pw.Write([]byte(p.value))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return w.FormDataContentType(), buf.String()
}

func audioFile(name, contentType, data string) formPart {
	return formPart{name: "file", filename: name, contentType: contentType, value: data}
}

func field(name, value string) formPart { return formPart{name: name, value: value} }

func postForm(t *testing.T, s *Server, c *http.Client, parts ...formPart) result {
	t.Helper()
	ct, body := form(t, parts...)
	return mustSend(t, c, "POST", s.URL()+"/audio/transcriptions", body, withHeader("Content-Type", ct), withoutHeader("OpenAI-Beta"))
}

func TestTranscriptionAnswersDeterministically(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	r := postForm(t, s, c, audioFile("audio.webm", "audio/webm", "\x1aE\xdf\xa3 four"), field("model", "gpt-4o-mini-transcribe"), field("response_format", "json"))
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	m := r.json(t)
	want := TranscriptionText(9, "audio/webm")
	if m["text"] != want || want != "heard 9 bytes of audio/webm" {
		t.Fatalf("text = %v, want %q", m["text"], want)
	}
	usage, _ := m["usage"].(map[string]any)
	in, out := TranscriptionUsage(9, want)
	if usage["type"] != "tokens" || usage["input_tokens"] != float64(in) || usage["output_tokens"] != float64(out) || usage["total_tokens"] != float64(in+out) {
		t.Fatalf("usage = %v", usage)
	}
	tr := s.LastTranscription()
	if tr == nil || tr.Model != "gpt-4o-mini-transcribe" || tr.Filename != "audio.webm" || tr.FileType != "audio/webm" ||
		tr.FileSize != 9 || tr.ResponseFormat != "json" || strings.Join(tr.Fields, ",") != "file,model,response_format" {
		t.Fatalf("recorded %+v", tr)
	}
	if s.TranscriptionCount() != 1 || s.CreateCount() != 0 || s.ResponsesCount() != 0 {
		t.Fatalf("counts: transcriptions %d, creates %d, responses %d", s.TranscriptionCount(), s.CreateCount(), s.ResponsesCount())
	}

	// whisper-1 reports seconds; text is plain text; without a part type
	// the extension names it.
	r = postForm(t, s, c, audioFile("a.ogg", "", "OggS1234"), field("model", "whisper-1"))
	if m := r.json(t); r.status != 200 || m["text"] != "heard 8 bytes of audio/ogg" || m["usage"].(map[string]any)["type"] != "duration" {
		t.Fatalf("whisper: %d %s", r.status, r.body)
	}
	r = postForm(t, s, c, audioFile("a.mp4", "audio/mp4", "ftyp"), field("model", "whisper-1"), field("response_format", "text"))
	if r.status != 200 || string(r.body) != "heard 4 bytes of audio/mp4" || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("text format: %d %q %v", r.status, r.body, r.header)
	}
	s.Reset()
	if s.TranscriptionCount() != 0 || s.LastTranscription() != nil {
		t.Fatal("Reset kept transcriptions")
	}
}

func TestTranscriptionValidation(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	good := audioFile("audio.webm", "audio/webm", "abcd")
	model := field("model", "gpt-4o-mini-transcribe")
	for name, tc := range map[string]struct {
		parts  []formPart
		status int
		code   any
		param  any
	}{
		"unknown field":       {[]formPart{good, model, field("user", "u1")}, 400, "unknown_parameter", "user"},
		"duplicate model":     {[]formPart{good, model, model}, 400, nil, "model"},
		"no file":             {[]formPart{model}, 400, "missing_required_parameter", "file"},
		"no model":            {[]formPart{good}, 400, "missing_required_parameter", "model"},
		"file as a field":     {[]formPart{field("file", "abcd"), model}, 400, "invalid_value", "file"},
		"model as a file":     {[]formPart{good, {name: "model", filename: "m.txt", value: "x"}}, 400, "invalid_type", "model"},
		"bad extension":       {[]formPart{audioFile("audio.opus", "audio/ogg", "abcd"), model}, 400, "invalid_value", "file"},
		"no extension":        {[]formPart{audioFile("audio", "audio/webm", "abcd"), model}, 400, "invalid_value", "file"},
		"empty file":          {[]formPart{audioFile("audio.webm", "audio/webm", ""), model}, 400, "invalid_value", "file"},
		"unknown model":       {[]formPart{good, field("model", "gpt-5-mini")}, 404, "model_not_found", "model"},
		"text with gpt-4o":    {[]formPart{good, model, field("response_format", "text")}, 400, "unsupported_value", "response_format"},
		"bad format":          {[]formPart{good, model, field("response_format", "xml")}, 400, "invalid_value", "response_format"},
		"srt not in the fake": {[]formPart{good, field("model", "whisper-1"), field("response_format", "srt")}, 400, "unsupported_value", "response_format"},
	} {
		t.Run(name, func(t *testing.T) {
			r := postForm(t, s, c, tc.parts...)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			_, code, param, msg := r.errorFields(t)
			if code != tc.code || param != tc.param || msg == "" {
				t.Fatalf("code %v param %v, want %v %v: %s", code, param, tc.code, tc.param, r.body)
			}
		})
	}
	// Not a form, a bad key, not POST.
	r := mustSend(t, c, "POST", s.URL()+"/audio/transcriptions", `{"model":"whisper-1"}`)
	if r.status != 400 {
		t.Fatalf("JSON body: %d %s", r.status, r.body)
	}
	ct, body := form(t, good, model)
	r = mustSend(t, c, "POST", s.URL()+"/audio/transcriptions", body, withHeader("Content-Type", ct), withHeader("Authorization", "Bearer sk-wrong"))
	if _, code, _, _ := r.errorFields(t); r.status != 401 || code != "invalid_api_key" || strings.Contains(string(r.body), "sk-wrong") {
		t.Fatalf("bad key: %d %s", r.status, r.body)
	}
	if r = mustSend(t, c, "GET", s.URL()+"/audio/transcriptions", ""); r.status != 405 || r.header.Get("Allow") != "POST" {
		t.Fatalf("GET: %d %v", r.status, r.header)
	}
	if s.LastTranscription() != nil {
		t.Fatal("a GET without a form was recorded as one")
	}
	// Larger than the JSON routes' limit is fine: an audio file is.
	r = postForm(t, s, c, audioFile("long.webm", "audio/webm", strings.Repeat("a", 2*MaxBodyBytes)), model)
	if r.status != 200 || r.json(t)["text"] != TranscriptionText(2*MaxBodyBytes, "audio/webm") {
		t.Fatalf("2 MiB file: %d %.200s", r.status, r.body)
	}
}

func TestTranscriptionFaults(t *testing.T) {
	s := newTestServer(t, Options{})
	c := newClient(t, 5*time.Second)
	parts := []formPart{audioFile("audio.webm", "audio/webm", "abcd"), field("model", "gpt-4o-mini-transcribe")}

	s.InjectTranscription(Fault{Status: 429, Header: map[string]string{"Retry-After": "3"}})
	s.InjectTranscription(Fault{Status: 404})
	s.InjectTranscription(Fault{Kind: FaultMissingSecret})
	s.InjectTranscription(Fault{Kind: FaultMalformedJSON})
	s.InjectTranscription(Fault{Kind: FaultHugeBody})
	r := postForm(t, s, c, parts...)
	if _, code, _, _ := r.errorFields(t); r.status != 429 || code != "rate_limit_exceeded" || r.header.Get("Retry-After") != "3" {
		t.Fatalf("429: %d %v %s", r.status, r.header, r.body)
	}
	r = postForm(t, s, c, parts...)
	if _, code, _, _ := r.errorFields(t); r.status != 404 || code != "model_not_found" {
		t.Fatalf("404: %d %s", r.status, r.body)
	}
	if r = postForm(t, s, c, parts...); r.status != 200 || strings.Contains(string(r.body), `"text"`) {
		t.Fatalf("missing text: %d %s", r.status, r.body)
	}
	if r = postForm(t, s, c, parts...); r.status != 200 || bytes.HasSuffix(r.body, []byte("}")) {
		t.Fatalf("malformed: %d %s", r.status, r.body)
	}
	if r = postForm(t, s, c, parts...); r.status != 200 || len(r.body) < 2<<20 {
		t.Fatalf("huge: %d, %d bytes", r.status, len(r.body))
	}
	// Session faults leave transcriptions alone, and the other way round.
	s.Inject(Fault{Status: 500})
	if r = postForm(t, s, c, parts...); r.status != 200 {
		t.Fatalf("a session fault hit a transcription: %d %s", r.status, r.body)
	}
	s.InjectTranscription(Fault{Kind: FaultReset})
	if r = mustSend(t, c, "POST", s.URL()+"/chatkit/sessions", minimalBody); r.status != 500 {
		t.Fatalf("the session fault was lost: %d", r.status)
	}
	ct, body := form(t, parts...)
	if _, err := send(t, c, "POST", s.URL()+"/audio/transcriptions", body, withHeader("Content-Type", ct)); err == nil {
		t.Fatal("reset fault: the client got an answer")
	}
	// Hang: the client's own timeout ends it.
	s.InjectTranscription(Fault{Kind: FaultHangMidBody})
	quick := newClient(t, 200*time.Millisecond)
	_, err := send(t, quick, "POST", s.URL()+"/audio/transcriptions", body, withHeader("Content-Type", ct))
	var ne interface{ Timeout() bool }
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("hang fault: err %v, want a timeout", err)
	}
	if s.TranscriptionCount() != 8 {
		t.Fatalf("TranscriptionCount = %d, want 8", s.TranscriptionCount())
	}
}

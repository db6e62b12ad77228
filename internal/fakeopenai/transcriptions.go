package fakeopenai

// POST /v1/audio/transcriptions as OpenAI documents it (API reference,
// Audio, Create transcription; openai-go AudioTranscriptionNewParams): a
// multipart/form-data body with `file` and `model` required and only the
// documented optional fields, the file named with the extension of one of
// the accepted formats. The answer is deterministic: "heard N bytes of
// <type>", where N is the file's size and <type> its part's Content-Type
// (or audio/<extension> without one).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

const transcriptionsPath = "/v1/audio/transcriptions"

// MaxAudioFileBytes is OpenAI's limit on an uploaded audio file (25 MB);
// a transcription body may hold it and the rest of its form.
const MaxAudioFileBytes = 25 << 20

// maxTranscriptionBody bounds a whole transcription request.
const maxTranscriptionBody = MaxAudioFileBytes + 64<<10

// transcriptionModels are the models the fake transcribes with (AudioModel
// in the API reference); any other is 404 model_not_found.
var transcriptionModels = []string{
	"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
	"gpt-4o-mini-transcribe-2025-12-15", "gpt-4o-transcribe-diarize",
}

// audioExtensions are the formats `file` may be in, by file extension.
var audioExtensions = []string{"flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm"}

// transcriptionFields are the documented form fields; array fields are
// sent with [] after their name, as OpenAI's SDKs do.
var transcriptionFields = []string{
	"file", "model", "language", "prompt", "response_format", "temperature",
	"chunking_strategy", "include[]", "known_speaker_names[]", "known_speaker_references[]",
	"timestamp_granularities[]", "stream",
}

// TranscriptionRequest is what a transcription request's form held.
type TranscriptionRequest struct {
	// Fields are the form's field names, in the order sent.
	Fields []string
	Model  string
	// ResponseFormat is "" when none was sent (json is the default).
	ResponseFormat string
	// Filename is the file part's file name.
	Filename string
	// FileType is the file part's Content-Type ("" when it had none).
	FileType string
	// FileSize is the file's length in bytes.
	FileSize int
}

func (t *TranscriptionRequest) clone() *TranscriptionRequest {
	if t == nil {
		return nil
	}
	out := *t
	out.Fields = slices.Clone(t.Fields)
	return &out
}

// TranscriptionText is the fake's transcription of size bytes of audio of
// the given type.
func TranscriptionText(size int, fileType string) string {
	return "heard " + strconv.Itoa(size) + " bytes of " + fileType
}

// TranscriptionUsage is the token usage the fake reports for a
// transcription by a gpt-4o model: ceil(size/1024) audio input tokens and
// ceil(runes of the text/4) output tokens. whisper-1 reports seconds
// instead (size/4000, Opus at 32 kbit/s).
func TranscriptionUsage(size int, text string) (input, output int) {
	return (size + 1023) / 1024, (utf8.RuneCountInString(text) + 3) / 4
}

// InjectTranscription queues a fault for the following transcription
// requests, as Inject does for create requests: Status answers with an
// OpenAI-style error (404: model_not_found), FaultMalformedJSON with cut
// JSON, FaultMissingSecret with a transcription lacking text, FaultHugeBody
// with a text of 2 MiB; the others as for sessions.
func (s *Server) InjectTranscription(f Fault) {
	n := f.Times
	if n <= 0 {
		n = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.transcriptionFaults = append(s.transcriptionFaults, &queuedFault{f: f, left: n})
}

// TranscriptionCount returns how many POST /v1/audio/transcriptions
// requests arrived, whatever their outcome.
func (s *Server) TranscriptionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.transcriptionCount
}

// LastTranscription returns the form of the most recent transcription
// request, or nil if there was none or its form was not valid.
func (s *Server) LastTranscription() *TranscriptionRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range slices.Backward(s.requests) {
		if r.Path == transcriptionsPath {
			return r.Transcription.clone()
		}
	}
	return nil
}

func (s *Server) serveTranscription(w http.ResponseWriter, r *http.Request) {
	body, readErr := io.ReadAll(io.LimitReader(r.Body, maxTranscriptionBody+1))
	isPost := r.Method == http.MethodPost
	var tr *TranscriptionRequest
	var bodyErr *apiError
	if isPost {
		tr, bodyErr = parseTranscription(r.Header.Get("Content-Type"), body)
	}
	rec := &Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body[:min(len(body), MaxBodyBytes+1)], Transcription: tr}

	var fault *Fault
	s.mu.Lock()
	s.requests = append(s.requests, rec)
	if isPost {
		s.transcriptionCount++
		fault = popFault(&s.transcriptionFaults)
	}
	delay := s.delay
	s.mu.Unlock()

	if readErr != nil || !s.wait(r.Context(), delay) {
		return
	}
	resp := &responder{s: s, w: w, rec: rec}
	if fault != nil {
		if !s.wait(r.Context(), fault.Delay) {
			return
		}
		for k, v := range fault.Header {
			w.Header().Set(k, v)
		}
		if s.applyTranscriptionFault(resp, r, *fault, tr) {
			return
		}
	}
	if !isPost {
		resp.error(methodNotAllowed(w, r))
		return
	}
	if err := s.checkKey(r); err != nil {
		resp.error(err)
		return
	}
	if bodyErr != nil {
		resp.error(bodyErr)
		return
	}
	if !slices.Contains(transcriptionModels, tr.Model) {
		resp.error(modelNotFound(tr.Model))
		return
	}
	if err := checkResponseFormat(tr); err != nil {
		resp.error(err)
		return
	}
	text := TranscriptionText(tr.FileSize, transcribedType(tr))
	if tr.ResponseFormat == "text" {
		resp.raw(200, "text/plain; charset=utf-8", []byte(text))
		return
	}
	resp.json(200, transcriptionAnswer(tr, text))
}

// transcribedType is the type the fake says it heard.
func transcribedType(tr *TranscriptionRequest) string {
	if mt, _, err := mime.ParseMediaType(tr.FileType); err == nil {
		return mt
	}
	return "audio/" + strings.TrimPrefix(path.Ext(tr.Filename), ".")
}

// transcriptionObject is the json answer (Transcription { text, usage }).
type transcriptionObject struct {
	Text  string         `json:"text"`
	Usage map[string]any `json:"usage,omitempty"`
}

func transcriptionAnswer(tr *TranscriptionRequest, text string) *transcriptionObject {
	if tr != nil && tr.Model == "whisper-1" {
		return &transcriptionObject{Text: text, Usage: map[string]any{"type": "duration", "seconds": float64(tr.FileSize) / 4000}}
	}
	size := 0
	if tr != nil {
		size = tr.FileSize
	}
	in, out := TranscriptionUsage(size, text)
	return &transcriptionObject{Text: text, Usage: map[string]any{
		"type": "tokens", "input_tokens": in, "output_tokens": out, "total_tokens": in + out,
		"input_token_details": map[string]int{"text_tokens": 0, "audio_tokens": in},
	}}
}

// parseTranscription checks the form: multipart/form-data, only
// documented fields, each once (array fields may repeat), file and model
// present, the file a non-empty part named with an accepted extension.
func parseTranscription(contentType string, body []byte) (*TranscriptionRequest, *apiError) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return nil, invalidRequest("", "", "Invalid Content-Type header (%s), expected multipart/form-data with a boundary.", contentType)
	}
	if len(body) > maxTranscriptionBody {
		return nil, &apiError{status: 413, message: fmt.Sprintf("Maximum content size limit (%d) exceeded.", MaxAudioFileBytes), typ: "invalid_request_error", code: "request_too_large"}
	}
	tr := &TranscriptionRequest{}
	var haveFile bool
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, invalidRequest("", "", "Could not parse multipart form: %v.", err)
		}
		name := p.FormName()
		if !slices.Contains(transcriptionFields, name) {
			return nil, unknownParam(name)
		}
		if !strings.HasSuffix(name, "[]") && slices.Contains(tr.Fields, name) {
			return nil, invalidRequest(name, "", "Duplicate parameter: '%s'.", name)
		}
		tr.Fields = append(tr.Fields, name)
		data, err := io.ReadAll(p)
		if err != nil {
			return nil, invalidRequest("", "", "Could not parse multipart form: %v.", err)
		}
		if name == "file" {
			if p.FileName() == "" {
				return nil, invalidRequest("file", "invalid_value", "'file' must be a file upload, not a plain field.")
			}
			haveFile = true
			tr.Filename, tr.FileType, tr.FileSize = p.FileName(), p.Header.Get("Content-Type"), len(data)
			continue
		}
		if p.FileName() != "" {
			return nil, invalidRequest(name, "invalid_type", "'%s' must be a plain field, not a file.", name)
		}
		switch name {
		case "model":
			tr.Model = string(data)
		case "response_format":
			tr.ResponseFormat = string(data)
		}
	}
	switch {
	case !haveFile:
		return nil, missingParam("file")
	case !slices.Contains(tr.Fields, "model"):
		return nil, missingParam("model")
	}
	ext := strings.ToLower(strings.TrimPrefix(path.Ext(tr.Filename), "."))
	if !slices.Contains(audioExtensions, ext) {
		return nil, invalidRequest("file", "invalid_value",
			"Invalid file format. Supported formats: ['%s']", strings.Join(audioExtensions, "', '"))
	}
	if tr.FileSize == 0 {
		return nil, invalidRequest("file", "invalid_value", "The audio file could not be decoded or its format is not supported.")
	}
	if tr.FileSize > MaxAudioFileBytes {
		return nil, &apiError{status: 413, message: fmt.Sprintf("Maximum content size limit (%d) exceeded.", MaxAudioFileBytes), typ: "invalid_request_error", code: "request_too_large"}
	}
	return tr, nil
}

// checkResponseFormat applies the documented formats: gpt-4o-transcribe
// and gpt-4o-mini-transcribe answer json only; the fake writes json and
// text.
func checkResponseFormat(tr *TranscriptionRequest) *apiError {
	f := tr.ResponseFormat
	switch {
	case f == "" || f == "json":
		return nil
	case !slices.Contains([]string{"text", "srt", "verbose_json", "vtt", "diarized_json"}, f):
		return invalidRequest("response_format", "invalid_value", "Invalid value: '%s'. Supported values are: 'json', 'text', 'srt', 'verbose_json', 'vtt' and 'diarized_json'.", f)
	case strings.HasPrefix(tr.Model, "gpt-4o-") && !strings.HasSuffix(tr.Model, "-diarize"):
		return invalidRequest("response_format", "unsupported_value", "response_format '%s' is not compatible with model '%s'. Use 'json'.", f, tr.Model)
	case f != "text":
		return invalidRequest("response_format", "unsupported_value", "The fake answers response_format json and text only, not '%s'.", f)
	}
	return nil
}

func modelNotFound(model string) *apiError {
	e := invalidRequest("model", "model_not_found", "The model '%s' does not exist or you do not have access to it.", model)
	e.status = 404
	return e
}

// applyTranscriptionFault performs f on a transcription request and
// reports whether it answered (or deliberately did not).
func (s *Server) applyTranscriptionFault(resp *responder, r *http.Request, f Fault, tr *TranscriptionRequest) bool {
	status := f.Status
	if status == 0 {
		status = 200
	}
	text := TranscriptionText(0, "audio/unknown")
	if tr != nil {
		text = TranscriptionText(tr.FileSize, transcribedType(tr))
	}
	good, _ := json.Marshal(transcriptionAnswer(tr, text))
	switch f.Kind {
	case FaultMalformedJSON:
		resp.raw(status, "application/json", good[:len(good)/2])
		return true
	case FaultMissingSecret:
		a := transcriptionAnswer(tr, text)
		resp.json(status, map[string]any{"usage": a.Usage})
		return true
	case FaultHugeBody:
		resp.json(status, transcriptionAnswer(tr, strings.Repeat("x", 2<<20)))
		return true
	case FaultHangMidBody:
		h := resp.w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", "4096")
		resp.w.WriteHeader(status)
		_, _ = resp.w.Write(good[:min(10, len(good))])
		_ = http.NewResponseController(resp.w).Flush()
		select {
		case <-r.Context().Done():
		case <-s.closing:
		}
		return true
	case FaultLyingLength:
		h := resp.w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(good)+1024))
		resp.w.WriteHeader(status)
		_, _ = resp.w.Write(good)
		return true
	case FaultReset:
		resetConnection(resp.w)
		return true
	}
	if f.Status == 0 {
		return false
	}
	if f.Status == 404 {
		model := ""
		if tr != nil {
			model = tr.Model
		}
		resp.error(modelNotFound(model))
		return true
	}
	resp.error(faultError(f.Status, nil))
	return true
}

package chatkit

// Dictation: the ChatKit widget records what the visitor says and sends it
// as `input.transcribe` ({audio_base64, mime_type}, see
// ../shared/reference/chatkit-server-protocol.md §5.15); the agent turns it
// into text with OpenAI's transcription endpoint and answers {"text": …},
// which the widget puts in the composer. The audio is read under its own
// body limit (max_audio on top of max_body), costs a rate-limit token and a
// unit of `budget` like a model run, and its tokens count against
// `token_budget`. Neither the audio nor the key is ever logged.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// The dictation request type, and its defaults.
const (
	agentInputTranscribe = "input.transcribe"
	// defaultDictationModel is OpenAI's cost-efficient transcription model
	// (API reference, Audio: AudioModel lists whisper-1, gpt-4o-transcribe,
	// gpt-4o-mini-transcribe and their snapshots).
	defaultDictationModel = "gpt-4o-mini-transcribe"
	// defaultDictationMaxAudio is 8 MiB of base64, 6 MiB of audio: about
	// 25 minutes of Opus at the 32 kbit/s browsers record speech in.
	defaultDictationMaxAudio = 8 << 20
	// maxDictationAudio keeps the decoded file (3 bytes for every 4
	// characters: 24 MB) under OpenAI's 25 MB limit on uploads (speech to
	// text guide).
	maxDictationAudio = 32_000_000
)

// AgentDictation turns on the composer's microphone: what the visitor says
// is sent to OpenAI's transcription endpoint and comes back as text in the
// composer, to be read and sent like a typed message.
type AgentDictation struct {
	// Whether dictation is on.
	Enabled bool `json:"enabled"`

	// The transcription model, such as `gpt-4o-transcribe`. Default:
	// `gpt-4o-mini-transcribe`.
	Model string `json:"model,omitempty"`

	// The longest recording accepted, counted as the base64 text the
	// browser sends (4 characters for every 3 bytes of audio), at most
	// 32 MB. An `input.transcribe` body may be this much larger than the
	// block's `max_body`; every other request keeps `max_body`. Default:
	// 8 MiB.
	MaxAudio int64 `json:"max_audio,omitempty"`
}

// agentDictation is dictation ready to serve; nil when it is off.
type agentDictation struct {
	model    string
	maxAudio int64
}

// The dictation rules (see validate.go).

func checkDictationMaxAudio(n int64) error {
	return within("max_audio", "agent dictation max_audio", n, 1, maxDictationAudio, "1 to 32MB")
}

// validate judges the dictation block: its size, and that `off` carries
// nothing it would ignore.
func (d *AgentDictation) validate() error {
	if !d.Enabled && (d.Model != "" || d.MaxAudio != 0) {
		return refuse("dictation", "dictation off takes no model or max_audio")
	}
	if d.MaxAudio != 0 {
		return checkDictationMaxAudio(d.MaxAudio)
	}
	return nil
}

// newAgentDictation resolves the configuration; nil when dictation is off.
func newAgentDictation(cfg *AgentDictation, resolve func(string) string) (*agentDictation, error) {
	if cfg == nil || !cfg.Enabled {
		return nil, nil
	}
	d := &agentDictation{
		model:    defaultDictationModel,
		maxAudio: defaultDictationMaxAudio,
	}
	if cfg.Model != "" {
		d.model = strings.TrimSpace(resolve(cfg.Model))
		if d.model == "" {
			return nil, errors.New("chatkit: agent dictation model " + strconv.Quote(cfg.Model) + " resolved to an empty value")
		}
	}
	if cfg.MaxAudio != 0 {
		d.maxAudio = cfg.MaxAudio
	}
	return d, nil
}

// maxBodyFor is the largest body a request of type t may send: max_body,
// and for input.transcribe with dictation on, room for max_audio of base64
// besides. The body is read under maxBodyFor(agentInputTranscribe), the
// largest, before its type is known, then held to its own type's.
func (a *agentRuntime) maxBodyFor(t string) int64 {
	if t == agentInputTranscribe && a.dictation != nil {
		return a.maxBody + a.dictation.maxAudio
	}
	return a.maxBody
}

// agentAudioExtension is the file extension OpenAI knows the audio's
// format by, for the media types the ChatKit widget records in
// (MediaRecorder: audio/webm;codecs=opus in Chrome, audio/ogg;codecs=opus
// in Firefox, audio/mp4 in Safari). OpenAI's `file` takes flac, mp3, mp4,
// mpeg, mpga, m4a, ogg, wav or webm (API reference, Create transcription;
// openai-go AudioTranscriptionNewParams.File); "" for any other type.
func agentAudioExtension(mediaType string) string {
	switch mediaType {
	case "audio/webm":
		return "webm"
	case "audio/mp4":
		return "mp4"
	case "audio/ogg":
		return "ogg"
	}
	return ""
}

// agentAudio is the params of input.transcribe.
type agentAudio struct {
	// Base64 is audio_base64 as sent (standard base64), still encoded: it
	// is decoded straight into the form sent to OpenAI.
	Base64 []byte
	// MediaType is mime_type without its parameters, lower case.
	MediaType string
	// Extension is the file extension MediaType implies.
	Extension string
}

// decode reads input.transcribe's params strictly: both keys once, as
// strings, the MIME type one the agent knows. Unknown keys are ignored,
// as in every other request.
func (au *agentAudio) decode(params []byte) error {
	if !agentIsObject(params) {
		return agentInvalid("params", "must be an object")
	}
	var haveAudio, haveType bool
	err := agentEachMember(params, func(key string, val []byte) error {
		field := "params." + key
		switch key {
		case "audio_base64":
			if haveAudio {
				return agentMalformed(field, "is given twice")
			}
			haveAudio = true
			if len(val) == 0 || val[0] != '"' {
				return agentInvalid(field, "must be a string")
			}
			if bytes.IndexByte(val, '\\') < 0 {
				au.Base64 = val[1 : len(val)-1] // base64 needs no escapes: no copy
			} else {
				au.Base64 = []byte(agentUnquote(val))
			}
			if len(au.Base64) == 0 {
				return agentInvalid(field, "must not be empty")
			}
		case "mime_type":
			if haveType {
				return agentMalformed(field, "is given twice")
			}
			haveType = true
			s, err := agentString(val, field)
			if err != nil {
				return err
			}
			mt, _, perr := mime.ParseMediaType(s)
			au.MediaType, au.Extension = mt, agentAudioExtension(mt)
			if perr != nil || au.Extension == "" {
				return agentInvalid(field, "must be audio/webm, audio/ogg or audio/mp4 (as the ChatKit widget records), got "+agentQuoteShort(s))
			}
		}
		return nil
	})
	switch {
	case err != nil:
		return err
	case !haveAudio:
		return agentInvalid("params.audio_base64", "is required")
	case !haveType:
		return agentInvalid("params.mime_type", "is required")
	}
	return nil
}

// appendJSON encodes the params' members in their canonical form, which
// decode reads back the same.
func (au *agentAudio) appendJSON(buf []byte) []byte {
	buf = append(buf, `"audio_base64":`...)
	buf = appendAgentString(buf, string(au.Base64))
	buf = append(buf, `,"mime_type":`...)
	return appendAgentString(buf, au.MediaType)
}

// errAgentAudio is base64 that does not decode, or decodes to nothing.
var errAgentAudio = errors.New("params.audio_base64: is not audio in standard base64")

// transcriptionForm is the multipart body of `POST /audio/transcriptions`:
// `file` (named with the extension its type implies, since OpenAI tells
// the format by it), `model`, and `response_format` json, the one format
// every transcription model answers in (API reference, Create
// transcription: AudioResponseFormat). The audio is decoded from base64
// straight into it.
func transcriptionForm(model string, au *agentAudio) (contentType string, body []byte, audioBytes int64, err error) {
	var buf bytes.Buffer
	buf.Grow(base64.StdEncoding.DecodedLen(len(au.Base64)) + 512)
	w := multipart.NewWriter(&buf)
	// Writes to a bytes.Buffer cannot fail.
	_ = w.WriteField("model", model)
	_ = w.WriteField("response_format", "json")
	part := make(textproto.MIMEHeader, 2)
	part.Set("Content-Disposition", `form-data; name="file"; filename="audio.`+au.Extension+`"`)
	part.Set("Content-Type", au.MediaType)
	pw, _ := w.CreatePart(part)
	audioBytes, err = io.Copy(pw, base64.NewDecoder(base64.StdEncoding, bytes.NewReader(au.Base64)))
	if err != nil || audioBytes == 0 {
		return "", nil, audioBytes, errAgentAudio
	}
	_ = w.Close()
	return w.FormDataContentType(), buf.Bytes(), audioBytes, nil
}

// transcription is the part of OpenAI's answer the agent uses (API
// reference, Create transcription: Transcription { text, logprobs, usage },
// usage either { type "tokens", input_tokens, output_tokens, total_tokens }
// or { type "duration", seconds }).
type transcription struct {
	Text  *string `json:"text"`
	Usage struct {
		Type string `json:"type"`
		agentUsage
	} `json:"usage"`
}

// serveTranscribe answers input.transcribe: the request is charged a
// rate-limit token whatever follows, then checked, then sent to OpenAI
// behind the breaker, the budget and the token budgets.
func (h *Handler) serveTranscribe(x *exchange, req *agentRequest) {
	a := h.agent
	r := x.r
	verdict, state := h.limiter.chargeClient(r.Context(), r, x.repl, h.now())
	x.rateLimit = state
	if !x.admitted(verdict) {
		return
	}
	d := a.dictation
	if d == nil {
		x.refuse(answerDictationOff)
		return
	}
	if n := int64(len(req.Audio.Base64)); n > d.maxAudio {
		x.refuse(answerTooLarge.withMessage("params.audio_base64 exceeds " + strconv.FormatInt(d.maxAudio, 10) + " bytes (max_audio)"))
		return
	}
	contentType, form, audioBytes, err := transcriptionForm(d.model, &req.Audio)
	req.Audio.Base64 = nil // the form holds the audio now; the body may go
	if err != nil {
		x.refuse(answerBadRequest.withMessage(err.Error()))
		return
	}
	x.logFields = append(x.logFields, zap.String("audio_type", req.Audio.MediaType), zap.Int64("audio_bytes", audioBytes))
	if !h.identifyVisitor(x) {
		return
	}

	now := h.now()
	if scope, wait := h.admitTokens(r.Context(), x.user, now); scope != tokenScopeNone {
		x.refuseAfter(tokenRefusals[scope].json, wait)
		return
	}
	cached, breakerWait, probe := h.guard.check(now)
	if cached != nil {
		x.upstreamErr, x.cachedError = cached, true
		h.failUpstream(x, cached)
		return
	}
	if breakerWait > 0 {
		x.refuseAfter(answerCircuitOpen, breakerWait)
		return
	}
	if !x.admitted(h.limiter.spendBudget(r.Context(), now)) {
		h.guard.release(probe)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	call, payload, uerr := h.upstream.postTranscription(ctx, contentType, form)
	cancel()
	x.upstream = call
	var out transcription
	if uerr == nil {
		if jerr := json.Unmarshal(payload, &out); jerr != nil || out.Text == nil {
			uerr = &upstreamError{failure: failInvalidResponse, status: call.status, cause: errors.New("the transcription has no text")}
		}
	}
	h.guard.record(uerr, probe, h.now())
	if uerr != nil {
		x.upstreamErr = uerr
		h.failUpstream(x, uerr)
		return
	}
	// whisper-1 reports seconds of audio instead, which no token budget counts.
	if u := out.Usage; u.Type == "tokens" {
		h.chargeAgentTokens(x.user, u.agentUsage)
		x.logFields = append(x.logFields, zap.Int64("input_tokens", u.InputTokens), zap.Int64("output_tokens", u.OutputTokens))
	}
	body := append(make([]byte, 0, len(*out.Text)+16), `{"text":`...)
	body = appendAgentString(body, *out.Text)
	x.outcome = outcomeSuccess
	x.writeJSON(http.StatusOK, append(body, '}'))
}

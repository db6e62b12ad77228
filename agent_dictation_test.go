package chatkit

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// Dictation over real HTTP: input.transcribe through Caddy to the fake's
// transcription endpoint.

// transcribeBody is an input.transcribe request as the ChatKit widget
// sends it.
func transcribeBody(audio []byte, mimeType string) string {
	return `{"type":"input.transcribe","params":{"audio_base64":"` + base64.StdEncoding.EncodeToString(audio) + `","mime_type":` + strconv.Quote(mimeType) + `}}`
}

// testAudio is n bytes that stand for a recording.
func testAudio(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}

// expectTranscript checks a transcription answer: 200, JSON, the fake's
// text for n bytes of mediaType.
func expectTranscript(t *testing.T, r reply, n int, mediaType string) {
	t.Helper()
	if r.status != http.StatusOK || r.header.Get("Content-Type") != "application/json" || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("transcribe = %d %v %s", r.status, r.header, r.body)
	}
	if want := fakeopenai.TranscriptionText(n, mediaType); r.json["text"] != want || len(r.json) != 1 {
		t.Fatalf("answer %s, want only text %q", r.body, want)
	}
}

func TestDictationTranscribes(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "dictation on")
	c := client(t)

	// Each type the widget records in goes with the extension OpenAI
	// knows it by, with the default model and json.
	for _, tc := range []struct{ mimeType, mediaType, filename string }{
		{"audio/webm;codecs=opus", "audio/webm", "audio.webm"},
		{"audio/ogg;codecs=opus", "audio/ogg", "audio.ogg"},
		{"audio/mp4", "audio/mp4", "audio.mp4"},
		{"Audio/WebM", "audio/webm", "audio.webm"},
	} {
		r := agentPost(t, c, transcribeBody(testAudio(1234), tc.mimeType))
		expectTranscript(t, r, 1234, tc.mediaType)
		tr := fake.LastTranscription()
		if tr == nil || tr.Filename != tc.filename || tr.FileType != tc.mediaType || tr.Model != defaultDictationModel ||
			tr.ResponseFormat != "json" || tr.FileSize != 1234 || strings.Join(tr.Fields, ",") != "model,response_format,file" {
			t.Fatalf("%s: OpenAI got %+v", tc.mimeType, tr)
		}
	}
	reqs := fake.Requests()
	last := reqs[len(reqs)-1]
	if last.Path != "/v1/audio/transcriptions" || last.Header.Get("Authorization") != "Bearer "+fakeopenai.DefaultAPIKey || last.Header.Get("Openai-Beta") != "" {
		t.Fatalf("upstream request %s %v", last.Path, last.Header)
	}
	// The audio arrived as it was recorded.
	if !strings.Contains(string(last.Body), string(testAudio(1234))) {
		t.Fatal("the audio OpenAI got is not the audio sent")
	}
	if fake.ResponsesCount() != 0 {
		t.Fatal("a transcription ran the model")
	}
}

func TestDictationBodyLimits(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "dictation on gpt-4o-transcribe {\n\t\t\t\tmax_audio 100KiB\n\t\t\t}")
	c := client(t)

	// Over max_body (64 KiB) but within max_audio: transcribed.
	r := agentPost(t, c, transcribeBody(testAudio(70<<10), "audio/webm;codecs=opus"))
	expectTranscript(t, r, 70<<10, "audio/webm")
	if tr := fake.LastTranscription(); tr.Model != "gpt-4o-transcribe" {
		t.Fatalf("model %q, want the configured one", tr.Model)
	}
	// Audio over max_audio, the body within the read bound: 413 naming it.
	r = agentPost(t, c, transcribeBody(testAudio(80<<10), "audio/webm;codecs=opus"))
	expectError(t, r, http.StatusRequestEntityTooLarge, "payload_too_large")
	if !strings.Contains(r.json["message"].(string), "max_audio") {
		t.Fatalf("message %q does not name max_audio", r.json["message"])
	}
	// A body past max_body + max_audio is refused before it is read.
	r = agentPost(t, c, transcribeBody(testAudio(200<<10), "audio/webm;codecs=opus"))
	expectError(t, r, http.StatusRequestEntityTooLarge, "payload_too_large")
	// Every other request keeps max_body.
	r = agentPost(t, c, `{"type":"threads.list","params":{"pad":"`+strings.Repeat("x", 70<<10)+`"}}`)
	expectError(t, r, http.StatusRequestEntityTooLarge, "payload_too_large")
	if !strings.Contains(r.json["message"].(string), strconv.Itoa(defaultAgentMaxBody)) {
		t.Fatalf("message %q does not give max_body", r.json["message"])
	}
	r = agentPost(t, c, createBody(strings.Repeat("word ", 14<<10)))
	expectError(t, r, http.StatusRequestEntityTooLarge, "payload_too_large")
	if fake.TranscriptionCount() != 1 || fake.ResponsesCount() != 0 {
		t.Fatalf("OpenAI called %d/%d times for one good request", fake.TranscriptionCount(), fake.ResponsesCount())
	}
}

func TestDictationRefusesBadAudio(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "", "dictation on")
	c := client(t)
	good := base64.StdEncoding.EncodeToString(testAudio(10))
	for name, tc := range map[string]struct{ body, want string }{
		"bad base64":     {`{"type":"input.transcribe","params":{"audio_base64":"not base64!","mime_type":"audio/webm"}}`, "base64"},
		"empty audio":    {`{"type":"input.transcribe","params":{"audio_base64":"","mime_type":"audio/webm"}}`, "audio_base64"},
		"audio a number": {`{"type":"input.transcribe","params":{"audio_base64":12,"mime_type":"audio/webm"}}`, "audio_base64"},
		"unknown type":   {`{"type":"input.transcribe","params":{"audio_base64":"` + good + `","mime_type":"audio/x-flac"}}`, "audio/webm, audio/ogg or audio/mp4"},
		"not a type":     {`{"type":"input.transcribe","params":{"audio_base64":"` + good + `","mime_type":"webm"}}`, "mime_type"},
		"video":          {`{"type":"input.transcribe","params":{"audio_base64":"` + good + `","mime_type":"video/webm"}}`, "mime_type"},
		"no mime type":   {`{"type":"input.transcribe","params":{"audio_base64":"` + good + `"}}`, "params.mime_type: is required"},
		"no audio":       {`{"type":"input.transcribe","params":{"mime_type":"audio/mp4"}}`, "params.audio_base64: is required"},
		"audio twice":    {`{"type":"input.transcribe","params":{"audio_base64":"` + good + `","audio_base64":"` + good + `","mime_type":"audio/mp4"}}`, "twice"},
		"no params":      {`{"type":"input.transcribe"}`, "params"},
	} {
		r := agentPost(t, c, tc.body)
		expectError(t, r, http.StatusBadRequest, "bad_request")
		if !strings.Contains(r.json["message"].(string), tc.want) {
			t.Errorf("%s: message %q, want it to say %q", name, r.json["message"], tc.want)
		}
	}
	if fake.TranscriptionCount() != 0 {
		t.Fatal("bad audio reached OpenAI")
	}
	// Unknown keys are ignored, as in every request.
	r := agentPost(t, c, `{"type":"input.transcribe","params":{"audio_base64":"`+good+`","mime_type":"audio/mp4","language":"en"}}`)
	expectTranscript(t, r, 10, "audio/mp4")
}

func TestDictationOff(t *testing.T) {
	fake := newFake(t)
	for _, agentExtra := range []string{"", "dictation off"} {
		startAgent(t, fake, "", "", agentExtra)
		c := client(t)
		r := agentPost(t, c, transcribeBody(testAudio(10), "audio/webm"))
		expectError(t, r, http.StatusBadRequest, "dictation_off")
		// Off, the larger limit is gone too.
		r = agentPost(t, c, transcribeBody(testAudio(70<<10), "audio/webm"))
		expectError(t, r, http.StatusRequestEntityTooLarge, "payload_too_large")
	}
	if fake.TranscriptionCount() != 0 {
		t.Fatal("dictation off called OpenAI")
	}
}

func TestDictationUpstreamFailures(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "retries 1\n\t\terror_cache off\n\t\tcircuit_breaker off\n\t\ttimeout 1s", "dictation on")
	c := client(t)
	body := transcribeBody(testAudio(50), "audio/webm")

	// A 500 retried: the form is sent again whole, and answers.
	fake.InjectTranscription(fakeopenai.Fault{Status: 500})
	expectTranscript(t, agentPost(t, c, body), 50, "audio/webm")
	if fake.TranscriptionCount() != 2 {
		t.Fatalf("%d attempts, want 2", fake.TranscriptionCount())
	}
	for _, tc := range []struct {
		name  string
		fault fakeopenai.Fault
		want  upstreamFailure
	}{
		{"server error", fakeopenai.Fault{Status: 502, Times: 2}, failServer},
		{"rate limited", fakeopenai.Fault{Status: 429, Header: map[string]string{"Retry-After": "7", "X-Should-Retry": "false"}}, failRateLimited},
		{"bad key", fakeopenai.Fault{Status: 401}, failAuth},
		{"unknown model", fakeopenai.Fault{Status: 404}, failNotFound},
		{"bad audio", fakeopenai.Fault{Status: 400}, failRejected},
		{"no text", fakeopenai.Fault{Kind: fakeopenai.FaultMissingSecret}, failInvalidResponse},
		{"not JSON", fakeopenai.Fault{Kind: fakeopenai.FaultMalformedJSON}, failInvalidResponse},
		{"huge", fakeopenai.Fault{Kind: fakeopenai.FaultHugeBody}, failInvalidResponse},
		{"reset", fakeopenai.Fault{Kind: fakeopenai.FaultReset, Times: 2}, failNetwork},
		{"slow", fakeopenai.Fault{Delay: 3 * time.Second}, failTimeout},
	} {
		fake.InjectTranscription(tc.fault)
		r := agentPost(t, c, body)
		want := tc.want.rule().answer
		expectError(t, r, want.status, want.code)
		if tc.want == failRateLimited && r.header.Get("Retry-After") != "7" {
			t.Errorf("%s: Retry-After %q, want OpenAI's 7", tc.name, r.header.Get("Retry-After"))
		}
		// The rule's own words, never OpenAI's.
		if msg, _ := r.json["message"].(string); !strings.HasPrefix(msg, want.message) {
			t.Errorf("%s: message %q, want the rule's %q", tc.name, msg, want.message)
		}
	}
	if n := fake.TranscriptionCount(); n != 2+12 {
		t.Fatalf("%d attempts, want 14 (server errors and resets retried once)", n)
	}
}

func TestDictationBreakerAndCache(t *testing.T) {
	fake := newFake(t)
	startAgent(t, fake, "", "retries 0\n\t\tcircuit_breaker 1 1m", "dictation on")
	c := client(t)
	body := transcribeBody(testAudio(5), "audio/ogg")
	fake.InjectTranscription(fakeopenai.Fault{Status: 500})
	expectError(t, agentPost(t, c, body), http.StatusBadGateway, "upstream_error")
	// One failure opened the breaker: the next one is not sent.
	r := agentPost(t, c, body)
	expectError(t, r, http.StatusServiceUnavailable, "circuit_open")
	if r.header.Get("Retry-After") == "" || fake.TranscriptionCount() != 1 {
		t.Fatalf("open breaker: Retry-After %q, %d calls", r.header.Get("Retry-After"), fake.TranscriptionCount())
	}
}

func TestDictationIsRateLimited(t *testing.T) {
	fake := newFake(t)
	zone := "dictation-rate-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	startAgent(t, fake, "", "rate_limit 2 1h {\n\t\t\tzone "+zone+"\n\t\t}", "dictation on")
	c := client(t)
	body := transcribeBody(testAudio(5), "audio/mp4")
	for range 2 {
		expectTranscript(t, agentPost(t, c, body), 5, "audio/mp4")
	}
	r := agentPost(t, c, body)
	expectError(t, r, http.StatusTooManyRequests, "rate_limit_exceeded")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	// The same bucket as the model's runs.
	s := agentStreamPost(t, c, createBody("Hi"))
	if e := s.errorFrame(); e == nil || !strings.Contains(e.Message, "faster than this site allows") {
		t.Fatalf("a turn after the bucket was spent on dictation: %s", s.body)
	}
	if fake.TranscriptionCount() != 2 {
		t.Fatalf("%d transcriptions reached OpenAI, want 2", fake.TranscriptionCount())
	}
}

func TestDictationCountsAgainstBudgets(t *testing.T) {
	fake := newFake(t)
	zone := "dictation-budget-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	startAgent(t, fake, "", "rate_limit 100 1m {\n\t\t\tzone "+zone+"\n\t\t}\n\t\tbudget 2 1h", "dictation on")
	c := client(t)
	body := transcribeBody(testAudio(5), "audio/webm")
	expectTranscript(t, agentPost(t, c, body), 5, "audio/webm")
	expectTranscript(t, agentPost(t, c, body), 5, "audio/webm")
	r := agentPost(t, c, body)
	expectError(t, r, http.StatusServiceUnavailable, "budget_exhausted")
	if fake.TranscriptionCount() != 2 {
		t.Fatalf("%d transcriptions reached OpenAI, want 2", fake.TranscriptionCount())
	}

	// The tokens OpenAI reports count against token_budget.
	zone += "-tokens"
	in, out := fakeopenai.TranscriptionUsage(5, fakeopenai.TranscriptionText(5, "audio/webm"))
	startAgent(t, fake, "", "rate_limit 100 1m {\n\t\t\tzone "+zone+"\n\t\t}", "dictation on\n\t\t\ttoken_budget user "+strconv.Itoa(in+out)+" 1h")
	c = client(t)
	expectTranscript(t, agentPost(t, c, body), 5, "audio/webm")
	r = agentPost(t, c, body)
	expectError(t, r, http.StatusTooManyRequests, "token_budget_exhausted")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("token budget refusal without Retry-After")
	}
	s := agentStreamPost(t, c, createBody("Hi"))
	if e := s.errorFrame(); e == nil || !strings.Contains(e.Message, "your share") {
		t.Fatalf("a turn after dictation spent the budget: %s", s.body)
	}
	// Another visitor has a budget of their own.
	expectTranscript(t, agentPost(t, client(t), body), 5, "audio/webm")
}

// TestDictationLogsNoAudio: the log line says what was transcribed, never
// the audio or the key.
func TestDictationLogsNoAudio(t *testing.T) {
	fake := newFake(t)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	block := fmt.Sprintf("api_base %s\n\t\tapi_key %s\n\t\trate_limit off\n\t\tagent {\n\t\t\tmodel gpt-5-mini\n\t\t\tstore sqlite %s\n\t\t\tdictation on\n\t\t}",
		fake.URL(), fakeopenai.DefaultAPIKey, filepath.Join(t.TempDir(), "threads.db"))
	newTester(t, caddyConfig("log {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t\tlevel DEBUG\n\t}", block, ""))
	audio := []byte("a recording of someone saying their address")
	expectTranscript(t, agentPost(t, client(t), transcribeBody(audio, "audio/webm;codecs=opus")), len(audio), "audio/webm")
	fake.InjectTranscription(fakeopenai.Fault{Status: 401})
	agentPost(t, client(t), transcribeBody(audio, "audio/webm;codecs=opus"))

	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{base64.StdEncoding.EncodeToString(audio), string(audio), fakeopenai.DefaultAPIKey} {
		if strings.Contains(string(raw), secret) {
			t.Fatalf("the log holds %q", secret)
		}
	}
	var seen int
	for _, line := range readLogLines(t, logFile) {
		if line["chatkit_type"] != agentInputTranscribe {
			continue
		}
		seen++
		if line["audio_type"] != "audio/webm" || line["audio_bytes"] != float64(len(audio)) {
			t.Errorf("log line %v", line)
		}
	}
	if seen != 2 {
		t.Fatalf("%d log lines for two transcriptions", seen)
	}
}

func TestDictationCaddyfile(t *testing.T) {
	h, err := cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\tdictation on gpt-4o-transcribe {\n\t\t\tmax_audio 4MiB\n\t\t}\n\t}\n}")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfJSON(h.Agent.Dictation), cfJSON(&AgentDictation{Enabled: true, Model: "gpt-4o-transcribe", MaxAudio: 4 << 20}); got != want {
		t.Fatalf("parsed %s, want %s", got, want)
	}
	h, err = cfParse("chatkit {\n\tagent {\n\t\tmodel m\n\t\tdictation off\n\t}\n}")
	if err != nil || h.Agent.Dictation == nil || h.Agent.Dictation.Enabled {
		t.Fatalf("dictation off: %v %s", err, cfJSON(h.Agent))
	}
	for name, tc := range map[string]string{
		"no argument":     "dictation|wrong argument count",
		"not on or off":   "dictation yes|expected on or off",
		"too many":        "dictation on a b|wrong argument count",
		"off with model":  "dictation off gpt-4o-transcribe|dictation off takes no model or max_audio",
		"off with limit":  "dictation off {\nmax_audio 1MiB\n}|dictation off takes no model or max_audio",
		"zero":            "dictation on {\nmax_audio 0\n}|max_audio must be 1 to 32MB",
		"past OpenAI's":   "dictation on {\nmax_audio 40MB\n}|max_audio must be 1 to 32MB",
		"not a size":      "dictation on {\nmax_audio lots\n}|not a size in bytes",
		"unknown option":  "dictation on {\nlanguage en\n}|unrecognized dictation option \"language\"",
		"duplicate limit": "dictation on {\nmax_audio 1MiB\nmax_audio 2MiB\n}|duplicate dictation option \"max_audio\"",
		"twice":           "dictation on\ndictation off|duplicate agent option \"dictation\"",
	} {
		t.Run(name, func(t *testing.T) {
			opt, want, _ := strings.Cut(tc, "|")
			err := cfAdaptErr(t, "example.com {\n\tchatkit {\nagent {\nmodel m\n"+opt+"\n}\n\t}\n}\n")
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error = %v, want %q", err, want)
			}
		})
	}
	// JSON configs meet the same rules.
	for raw, want := range map[string]string{
		`{"agent":{"model":"m","dictation":{"enabled":false,"model":"x"}}}`:   "dictation off takes no model",
		`{"agent":{"model":"m","dictation":{"enabled":true,"max_audio":-1}}}`: "max_audio must be 1 to 32MB",
	} {
		if err := cfDecode(t, raw).validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", raw, err, want)
		}
	}
}

func TestDictationBodyLimitRule(t *testing.T) {
	a := &agentRuntime{maxBody: 1000}
	for _, typ := range []string{agentInputTranscribe, agentThreadsCreate, ""} {
		if got := a.maxBodyFor(typ); got != 1000 {
			t.Fatalf("off: maxBodyFor(%q) = %d", typ, got)
		}
	}
	a.dictation = &agentDictation{maxAudio: 5000}
	if got := a.maxBodyFor(agentInputTranscribe); got != 6000 {
		t.Fatalf("on: maxBodyFor(transcribe) = %d, want max_body + max_audio", got)
	}
	for _, typ := range []string{agentThreadsCreate, agentThreadsList, "input.other", ""} {
		if got := a.maxBodyFor(typ); got != 1000 {
			t.Fatalf("on: maxBodyFor(%q) = %d, want max_body", typ, got)
		}
	}
}

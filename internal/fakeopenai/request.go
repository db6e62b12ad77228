package fakeopenai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"
)

// CreateRequest mirrors the documented body of POST /v1/chatkit/sessions.
// Pointer fields record what the client actually sent: nil means the field
// was absent (or JSON null).
type CreateRequest struct {
	User                 string                `json:"user"`
	Workflow             Workflow              `json:"workflow"`
	ExpiresAfter         *ExpiresAfter         `json:"expires_after,omitempty"`
	RateLimits           *RateLimits           `json:"rate_limits,omitempty"`
	ChatKitConfiguration *ChatKitConfiguration `json:"chatkit_configuration,omitempty"`
}

// Workflow is the "workflow" object of a create request.
type Workflow struct {
	ID      string  `json:"id"`
	Version *string `json:"version,omitempty"`
	// StateVariables holds string, float64 or bool values. It is nil when the
	// field was absent and non-nil (possibly empty) when it was sent.
	StateVariables map[string]any `json:"state_variables,omitempty"`
	Tracing        *Tracing       `json:"tracing,omitempty"`
}

// Tracing is "workflow.tracing".
type Tracing struct {
	Enabled *bool `json:"enabled,omitempty"`
}

// ExpiresAfter is "expires_after"; both fields are required when it is sent.
type ExpiresAfter struct {
	Anchor  string `json:"anchor"`
	Seconds int    `json:"seconds"`
}

// RateLimits is "rate_limits".
type RateLimits struct {
	MaxRequestsPer1Minute *int `json:"max_requests_per_1_minute,omitempty"`
}

// ChatKitConfiguration is "chatkit_configuration".
type ChatKitConfiguration struct {
	AutomaticThreadTitling *AutomaticThreadTitling `json:"automatic_thread_titling,omitempty"`
	FileUpload             *FileUpload             `json:"file_upload,omitempty"`
	History                *History                `json:"history,omitempty"`
}

// AutomaticThreadTitling is "chatkit_configuration.automatic_thread_titling".
type AutomaticThreadTitling struct {
	Enabled *bool `json:"enabled,omitempty"`
}

// FileUpload is "chatkit_configuration.file_upload"; MaxFileSize is in MB.
type FileUpload struct {
	Enabled     *bool `json:"enabled,omitempty"`
	MaxFileSize *int  `json:"max_file_size,omitempty"`
	MaxFiles    *int  `json:"max_files,omitempty"`
}

// History is "chatkit_configuration.history".
type History struct {
	Enabled       *bool `json:"enabled,omitempty"`
	RecentThreads *int  `json:"recent_threads,omitempty"`
}

// clone returns a deep copy so callers of Requests cannot alter the record.
func (c *CreateRequest) clone() *CreateRequest {
	if c == nil {
		return nil
	}
	out := *c
	out.Workflow.Version = clonePtr(c.Workflow.Version)
	if c.Workflow.StateVariables != nil {
		// Values are immutable scalars, so a shallow map copy is deep enough.
		out.Workflow.StateVariables = maps.Clone(c.Workflow.StateVariables)
	}
	if c.Workflow.Tracing != nil {
		out.Workflow.Tracing = &Tracing{Enabled: clonePtr(c.Workflow.Tracing.Enabled)}
	}
	out.ExpiresAfter = clonePtr(c.ExpiresAfter)
	if c.RateLimits != nil {
		out.RateLimits = &RateLimits{MaxRequestsPer1Minute: clonePtr(c.RateLimits.MaxRequestsPer1Minute)}
	}
	if cc := c.ChatKitConfiguration; cc != nil {
		n := &ChatKitConfiguration{}
		if cc.AutomaticThreadTitling != nil {
			n.AutomaticThreadTitling = &AutomaticThreadTitling{Enabled: clonePtr(cc.AutomaticThreadTitling.Enabled)}
		}
		if cc.FileUpload != nil {
			n.FileUpload = &FileUpload{
				Enabled:     clonePtr(cc.FileUpload.Enabled),
				MaxFileSize: clonePtr(cc.FileUpload.MaxFileSize),
				MaxFiles:    clonePtr(cc.FileUpload.MaxFiles),
			}
		}
		if cc.History != nil {
			n.History = &History{
				Enabled:       clonePtr(cc.History.Enabled),
				RecentThreads: clonePtr(cc.History.RecentThreads),
			}
		}
		out.ChatKitConfiguration = n
	}
	return &out
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// apiError is an OpenAI-style error; empty param or code are sent as null.
type apiError struct {
	status  int
	message string
	typ     string
	param   string
	code    string
}

func (e *apiError) body() []byte {
	type inner struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	}
	in := inner{Message: e.message, Type: e.typ}
	if e.param != "" {
		in.Param = &e.param
	}
	if e.code != "" {
		in.Code = &e.code
	}
	b, err := json.Marshal(struct {
		Error inner `json:"error"`
	}{in})
	if err != nil {
		panic(err) // only strings inside: cannot happen
	}
	return b
}

func invalidRequest(param, code, format string, args ...any) *apiError {
	return &apiError{
		status:  400,
		message: fmt.Sprintf(format, args...),
		typ:     "invalid_request_error",
		param:   param,
		code:    code,
	}
}

func unknownParam(path string) *apiError {
	return invalidRequest(path, "unknown_parameter", "Unknown parameter: '%s'.", path)
}

func missingParam(path string) *apiError {
	return invalidRequest(path, "missing_required_parameter", "Missing required parameter: '%s'.", path)
}

func wrongType(path, want string, got any) *apiError {
	return invalidRequest(path, "invalid_type",
		"Invalid type for '%s': expected %s, but got %s instead.", path, want, describe(got))
}

func errInvalidJSON() *apiError {
	return invalidRequest("", "",
		"We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "+
			"HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)")
}

// describe names a decoded JSON value the way OpenAI's type errors do.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		if _, err := strconv.ParseInt(v.String(), 10, 64); err == nil {
			return "an integer"
		}
		return "a decimal number"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	default:
		return "an unknown value"
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// checkKeys rejects any key not in allowed. Keys are checked in sorted order
// so the reported parameter is deterministic.
func checkKeys(m map[string]any, path string, allowed ...string) *apiError {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if !slices.Contains(allowed, k) {
			return unknownParam(join(path, k))
		}
	}
	return nil
}

// optObject returns the object at key, or nil when it is absent or null.
func optObject(m map[string]any, key, path string) (map[string]any, *apiError) {
	v, ok := m[key]
	if !ok || v == nil {
		return nil, nil
	}
	o, ok := v.(map[string]any)
	if !ok {
		return nil, wrongType(join(path, key), "an object", v)
	}
	return o, nil
}

func optString(m map[string]any, key, path string) (*string, *apiError) {
	v, ok := m[key]
	if !ok || v == nil {
		return nil, nil
	}
	s, ok := v.(string)
	if !ok {
		return nil, wrongType(join(path, key), "a string", v)
	}
	return &s, nil
}

func optBool(m map[string]any, key, path string) (*bool, *apiError) {
	v, ok := m[key]
	if !ok || v == nil {
		return nil, nil
	}
	b, ok := v.(bool)
	if !ok {
		return nil, wrongType(join(path, key), "a boolean", v)
	}
	return &b, nil
}

// optInt returns the integer at key checked against [lo, hi]; hi < lo means
// no upper bound.
func optInt(m map[string]any, key, path string, lo, hi int) (*int, *apiError) {
	v, ok := m[key]
	if !ok || v == nil {
		return nil, nil
	}
	i, err := intValue(v, join(path, key), lo, hi)
	if err != nil {
		return nil, err
	}
	return &i, nil
}

// reqInt is optInt for a required field: absent is missing, null is a type error.
func reqInt(m map[string]any, key, path string, lo, hi int) (int, *apiError) {
	v, ok := m[key]
	if !ok {
		return 0, missingParam(join(path, key))
	}
	return intValue(v, join(path, key), lo, hi)
}

func intValue(v any, p string, lo, hi int) (int, *apiError) {
	i, err := integerValue(v, p)
	if err != nil {
		return 0, err
	}
	if i < int64(lo) {
		return 0, invalidRequest(p, "invalid_value",
			"Invalid '%s': integer below minimum value. Expected a value >= %d, but got %d instead.", p, lo, i)
	}
	if hi >= lo && i > int64(hi) {
		return 0, invalidRequest(p, "invalid_value",
			"Invalid '%s': integer above maximum value. Expected a value <= %d, but got %d instead.", p, hi, i)
	}
	return int(i), nil
}

// integerValue decodes a JSON integer without a range check.
func integerValue(v any, p string) (int64, *apiError) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, wrongType(p, "an integer", v)
	}
	if i, err := strconv.ParseInt(n.String(), 10, 64); err == nil {
		return i, nil
	}
	// Accept integral spellings such as 1e2; reject real fractions.
	f, err := strconv.ParseFloat(n.String(), 64)
	switch {
	case err == nil && f != math.Trunc(f):
		return 0, wrongType(p, "an integer", v)
	case err != nil || f >= math.MaxInt64 || f <= math.MinInt64:
		return 0, invalidRequest(p, "invalid_value", "Invalid '%s': integer out of range.", p)
	}
	return int64(f), nil
}

// decodeObject decodes a request body that must be exactly one JSON object.
// Numbers stay json.Number: integers exact, and 1.5 told apart from 1.
func decodeObject(body []byte) (map[string]any, *apiError) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, errInvalidJSON()
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errInvalidJSON() // trailing data after the object
	}
	root, ok := v.(map[string]any)
	if !ok {
		return nil, invalidRequest("", "invalid_type",
			"Invalid type for request body: expected an object, but got %s instead.", describe(v))
	}
	return root, nil
}

// maxStateKeyLen is the documented limit on workflow.state_variables keys.
const maxStateKeyLen = 64

// parseCreate decodes and validates a create body strictly, the way the real
// endpoint does: unknown fields anywhere, wrong types and out-of-range
// values are all 400s naming the offending parameter.
func parseCreate(body []byte) (*CreateRequest, *apiError) {
	root, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	if err := checkKeys(root, "", "user", "workflow", "expires_after", "rate_limits", "chatkit_configuration"); err != nil {
		return nil, err
	}
	cr := &CreateRequest{}

	uv, ok := root["user"]
	if !ok {
		return nil, missingParam("user")
	}
	user, ok := uv.(string)
	if !ok {
		return nil, wrongType("user", "a string", uv)
	}
	if user == "" {
		return nil, invalidRequest("user", "invalid_value",
			"Invalid 'user': empty string. Expected a string with minimum length 1, but got an empty string instead.")
	}
	cr.User = user

	if err := parseWorkflow(root, cr); err != nil {
		return nil, err
	}

	ea, err := optObject(root, "expires_after", "")
	if err != nil {
		return nil, err
	}
	if ea != nil {
		if err := checkKeys(ea, "expires_after", "anchor", "seconds"); err != nil {
			return nil, err
		}
		av, ok := ea["anchor"]
		if !ok {
			return nil, missingParam("expires_after.anchor")
		}
		anchor, ok := av.(string)
		if !ok {
			return nil, wrongType("expires_after.anchor", "a string", av)
		}
		if anchor != "created_at" {
			return nil, invalidRequest("expires_after.anchor", "invalid_value",
				"Invalid value: '%s'. Supported values are: 'created_at'.", anchor)
		}
		secs, err := reqInt(ea, "seconds", "expires_after", 1, 600)
		if err != nil {
			return nil, err
		}
		cr.ExpiresAfter = &ExpiresAfter{Anchor: anchor, Seconds: secs}
	}

	rl, err := optObject(root, "rate_limits", "")
	if err != nil {
		return nil, err
	}
	if rl != nil {
		if err := checkKeys(rl, "rate_limits", "max_requests_per_1_minute"); err != nil {
			return nil, err
		}
		n, err := optInt(rl, "max_requests_per_1_minute", "rate_limits", 1, 0)
		if err != nil {
			return nil, err
		}
		cr.RateLimits = &RateLimits{MaxRequestsPer1Minute: n}
	}

	if err := parseConfig(root, cr); err != nil {
		return nil, err
	}
	return cr, nil
}

func parseWorkflow(root map[string]any, cr *CreateRequest) *apiError {
	wv, ok := root["workflow"]
	if !ok {
		return missingParam("workflow")
	}
	wf, ok := wv.(map[string]any)
	if !ok {
		return wrongType("workflow", "an object", wv)
	}
	if err := checkKeys(wf, "workflow", "id", "version", "state_variables", "tracing"); err != nil {
		return err
	}
	iv, ok := wf["id"]
	if !ok {
		return missingParam("workflow.id")
	}
	id, ok := iv.(string)
	if !ok {
		return wrongType("workflow.id", "a string", iv)
	}
	if id == "" {
		return invalidRequest("workflow.id", "invalid_value",
			"Invalid 'workflow.id': empty string. Expected a string with minimum length 1, but got an empty string instead.")
	}
	cr.Workflow.ID = id

	var err *apiError
	if cr.Workflow.Version, err = optString(wf, "version", "workflow"); err != nil {
		return err
	}

	sv, err := optObject(wf, "state_variables", "workflow")
	if err != nil {
		return err
	}
	if sv != nil {
		vars := make(map[string]any, len(sv))
		for _, k := range slices.Sorted(maps.Keys(sv)) {
			if utf8.RuneCountInString(k) > maxStateKeyLen {
				return invalidRequest("workflow.state_variables", "invalid_value",
					"Invalid 'workflow.state_variables': key '%s' is longer than %d characters.", k, maxStateKeyLen)
			}
			p := "workflow.state_variables." + k
			switch val := sv[k].(type) {
			case string, bool:
				vars[k] = val
			case json.Number:
				f, ferr := val.Float64()
				if ferr != nil {
					return invalidRequest(p, "invalid_value", "Invalid '%s': number out of range.", p)
				}
				vars[k] = f // what a plain json.Unmarshal would give callers
			default:
				return invalidRequest(p, "invalid_value",
					"Invalid value for '%s': expected a string, number or boolean, but got %s instead.", p, describe(val))
			}
		}
		cr.Workflow.StateVariables = vars
	}

	tr, err := optObject(wf, "tracing", "workflow")
	if err != nil {
		return err
	}
	if tr != nil {
		if err := checkKeys(tr, "workflow.tracing", "enabled"); err != nil {
			return err
		}
		en, err := optBool(tr, "enabled", "workflow.tracing")
		if err != nil {
			return err
		}
		cr.Workflow.Tracing = &Tracing{Enabled: en}
	}
	return nil
}

func parseConfig(root map[string]any, cr *CreateRequest) *apiError {
	const base = "chatkit_configuration"
	cc, err := optObject(root, base, "")
	if err != nil || cc == nil {
		return err
	}
	if err := checkKeys(cc, base, "automatic_thread_titling", "file_upload", "history"); err != nil {
		return err
	}
	out := &ChatKitConfiguration{}

	at, err := optObject(cc, "automatic_thread_titling", base)
	if err != nil {
		return err
	}
	if at != nil {
		p := base + ".automatic_thread_titling"
		if err := checkKeys(at, p, "enabled"); err != nil {
			return err
		}
		en, err := optBool(at, "enabled", p)
		if err != nil {
			return err
		}
		out.AutomaticThreadTitling = &AutomaticThreadTitling{Enabled: en}
	}

	fu, err := optObject(cc, "file_upload", base)
	if err != nil {
		return err
	}
	if fu != nil {
		p := base + ".file_upload"
		if err := checkKeys(fu, p, "enabled", "max_file_size", "max_files"); err != nil {
			return err
		}
		f := &FileUpload{}
		if f.Enabled, err = optBool(fu, "enabled", p); err != nil {
			return err
		}
		if f.MaxFileSize, err = optInt(fu, "max_file_size", p, 1, 512); err != nil {
			return err
		}
		if f.MaxFiles, err = optInt(fu, "max_files", p, 1, 0); err != nil {
			return err
		}
		out.FileUpload = f
	}

	hi, err := optObject(cc, "history", base)
	if err != nil {
		return err
	}
	if hi != nil {
		p := base + ".history"
		if err := checkKeys(hi, p, "enabled", "recent_threads"); err != nil {
			return err
		}
		h := &History{}
		if h.Enabled, err = optBool(hi, "enabled", p); err != nil {
			return err
		}
		if h.RecentThreads, err = optInt(hi, "recent_threads", p, 1, 0); err != nil {
			return err
		}
		out.History = h
	}
	cr.ChatKitConfiguration = out
	return nil
}

package chatkit

// embed.js: the one script tag a site (WordPress, or any page) adds to get
// the chat. The agent serves it at `<agent path>/embed.js`; it loads
// OpenAI's ChatKit script and mounts `<openai-chatkit>` against the agent
// with the options of the agent block. The script is static
// (assets/embed.js) but for one JSON object Caddy writes into it when the
// config loads: the ChatKit options built here, which the script passes to
// the element as they are (adding only what the page alone knows: the
// origin and the visitor's color scheme). A feature that needs ChatKit
// options of its own adds them to that object in buildEmbedConfig; the
// script needs no change.

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Embed defaults and bounds.
const (
	// embedScriptName is the script's path below the agent path.
	embedScriptName = "/embed.js"
	// defaultEmbedScriptURL is OpenAI's ChatKit script, as the chatkit-js
	// README and its quickstart (packages/docs/src/content/docs/
	// quickstart.mdx in openai/chatkit-js) load it.
	defaultEmbedScriptURL = "https://cdn.platform.openai.com/deployments/chatkit/chatkit.js"
	// defaultEmbedAccentLevel is the accent level when `accent` names only
	// a color: the level OpenAI's theming guide uses in its examples.
	defaultEmbedAccentLevel = 2
	// maxEmbedDomainKey bounds domain_key (OpenAI's are `domain_pk_` and
	// about 60 characters).
	maxEmbedDomainKey = 256
	// embedCacheControl lets browsers and shared caches keep the script a
	// few minutes, then revalidate it with its ETag (a 304 without a body):
	// a changed Caddyfile reaches every page within that time, or at once
	// with a new `?v=` in the script tag. The script holds nothing
	// per-visitor and no secret, so shared caches may keep it.
	embedCacheControl = "public, max-age=300"
	// embedContentType is the script's media type (RFC 9239).
	embedContentType = "text/javascript; charset=utf-8"
)

// The embed's theme values. ChatKit itself has only light and dark
// (ColorScheme in chatkit-js's types/index.d.ts); auto is resolved in the
// page from prefers-color-scheme.
var embedThemes = []string{"light", "dark", "auto"}

// embedScriptTemplate is the script; embedConfigMarker in it is replaced by
// the config's options.
//
//go:embed assets/embed.js
var embedScriptTemplate []byte

// embedConfigMarker is where the options go in assets/embed.js: a valid
// JavaScript expression on its own, so the asset can be checked as it is.
const embedConfigMarker = "/*@caddy-chatkit-config*/{}"

// AgentEmbed configures `<agent path>/embed.js`, the script that mounts the
// chat on a page from one tag (see README, "WordPress: one script tag").
// Every value ends up in a public script: none may be secret.
type AgentEmbed struct {
	// The ChatKit domain key (`domain_pk_…`) from the OpenAI organization's
	// domain allowlist, where each host name that serves the page must be
	// registered. It is public. Placeholders (`{env.*}`) are resolved at
	// load time. Without it the script mounts nothing and says why in the
	// browser console.
	DomainKey string `json:"domain_key,omitempty"`

	// The start screen's greeting (ChatKit's `startScreen.greeting`).
	// Default: ChatKit's.
	Greeting string `json:"greeting,omitempty"`

	// Starter prompts on the start screen (ChatKit's
	// `startScreen.prompts`), in order.
	Suggestions []AgentSuggestion `json:"suggestions,omitempty"`

	// The composer's placeholder text (ChatKit's `composer.placeholder`).
	// Default: ChatKit's.
	Placeholder string `json:"placeholder,omitempty"`

	// The color scheme: `light`, `dark`, or `auto`, which follows the
	// visitor's `prefers-color-scheme`, also when it changes while the page
	// is open. Default: ChatKit's (light).
	Theme string `json:"theme,omitempty"`

	// The accent color (ChatKit's `theme.color.accent`).
	Accent *AgentAccent `json:"accent,omitempty"`

	// Whether the script adds a chat button at the bottom right of the page
	// that opens and closes the chat. Off: the chat fills the first element
	// with a `data-chatkit` attribute instead. Default: on.
	Launcher *bool `json:"launcher,omitempty"`

	// Where OpenAI's ChatKit script is loaded from when the page has not
	// loaded it itself: an `https://` URL or a path on the site (for a
	// self-hosted copy, or a stand-in in tests). Default:
	// `https://cdn.platform.openai.com/deployments/chatkit/chatkit.js`.
	ScriptURL string `json:"script_url,omitempty"`
}

// AgentSuggestion is one starter prompt.
type AgentSuggestion struct {
	// The text on the prompt's button.
	Label string `json:"label"`

	// The message sent when the visitor picks it.
	Prompt string `json:"prompt"`
}

// AgentAccent is the accent color.
type AgentAccent struct {
	// A CSS color: `#rgb`, `#rrggbb` (with or without alpha), or `rgb()`,
	// `rgba()`, `hsl()`, `hsla()`.
	Color string `json:"color"`

	// The accent palette's intensity, 0 to 3. Default: 2.
	Level *int `json:"level,omitempty"`
}

// ---- field rules (see validate.go); each names its agent option ----

var (
	embedDomainKeyChars = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	embedHexColor       = regexp.MustCompile(`^#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$`)
	// Three or four numbers (with units), separated by commas, spaces or a
	// slash before the alpha: nothing a CSS declaration could break out of.
	embedFuncColor = regexp.MustCompile(`^(?:rgba?|hsla?)\(\s*[-+]?[0-9.]+(?:%|deg|turn|rad|grad)?(?:\s*[,/]?\s*[-+]?[0-9.]+%?){2,3}\s*\)$`)
)

func checkEmbedDomainKey(k string) error {
	if strings.Contains(k, "{") {
		return nil // judged once resolved, in Provision
	}
	if len(k) > maxEmbedDomainKey || !embedDomainKeyChars.MatchString(k) {
		return refuse("domain_key", "agent domain_key must be the key from OpenAI's domain allowlist (domain_pk_…): letters, digits, '_', '-' and '.', at most %d characters", maxEmbedDomainKey)
	}
	return nil
}

func checkEmbedSuggestion(s AgentSuggestion) error {
	if strings.TrimSpace(s.Label) == "" || strings.TrimSpace(s.Prompt) == "" {
		return refuse("suggestion", "agent suggestion needs a label and a prompt, both non-empty")
	}
	return nil
}

func checkEmbedTheme(t string) error {
	if !slices.Contains(embedThemes, t) {
		return refuse("theme", "agent theme must be light, dark or auto, got %q", t)
	}
	return nil
}

func checkEmbedAccentColor(c string) error {
	if !embedHexColor.MatchString(c) && !embedFuncColor.MatchString(c) {
		return refuse("accent", "agent accent must be a CSS color such as #0a7cff or rgb(10 124 255), got %q", c)
	}
	return nil
}

func checkEmbedAccentLevel(n int) error {
	return within("accent", "agent accent level", n, 0, 3, "0 to 3")
}

func checkEmbedScriptURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err == nil && u.Scheme == "https" && u.Host != "" && u.User == nil:
		return nil
	case err == nil && u.Scheme == "" && u.Host == "" && strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "//"):
		return nil
	}
	return refuse("script_url", "agent script_url must be an https:// URL or a path starting with '/', got %q", s)
}

// validate applies the embed's field rules.
func (e *AgentEmbed) validate() error {
	for _, rule := range []struct {
		set bool
		err func() error
	}{
		{e.DomainKey != "", func() error { return checkEmbedDomainKey(e.DomainKey) }},
		{e.Theme != "", func() error { return checkEmbedTheme(e.Theme) }},
		{e.Accent != nil, func() error { return checkEmbedAccentColor(e.Accent.Color) }},
		{e.Accent != nil && e.Accent.Level != nil, func() error { return checkEmbedAccentLevel(*e.Accent.Level) }},
		{e.ScriptURL != "", func() error { return checkEmbedScriptURL(e.ScriptURL) }},
	} {
		if rule.set {
			if err := rule.err(); err != nil {
				return err
			}
		}
	}
	for _, s := range e.Suggestions {
		if err := checkEmbedSuggestion(s); err != nil {
			return err
		}
	}
	return nil
}

// ---- the Caddyfile ----

// embedOption reports whether name is one of the embed's options in the
// agent block, and whether it may be repeated.
func embedOption(name string) (known, repeatable bool) {
	switch name {
	case "suggestion":
		return true, true
	case "domain_key", "greeting", "placeholder", "theme", "accent", "launcher", "script_url":
		return true, false
	}
	return false, false
}

// parseEmbedOption parses one of the embed's options (see embedOption) and
// checks its value.
func (a *Agent) parseEmbedOption(d *caddyfile.Dispenser, name string) error {
	if a.Embed == nil {
		a.Embed = new(AgentEmbed)
	}
	e := a.Embed
	switch name {
	case "domain_key":
		if err := singleArg(d, &e.DomainKey); err != nil {
			return err
		}
		return check(d, checkEmbedDomainKey(e.DomainKey))
	case "greeting":
		return singleArg(d, &e.Greeting)
	case "placeholder":
		return singleArg(d, &e.Placeholder)
	case "suggestion":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.ArgErr()
		}
		s := AgentSuggestion{Label: args[0], Prompt: args[1]}
		e.Suggestions = append(e.Suggestions, s)
		return check(d, checkEmbedSuggestion(s))
	case "theme":
		if err := singleArg(d, &e.Theme); err != nil {
			return err
		}
		return check(d, checkEmbedTheme(e.Theme))
	case "accent":
		args := d.RemainingArgs()
		if len(args) == 0 {
			// The usual cause: `accent #0a7cff`, whose color is a comment.
			return d.Err(`accent needs a color; quote a hex one, accent "#0a7cff" (an unquoted # starts a comment in a Caddyfile)`)
		}
		if len(args) > 2 {
			return d.ArgErr()
		}
		e.Accent = &AgentAccent{Color: args[0]}
		if err := checkEmbedAccentColor(args[0]); err != nil {
			return d.WrapErr(err)
		}
		if len(args) == 2 {
			level, err := strconv.Atoi(args[1])
			if err != nil {
				return d.Errf("accent: the level %q is not a whole number", args[1])
			}
			e.Accent.Level = &level
			return check(d, checkEmbedAccentLevel(level))
		}
		return nil
	case "launcher":
		on, err := onOff(d)
		if err != nil {
			return err
		}
		e.Launcher = &on
		return nil
	case "script_url":
		if err := singleArg(d, &e.ScriptURL); err != nil {
			return err
		}
		return check(d, checkEmbedScriptURL(e.ScriptURL))
	}
	return d.Errf("unrecognized agent option %q", name)
}

// ---- the script ----

// embedScript is embed.js as this config serves it.
type embedScript struct {
	body []byte
	etag string // strong, quoted
}

// embedConfig is the object written into the script. Only the page knows
// the origin and the visitor's color scheme; everything else is decided
// here.
type embedConfig struct {
	// The agent path; the script makes it absolute from location.origin.
	Path string `json:"path"`
	// OpenAI's ChatKit script.
	ScriptURL string `json:"scriptURL"`
	// A chat button (true) or the page's [data-chatkit] element (false).
	Launcher bool `json:"launcher"`
	// theme auto: the script sets theme.colorScheme from
	// prefers-color-scheme and follows its changes.
	AutoColorScheme bool `json:"autoColorScheme,omitempty"`
	// The element's options (ChatKitOptions), but api.url and, with
	// autoColorScheme, theme.colorScheme, which the script adds. Passed
	// to setOptions as they are.
	Options embedChatKitOptions `json:"options"`
}

// embedChatKitOptions is the part of ChatKitOptions the agent sets. The
// names are chatkit-js's (packages/chatkit/types/index.d.ts in
// openai/chatkit-js: ChatKitOptions, CustomApiConfig, ThemeOption,
// ColorOption, AccentColor, StartScreenOption, StartScreenPrompt,
// ComposerOption).
type embedChatKitOptions struct {
	API         embedAPI          `json:"api"`
	Theme       *embedTheme       `json:"theme,omitempty"`
	StartScreen *embedStartScreen `json:"startScreen,omitempty"`
	Composer    *embedComposer    `json:"composer,omitempty"`
}

// embedAPI is CustomApiConfig without its url.
type embedAPI struct {
	DomainKey string `json:"domainKey,omitempty"`
	// HOOK (attachments): `{type: 'two_phase'}` when uploads are on
	// (FileUploadStrategy; "required when attachments are enabled").
	UploadStrategy *embedUploadStrategy `json:"uploadStrategy,omitempty"`
}

type embedUploadStrategy struct {
	Type string `json:"type"`
}

// embedTheme is ThemeOption.
type embedTheme struct {
	ColorScheme string      `json:"colorScheme,omitempty"`
	Color       *embedColor `json:"color,omitempty"`
}

type embedColor struct {
	Accent *embedAccent `json:"accent,omitempty"`
}

// embedAccent is AccentColor: both fields are required there.
type embedAccent struct {
	Primary string `json:"primary"`
	Level   int    `json:"level"`
}

// embedStartScreen is StartScreenOption.
type embedStartScreen struct {
	Greeting string        `json:"greeting,omitempty"`
	Prompts  []embedPrompt `json:"prompts,omitempty"`
}

// embedPrompt is StartScreenPrompt (its optional icon is not set).
type embedPrompt struct {
	Label  string `json:"label"`
	Prompt string `json:"prompt"`
}

// embedComposer is ComposerOption.
type embedComposer struct {
	Placeholder string `json:"placeholder,omitempty"`
	// HOOK (attachments): `{enabled, maxSize, maxCount, accept}` when
	// uploads are on; ChatKit disables attachments without it.
	Attachments *embedAttachments `json:"attachments,omitempty"`
	// `{enabled: true}` when the agent's dictation is on; ChatKit
	// disables dictation without it.
	Dictation *embedToggle `json:"dictation,omitempty"`
}

// embedAttachments is ComposerOption.attachments.
type embedAttachments struct {
	Enabled  bool                `json:"enabled"`
	MaxSize  int64               `json:"maxSize,omitempty"`
	MaxCount int                 `json:"maxCount,omitempty"`
	Accept   map[string][]string `json:"accept,omitempty"`
}

type embedToggle struct {
	Enabled bool `json:"enabled"`
}

// buildEmbedConfig is the script's config for an agent at path, from its
// config with placeholders resolved (domainKey). Features that change what
// ChatKit shows set their options here, from their own fields of cfg (see
// the HOOK fields above).
func buildEmbedConfig(cfg *Agent, path, domainKey string) embedConfig {
	e := cfg.Embed
	if e == nil {
		e = new(AgentEmbed)
	}
	c := embedConfig{
		Path:      path,
		ScriptURL: defaultEmbedScriptURL,
		Launcher:  e.Launcher == nil || *e.Launcher,
		Options:   embedChatKitOptions{API: embedAPI{DomainKey: domainKey}},
	}
	if e.ScriptURL != "" {
		c.ScriptURL = e.ScriptURL
	}
	o := &c.Options
	theme := new(embedTheme)
	switch e.Theme {
	case "auto":
		c.AutoColorScheme = true
	case "light", "dark":
		theme.ColorScheme = e.Theme
	}
	if e.Accent != nil {
		level := defaultEmbedAccentLevel
		if e.Accent.Level != nil {
			level = *e.Accent.Level
		}
		theme.Color = &embedColor{Accent: &embedAccent{Primary: e.Accent.Color, Level: level}}
	}
	if *theme != (embedTheme{}) {
		o.Theme = theme
	}
	if e.Greeting != "" || len(e.Suggestions) > 0 {
		o.StartScreen = &embedStartScreen{Greeting: e.Greeting}
		for _, s := range e.Suggestions {
			o.StartScreen.Prompts = append(o.StartScreen.Prompts, embedPrompt(s))
		}
	}
	composer := new(embedComposer)
	composer.Placeholder = e.Placeholder
	if cfg.Dictation != nil && cfg.Dictation.Enabled {
		composer.Dictation = &embedToggle{Enabled: true}
	}
	if at := cfg.Attachments; at != nil && at.Enabled {
		o.API.UploadStrategy = &embedUploadStrategy{Type: "two_phase"}
		composer.Attachments = embedAttachmentsFor(at)
	}
	if *composer != (embedComposer{}) {
		o.Composer = composer
	}
	return c
}

// newEmbedScript builds the script an agent at path serves.
func newEmbedScript(cfg *Agent, path string, repl *caddy.Replacer) (embedScript, error) {
	domainKey := ""
	if cfg.Embed != nil && cfg.Embed.DomainKey != "" {
		domainKey = strings.TrimSpace(repl.ReplaceAll(cfg.Embed.DomainKey, ""))
		if domainKey == "" {
			return embedScript{}, fmt.Errorf("chatkit: agent domain_key %q resolved to an empty value", cfg.Embed.DomainKey)
		}
		if err := checkEmbedDomainKey(domainKey); err != nil {
			return embedScript{}, fmt.Errorf("chatkit: agent domain_key %q, once resolved: %w", cfg.Embed.DomainKey, err)
		}
	}
	// encoding/json escapes <, >, & and U+2028/U+2029: the object is safe
	// in a script, inline in a <script> element too.
	options, err := json.Marshal(buildEmbedConfig(cfg, path, domainKey))
	if err != nil {
		return embedScript{}, fmt.Errorf("chatkit: encoding embed.js options: %w", err)
	}
	return renderEmbedScript(options)
}

// renderEmbedScript writes options into the script template.
func renderEmbedScript(options []byte) (embedScript, error) {
	if bytes.Count(embedScriptTemplate, []byte(embedConfigMarker)) != 1 {
		return embedScript{}, fmt.Errorf("chatkit: assets/embed.js must hold %s exactly once", embedConfigMarker)
	}
	body := bytes.Replace(embedScriptTemplate, []byte(embedConfigMarker), options, 1)
	sum := sha256.Sum256(body)
	return embedScript{body: body, etag: `"` + hex.EncodeToString(sum[:16]) + `"`}, nil
}

// serveEmbed answers GET and HEAD for embed.js, with 304 when the
// browser's copy is current. It needs no origin check: a script tag from
// any page may load it, and it holds nothing but the chat's options.
func (h *Handler) serveEmbed(x *exchange) {
	r := x.r
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		x.w.Header().Set("Allow", "GET, HEAD")
		x.refuse(answerHealthMethod)
		return
	}
	s := &h.agent.embed
	hdr := x.w.Header()
	hdr["Etag"] = []string{s.etag}
	hdr["Cache-Control"] = []string{embedCacheControl}
	hdr["X-Content-Type-Options"] = []string{"nosniff"}
	x.outcome = outcomeSuccess
	if etagListed(r.Header.Values("If-None-Match"), s.etag) {
		x.status = http.StatusNotModified
		x.w.WriteHeader(x.status)
		return
	}
	hdr["Content-Type"] = []string{embedContentType}
	hdr["Content-Length"] = []string{strconv.Itoa(len(s.body))}
	x.status = http.StatusOK
	x.w.WriteHeader(x.status)
	if r.Method != http.MethodHead {
		_, _ = x.w.Write(s.body)
	}
}

// etagListed reports whether If-None-Match values name etag, by the weak
// comparison RFC 9110 (13.1.2) prescribes for it: `W/` is ignored, and `*`
// matches any current representation.
func etagListed(values []string, etag string) bool {
	for _, v := range values {
		for tag := range strings.SplitSeq(v, ",") {
			tag = strings.TrimSpace(tag)
			if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
				return true
			}
		}
	}
	return false
}

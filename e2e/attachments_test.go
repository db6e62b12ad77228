package e2e

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caddy-chatkit/caddy-chatkit/internal/fakeopenai"
)

// TestAgentChatAttachesAPicture: the demo page's composer takes a file, sends
// it the two-phase way (attachments.create, then the signed upload link),
// and the message shows it, with its preview, also after a reload.
func TestAgentChatAttachesAPicture(t *testing.T) {
	needBrowser(t)
	fake := newStreamingFake(t, 20*time.Millisecond)
	pageURL := agentSite(t, fake, "attachments on", "")
	png, _ := base64.StdEncoding.DecodeString("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
	file := filepath.Join(t.TempDir(), "dot.png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		t.Fatal(err)
	}
	tb := newTab(t)
	tb.openChat(t, pageURL)

	tb.do(t, "choosing the file", chromedp.SetUploadFiles(chromedp.ID("attach"), []string{file}))
	tb.say(t, "what is this")
	const fileShown = `(() => { const f = document.querySelector('#messages li[data-role="user"] .file');
		return !!f && f.textContent.includes('dot.png') && !!f.querySelector('img') && f.querySelector('img').complete && f.querySelector('img').naturalWidth === 1; })()`
	tb.waitFor(t, "the whole answer", answerDone+` && `+turnDone, shortWait)
	tb.waitFor(t, "the picture with the message", fileShown, shortWait)
	if got := fake.LastResponses(); got == nil || !hasImageInput(got.Input) {
		t.Fatalf("the model was not sent the picture: %+v", got)
	}

	tb.do(t, "reloading", chromedp.Reload())
	tb.waitFor(t, "both messages after the reload", messagesCount(2), shortWait)
	tb.waitFor(t, "the picture after the reload", fileShown, shortWait)
}

// hasImageInput reports whether a user message of the request carries an
// image as a data URL.
func hasImageInput(in []fakeopenai.InputItem) bool {
	for _, it := range in {
		for _, p := range it.Content {
			if p.Type == "input_image" && strings.HasPrefix(p.ImageURL, "data:image/png;base64,") {
				return true
			}
		}
	}
	return false
}

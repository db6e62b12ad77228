// Package e2e holds the browser tests: headless Chromium, driven with
// chromedp, against Caddy with the chatkit module (in the test process,
// admin API off, on free loopback ports) and the fake OpenAI API. The
// package has no code of its own; see the _test.go files.
//
//	go test -count=1 -v ./e2e/
//
// Without Chromium the tests skip, unless CHATKIT_REQUIRE_BROWSER is set
// (scripts/test.sh sets it), in which case they fail.
package e2e

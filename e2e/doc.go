// Package e2e holds the browser tests: headless Chromium, driven with
// chromedp, against Caddy with the chatkit module (in the test process,
// admin API off, on free loopback ports) and the fake OpenAI API. The
// package has no code of its own; see the _test.go files. instances_test.go
// runs two Caddy processes instead (the built ./cmd/caddy, one store, one
// Redis), driven over HTTP as a load balancer would.
//
//	go test -count=1 -v ./e2e/
//
// Without Chromium the tests skip, unless CHATKIT_REQUIRE_BROWSER is set
// (scripts/test.sh sets it), in which case they fail.
package e2e

// Package testcaddy builds this repository's Caddy for tests that need a
// separate Caddy process (a restart, a second instance).
package testcaddy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// build is the one build of a test binary's run: every test of a package
// shares it.
var build = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "chatkit-test-caddy-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "caddy")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/caddy-chatkit/caddy-chatkit/cmd/caddy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	return bin, nil
})

// Binary is the path of ./cmd/caddy built from this checkout, built on
// first use.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := build()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestDemoServesPageAndMints runs the demo with the fake OpenAI on a free
// port (admin off, so no fixed ports), loads the page and starts a chat the
// way the WordPress client does: POST with no body and no Content-Type.
func TestDemoServesPageAndMints(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{
			Listen:     addr,
			StorageDir: t.TempDir(),
			// Whatever the machine's environment holds, use the fake.
			Getenv:  func(string) string { return "" },
			Logf:    t.Logf,
			OnReady: func(u string) { ready <- u },
		})
	}()
	var site string
	select {
	case site = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("run returned before serving: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("the demo did not start within 30s")
	}
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the demo did not stop within 30s")
		}
	}()
	if want := "http://" + addr + "/"; site != want {
		t.Errorf("site URL %q, want %q", site, want)
	}
	client := &http.Client{Timeout: 10 * time.Second}

	res, err := client.Get(site)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(page), `id="start"`) {
		t.Fatalf("GET / = %d, page has #start: %v", res.StatusCode, strings.Contains(string(page), `id="start"`))
	}

	res, err = client.Get(site + "demo-config.json")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct{ Backend string }
	err = json.NewDecoder(res.Body).Decode(&cfg)
	res.Body.Close()
	if err != nil || cfg.Backend != "fake" {
		t.Errorf("demo-config.json: backend %q, err %v", cfg.Backend, err)
	}

	req, err := http.NewRequest(http.MethodPost, site+"api/chatkit/start", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var minted struct {
		ClientSecret string `json:"client_secret"`
		ExpiresAt    int64  `json:"expires_at"`
	}
	err = json.NewDecoder(res.Body).Decode(&minted)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("POST start = %d (decode: %v)", res.StatusCode, err)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if minted.ClientSecret == "" || minted.ExpiresAt <= time.Now().Unix() {
		t.Errorf("start answered client_secret %q, expires_at %d", minted.ClientSecret, minted.ExpiresAt)
	}
	var cookie bool
	for _, c := range res.Cookies() {
		cookie = cookie || c.Name == "chatkit_uid"
	}
	if !cookie {
		t.Error("no chatkit_uid cookie for an anonymous visitor")
	}
}

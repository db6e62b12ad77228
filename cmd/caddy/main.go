// Command caddy is Caddy with the chatkit module built in:
// `go build ./cmd/caddy` makes the same binary as
// `xcaddy build --with github.com/caddy-chatkit/caddy-chatkit`.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddy-chatkit/caddy-chatkit"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}

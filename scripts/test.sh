#!/usr/bin/env bash
# The project's one test command, for a fresh machine and for CI:
#
#	bash scripts/test.sh
#
# Needs Go >= 1.26 and, when APT_PACKAGES is not empty, Debian or Ubuntu
# (apt-get, as root or with sudo). Everything else it needs it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need: a real Redis for the distributed mode, a
# real PostgreSQL server for the PostgreSQL thread store and a real browser
# for the end-to-end tests of the demo page.
APT_PACKAGES=(redis-server postgresql chromium)

XCADDY_VERSION=v0.4.5
CADDY_VERSION=v2.11.9
MODULE=github.com/caddy-chatkit/caddy-chatkit

STEP="setup"
TMP=$(mktemp -d)
PG_DIR="" # the test cluster's directory, once started
PG_BIN=""
PG_AS=() # runs a PostgreSQL program as the user who owns the cluster
finish() {
	local rc=$?
	if [[ -f $TMP/redis.pid ]]; then
		kill "$(cat "$TMP/redis.pid")" 2>/dev/null || true
	fi
	if [[ -n $PG_DIR ]]; then
		if [[ -f $PG_DIR/data/postmaster.pid ]]; then
			(cd "$PG_DIR" && "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" stop -m immediate >/dev/null 2>&1) || true
		fi
		rm -rf "$PG_DIR"
	fi
	rm -rf "$TMP"
	if ((rc != 0)); then
		printf '\nscripts/test.sh: FAILED during: %s (exit %d)\n' "$STEP" "$rc"
	fi
}
trap finish EXIT

step() {
	STEP=$1
	printf '\n==> %s\n' "$1"
}

step "checking the Go toolchain (need >= 1.26)"
if ! command -v go >/dev/null; then
	echo "go is not on PATH: install Go 1.26 or later from the Go website" >&2
	exit 1
fi
gover=$(go env GOVERSION) # e.g. go1.26.8
ver=${gover#go}
major=${ver%%.*}
minor=${ver#*.}
minor=${minor%%[!0-9]*}
if ((major < 1 || (major == 1 && minor < 26))); then
	echo "found $gover; Caddy $CADDY_VERSION and this module need Go 1.26 or later" >&2
	exit 1
fi
echo "$gover"

step "checking Debian packages: ${APT_PACKAGES[*]}"
install_apt_packages() {
	local missing=() p
	for p in "${APT_PACKAGES[@]}"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
	if ((${#missing[@]} == 0)); then
		echo "nothing to install"
		return
	fi
	if ! command -v apt-get >/dev/null; then
		echo "missing packages ${missing[*]}, and no apt-get to install them: install them by hand" >&2
		exit 1
	fi
	local sudo=()
	if (($(id -u) != 0)); then
		sudo=(sudo)
	fi
	echo "installing: ${missing[*]}"
	"${sudo[@]}" apt-get update
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}
install_apt_packages

step "gofmt -l ."
unformatted=$(gofmt -l .)
if [[ -n $unformatted ]]; then
	echo "these files need gofmt -w:" >&2
	echo "$unformatted" >&2
	exit 1
fi
echo "all formatted"

step "go vet ./..."
go vet ./...
echo "vet clean"

# One redis-server on a free loopback port for the tests (a test that kills
# and restarts Redis starts its own). Installed above, so tests that need
# Redis or Chromium fail here rather than skip.
step "starting redis-server on a free loopback port"
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 16379)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" --daemonize yes --pidfile "$TMP/redis.pid" >/dev/null
for _ in $(seq 50); do
	redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
	sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping
export CHATKIT_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
export CHATKIT_REQUIRE_REDIS=1 CHATKIT_REQUIRE_BROWSER=1

# One throwaway PostgreSQL cluster on a free loopback port, trusting
# loopback and without fsync (its data dies with the run); the tests create
# a database each. Debian keeps the server's programs off PATH. PostgreSQL
# refuses to run as root, so as root the cluster belongs to the postgres
# user, in a directory of its own (TMP is root's, mode 0700).
step "starting PostgreSQL on a free loopback port"
PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
if [[ -z $PG_BIN || ! -x $PG_BIN/initdb ]]; then
	echo "no PostgreSQL server programs under /usr/lib/postgresql/*/bin: install the postgresql package" >&2
	exit 1
fi
PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 15433)
PG_DIR=$(mktemp -d)
if (($(id -u) == 0)); then
	chown postgres: "$PG_DIR"
	PG_AS=(runuser -u postgres --)
fi
if ! (cd "$PG_DIR" && "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$PG_DIR/initdb.log" 2>&1); then
	cat "$PG_DIR/initdb.log" >&2
	exit 1
fi
if ! (cd "$PG_DIR" && "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
	-o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PG_DIR -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
	start >/dev/null); then
	cat "$PG_DIR/server.log" >&2
	exit 1
fi
for _ in $(seq 100); do
	"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
	sleep 0.1
done
"$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT"
export CHATKIT_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export CHATKIT_TEST_POSTGRES_BIN=$PG_BIN # for tests that start a cluster of their own
export CHATKIT_REQUIRE_POSTGRES=1

# -p 1: the root package's caddytest tests use fixed ports (admin 2999,
# HTTP 9080/9443) and Caddy is one global instance per process, so no two
# test binaries may run at once. For the same reason, several checkouts
# tested on one machine must take turns: set CHATKIT_TEST_LOCK to a lock
# file they share (flock(1)); CI leaves it unset.
step "go test -race -count=1 -p 1 ./..."
lock=()
if [[ -n ${CHATKIT_TEST_LOCK:-} ]]; then
	lock=(flock "$CHATKIT_TEST_LOCK")
fi
# The whole output is kept: a failing test's own lines scroll far above the
# end, so they are repeated there (CI shows only the tail).
if ! "${lock[@]}" go test -race -count=1 -p 1 ./... 2>&1 | tee "$TMP/go-test.log"; then
	printf '\n==> the failures, again:\n'
	grep -v '^{"level"' "$TMP/go-test.log" | grep -E -A 30 '^(--- FAIL|panic:|WARNING: DATA RACE)' | head -n 300 || true
	exit 1
fi

step "building ./cmd/caddy"
go build -o "$TMP/caddy" ./cmd/caddy
"$TMP/caddy" version

# Dummy secrets: adapt --validate provisions the module, which needs them.
# XDG dirs in $TMP keep Caddy's storage and config out of $HOME.
step "caddy adapt --validate --config Caddyfile.example"
if ! OPENAI_API_KEY=sk-dummy-for-validation CHATKIT_WORKFLOW_ID=wf_dummy \
	XDG_DATA_HOME="$TMP/data" XDG_CONFIG_HOME="$TMP/config" \
	"$TMP/caddy" adapt --validate --config Caddyfile.example >"$TMP/example.json" 2>"$TMP/adapt.log"; then
	cat "$TMP/adapt.log" >&2
	exit 1
fi
if grep -q 'sk-dummy-for-validation' "$TMP/example.json"; then
	echo "the adapted Caddyfile.example contains the API key itself: use {env.OPENAI_API_KEY}" >&2
	exit 1
fi
echo "valid, and the key stays a placeholder"

step "caddy fmt Caddyfile.example (must be unchanged)"
"$TMP/caddy" fmt Caddyfile.example >"$TMP/Caddyfile.fmt"
if ! diff -u Caddyfile.example "$TMP/Caddyfile.fmt"; then
	echo "Caddyfile.example is not formatted: run caddy fmt --overwrite Caddyfile.example" >&2
	exit 1
fi
echo "formatted"

# The way users build it: xcaddy with this checkout as the plugin. The
# module proxy refuses unpublished module paths, so build offline from the
# module cache (filled by `go mod download all`; a few modules Caddy lists
# but never builds are refused, which is harmless).
step "xcaddy build $CADDY_VERSION --with $MODULE=."
gobin=$(go env GOBIN)
gobin=${gobin:-$(go env GOPATH)/bin}
if [[ -x $gobin/xcaddy ]]; then
	XCADDY=$gobin/xcaddy
elif command -v xcaddy >/dev/null; then
	XCADDY=$(command -v xcaddy)
else
	echo "installing xcaddy $XCADDY_VERSION"
	go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"
	XCADDY=$gobin/xcaddy
fi
if ! go mod download all >"$TMP/mod-download.log" 2>&1; then
	echo "go mod download all: some modules were refused (harmless unless the build below fails):"
	grep -c 'Forbidden\|not available' "$TMP/mod-download.log" | sed 's/^/  refused: /' || true
fi
# xcaddy's scratch module first resolves Caddy alone, at the versions
# Caddy's own go.mod names; where this module's graph selects newer ones
# (golang.org/x/sys, for the SQLite driver), those older versions are not in
# the cache yet. Resolve Caddy the same way once, online, so the offline
# build below finds them.
mkdir -p "$TMP/caddy-alone"
if ! (cd "$TMP/caddy-alone" && go mod init caddy-alone >/dev/null 2>&1 &&
	go get "github.com/caddyserver/caddy/v2@$CADDY_VERSION" >"$TMP/caddy-alone.log" 2>&1); then
	tail -20 "$TMP/caddy-alone.log" >&2
	exit 1
fi
# XCADDY_GO_BUILD_FLAGS replaces xcaddy's default "-trimpath -tags ...",
# so the compile reuses the build cache of the steps above.
#
# GOSUMDB=off beside GOPROXY=off: xcaddy's scratch module runs `go get
# caddy@$CADDY_VERSION`, which asks the checksum database to verify it, and
# this network cannot reach that database. Turning the lookup off here is
# sound: with GOPROXY=off the build can only use modules already in the
# module cache, and every one of them entered the cache verified (against
# this repository's go.sum, or the checksum database through the proxy, by
# `go mod download all` above).
if ! GOPROXY=off GOSUMDB=off GOFLAGS=-mod=mod XCADDY_GO_BUILD_FLAGS="-ldflags='-w -s'" \
	"$XCADDY" build "$CADDY_VERSION" --with "$MODULE=." --output "$TMP/caddy-xcaddy" >"$TMP/xcaddy.log" 2>&1; then
	tail -40 "$TMP/xcaddy.log" >&2
	exit 1
fi
modules=$("$TMP/caddy-xcaddy" list-modules)
if ! grep -qx 'http.handlers.chatkit' <<<"$modules"; then
	echo "the xcaddy-built binary lacks http.handlers.chatkit" >&2
	exit 1
fi
echo "xcaddy-built binary lists http.handlers.chatkit"

STEP="done"
printf '\nscripts/test.sh: all checks passed (go %s: gofmt, vet, race tests, Caddyfile.example validate+fmt, xcaddy build)\n' "${gover#go}"

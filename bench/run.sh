#!/usr/bin/env bash
# The load harness of Step 7, one command from anywhere in the checkout:
#
#	bash bench/run.sh                 # (a) chatkit vs (b) reverse_proxy vs (c) the fake, 3 rounds
#	bash bench/run.sh -flood          # 1,000,000 client addresses against start
#	bash bench/run.sh -soak           # 60 s at 200 req/s, config reload every 10 s
#	bash bench/run.sh -profile 10     # pprof CPU and allocs of (a) and (b)
#	bash bench/run.sh -stalled        # 800 stalled bodies on a protected path, Caddy's RSS
#	bash bench/run.sh -agent-streams  # the agent: 10 and 1,000 open streams (delay per event, memory per stream)
#	bash bench/run.sh -agent-reads    # the agent: threads.list and get_by_id on 10,000 threads, 200,000 items
#	bash bench/run.sh -agent-streams -agent-store sqlite,postgres   # the streams on SQLite and on PostgreSQL
#	bash bench/run.sh -agent-soak     # the agent: 10 min, two instances, a reload a minute, a kill; no lost items
#	bash bench/run.sh -h              # every flag
#
# Needs Go >= 1.26 and taskset (util-linux). Everything runs on 127.0.0.1. The postgres store
# uses -postgres-url (or $CHATKIT_BENCH_POSTGRES_URL), else a throwaway cluster made with the
# PostgreSQL binaries of -postgres-bin (default /usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v taskset >/dev/null; then
	echo "bench/run.sh: taskset not found (Debian: apt-get install util-linux), or pass -pin=false" >&2
fi
exec go run ./bench/loadtest "$@"

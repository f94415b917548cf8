# shellcheck shell=bash
# Helpers shared by the benchmark scripts (scripts/bench.sh, scripts/bench/instructions.sh,
# scripts/bench-store.sh); sourced, not run.

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_healthz URL CURL_ARGS...: until URL answers 2xx, at most $healthz_wait_s seconds
# (default 10; a server under callgrind needs more).
wait_healthz() {
    local url="$1" i
    shift
    for ((i = 0; i < ${healthz_wait_s:-10} * 20; i++)); do
        if curl -sf -o /dev/null "$@" "$url"; then return 0; fi
        sleep 0.05
    done
    echo "${0##*/}: $url did not answer" >&2
    return 1
}

# stop_pids PID...: SIGTERM each one still running, and wait for it.
stop_pids() {
    local pid
    for pid in "$@"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}

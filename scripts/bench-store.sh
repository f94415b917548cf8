#!/usr/bin/env bash
# bench-store.sh — durable increments per second of k_server, group commit against one
# transaction per request, at 1, 16 and 64 concurrent clients, in one run.
#
# Builds k_server and the load generator (k_server/examples/bench_increments.rs) in
# release mode, starts one k_server per --commit-mode (group, per-request) on free ports
# with fresh data directories, and drives POST /resource/counter over plain HTTP with
# keep-alive connections, as k_proxy would (proxy token and user headers). Every answer
# is a committed, fsync'd increment; the load generator checks that all values are
# distinct. Each cell is the median of --rounds runs of --seconds, modes alternating.
#
# Not run in CI. Usage:
#   scripts/bench-store.sh [--seconds N] [--rounds N] [--clients "1 16 64"] [--dir DIR]
# DIR (default bench/out, git-ignored) holds the data directories: put it on the disk you
# want to measure (fsync cost is the point). The table is printed and written to
# DIR/store-<timestamp>.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=3
rounds=3
clients_list="1 16 64"
out_dir="bench/out"
while (($# > 0)); do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --clients) clients_list="$2"; shift 2 ;;
        --dir) out_dir="$2"; shift 2 ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "bench-store.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

echo "== building k_server and the load generator (release)" >&2
cargo build --release --locked -p k_server --bin k_server --example bench_increments >&2
bin=target/release/k_server
load=target/release/examples/bench_increments

mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd -P)"
run_dir="$(mktemp -d "$out_dir/run.XXXXXX")"
token="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export CHROMECARD_PROXY_TOKEN="$token"

# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh
declare -A pid port
cleanup() {
    stop_pids "${pid[@]}"
    rm -rf -- "$run_dir"
}
trap cleanup EXIT


# Both servers run at once, each on its own data directory, and the cells alternate
# between them round by round, so that a change in the machine's load (or the disk's
# fsync latency) during the run hits both modes alike. Per-request log lines are off
# (they cost CPU that would cap group commit); the writer's closing summary is kept.
modes=(group per-request)
for mode in "${modes[@]}"; do
    port[$mode]="$(free_port)"
    RUST_LOG=warn,k_server=info,k_server::app=warn \
        "$bin" --port "${port[$mode]}" --data-dir "$run_dir/$mode" --commit-mode "$mode" \
        2>"$run_dir/$mode.log" &
    pid[$mode]=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/${port[$mode]}") 2>/dev/null; then break; fi
        sleep 0.05
    done
done

declare -A rates lines
for c in $clients_list; do
    for r in $(seq "$rounds"); do
        for mode in "${modes[@]}"; do
            line="$("$load" --port "${port[$mode]}" --clients "$c" --seconds "$seconds")"
            echo "   $mode round $r: $line" >&2
            rates[$mode,$c]+="$(sed -E 's/.*rate=([0-9]+).*/\1/' <<<"$line") "
            lines[$mode,$c,$r]="$line"
        done
    done
done

declare -A txns writes
for mode in "${modes[@]}"; do
    kill -TERM "${pid[$mode]}"
    wait "${pid[$mode]}" || true
    unset "pid[$mode]"
    txns[$mode]="$(grep -o 'transactions=[0-9]*' "$run_dir/$mode.log" | cut -d= -f2 || true)"
    writes[$mode]="$(grep -o 'writes=[0-9]*' "$run_dir/$mode.log" | cut -d= -f2 || true)"
done

# median of the rounds, and the round that gave it (for its latencies)
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A rate p50 p99
for c in $clients_list; do
    for mode in "${modes[@]}"; do
        rate[$mode,$c]="$(median "${rates[$mode,$c]}")"
        for r in $(seq "$rounds"); do
            line="${lines[$mode,$c,$r]}"
            if [[ "$(sed -E 's/.*rate=([0-9]+).*/\1/' <<<"$line")" == "${rate[$mode,$c]}" ]]; then
                p50[$mode,$c]="$(sed -E 's/.*p50_ms=([0-9.]+).*/\1/' <<<"$line")"
                p99[$mode,$c]="$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$line")"
            fi
        done
    done
done

fs="$(df -PT "$out_dir" | awk 'NR==2 {print $2 " on " $1}')"
report="$out_dir/store-$(date -u +%Y%m%dT%H%M%SZ).md"
{
    echo "Durable increments per second (POST /resource/counter on k_server, plain HTTP, keep-alive;"
    echo "median of ${rounds} rounds of ${seconds} s, modes alternating; release build). $(nproc) CPUs,"
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end, data on ${fs}; $(date -u +%Y-%m-%d)."
    echo
    echo "| clients | group commit /s | p50 / p99 ms | one transaction per request /s | p50 / p99 ms | ratio |"
    echo "|---:|---:|---:|---:|---:|---:|"
    for c in $clients_list; do
        g="${rate[group,$c]}"
        p="${rate[per-request,$c]}"
        ratio="$(awk -v g="$g" -v p="$p" 'BEGIN { if (p > 0) printf "%.1f×", g / p; else print "-" }')"
        echo "| $c | $g | ${p50[group,$c]} / ${p99[group,$c]} | $p | ${p50[per-request,$c]} / ${p99[per-request,$c]} | $ratio |"
    done
    echo
    for mode in group per-request; do
        t="${txns[$mode]:-0}"
        w="${writes[$mode]:-0}"
        avg="$(awk -v t="$t" -v w="$w" 'BEGIN { if (t > 0) printf "%.1f", w / t; else print "-" }')"
        echo "- $mode: $w increments in $t durable transactions ($avg per transaction)."
    done
} | tee "$report"
echo "(written to $report)" >&2

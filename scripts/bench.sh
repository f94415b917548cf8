#!/usr/bin/env bash
# bench.sh — the chain against its peers, on one machine, in one run (issue 7).
#
# Measures GET /resource/counter with wrk at 1, 64 and 256 keep-alive connections through:
#   direct  wrk -> k_server over mutual TLS (the limit; wrk presents k_proxy's client
#           certificate through scripts/bench/wrk_client_cert.c, an LD_PRELOAD shim)
#   chain   wrk -> k_proxy over TLS (Bearer session token) -> k_server over mutual TLS
#   nginx   wrk -> nginx over TLS (static bearer check, a `map`) -> the same k_server over
#           mutual TLS with keep-alive (scripts/bench/nginx.conf.template)
# and for each: requests per second, p50 and p99 latency, server CPU seconds per 10k
# requests (utime+stime from /proc/PID/stat: k_server alone for direct, k_proxy + k_server
# for the chain, nginx master + workers + k_server for nginx), then the ratios chain/nginx
# and chain/direct, of the median rounds and round by round (lowest to highest). Also: k_proxy's start-up time (spawn to the first 200 from /healthz),
# login latency with the software authenticator, k_proxy's memory at rest and with 100k
# live sessions, validation scaling from 1 to 2 threads
# (crates/session/examples/validate_scaling.rs), where perf works a CPU profile of k_proxy
# under load, and instructions per request of each process for direct, chain (with each
# protocol on the hop) and nginx, counted by callgrind (scripts/bench/instructions.sh:
# steady on a busy machine, where requests/s are not; --instructions-only runs just that
# part).
#
# Writes the results between the markers in bench/RESULTS.md (the rest of that file is
# kept) and a full copy with the raw wrk output to bench/out/ (git-ignored).
#
# Not run in CI: by hand, on an otherwise idle machine (it prints the load average; the
# load generator shares the CPUs with the servers). All traffic goes to 127.0.0.1; every
# run is bounded in time. Installs nginx-light, wrk (and gcc) with apt-get when missing.
#
# Each point runs --rounds times (default 3, interleaved across targets, --seconds each,
# default 5); the table shows the round with the median requests/s and the range.
#
# Usage: scripts/bench.sh [--seconds N] [--rounds N] [--conns "1 64 256"] [--sessions N]
#                         [--no-build] [--no-profile] [--results FILE]
#                         [--instructions-only] [--no-instructions] [--instr-requests N]
#                         [--proxy-args "FLAGS"]
#
# --proxy-args "FLAGS": more k_proxy flags for the chain (and chain-nolog), e.g.
# "--connection-threads 0" to measure the shared runtime against the default workers, or
# "--connection-threads 1" for one worker. (The former --proxy-workers N set
# TOKIO_WORKER_THREADS, which no longer decides where connections are served.)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd -P)"

seconds=5
rounds=3
conns_list="1 64 256"
sessions_target=100000
build=1
profile=1
proxy_extra=()
results="bench/RESULTS.md"
instructions=1
instructions_only=0
instr_requests=3000
while (($# > 0)); do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --conns) conns_list="$2"; shift 2 ;;
        --sessions) sessions_target="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --no-profile) profile=0; shift ;;
        --proxy-workers)
            echo "bench.sh: --proxy-workers is gone: use --proxy-args \"--connection-threads $2\"" >&2
            exit 2 ;;
        --proxy-args) read -ra proxy_extra <<<"$2"; shift 2 ;;
        --results) results="$2"; shift 2 ;;
        --instructions-only) instructions_only=1; shift ;;
        --no-instructions) instructions=0; shift ;;
        --instr-requests) instr_requests="$2"; shift 2 ;;
        -h | --help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/bench/common.sh
. "$repo/scripts/bench/common.sh"
say() { echo "== $*" >&2; }
# A command line as one would type it: arguments with spaces in single quotes.
shell_join() {
    local arg out=""
    for arg in "$@"; do
        [[ "$arg" == *" "* ]] && arg="'$arg'"
        out+="${out:+ }$arg"
    done
    printf '%s' "$out"
}

# ---------------------------------------------------------------- prerequisites
missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
if ((instructions)); then command -v valgrind >/dev/null 2>&1 || missing+=(valgrind); fi
if ((${#missing[@]} > 0)); then
    sudo=""
    if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
    say "installing ${missing[*]}: $sudo apt-get install -y ${missing[*]}"
    $sudo apt-get update -qq
    $sudo apt-get install -y "${missing[@]}" >&2
fi
for tool in cargo curl python3 openssl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "bench.sh: $tool is needed (apt-get install $tool; cargo from rustup)" >&2; exit 1; }
done
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

if ((build)); then
    say "building release binaries: cargo build --release --bins"
    cargo build --release --bins >&2
    cargo build --release -p chromecard-session --example validate_scaling >&2
fi
ks_bin="$repo/target/release/k_server"
kp_bin="$repo/target/release/k_proxy"
scaling_bin="$repo/target/release/examples/validate_scaling"
mkdir -p bench/out
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
# instructions per request (callgrind); alone with --instructions-only.
instr_table=""
instr_file="bench/out/instructions-$stamp.md"
if ((instructions_only)); then
    say "instructions per request under callgrind ($instr_requests requests per target)"
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (does not matter to instruction counts)" >&2
    scripts/bench/instructions.sh --requests "$instr_requests" --out "$instr_file"
    exit 0
fi
for bin in "$ks_bin" "$kp_bin" "$scaling_bin"; do
    [[ -x "$bin" ]] || { echo "bench.sh: $bin is missing (run without --no-build)" >&2; exit 1; }
done

# ---------------------------------------------------------------- work area, clean-up
work="$(mktemp -d /tmp/chromecard-bench.XXXXXX)"
pids=()
cleanup() {
    stop_pids "${pids[@]}"
    rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

raw="$repo/bench/out/bench-$stamp.log"
: >"$raw"

clk_tck="$(getconf CLK_TCK)"
# utime+stime (clock ticks) of the given pids, summed.
cpu_ticks() {
    local pid total=0
    local -a f
    for pid in "$@"; do
        # The fields after the ")" that ends the command name start at field 3 (state);
        # utime is field 14, stime field 15.
        read -r -a f <<<"$(sed 's/.*) //' "/proc/$pid/stat")"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

certs="$work/certs"
"$repo/tls/make-certs.sh" --out "$certs" >/dev/null
proxy_token="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
(umask 077 && printf '%s\n' "$proxy_token" >"$work/proxy-token")
gcc -shared -fPIC -O2 -o "$work/wrk_client_cert.so" "$repo/scripts/bench/wrk_client_cert.c" -ldl

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
say "load average before: $load_before (1, 5, 15 min)"

# ---------------------------------------------------------------- k_server
ks_port="$(free_port)"
ks_cmd=("$ks_bin" --host 127.0.0.1 --port "$ks_port" --proxy-token-file "$work/proxy-token"
    --tls-certfile "$certs/k_server.crt" --tls-keyfile "$certs/k_server.key"
    --client-ca-file "$certs/ca.crt" --data-dir "$work/ks-data")
"${ks_cmd[@]}" 2>"$work/k_server.log" &
ks_pid=$!
pids+=("$ks_pid")
ks_curl=(--cacert "$certs/ca.crt" --cert "$certs/k_proxy.crt" --key "$certs/k_proxy.key")
wait_healthz "https://127.0.0.1:$ks_port/healthz" "${ks_curl[@]}"

kp_common=(--server-base-url "https://127.0.0.1:$ks_port" --server-ca-file "$certs/ca.crt"
    --proxy-token-file "$work/proxy-token" --tls-certfile "$certs/k_proxy.crt"
    --tls-keyfile "$certs/k_proxy.key" --gate soft --session-ttl 3600)

# ---------------------------------------------------------------- start-up time
say "k_proxy start-up time (5 starts)"
su_port="$(free_port)"
mapfile -t startups < <(python3 "$repo/scripts/bench/startup.py" --port "$su_port" \
    --cacert "$certs/ca.crt" --runs 5 --log "$work/startup.log" -- \
    "$kp_bin" --port "$su_port" "${kp_common[@]}")
startup_sorted="$(printf '%s\n' "${startups[@]}" | sort -n | tr '\n' ' ')"
startup_median="$(printf '%s\n' "${startups[@]}" | sort -n | sed -n 3p)"

# ---------------------------------------------------------------- sessions: memory, login latency
say "k_proxy memory at rest, login latency, memory with $sessions_target sessions"
mem_port="$(free_port)"
"$kp_bin" --port "$mem_port" "${kp_common[@]}" --max-sessions 1000000 \
    2>"$work/k_proxy-mem.log" &
mem_pid=$!
pids+=("$mem_pid")
wait_healthz "https://127.0.0.1:$mem_port/healthz" --cacert "$certs/ca.crt"
sleep 1
rss_rest="$(rss_kib "$mem_pid")"

login_cmd=(wrk -t1 -c1 -d5s --latency -s "$repo/scripts/bench/login.lua"
    "https://127.0.0.1:$mem_port/session/login")
login_out="$("${login_cmd[@]}")"
printf '### login latency: %s\n%s\n\n' "${login_cmd[*]}" "$login_out" >>"$raw"

# wrk's latency line "  50%  158.00us" -> milliseconds
pct_ms() { # text, percentile
    awk -v p="$2%" '$1 == p {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000;
        printf "%.3f", v }' <<<"$1"
}
field() { awk -v k="$2" '$1 == k {print $2}' <<<"$1"; }
login_ok() { sed -n 's/^LOGINS ok=\([0-9]*\) failed=\([0-9]*\)/\1 \2/p' <<<"$1"; }

read -r logins_done logins_failed <<<"$(login_ok "$login_out")"
login_p50="$(pct_ms "$login_out" 50)"
login_p99="$(pct_ms "$login_out" 99)"
login_rps="$(field "$login_out" Requests/sec:)"

remaining=$((sessions_target - logins_done))
fill_out="(none needed)"
fill_seconds=0
if ((remaining > 0)); then
    mkdir -p "$work/done"
    fill_started="$(date +%s.%N)"
    WRK_LOGINS="$remaining" WRK_THREADS=2 WRK_DONE_DIR="$work/done" \
        wrk -t2 -c8 -d300s -s "$repo/scripts/bench/login.lua" \
        "https://127.0.0.1:$mem_port/session/login" >"$work/fill.out" &
    fill_pid=$!
    pids+=("$fill_pid")
    for _ in $(seq 1 3000); do # at most 300 s
        (($(find "$work/done" -type f | wc -l) >= 2)) && break
        kill -0 "$fill_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -INT "$fill_pid" 2>/dev/null || true
    wait "$fill_pid" || true
    fill_seconds="$(python3 -c "import time; print(f'{time.time() - $fill_started:.1f}')")"
    fill_out="$(cat "$work/fill.out")"
    read -r fill_ok fill_failed <<<"$(login_ok "$fill_out")"
    logins_done=$((logins_done + fill_ok))
    logins_failed=$((logins_failed + fill_failed))
fi
printf '### filling to %s sessions (%s s)\n%s\n\n' "$sessions_target" "$fill_seconds" "$fill_out" >>"$raw"
sleep 1
rss_full="$(rss_kib "$mem_pid")"
per_session="$(((rss_full - rss_rest) * 1024 / (logins_done > 0 ? logins_done : 1)))"
kill "$mem_pid"
wait "$mem_pid" 2>/dev/null || true

# ---------------------------------------------------------------- the three targets
kp_port="$(free_port)"
kp_cmd=("$kp_bin" --port "$kp_port" "${kp_common[@]}" --max-connections 4096 "${proxy_extra[@]}")
"${kp_cmd[@]}" 2>"$work/k_proxy.log" &
kp_pid=$!
pids+=("$kp_pid")
wait_healthz "https://127.0.0.1:$kp_port/healthz" --cacert "$certs/ca.crt"
session_token="$(curl -sS --cacert "$certs/ca.crt" -X POST "https://127.0.0.1:$kp_port/session/login" \
    -H 'Content-Type: application/json' -d '{"username":"bench"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["session_token"])')"

# start_nginx DIR ACCESS_LOG -> sets ng_port, ng_pid, ng_workers, ng_cmd
start_nginx() {
    local dir="$1" access="$2"
    ng_port="$(free_port)"
    mkdir -p "$dir"
    sed -e "s#@DIR@#$dir#g" -e "s#@CERTS@#$certs#g" -e "s#@PORT@#$ng_port#g" \
        -e "s#@KS_PORT@#$ks_port#g" -e "s#@BEARER@#$session_token#g" \
        -e "s#@PROXY_TOKEN@#$proxy_token#g" -e "s#@ACCESS_LOG@#$access#g" \
        "$repo/scripts/bench/nginx.conf.template" >"$dir/nginx.conf"
    chmod 600 "$dir/nginx.conf"
    ng_cmd=("$nginx_bin" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf")
    "${ng_cmd[@]}" &
    ng_pid=$!
    pids+=("$ng_pid")
    wait_healthz "https://127.0.0.1:$ng_port/healthz" --cacert "$certs/ca.crt"
    mapfile -t ng_workers < <(pgrep -P "$ng_pid")
}

# The same pair without their per-request access log lines (k_server keeps its own), to
# show what that line costs each: k_proxy with RUST_LOG=info,chromecard::access=off (audit
# lines stay), nginx with access_log off. Measured at 64 connections only.
kpq_port="$(free_port)"
RUST_LOG=info,chromecard::access=off "$kp_bin" --port "$kpq_port" "${kp_common[@]}" \
    --max-connections 4096 "${proxy_extra[@]}" 2>"$work/k_proxy-quiet.log" &
kpq_pid=$!
pids+=("$kpq_pid")
wait_healthz "https://127.0.0.1:$kpq_port/healthz" --cacert "$certs/ca.crt"
quiet_token="$(curl -sS --cacert "$certs/ca.crt" -X POST "https://127.0.0.1:$kpq_port/session/login" \
    -H 'Content-Type: application/json' -d '{"username":"bench"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["session_token"])')"
start_nginx "$work/nginx-quiet" off
ngq_port="$ng_port"
ngq_pid="$ng_pid"
ngq_workers=("${ng_workers[@]}")
start_nginx "$work/nginx" "$work/nginx/access.log"

# Each target answers with a 200 and the counter before any load.
bearer=(-H "Authorization: Bearer $session_token")
curl -sSf "${ks_curl[@]}" -H "X-Proxy-Token: $proxy_token" -H "X-Chromecard-User: bench" \
    "https://127.0.0.1:$ks_port/resource/counter" >/dev/null
curl -sSf --cacert "$certs/ca.crt" "${bearer[@]}" "https://127.0.0.1:$kp_port/resource/counter" >/dev/null
curl -sSf --cacert "$certs/ca.crt" "${bearer[@]}" "https://127.0.0.1:$ng_port/resource/counter" >/dev/null
if curl -sf --cacert "$certs/ca.crt" -H "Authorization: Bearer wrong" \
    "https://127.0.0.1:$ng_port/resource/counter" >/dev/null; then
    echo "bench.sh: nginx let a wrong bearer through" >&2
    exit 1
fi

# run_wrk TARGET CONNS SECONDS -> sets wrk_out, wrk_cmd_text
run_wrk() {
    local target="$1" conns="$2" secs="$3" threads=2
    ((conns < 2)) && threads=1
    local url
    local -a env_pre=() hdrs=()
    case "$target" in
        direct)
            url="https://127.0.0.1:$ks_port/resource/counter"
            env_pre=(env WRK_CLIENT_CERT="$certs/k_proxy.crt" WRK_CLIENT_KEY="$certs/k_proxy.key"
                LD_PRELOAD="$work/wrk_client_cert.so")
            hdrs=(-H "X-Proxy-Token: $proxy_token" -H "X-Chromecard-User: bench")
            ;;
        chain)
            url="https://127.0.0.1:$kp_port/resource/counter"
            hdrs=("${bearer[@]}")
            ;;
        nginx)
            url="https://127.0.0.1:$ng_port/resource/counter"
            hdrs=("${bearer[@]}")
            ;;
        chain-nolog)
            url="https://127.0.0.1:$kpq_port/resource/counter"
            hdrs=(-H "Authorization: Bearer $quiet_token")
            ;;
        nginx-nolog)
            url="https://127.0.0.1:$ngq_port/resource/counter"
            hdrs=("${bearer[@]}")
            ;;
    esac
    local -a cmd=(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "${hdrs[@]}" "$url")
    wrk_out="$("${env_pre[@]}" "${cmd[@]}")"
    wrk_cmd_text="$(shell_join "${env_pre[@]}" "${cmd[@]}")"
    wrk_cmd_text="${wrk_cmd_text//$session_token/SESSION_TOKEN}"
    wrk_cmd_text="${wrk_cmd_text//$quiet_token/SESSION_TOKEN}"
    wrk_cmd_text="${wrk_cmd_text//$proxy_token/PROXY_TOKEN}"
    wrk_cmd_text="${wrk_cmd_text//$work/\$WORK}"
}

server_pids() {
    case "$1" in
        direct) echo "$ks_pid" ;;
        chain) echo "$kp_pid $ks_pid" ;;
        nginx) echo "$ng_pid ${ng_workers[*]} $ks_pid" ;;
        chain-nolog) echo "$kpq_pid $ks_pid" ;;
        nginx-nolog) echo "$ngq_pid ${ngq_workers[*]} $ks_pid" ;;
    esac
}

say "warm-up: 2 s per target at 64 connections"
for target in direct chain nginx chain-nolog nginx-nolog; do run_wrk "$target" 64 2; done

declare -A samples rps p50 p99 cpu errs spread commands_used
# measure TARGET CONNS: one timed point; appends "rps p50 p99 cpu errors" to samples[].
measure() {
    local target="$1" conns="$2" before after requests key non2xx sockerr point_cpu
    local -a watched
    say "$target, $conns connections, $seconds s (round $round of $rounds)"
    read -r -a watched <<<"$(server_pids "$target")"
    before="$(cpu_ticks "${watched[@]}")"
    run_wrk "$target" "$conns" "$seconds"
    after="$(cpu_ticks "${watched[@]}")"
    printf '### %s, %s connections, round %s: %s\n%s\n\n' "$target" "$conns" "$round" "$wrk_cmd_text" "$wrk_out" >>"$raw"
    requests="$(awk '/requests in/ {print $1}' <<<"$wrk_out")"
    point_cpu="$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$requests" \
        'BEGIN { printf "%.2f", (n > 0 ? t / hz / n * 10000 : 0) }')"
    non2xx="$(awk '/Non-2xx/ {print $NF}' <<<"$wrk_out")"
    sockerr="$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' <<<"$wrk_out")"
    key="$target/$conns"
    samples[$key]+="$(field "$wrk_out" Requests/sec:) $(pct_ms "$wrk_out" 50) $(pct_ms "$wrk_out" 99) $point_cpu $((${non2xx:-0} + ${sockerr:-0}))"$'\n'
    commands_used["$target"]="$wrk_cmd_text"
}
# Rounds interleave the targets, so that a disturbance from outside (the machine is
# shared) hits all of them alike; each cell is the round with the median requests/s.
targets=(direct chain nginx)
for conns in $conns_list; do
    list=("${targets[@]}")
    [[ "$conns" == 64 ]] && list+=(chain-nolog nginx-nolog)
    for round in $(seq 1 "$rounds"); do
        for target in "${list[@]}"; do
            measure "$target" "$conns"
        done
    done
done
for key in "${!samples[@]}"; do
    median="$(sed '/^$/d' <<<"${samples[$key]}" | sort -n -k1,1 | sed -n "$(((rounds + 1) / 2))p")"
    read -r m_rps m_p50 m_p99 m_cpu _ <<<"$median"
    rps[$key]="$m_rps"
    p50[$key]="$m_p50"
    p99[$key]="$m_p99"
    cpu[$key]="$m_cpu"
    errs[$key]="$(awk '{ e += $5 } END { print e + 0 }' <<<"${samples[$key]}")"
    spread[$key]="$(sed '/^$/d' <<<"${samples[$key]}" | sort -n -k1,1 | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f-%.0f", lo, hi }')"
done

# ---------------------------------------------------------------- profile of the chain
profile_file="bench/out/profile-$stamp.txt"
profile_summary="not taken (--no-profile)"
if ((profile)); then
    if perf record -e cpu-clock -o "$work/probe.perf" -- true >/dev/null 2>&1; then
        say "profiling k_proxy under load (chain, 64 connections, perf record -e cpu-clock)"
        perf_secs=$((seconds > 7 ? 5 : seconds - 2))
        ((perf_secs < 1)) && perf_secs=1
        run_wrk chain 64 "$seconds" >/dev/null &
        prof_wrk=$!
        sleep 1
        perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$kp_pid" \
            -o "$work/k_proxy.perf" -- sleep "$perf_secs" >/dev/null 2>&1 || true
        wait "$prof_wrk" || true
        {
            echo "# perf record -e cpu-clock -F 499 --call-graph dwarf -p K_PROXY for ${perf_secs} s,"
            echo "# during wrk -t2 -c64 against the chain"
            echo
            echo "## where k_proxy's CPU time goes, by object"
            perf report -i "$work/k_proxy.perf" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%'
            echo
            echo "## self time, top symbols"
            perf report -i "$work/k_proxy.perf" --no-children --sort dso,symbol --stdio -g none \
                --percent-limit 0.7 2>/dev/null | grep '%' | sed -e 's/ *- *- *$//' -e 's/ *$//'
            echo
            echo "## inclusive time (self + callees), selected"
            perf report -i "$work/k_proxy.perf" --children --sort symbol --stdio -g none 2>/dev/null |
                grep -E '\] (__GI___writev|__libc_recv|__GI___libc_write|k_proxy::app::App::process|k_proxy::app::App::handle|chromecard_session::store::SessionStore::validate|k_proxy::upstream::rewrite_request_headers|k_proxy::upstream::Upstream::forward|hyper_util::client::legacy::client::Client<C,B>::send_request|<tracing_subscriber::fmt::Subscriber.*::event|__GI___libc_malloc|__GI___libc_free|_int_malloc|_int_free|rustls::conn::ConnectionCommon<T>::read_tls|<rustls::crypto::ring::tls13::Tls13Message(En|De)crypter|epoll_wait|syscall)' |
                sed 's/ *$//' | awk '!seen[$0]++'
        } >"$profile_file"
        profile_summary="$(sed -n '/by object/,/^$/p' "$profile_file" | grep '%' | awk '{printf "%s%s %s", (NR>1?", ":""), $1, $2}')"
    else
        profile_summary="not taken: perf cannot record here"
    fi
fi

# ---------------------------------------------------------------- validation scaling
say "validation scaling, 1 and 2 threads (validate_scaling)"
scaling_out="$("$scaling_bin" --sessions 100000 --seconds 2 --threads 1,2)"

load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- instructions per request
if ((instructions)); then
    say "instructions per request under callgrind ($instr_requests requests per target)"
    scripts/bench/instructions.sh --requests "$instr_requests" --out "$instr_file" >/dev/null
    instr_table="$(cat "$instr_file")"
fi

# ---------------------------------------------------------------- the report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
# round_ratios A B CONNS: the requests/s of target A over B's in each round, lowest to
# highest. Rounds interleave the targets, so round r of A met the same disturbances as
# round r of B; the spread shows how far one run's ratio can move.
round_ratios() {
    paste -d' ' <(sed '/^$/d' <<<"${samples[$1/$3]}" | cut -d' ' -f1) \
        <(sed '/^$/d' <<<"${samples[$2/$3]}" | cut -d' ' -f1) |
        awk '$2 > 0 { r = $1 / $2; if (!n++ || r < lo) lo = r; if (n == 1 || r > hi) hi = r }
             END { if (n) printf "%.2f-%.2f", lo, hi; else print "-" }'
}
cpu_model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
mem_total="$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
os_name="$(sed -n 's/^PRETTY_NAME="\(.*\)"/\1/p' /etc/os-release 2>/dev/null)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then commit="$commit + uncommitted changes"; fi
redact() { sed -e "s#$work#\$WORK#g" -e "s#$repo/##g" -e "s#$session_token#SESSION_TOKEN#g"; }

report="$work/report.md"
{
    echo "Run of \`scripts/bench.sh --seconds $seconds --rounds $rounds\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit."
    echo
    echo "Machine: $cpu_model, $(nproc) CPUs, $mem_total, $os_name, Linux $(uname -r);"
    echo "$(rustc --version 2>/dev/null), $("$nginx_bin" -v 2>&1 | sed 's/.*: //'), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $(openssl version | awk '{print $1, $2}')."
    echo "Load average (1, 5, 15 min) before: $load_before; after: $load_after. wrk runs on the"
    echo "same $(nproc) CPUs as the servers, with 2 threads (1 at 1 connection); nginx runs"
    echo "\`worker_processes auto\` ($((${#ng_workers[@]})) workers), k_proxy its connection worker threads"
    echo "(one per CPU unless --proxy-args says otherwise; extra k_proxy flags here: ${proxy_extra[*]:-none})."
    echo
    echo "### GET /resource/counter, $rounds rounds of $seconds s per point (the median round; its range)"
    echo
    echo "| target | connections | requests/s | range of $rounds rounds | p50 ms | p99 ms | server CPU s per 10k requests | errors |"
    echo "|---|---|---|---|---|---|---|---|"
    for conns in $conns_list; do
        for target in "${targets[@]}"; do
            key="$target/$conns"
            printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$target" "$conns" "${rps[$key]}" \
                "${spread[$key]}" "${p50[$key]}" "${p99[$key]}" "${cpu[$key]}" "${errs[$key]}"
        done
    done
    echo
    echo "| connections | chain/nginx requests/s | the same, round by round | chain/direct requests/s | the same, round by round | chain p99 / nginx p99 | chain CPU / nginx CPU per request |"
    echo "|---|---|---|---|---|---|---|"
    for conns in $conns_list; do
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$conns" \
            "$(ratio "${rps[chain/$conns]}" "${rps[nginx/$conns]}")" \
            "$(round_ratios chain nginx "$conns")" \
            "$(ratio "${rps[chain/$conns]}" "${rps[direct/$conns]}")" \
            "$(round_ratios chain direct "$conns")" \
            "$(ratio "${p99[chain/$conns]}" "${p99[nginx/$conns]}")" \
            "$(ratio "${cpu[chain/$conns]}" "${cpu[nginx/$conns]}")"
    done
    echo
    echo "Round by round: the two targets' requests/s in the same round (the rounds interleave"
    echo "the targets), lowest ratio to highest; the column before divides the median rounds."
    echo
    if [[ -n "${p50[direct/1]:-}" ]]; then
        added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
        echo "Added latency at 1 connection (p50 minus direct's p50): chain $(added "${p50[chain/1]}" "${p50[direct/1]}") ms,"
        echo "nginx $(added "${p50[nginx/1]}" "${p50[direct/1]}") ms."
        echo
    fi
    echo "Without the proxies' per-request access log line (k_proxy \`RUST_LOG=info,chromecard::access=off\`,"
    echo "audit lines kept; nginx \`access_log off\`; k_server logs as before), 64 connections:"
    echo
    echo "| target | requests/s | range of $rounds rounds | p50 ms | p99 ms | server CPU s per 10k requests | errors | chain/nginx requests/s | chain/direct requests/s |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for target in chain-nolog nginx-nolog; do
        key="$target/64"
        [[ -n "${rps[$key]:-}" ]] || continue
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$target" "${rps[$key]}" "${spread[$key]}" "${p50[$key]}" \
            "${p99[$key]}" "${cpu[$key]}" "${errs[$key]}" \
            "$([[ $target == chain-nolog ]] && ratio "${rps[chain-nolog/64]}" "${rps[nginx-nolog/64]}" || echo -)" \
            "$([[ $target == chain-nolog ]] && ratio "${rps[chain-nolog/64]}" "${rps[direct/64]}" || echo -)"
    done
    echo
    echo "Server CPU is utime+stime from /proc/PID/stat over the run: k_server alone (direct);"
    echo "k_proxy + k_server (chain); nginx master + workers + k_server (nginx). errors: non-2xx"
    echo "answers plus socket errors (connect, read, write, timeout) as wrk counts them."
    echo
    if [[ -n "$instr_table" ]]; then
        echo "### Instructions per request (callgrind; steady whatever the machine's load)"
        echo
        echo "$instr_table"
        echo
    fi
    echo "### k_proxy alone"
    echo
    echo "| measure | value |"
    echo "|---|---|"
    echo "| start-up, spawn to first 200 from /healthz (median of 5) | ${startup_median} ms (all: ${startup_sorted% }) |"
    echo "| login latency, soft authenticator, 1 connection, 5 s (p50 / p99) | ${login_p50} ms / ${login_p99} ms (${login_rps} logins/s) |"
    echo "| resident memory at rest (after start-up, no session) | $((rss_rest / 1024)) MiB (${rss_rest} KiB) |"
    echo "| resident memory with ${logins_done} live sessions | $((rss_full / 1024)) MiB (${rss_full} KiB), ${per_session} B per session |"
    echo "| logins refused during the fill | ${logins_failed} |"
    echo
    echo "### Validation scaling (the hot path holds no global lock)"
    echo
    echo "\`target/release/examples/validate_scaling --sessions 100000 --seconds 2 --threads 1,2\`:"
    echo
    echo "$scaling_out"
    echo
    echo "### Profile"
    echo
    echo "k_proxy's CPU samples by object: ${profile_summary}. Full report:"
    echo "\`$profile_file\` (git-ignored). Inclusive time of selected functions (share of"
    echo "k_proxy's samples, then self time):"
    echo
    echo '```'
    if [[ -f "$profile_file" ]]; then
        sed -n '/^## inclusive/,$p' "$profile_file" | grep '%' | sed -e 's/ *\[\.\] */  /' | cut -c1-120
    fi
    echo '```'

    echo
    echo "### Exact commands"
    echo
    echo '```'
    echo "tls/make-certs.sh --out \$WORK/certs"
    { shell_join "${ks_cmd[@]}"; echo; } | redact
    { shell_join "${kp_cmd[@]}"; echo; } | redact
    echo "$(shell_join "${ng_cmd[@]}")   # config: scripts/bench/nginx.conf.template" | redact
    for target in "${targets[@]}"; do
        echo "${commands_used[$target]}   # $target; -c is each of: $conns_list" | redact
    done
    # The no-log pair runs at 64 connections only: absent when --conns leaves 64 out.
    if [[ -n "${commands_used[chain-nolog]:-}" ]]; then
        echo "RUST_LOG=info,chromecard::access=off target/release/k_proxy ...   # chain-nolog, same flags" | redact
        echo "${commands_used[chain-nolog]}   # chain-nolog" | redact
        echo "${commands_used[nginx-nolog]}   # nginx-nolog (access_log off)" | redact
    fi
    echo "$(shell_join "${login_cmd[@]}")   # login latency" | redact
    echo "WRK_LOGINS=N WRK_THREADS=2 wrk -t2 -c8 -d300s -s scripts/bench/login.lua https://127.0.0.1:PORT/session/login   # fill to $sessions_target sessions"
    echo '```'
} >"$report"

{
    echo "# bench.sh $stamp"
    echo
    cat "$report"
} >"bench/out/bench-$stamp.md"

begin='<!-- bench.sh:begin (generated by scripts/bench.sh; edit outside the markers) -->'
end='<!-- bench.sh:end -->'
if [[ ! -f "$results" ]] || ! grep -qF "$end" "$results"; then
    {
        [[ -f "$results" ]] && cat "$results" || printf '# Benchmark results\n\n'
        echo "$begin"
        echo "$end"
    } >"$work/results.new"
    mv "$work/results.new" "$results"
fi
python3 - "$results" "$report" "$begin" "$end" <<'PY'
import sys
path, report, begin, end = sys.argv[1:]
text = open(path).read()
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(head + begin + "\n" + open(report).read() + end + tail)
PY
say "results: $results (and bench/out/bench-$stamp.md, raw wrk output in $raw)"
cat "$report"

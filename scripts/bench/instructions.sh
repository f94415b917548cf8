#!/usr/bin/env bash
# instructions.sh — instructions per request, counted by callgrind (issue 20).
#
# Wall-clock figures on a shared 2-CPU machine move by ±15% from run to run; instruction
# counts do not. For each target this runs the servers under
# `valgrind --tool=callgrind` twice, once for 1 request and once for 1 + REQUESTS, all on
# one keep-alive TLS connection (curl --http1.1, GET /resource/counter, no User-Agent or
# Accept: the same protocol and head as wrk's; k_server also offers HTTP/2, which curl
# would otherwise choose for direct), stops them with SIGTERM, and reports
#
#     (instructions of the long run - instructions of the short run) / REQUESTS
#
# per process: start-up, the handshake, the one login and shutdown cancel out. Only
# user-space instructions are counted (callgrind does not see the kernel), summed over the
# process's threads (and, for nginx, over the master and its workers).
#
#   direct  k_server alone, curl presenting k_proxy's client certificate
#   chain   k_proxy and k_server, each under callgrind (a lone request: HTTP/1.1 on the hop)
#   chain-h2  the same with k_proxy's --upstream-http2 always: the hop as it runs under
#           load, where requests are in flight together and share one HTTP/2 connection
#   nginx   nginx (scripts/bench/nginx.conf.template, access log to a file) and k_server
#
# Usage: scripts/bench/instructions.sh [--requests N] [--targets "direct chain chain-h2 nginx"]
#                                      [--out FILE] [--keep DIR]
# Needs target/release/{k_server,k_proxy} (scripts/bench.sh builds them; K_SERVER_BIN and
# K_PROXY_BIN name other builds), valgrind, curl,
# nginx, openssl, python3. Prints a Markdown table on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd -P)"

requests=3000
targets="direct chain chain-h2 nginx"
out=""
keep=""
while (($# > 0)); do
    case "$1" in
        --requests) requests="$2"; shift 2 ;;
        --targets) targets="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --keep) keep="$2"; shift 2 ;;
        -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "instructions.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in valgrind curl openssl python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "instructions.sh: $tool is needed" >&2; exit 1; }
done
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
ks_bin="${K_SERVER_BIN:-$repo/target/release/k_server}"
kp_bin="${K_PROXY_BIN:-$repo/target/release/k_proxy}"
for bin in "$ks_bin" "$kp_bin"; do
    [[ -x "$bin" ]] || { echo "instructions.sh: $bin is missing (cargo build --release --bins)" >&2; exit 1; }
done

# shellcheck source=scripts/bench/common.sh
. "$repo/scripts/bench/common.sh"
# A server under callgrind starts some 50 times slower.
healthz_wait_s=60
say() { echo "-- $*" >&2; }
work="$(mktemp -d /tmp/chromecard-instr.XXXXXX)"
pids=()
cleanup() {
    stop_pids "${pids[@]}"
    if [[ -n "$keep" ]]; then
        mkdir -p "$keep" && cp -r "$work"/. "$keep"/
    fi
    rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# callgrind's total for every output file with this prefix (threads are summed by
# callgrind itself; one file per process).
total_of() {
    cat "$cgdir/${1##*/}".* | awk '/^totals:/ { s += $2 } END { printf "%d", s }'
}
# stop PID: SIGTERM, then wait; callgrind writes its file at exit.
stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

certs="$work/certs"
cgdir="$work/callgrind"
mkdir -p "$cgdir"
chmod 755 "$work"
chmod 1777 "$cgdir"
"$repo/tls/make-certs.sh" --out "$certs" >/dev/null
proxy_token="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
(umask 077 && printf '%s\n' "$proxy_token" >"$work/proxy-token")
ks_curl=(--cacert "$certs/ca.crt" --cert "$certs/k_proxy.crt" --key "$certs/k_proxy.key")

# under_callgrind PREFIX LOG CMD...: starts CMD under callgrind, sets cg_pid.
under_callgrind() {
    local prefix="$1" log="$2"
    shift 2
    # Into a directory anyone may write: nginx's workers run as another user when
    # started by root.
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$cgdir/${prefix##*/}.%p" \
        "$@" 2>"$log" &
    cg_pid=$!
    pids+=("$cg_pid")
}

# requests URL COUNT CURL-ARGS...: COUNT GETs of URL on one keep-alive connection.
send() {
    local url="$1" count="$2"
    shift 2
    local cfg="$work/curl.cfg"
    for _ in $(seq 1 "$count"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done >"$cfg"
    local answers
    answers="$(curl -sS --http1.1 -K "$cfg" -w '%{http_code} %{num_connects}\n' \
        -H 'User-Agent:' -H 'Accept:' "$@")"
    # Every answer a 200, and one connection made in all (the rest reused it).
    if [[ "$(grep -c '^200 ' <<<"$answers")" != "$count" ||
        "$(awk '{ n += $2 } END { print n }' <<<"$answers")" != 1 ]]; then
        echo "instructions.sh: unexpected answers from $url: $(sort <<<"$answers" | uniq -c | tr '\n' ' ')" >&2
        return 1
    fi
}

start_k_server() { # PREFIX PORT
    local dir="$work/ks-data-$RANDOM"
    under_callgrind "$1" "$1.log" "$ks_bin" --host 127.0.0.1 --port "$2" \
        --proxy-token-file "$work/proxy-token" --tls-certfile "$certs/k_server.crt" \
        --tls-keyfile "$certs/k_server.key" --client-ca-file "$certs/ca.crt" --data-dir "$dir"
    ks_pid="$cg_pid"
    wait_healthz "https://127.0.0.1:$2/healthz" "${ks_curl[@]}"
}

# One run of TARGET with COUNT requests; writes callgrind files under $work/TARGET-COUNT.
run_target() {
    local target="$1" count="$2" tag="$work/$1-$2"
    local ks_port kp_port ng_port token
    ks_port="$(free_port)"
    start_k_server "$tag-k_server" "$ks_port"
    case "$target" in
        direct)
            send "https://127.0.0.1:$ks_port/resource/counter" "$count" "${ks_curl[@]}" \
                -H "X-Proxy-Token: $proxy_token" -H "X-Chromecard-User: bench"
            ;;
        chain | chain-h2)
            kp_port="$(free_port)"
            local -a hop=()
            [[ "$target" == chain-h2 ]] && hop=(--upstream-http2 always)
            under_callgrind "$tag-k_proxy" "$tag-k_proxy.log" "$kp_bin" --port "$kp_port" \
                --server-base-url "https://127.0.0.1:$ks_port" --server-ca-file "$certs/ca.crt" \
                --proxy-token-file "$work/proxy-token" --tls-certfile "$certs/k_proxy.crt" \
                --tls-keyfile "$certs/k_proxy.key" --gate soft --session-ttl 3600 \
                --upstream-timeout 120 --upstream-connect-timeout 60 ${hop[@]+"${hop[@]}"}
            kp_pid="$cg_pid"
            wait_healthz "https://127.0.0.1:$kp_port/healthz" --cacert "$certs/ca.crt"
            token="$(curl -sS --cacert "$certs/ca.crt" -X POST "https://127.0.0.1:$kp_port/session/login" \
                -H 'Content-Type: application/json' -d '{"username":"bench"}' |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["session_token"])')"
            send "https://127.0.0.1:$kp_port/resource/counter" "$count" --cacert "$certs/ca.crt" \
                -H "Authorization: Bearer $token"
            stop "$kp_pid"
            ;;
        nginx)
            ng_port="$(free_port)"
            # A token of the same shape as k_proxy's (43 characters of base64url).
            token="$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
            mkdir -p "$tag-nginx"
            sed -e "s#@DIR@#$tag-nginx#g" -e "s#@CERTS@#$certs#g" -e "s#@PORT@#$ng_port#g" \
                -e "s#@KS_PORT@#$ks_port#g" -e "s#@BEARER@#$token#g" \
                -e "s#@PROXY_TOKEN@#$proxy_token#g" -e "s#@ACCESS_LOG@#$tag-nginx/access.log#g" \
                "$repo/scripts/bench/nginx.conf.template" >"$tag-nginx/nginx.conf"
            under_callgrind "$tag-nginx.cg" "$tag-nginx.log" "$nginx_bin" -e "$tag-nginx/error.log" \
                -p "$tag-nginx" -c "$tag-nginx/nginx.conf"
            local ng_pid="$cg_pid"
            wait_healthz "https://127.0.0.1:$ng_port/healthz" --cacert "$certs/ca.crt"
            send "https://127.0.0.1:$ng_port/resource/counter" "$count" --cacert "$certs/ca.crt" \
                -H "Authorization: Bearer $token"
            # nginx's master ends its workers on SIGTERM (then SIGQUIT-like exit).
            stop "$ng_pid"
            ;;
    esac
    stop "$ks_pid"
}

declare -A per
for target in $targets; do
    say "$target: 1 request, then $((requests + 1)), under callgrind"
    run_target "$target" 1
    run_target "$target" $((requests + 1))
    short="$work/$target-1"
    long="$work/$target-$((requests + 1))"
    per[$target/k_server]=$((($(total_of "$long-k_server") - $(total_of "$short-k_server")) / requests))
    case "$target" in
        chain | chain-h2) per[$target/proxy]=$((($(total_of "$long-k_proxy") - $(total_of "$short-k_proxy")) / requests)) ;;
        nginx) per[$target/proxy]=$((($(total_of "$long-nginx.cg") - $(total_of "$short-nginx.cg")) / requests)) ;;
    esac
done

{
    echo "| target | proxy instructions per request | k_server instructions per request | both |"
    echo "|---|---|---|---|"
    for target in $targets; do
        proxy="${per[$target/proxy]:-}"
        ks="${per[$target/k_server]}"
        name="$target"
        [[ "$target" == chain ]] && name="chain (k_proxy), HTTP/1.1 hop"
        [[ "$target" == chain-h2 ]] && name="chain (k_proxy), HTTP/2 hop"
        [[ "$target" == nginx ]] && name="nginx"
        printf '| %s | %s | %s | %s |\n' "$name" "${proxy:--}" "$ks" "$((${proxy:-0} + ks))"
    done
    echo
    echo "callgrind (valgrind $(valgrind --version | sed 's/valgrind-//')), one keep-alive TLS connection,"
    echo "GET /resource/counter: (run of $((requests + 1)) requests - run of 1) / $requests, user-space"
    echo "instructions of each process, all its threads (nginx: master and workers)."
    echo "The load on the machine does not change these counts, but work done per second rather"
    echo "than per request (date headers, pings, timers) does not cancel out: runs of the same"
    echo "binaries have differed by about 500 instructions per request."
} | tee "${out:-/dev/null}"

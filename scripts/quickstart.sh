#!/usr/bin/env bash
# quickstart.sh — build and run the whole chain (k_server + k_proxy, mutual TLS) on this host,
# check it with the runbook's curl flow, then keep it running until Ctrl-C.
set -euo pipefail

readonly PROG="${0##*/}"
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly ROOT

KS_PORT="${KS_PORT:-8780}"
KP_PORT="${KP_PORT:-8771}"
GATE="${GATE:-soft}"
QUICKSTART_EXIT_AFTER_RUNBOOK="${QUICKSTART_EXIT_AFTER_RUNBOOK:-0}"
readonly READY_TIMEOUT_S=20

usage() {
    cat <<USAGE
Usage: ${PROG} [--help]

Runs the chromecard chain on this host, from any directory:
  1. checks the prerequisites (cargo, curl, openssl, python3, pkg-config, libudev)
  2. cargo build --release --bins            (target/release/k_server, target/release/k_proxy)
  3. tls/make-certs.sh                        (CA and certificates in tls/phase2; kept if present)
  4. a random proxy token in STATE/proxy-token (mode 0600; reused if present; passed with
     --proxy-token-file, never on a command line)
  5. k_server on https://127.0.0.1:KS_PORT    (mutual TLS; counter in STATE/k_server; log STATE/k_server.log)
  6. k_proxy  on https://127.0.0.1:KP_PORT    (--gate GATE; log STATE/k_proxy.log)
  7. waits up to ${READY_TIMEOUT_S} s for GET /healthz on both
  8. scripts/runbook.sh --port KP_PORT --cacert tls/phase2/ca.crt
  9. prints curl commands to try by hand and keeps both running until Ctrl-C,
     then stops them (SIGTERM, then waits)

STATE is \${XDG_STATE_HOME:-\$HOME/.local/state}/chromecard/quickstart.

Environment:
  KS_PORT   k_server port (default 8780)
  KP_PORT   k_proxy port (default 8771)
  GATE      k_proxy's authenticator (default soft). "soft" is the SOFTWARE authenticator:
            no USB key, no touch, for development and tests only. GATE=fido2 uses a real
            FIDO2 USB key attached to this machine or qube: with CREDENTIALS_FILE, at the
            assertion level (a touch and a signature from a key enrolled for alice, the
            runbook's user); without it, at the presence level only (any FIDO2 key that
            answers passes, with no touch: the prototype's check).
  CREDENTIALS_FILE
            an enrolment file (k_proxy enroll --credentials-file FILE --username alice),
            passed to k_proxy as --credentials-file; needs GATE=fido2
  QUICKSTART_EXIT_AFTER_RUNBOOK
            1: stop both services after step 8 and exit with the runbook's status
            (for tests and CI); default 0: keep running until Ctrl-C

Exit status: 0 success (or Ctrl-C after a passing runbook); 1 a step failed; 2 usage error.
USAGE
}

say() { printf '%s: %s\n' "${PROG}" "$*"; }
warn() { printf '%s: %s\n' "${PROG}" "$*" >&2; }
die() {
    warn "error: $*"
    exit 1
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    *)
        warn "unknown option: $1 (this script takes no options; see --help for the environment variables)"
        exit 2
        ;;
    esac
done

check_port_value() {
    # check_port_value NAME VALUE
    if ! [[ "$2" =~ ^[0-9]{1,5}$ ]] || ((10#$2 < 1 || 10#$2 > 65535)); then
        warn "$1 must be a port number from 1 to 65535, got '$2'"
        exit 2
    fi
}
check_port_value KS_PORT "${KS_PORT}"
check_port_value KP_PORT "${KP_PORT}"
KS_PORT=$((10#${KS_PORT}))
KP_PORT=$((10#${KP_PORT}))
if [[ "${KS_PORT}" == "${KP_PORT}" ]]; then
    warn "KS_PORT and KP_PORT are both ${KS_PORT}; give them different values"
    exit 2
fi
if ! [[ "${GATE}" =~ ^[a-z0-9_-]+$ ]]; then
    warn "GATE must be a gate name such as soft or fido2, got '${GATE}'"
    exit 2
fi
if [[ "${QUICKSTART_EXIT_AFTER_RUNBOOK}" != 0 && "${QUICKSTART_EXIT_AFTER_RUNBOOK}" != 1 ]]; then
    warn "QUICKSTART_EXIT_AFTER_RUNBOOK must be 0 or 1, got '${QUICKSTART_EXIT_AFTER_RUNBOOK}'"
    exit 2
fi
CREDENTIALS_FILE="${CREDENTIALS_FILE:-}"
if [[ -n "${CREDENTIALS_FILE}" ]]; then
    if [[ "${GATE}" != fido2 ]]; then
        warn "CREDENTIALS_FILE needs GATE=fido2 (the software authenticator keeps its own keys)"
        exit 2
    fi
    if [[ ! -r "${CREDENTIALS_FILE}" ]]; then
        warn "CREDENTIALS_FILE '${CREDENTIALS_FILE}' is not a readable file; enrol first: k_proxy enroll --credentials-file FILE --username alice"
        exit 2
    fi
    # The script changes directory before it starts k_proxy.
    CREDENTIALS_FILE="$(realpath -- "${CREDENTIALS_FILE}")"
fi
readonly KS_PORT KP_PORT GATE QUICKSTART_EXIT_AFTER_RUNBOOK CREDENTIALS_FILE

if [[ -n "${XDG_STATE_HOME:-}" && "${XDG_STATE_HOME}" == /* ]]; then
    STATE="${XDG_STATE_HOME}/chromecard/quickstart"
elif [[ -n "${HOME:-}" ]]; then
    STATE="${HOME}/.local/state/chromecard/quickstart"
else
    warn "neither XDG_STATE_HOME nor HOME is set; set one of them"
    exit 2
fi
readonly STATE
readonly TLS_DIR="${ROOT}/tls/phase2"
readonly TOKEN_FILE="${STATE}/proxy-token"

cd -- "${ROOT}"
umask 077

# ---- 1. prerequisites -------------------------------------------------------------------

say "step 1: checking prerequisites"
missing=()
apt_pkgs=()
if ! command -v cargo >/dev/null 2>&1; then
    if [[ -x "${HOME:-/nonexistent}/.cargo/bin/cargo" ]]; then
        warn "missing: cargo is not on PATH, but ${HOME}/.cargo/bin/cargo exists"
        warn "  fix: source \"\$HOME/.cargo/env\"   (or add ~/.cargo/bin to PATH)"
    else
        warn "missing: cargo (the Rust toolchain)"
        warn "  fix: install it via rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh"
        warn "       then: source \"\$HOME/.cargo/env\""
    fi
    missing+=(cargo)
fi
for tool in curl openssl python3 pkg-config; do
    if ! command -v "${tool}" >/dev/null 2>&1; then
        warn "missing: ${tool}"
        missing+=("${tool}")
        apt_pkgs+=("${tool}")
    fi
done
if command -v pkg-config >/dev/null 2>&1; then
    if ! pkg-config --exists libudev; then
        warn "missing: libudev development files (pkg-config cannot find libudev; the USB key library needs them)"
        missing+=(libudev)
        apt_pkgs+=(libudev-dev)
    fi
else
    warn "missing: libudev cannot be checked without pkg-config"
    missing+=(libudev-dev)
    apt_pkgs+=(libudev-dev)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ ${#apt_pkgs[@]} -gt 0 ]]; then
        warn "fix (Debian/Ubuntu): sudo apt-get install -y libudev-dev pkg-config curl openssl python3"
        warn "  (Fedora: sudo dnf install -y systemd-devel pkgconf-pkg-config curl openssl python3)"
    fi
    die "missing prerequisites: ${missing[*]}"
fi

# A port is free if nothing accepts a connection on 127.0.0.1:PORT.
port_in_use() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 2 bash -c ': <>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}
check_port_free() {
    # check_port_free PORT VAR WHO
    if port_in_use "$1"; then
        die "port $1 on 127.0.0.1 is already in use (another $3, or an earlier quickstart?); stop that process or choose another port, e.g. $2=$(($1 + 100)) ${PROG}"
    fi
}
check_port_free "${KS_PORT}" KS_PORT k_server
check_port_free "${KP_PORT}" KP_PORT k_proxy

# ---- 2. build ---------------------------------------------------------------------------

say "step 2: cargo build --release --bins (the first build takes a few minutes)"
cargo build --release --bins || die "cargo build failed (see the messages above)"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null)" ||
    TARGET_DIR="${ROOT}/target"
readonly K_SERVER="${TARGET_DIR}/release/k_server"
readonly K_PROXY="${TARGET_DIR}/release/k_proxy"
for bin in "${K_SERVER}" "${K_PROXY}"; do
    [[ -x "${bin}" ]] || die "the build finished but ${bin} is missing"
done

# ---- 3. certificates --------------------------------------------------------------------

say "step 3: certificates (tls/make-certs.sh; existing ones are kept)"
bash "${ROOT}/tls/make-certs.sh" || die "tls/make-certs.sh failed (see the messages above)"
for f in ca.crt k_server.crt k_server.key k_proxy.crt k_proxy.key; do
    [[ -r "${TLS_DIR}/${f}" ]] || die "tls/make-certs.sh did not leave ${TLS_DIR}/${f}"
done

# ---- 4. proxy token ---------------------------------------------------------------------

say "step 4: proxy token in ${TOKEN_FILE}"
mkdir -p -- "${STATE}"
chmod 700 -- "${STATE}"
if [[ -s "${TOKEN_FILE}" ]]; then
    chmod 600 -- "${TOKEN_FILE}"
    say "  reusing the existing token"
else
    tmp_token="$(mktemp "${STATE}/.proxy-token.XXXXXX")"
    # 32 random bytes, hex; no trailing newline. Never on a command line.
    printf '%s' "$(openssl rand -hex 32)" >"${tmp_token}"
    [[ "$(wc -c <"${tmp_token}")" -eq 64 ]] || {
        rm -f -- "${tmp_token}"
        die "openssl rand did not produce a token"
    }
    chmod 600 -- "${tmp_token}"
    mv -f -- "${tmp_token}" "${TOKEN_FILE}"
    say "  generated a new token"
fi

# ---- 5.-7. start and wait ---------------------------------------------------------------

KS_PID=
KP_PID=
STOPPING=0

# shellcheck disable=SC2317 # called from the EXIT trap
stop_one() {
    # stop_one NAME PID
    local name="$1" pid="$2" i
    [[ -n "${pid}" ]] || return 0
    if kill -0 "${pid}" 2>/dev/null; then
        kill -TERM "${pid}" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "${pid}" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "${pid}" 2>/dev/null; then
            warn "${name} (pid ${pid}) did not stop within 10 s of SIGTERM; sending SIGKILL"
            kill -KILL "${pid}" 2>/dev/null || true
        fi
    fi
    wait "${pid}" 2>/dev/null || true
}

# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
    local rc=$?
    [[ ${STOPPING} -eq 0 ]] || return 0
    STOPPING=1
    if [[ -n "${KP_PID}${KS_PID}" ]]; then
        say "stopping k_proxy${KP_PID:+ (pid ${KP_PID})} and k_server${KS_PID:+ (pid ${KS_PID})}"
        stop_one k_proxy "${KP_PID}"
        stop_one k_server "${KS_PID}"
        say "stopped; logs are in ${STATE}/k_server.log and ${STATE}/k_proxy.log"
    fi
    exit "${rc}"
}
trap cleanup EXIT
# Before step 9 a signal is a failure (130/143); in step 9 it is the normal way to stop.
SIGNAL_OK=0
runbook_rc=0
# shellcheck disable=SC2317 # the INT/TERM trap
on_signal() {
    if [[ ${SIGNAL_OK} -eq 1 ]]; then
        printf '\n'
        exit $((runbook_rc == 0 ? 0 : 1))
    fi
    exit "$1"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

rotate_log() {
    [[ -f "$1" ]] && mv -f -- "$1" "$1.1"
    : >"$1"
}

show_log_tail() {
    # show_log_tail NAME FILE
    warn "last lines of $2:"
    tail -n 30 -- "$2" 2>/dev/null | sed 's/^/    /' >&2 || true
}

# wait_ready NAME PID LOG URL CURL_ARGS... -> polls URL every 0.2 s for READY_TIMEOUT_S.
wait_ready() {
    local name="$1" pid="$2" log="$3" url="$4" code=
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    shift 4
    while ((SECONDS < deadline)); do
        if ! kill -0 "${pid}" 2>/dev/null; then
            local st=0
            wait "${pid}" 2>/dev/null || st=$?
            warn "${name} exited during start-up (status ${st})"
            show_log_tail "${name}" "${log}"
            die "${name} did not start; see ${log}"
        fi
        code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$@" "${url}" 2>/dev/null)" || true
        if [[ "${code}" == 200 ]]; then
            say "  ${name} is ready at ${url%/healthz}"
            return 0
        fi
        sleep 0.2
    done
    warn "${name} (pid ${pid}) did not answer 200 on ${url} within ${READY_TIMEOUT_S} s (last answer: ${code:-none})"
    show_log_tail "${name}" "${log}"
    die "${name} never became ready; see ${log}"
}

check_port_free "${KS_PORT}" KS_PORT k_server
say "step 5: starting k_server on https://127.0.0.1:${KS_PORT} (mutual TLS), log ${STATE}/k_server.log"
rotate_log "${STATE}/k_server.log"
"${K_SERVER}" \
    --host 127.0.0.1 \
    --port "${KS_PORT}" \
    --proxy-token-file "${TOKEN_FILE}" \
    --tls-certfile "${TLS_DIR}/k_server.crt" \
    --tls-keyfile "${TLS_DIR}/k_server.key" \
    --data-dir "${STATE}/k_server" \
    >>"${STATE}/k_server.log" 2>&1 </dev/null &
KS_PID=$!
wait_ready k_server "${KS_PID}" "${STATE}/k_server.log" "https://127.0.0.1:${KS_PORT}/healthz" \
    --cacert "${TLS_DIR}/ca.crt" --cert "${TLS_DIR}/k_proxy.crt" --key "${TLS_DIR}/k_proxy.key"

check_port_free "${KP_PORT}" KP_PORT k_proxy
say "step 6: starting k_proxy on https://127.0.0.1:${KP_PORT} with --gate ${GATE}, log ${STATE}/k_proxy.log"
if [[ "${GATE}" == soft ]]; then
    warn "********************************************************************"
    warn "** GATE=soft: k_proxy uses the SOFTWARE authenticator: no USB key,"
    warn "** no touch; anyone who can reach k_proxy can log in."
    warn "** For development and tests only. For a real FIDO2 USB key run:"
    warn "**     GATE=fido2 ${0}"
    warn "********************************************************************"
elif [[ -n "${CREDENTIALS_FILE}" ]]; then
    say "  GATE=${GATE}, assertion level: login needs a key enrolled in ${CREDENTIALS_FILE}; touch it when it blinks (each login waits up to 40 s)"
else
    warn "** GATE=${GATE} without CREDENTIALS_FILE: presence level only. Any FIDO2 key that"
    warn "** answers passes, with no touch and for any username. For a touch and a signed"
    warn "** assertion, enrol a key and run: GATE=fido2 CREDENTIALS_FILE=FILE ${0}"
fi
gate_args=(--gate "${GATE}")
if [[ -n "${CREDENTIALS_FILE}" ]]; then
    gate_args+=(--credentials-file "${CREDENTIALS_FILE}")
fi
rotate_log "${STATE}/k_proxy.log"
"${K_PROXY}" \
    --host 127.0.0.1 \
    --port "${KP_PORT}" \
    --session-ttl 300 \
    --server-base-url "https://127.0.0.1:${KS_PORT}" \
    --server-ca-file "${TLS_DIR}/ca.crt" \
    --proxy-token-file "${TOKEN_FILE}" \
    --tls-certfile "${TLS_DIR}/k_proxy.crt" \
    --tls-keyfile "${TLS_DIR}/k_proxy.key" \
    "${gate_args[@]}" \
    >>"${STATE}/k_proxy.log" 2>&1 </dev/null &
KP_PID=$!
say "step 7: waiting for GET /healthz"
wait_ready k_proxy "${KP_PID}" "${STATE}/k_proxy.log" "https://127.0.0.1:${KP_PORT}/healthz" \
    --cacert "${TLS_DIR}/ca.crt"

# ---- 8. runbook -------------------------------------------------------------------------

say "step 8: scripts/runbook.sh --port ${KP_PORT} --cacert tls/phase2/ca.crt"
"${ROOT}/scripts/runbook.sh" --port "${KP_PORT}" --cacert "${TLS_DIR}/ca.crt" || runbook_rc=$?
if [[ ${runbook_rc} -ne 0 ]]; then
    warn "the runbook failed (status ${runbook_rc})"
    show_log_tail k_proxy "${STATE}/k_proxy.log"
    show_log_tail k_server "${STATE}/k_server.log"
fi

if [[ "${QUICKSTART_EXIT_AFTER_RUNBOOK}" == 1 ]]; then
    exit "${runbook_rc}"
fi

# ---- 9. by hand, until Ctrl-C -----------------------------------------------------------

url="https://127.0.0.1:${KP_PORT}"
ca="${TLS_DIR}/ca.crt"
cat <<EOF

The chain is running: k_proxy ${url} (pid ${KP_PID}) -> k_server https://127.0.0.1:${KS_PORT} (pid ${KS_PID}).
Logs: ${STATE}/k_proxy.log and ${STATE}/k_server.log
Try it by hand (in another terminal):

  curl -sS --cacert ${ca} -X POST ${url}/session/login \\
    -H 'Content-Type: application/json' -d '{"username":"alice"}'
  TOKEN='<paste session_token>'
  curl -sS --cacert ${ca} -X POST ${url}/session/status \\
    -H "Authorization: Bearer \$TOKEN"
  curl -sS --cacert ${ca} -X POST ${url}/resource/counter \\
    -H "Authorization: Bearer \$TOKEN"
  curl -sS --cacert ${ca} -X POST ${url}/session/logout \\
    -H "Authorization: Bearer \$TOKEN"
  curl -i  --cacert ${ca} -X POST ${url}/resource/counter \\
    -H "Authorization: Bearer \$TOKEN"        # 401 after logout

Press Ctrl-C to stop both.
EOF
if [[ ${runbook_rc} -ne 0 ]]; then
    warn "NOTE: the runbook FAILED above; both services keep running so you can look (exit status will be 1)"
fi

# Until Ctrl-C (the trap exits) or until one of the services exits on its own.
SIGNAL_OK=1
while kill -0 "${KS_PID}" 2>/dev/null && kill -0 "${KP_PID}" 2>/dev/null; do
    # `wait` on a short sleep returns at once when a signal arrives.
    sleep 0.5 &
    wait $! || true
done
SIGNAL_OK=0
for name in k_server k_proxy; do
    pid="${KS_PID}"
    [[ ${name} == k_proxy ]] && pid="${KP_PID}"
    if ! kill -0 "${pid}" 2>/dev/null; then
        st=0
        wait "${pid}" 2>/dev/null || st=$?
        warn "${name} (pid ${pid}) exited unexpectedly (status ${st})"
        show_log_tail "${name}" "${STATE}/${name}.log"
    fi
done
exit 1

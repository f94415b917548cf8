#!/usr/bin/env bash
# hw-check.sh — walk a person with a real FIDO2 key through the assertion-level gate:
#
#   1. enrol a key for a user            (k_proxy enroll; touch the key)
#   2. log in as that user               (touch the key)           -> 200 and a session token
#   3. log in as a user nobody enrolled  (touch the key)           -> 401 not_enrolled
#   4. log in and do NOT touch the key                             -> 401 touch_timeout within the timeout
#   5. log in again right away           (touch the key)           -> 200: the timed-out operation was cancelled
#
# Everything lives in a private temporary directory; nothing else is touched. k_proxy runs on
# 127.0.0.1 with a dead upstream (only /session/login is exercised).
#
# Exit status: 0 every step passed; 1 a step failed; 2 usage error or missing prerequisite.
set -euo pipefail

readonly PROG="${0##*/}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT

usage() {
    cat <<USAGE
Usage: ${PROG} [--bin PATH] [--device HIDRAW] [--username NAME] [--timeout SECS] [--port PORT] [--keep]

Walks you through enrolment, login, a wrong user and a timeout with a real FIDO2 key
(see the steps at the top of this script). You will be asked to touch the key four times
and to NOT touch it once.

Options:
  --bin PATH        the k_proxy binary (default: target/release/k_proxy, else target/debug/k_proxy)
  --device HIDRAW   the key to use when several are attached (e.g. /dev/hidraw3)
  --username NAME   the user to enrol (default: hwcheck)
  --timeout SECS    --touch-timeout for the logins (default: 15)
  --port PORT       k_proxy's port (default: 18779)
  --keep            keep the temporary directory (enrolment file, logs) for inspection
  -h, --help        show this help

Needs: curl, python3, and read/write access to the key's /dev/hidraw node
(on Qubes: qvm-usb attach the key to this qube, and a udev rule for the user).
USAGE
}

die_usage() {
    printf '%s: %s\n' "${PROG}" "$*" >&2
    printf "Try '%s --help'.\n" "${PROG}" >&2
    exit 2
}

BIN=
DEVICE=
USERNAME=hwcheck
TIMEOUT=15
PORT=18779
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    -h | --help) usage; exit 0 ;;
    --bin) [[ $# -ge 2 ]] || die_usage "--bin needs a value"; BIN="$2"; shift 2 ;;
    --device) [[ $# -ge 2 ]] || die_usage "--device needs a value"; DEVICE="$2"; shift 2 ;;
    --username) [[ $# -ge 2 ]] || die_usage "--username needs a value"; USERNAME="$2"; shift 2 ;;
    --timeout) [[ $# -ge 2 ]] || die_usage "--timeout needs a value"; TIMEOUT="$2"; shift 2 ;;
    --port) [[ $# -ge 2 ]] || die_usage "--port needs a value"; PORT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) die_usage "unknown argument: $1" ;;
    esac
done
[[ "$TIMEOUT" =~ ^[0-9]+$ && "$TIMEOUT" -ge 3 && "$TIMEOUT" -le 120 ]] || die_usage "--timeout must be 3..120"
[[ "$PORT" =~ ^[0-9]+$ ]] || die_usage "--port must be a number"

for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "${PROG}: ${tool} is missing (sudo apt-get install -y ${tool})" >&2; exit 2; }
done
if [[ -z "$BIN" ]]; then
    for c in "$ROOT/target/release/k_proxy" "$ROOT/target/debug/k_proxy"; do
        [[ -x "$c" ]] && { BIN="$c"; break; }
    done
fi
[[ -n "$BIN" && -x "$BIN" ]] || { echo "${PROG}: no k_proxy binary; run 'cargo build --release --bins' or pass --bin" >&2; exit 2; }

WORK="$(mktemp -d -t chromecard-hw-check.XXXXXX)"
chmod 700 "$WORK"
CREDS="$WORK/credentials"
TOKEN_FILE="$WORK/proxy-token"
LOG="$WORK/k_proxy.log"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE"
chmod 600 "$TOKEN_FILE"
KP_PID=

cleanup() {
    if [[ -n "$KP_PID" ]] && kill -0 "$KP_PID" 2>/dev/null; then
        kill "$KP_PID" 2>/dev/null || true
        wait "$KP_PID" 2>/dev/null || true
    fi
    if [[ "$KEEP" == 1 ]]; then
        echo "kept: $WORK (enrolment file, k_proxy.log)"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

GATE_FLAGS=(--gate fido2 --credentials-file "$CREDS" --touch-timeout "$TIMEOUT")
[[ -n "$DEVICE" ]] && GATE_FLAGS+=(--device "$DEVICE")

PASS=0
FAIL=0
step() { printf '\n== %s\n' "$*"; }
ok() { PASS=$((PASS + 1)); printf '   PASS: %s\n' "$*"; }
bad() { FAIL=$((FAIL + 1)); printf '   FAIL: %s\n' "$*"; }
prompt() { printf '\n>>> %s\n' "$*"; }

# login NAME -> sets STATUS, BODY, ELAPSED (seconds, 1 decimal)
login() {
    local start end
    start=$(date +%s%N)
    BODY="$(curl -sS --noproxy '*' --max-time $((TIMEOUT + 15)) -o - -w '\n%{http_code}' \
        -X POST "http://127.0.0.1:${PORT}/session/login" \
        -H 'Content-Type: application/json' -d "{\"username\":\"$1\"}" || true)"
    end=$(date +%s%N)
    STATUS="${BODY##*$'\n'}"
    BODY="${BODY%$'\n'*}"
    ELAPSED=$(python3 -c "print(f'{($end - $start) / 1e9:.1f}')")
}
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], ""))' "$BODY" "$1" 2>/dev/null || true; }

step "1. Enrol a key for '${USERNAME}'"
prompt "TOUCH THE KEY when it blinks (within ${TIMEOUT} s)."
if "$BIN" enroll --username "$USERNAME" "${GATE_FLAGS[@]}" 2>"$WORK/enroll.log"; then
    ok "enrolled (see 'k_proxy enroll list --credentials-file ...')"
else
    bad "enrolment failed:"
    tail -n 3 "$WORK/enroll.log" | sed 's/^/     /'
    echo "Cannot continue without an enrolled key." >&2
    exit 1
fi

step "Starting k_proxy at assertion level on 127.0.0.1:${PORT}"
"$BIN" --host 127.0.0.1 --port "$PORT" --server-base-url "http://127.0.0.1:9" \
    --proxy-token-file "$TOKEN_FILE" "${GATE_FLAGS[@]}" --device-wait 5 >"$LOG" 2>&1 &
KP_PID=$!
for _ in $(seq 1 100); do
    curl -s --noproxy '*' -o /dev/null "http://127.0.0.1:${PORT}/healthz" && break
    kill -0 "$KP_PID" 2>/dev/null || { echo "k_proxy exited:"; tail -n 5 "$LOG"; exit 1; }
    sleep 0.1
done
if grep -q "GATE LEVEL: ASSERTION" "$LOG"; then
    ok "k_proxy says GATE LEVEL: ASSERTION"
else
    bad "k_proxy did not announce the assertion level"
fi

step "2. Log in as '${USERNAME}'"
prompt "TOUCH THE KEY when it blinks (within ${TIMEOUT} s)."
login "$USERNAME"
if [[ "$STATUS" == 200 && -n "$(field session_token)" ]]; then
    ok "200 with a session token after ${ELAPSED} s"
else
    bad "expected 200, got ${STATUS}: ${BODY}"
fi

step "3. Log in as a user nobody enrolled"
prompt "TOUCH THE KEY when it blinks (within ${TIMEOUT} s): an unenrolled name is answered only after a touch."
login "nobody-$$"
if [[ "$STATUS" == 401 && "$(field error)" == not_enrolled ]]; then
    ok "401 not_enrolled after ${ELAPSED} s (after the touch)"
else
    bad "expected 401 not_enrolled, got ${STATUS}: ${BODY}"
fi

step "4. Log in and do NOT touch the key"
prompt "DO NOT TOUCH THE KEY now; wait about ${TIMEOUT} s."
login "$USERNAME"
code="$(field error)"
if [[ "$STATUS" == 401 && ( "$code" == touch_timeout || "$code" == key_refused ) ]]; then
    # The touch bound, plus the CANCEL's round trip and a slow machine's share (a VM
    # under load took 5.1 s with --timeout 3): what this catches is a bound not kept.
    if python3 -c "import sys; sys.exit(0 if $ELAPSED <= $TIMEOUT + 3 else 1)"; then
        ok "401 ${code} after ${ELAPSED} s (limit ${TIMEOUT} s + 3 s)"
    else
        bad "401 ${code}, but only after ${ELAPSED} s (limit ${TIMEOUT} s + 3 s)"
    fi
else
    bad "expected 401 touch_timeout, got ${STATUS}: ${BODY}"
fi
if grep -q "sent CTAPHID_CANCEL" "$LOG"; then
    ok "k_proxy sent CTAPHID_CANCEL to the key"
else
    echo "   note: no CTAPHID_CANCEL in the log (the key may have given up by itself)"
fi

step "5. Log in again right away: the key must not be stuck"
prompt "TOUCH THE KEY when it blinks (within ${TIMEOUT} s)."
login "$USERNAME"
if [[ "$STATUS" == 200 ]]; then
    ok "200 after ${ELAPSED} s"
else
    bad "expected 200, got ${STATUS}: ${BODY}"
fi

printf '\n%d passed, %d failed\n' "$PASS" "$FAIL"
grep -E "gate: (passed|refused)|CLONED|CTAPHID_CANCEL" "$LOG" | sed 's/^/   log: /' || true
[[ "$FAIL" == 0 ]]

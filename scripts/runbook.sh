#!/usr/bin/env bash
# runbook.sh — run the prototype runbook's curl flow against k_proxy, checking each step.
#
#   1. POST /session/login {"username":NAME}  -> 200, session_token, token_type Bearer, username, expires_in > 0
#   2. POST /session/status  (Bearer)         -> 200, active true, username
#   3. POST /resource/counter twice (Bearer)  -> 200 both, integer counter, second = first + 1
#   4. POST /session/logout  (Bearer)         -> 200
#   5. POST /resource/counter (Bearer)        -> 401 with a JSON body that has "error"
#
# Exit status: 0 all steps passed, 1 a step deviated (or k_proxy unreachable), 2 usage error.
set -euo pipefail

readonly PROG="${0##*/}"
readonly MAX_TIME=40 # seconds per request; login may wait for a key touch

usage() {
    cat <<USAGE
Usage: ${PROG} [--host HOST] [--port PORT] [--cacert FILE] [--username NAME]

Runs the runbook's curl flow against k_proxy and checks every answer:
  1. POST /session/login    -> 200 with session_token, token_type "Bearer", username, expires_in > 0
  2. POST /session/status   -> 200, active true, same username
  3. POST /resource/counter -> twice 200, the second counter is the first + 1
  4. POST /session/logout   -> 200
  5. POST /resource/counter -> 401 with a JSON error body (the token is dead)

Options:
  --host HOST       k_proxy host (default: 127.0.0.1)
  --port PORT       k_proxy port (default: 8770; 8771 for the TLS listener, 9771 from k_client)
  --cacert FILE     use https://HOST:PORT and verify k_proxy against this CA
                    (e.g. tls/phase2/ca.crt); without it the URL is http://HOST:PORT
  --username NAME   user to log in as (default: alice)
  -h, --help        show this help

Each request has a ${MAX_TIME} s limit (login may wait for a key touch). The session token is
never printed in full, and it is sent from a private temporary file, not on curl's command line.
Needs curl and python3 (for JSON): sudo apt-get install -y curl python3
Exit status: 0 all 5 steps passed; 1 a step deviated or k_proxy is unreachable; 2 usage error.
USAGE
}

usage_error() {
    printf '%s: %s\n' "${PROG}" "$*" >&2
    printf "Try '%s --help'.\n" "${PROG}" >&2
    exit 2
}

HOST=127.0.0.1
PORT=8770
CACERT=
USERNAME=alice

need_value() {
    # need_value FLAG ARGC
    [[ "$2" -ge 2 ]] || usage_error "option $1 needs a value"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --host)
        need_value "$1" "$#"
        HOST="$2"
        shift 2
        ;;
    --host=*)
        HOST="${1#*=}"
        shift
        ;;
    --port)
        need_value "$1" "$#"
        PORT="$2"
        shift 2
        ;;
    --port=*)
        PORT="${1#*=}"
        shift
        ;;
    --cacert)
        need_value "$1" "$#"
        CACERT="$2"
        shift 2
        ;;
    --cacert=*)
        CACERT="${1#*=}"
        shift
        ;;
    --username)
        need_value "$1" "$#"
        USERNAME="$2"
        shift 2
        ;;
    --username=*)
        USERNAME="${1#*=}"
        shift
        ;;
    *)
        usage_error "unknown option: $1"
        ;;
    esac
done

if ! [[ "${PORT}" =~ ^[0-9]{1,5}$ ]] || ((10#${PORT} < 1 || 10#${PORT} > 65535)); then
    usage_error "--port must be a number from 1 to 65535, got '${PORT}'"
fi
[[ -n "${HOST}" ]] || usage_error "--host must not be empty"
[[ -n "${USERNAME}" ]] || usage_error "--username must not be empty"
if [[ -n "${CACERT}" && ! -r "${CACERT}" ]]; then
    usage_error "--cacert ${CACERT}: no such readable file (make it with tls/make-certs.sh)"
fi

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [[ ${#missing[@]} -gt 0 ]]; then
    printf '%s: missing: %s\n' "${PROG}" "${missing[*]}" >&2
    printf '  install with: sudo apt-get install -y %s\n' "${missing[*]}" >&2
    exit 1
fi

# IPv6 literals need brackets in a URL.
url_host="${HOST}"
if [[ "${url_host}" == *:* && "${url_host}" != \[* ]]; then
    url_host="[${url_host}]"
fi
CURL_TLS=()
if [[ -n "${CACERT}" ]]; then
    BASE_URL="https://${url_host}:${PORT}"
    CURL_TLS=(--cacert "${CACERT}")
else
    BASE_URL="http://${url_host}:${PORT}"
fi
readonly BASE_URL

umask 077
WORK="$(mktemp -d "${TMPDIR:-/tmp}/chromecard-runbook.XXXXXX")"
chmod 700 "${WORK}"
TOKEN=
LOGGED_OUT=0

cleanup() {
    rm -rf -- "${WORK}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- JSON helpers (python3; no jq needed) -------------------------------------------

# field FILE NAME -> prints "TYPE:VALUE" for top-level field NAME of the JSON object in FILE.
# TYPE is str, int, float, bool, null, other, missing, or notjson (the body is not a JSON object).
readonly PY_FIELD='
import json, sys
try:
    with open(sys.argv[1], "rb") as f:
        doc = json.loads(f.read().decode("utf-8"))
except Exception:
    print("notjson:"); sys.exit(0)
if not isinstance(doc, dict):
    print("notjson:"); sys.exit(0)
if sys.argv[2] not in doc:
    print("missing:"); sys.exit(0)
v = doc[sys.argv[2]]
if isinstance(v, bool):
    print("bool:" + ("true" if v else "false"))
elif isinstance(v, int):
    print("int:%d" % v)
elif isinstance(v, float):
    print("float:%r" % v)
elif isinstance(v, str):
    print("str:" + v.replace("\n", "\\n"))
elif v is None:
    print("null:")
else:
    print("other:" + json.dumps(v))
'

field() {
    python3 -c "${PY_FIELD}" "$1" "$2"
}

# show_body FILE -> the body for an error report, any session token masked, at most 2000 chars.
readonly PY_SHOW='
import json, sys
raw = open(sys.argv[1], "rb").read()
text = raw.decode("utf-8", "replace")
def mask(t):
    return t[:6] + "..." if isinstance(t, str) else t
try:
    doc = json.loads(text)
    if isinstance(doc, dict) and "session_token" in doc:
        doc["session_token"] = mask(doc["session_token"])
        text = json.dumps(doc, ensure_ascii=False)
except Exception:
    pass
known = sys.argv[2]
if known:
    text = text.replace(known, mask(known))
text = text.strip()
if len(text) > 2000:
    text = text[:2000] + " [... truncated]"
print(text if text else "(empty body)")
'

show_body() {
    python3 -c "${PY_SHOW}" "$1" "${TOKEN}"
}

json_string() {
    python3 -c 'import json, sys; print(json.dumps({"username": sys.argv[1]}))' "$1"
}

# desc "TYPE:VALUE" (from field) -> a short human description of the value.
desc() {
    case "$1" in
    str:*) printf '"%s"' "${1#str:}" ;;
    missing:) printf 'missing' ;;
    notjson:) printf 'the body is not a JSON object' ;;
    null:) printf 'null' ;;
    *) printf '%s' "${1#*:}" ;;
    esac
}

# ASCII "...", not U+2026: bash's printf writes a \u escape literally where the locale
# is not UTF-8.
short_token() {
    printf '%s...' "${TOKEN:0:6}"
}

# ---- requests ---------------------------------------------------------------------------

STEP=0
CODE=
BODY=

# request PATH [auth] -> POSTs to BASE_URL/PATH, sets CODE and BODY (a file). Exits 1 if curl fails.
request() {
    local path="$1" auth="${2:-}" rc=0
    BODY="${WORK}/body.$((++REQ_NO))"
    local args=(-sS -o "${BODY}" -w '%{http_code}' --max-time "${MAX_TIME}"
        -X POST "${CURL_TLS[@]}")
    if [[ "${path}" == /session/login ]]; then
        args+=(-H 'Content-Type: application/json' --data-binary "@${WORK}/login.json")
    fi
    if [[ "${auth}" == auth ]]; then
        # From a file: the token must not appear on curl's argv (visible in ps).
        args+=(-H "@${WORK}/auth.header")
    fi
    CODE="$(curl "${args[@]}" "${BASE_URL}${path}" 2>"${WORK}/curl.err")" || rc=$?
    if [[ ${rc} -ne 0 ]]; then
        local err
        err="$(tr -d '\r' <"${WORK}/curl.err" | tail -n 3)"
        case ${rc} in
        6 | 7)
            printf 'FAIL step %s: cannot reach k_proxy at %s (%s)\n' "${STEP}" "${BASE_URL}" "${err}" >&2
            printf '  is k_proxy running and listening on %s:%s?\n' "${HOST}" "${PORT}" >&2
            ;;
        28)
            printf 'FAIL step %s: POST %s%s got no answer within %s s (%s)\n' \
                "${STEP}" "${BASE_URL}" "${path}" "${MAX_TIME}" "${err}" >&2
            [[ "${path}" == /session/login ]] && printf '  login waits for a key touch: touch the key when it blinks\n' >&2
            ;;
        35 | 51 | 53 | 54 | 58 | 59 | 60 | 77 | 80 | 83 | 90 | 91)
            printf 'FAIL step %s: TLS with k_proxy at %s failed (curl exit %s: %s)\n' \
                "${STEP}" "${BASE_URL}" "${rc}" "${err}" >&2
            printf '  check --cacert (the chain CA, e.g. tls/phase2/ca.crt) and that k_proxy serves TLS\n' >&2
            ;;
        52 | 56)
            printf 'FAIL step %s: cannot reach k_proxy at %s: the connection closed without an answer (curl exit %s: %s)\n' \
                "${STEP}" "${BASE_URL}" "${rc}" "${err}" >&2
            [[ -z "${CACERT}" ]] && printf '  if k_proxy serves TLS, pass --cacert tls/phase2/ca.crt\n' >&2
            ;;
        *)
            printf 'FAIL step %s: cannot reach k_proxy at %s (curl exit %s: %s)\n' \
                "${STEP}" "${BASE_URL}" "${rc}" "${err}" >&2
            ;;
        esac
        exit 1
    fi
}
REQ_NO=0

# fail EXPECTED -> report the deviation of the current step with the last answer, exit 1.
fail() {
    printf 'FAIL step %s: expected %s\n' "${STEP}" "$1" >&2
    printf '  got HTTP %s, body: %s\n' "${CODE}" "$(show_body "${BODY}")" >&2
    if [[ -z "${CACERT}" ]] && grep -q '"tls_required"' "${BODY}" 2>/dev/null; then
        printf '  k_proxy serves TLS on this port: pass --cacert tls/phase2/ca.crt\n' >&2
    fi
    if [[ -n "${TOKEN}" && ${LOGGED_OUT} -eq 0 ]]; then
        # Best effort: do not leave a live session behind.
        curl -sS -o /dev/null --max-time 10 -X POST "${CURL_TLS[@]}" \
            -H "@${WORK}/auth.header" "${BASE_URL}/session/logout" 2>/dev/null || true
    fi
    exit 1
}

expect_status() {
    # expect_status CODE WHAT
    [[ "${CODE}" == "$1" ]] || fail "HTTP $1 $2"
}

# ---- the flow -----------------------------------------------------------------------------

printf 'runbook: k_proxy at %s, user %s\n' "${BASE_URL}" "${USERNAME}"

# Step 1: login
STEP=1
json_string "${USERNAME}" >"${WORK}/login.json"
request /session/login
want1="HTTP 200 with session_token, token_type \"Bearer\", username \"${USERNAME}\", expires_in > 0"
[[ "${CODE}" == 200 ]] || fail "${want1}"
tok="$(field "${BODY}" session_token)"
[[ "${tok}" == str:?* ]] || fail "${want1} (session_token: $(desc "${tok%%:*}:"))"
TOKEN="${tok#str:}"
printf 'Authorization: Bearer %s\n' "${TOKEN}" >"${WORK}/auth.header"
tt="$(field "${BODY}" token_type)"
[[ "${tt}" == "str:Bearer" ]] || fail "${want1} (token_type: $(desc "${tt}"))"
un="$(field "${BODY}" username)"
[[ "${un}" == "str:${USERNAME}" ]] || fail "${want1} (username: $(desc "${un}"))"
ex="$(field "${BODY}" expires_in)"
case "${ex}" in
int:* | float:*)
    python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "${ex#*:}" ||
        fail "${want1} (expires_in: ${ex#*:})"
    ;;
*) fail "${want1} (expires_in: $(desc "${ex}"))" ;;
esac
printf 'ok  step 1: login as %s -> token %s (Bearer, expires in %s s)\n' "${USERNAME}" "$(short_token)" "${ex#*:}"

# Step 2: status
STEP=2
request /session/status auth
want2="HTTP 200 with active true and username \"${USERNAME}\""
[[ "${CODE}" == 200 ]] || fail "${want2}"
ac="$(field "${BODY}" active)"
[[ "${ac}" == "bool:true" ]] || fail "${want2} (active: $(desc "${ac}"))"
un="$(field "${BODY}" username)"
[[ "${un}" == "str:${USERNAME}" ]] || fail "${want2} (username: $(desc "${un}"))"
ex="$(field "${BODY}" expires_in)"
if [[ "${ex}" == int:* ]]; then
    printf 'ok  step 2: session active for %s, expires in %s s\n' "${USERNAME}" "${ex#int:}"
else
    printf 'ok  step 2: session active for %s\n' "${USERNAME}"
fi

# Step 3: counter twice
STEP=3
want3="HTTP 200 with an integer counter"
request /resource/counter auth
[[ "${CODE}" == 200 ]] || fail "${want3} (first call)"
c1="$(field "${BODY}" counter)"
[[ "${c1}" == int:* ]] || fail "${want3} (first call; counter: $(desc "${c1}"))"
c1="${c1#int:}"
request /resource/counter auth
[[ "${CODE}" == 200 ]] || fail "${want3} (second call)"
c2="$(field "${BODY}" counter)"
[[ "${c2}" == int:* ]] || fail "${want3} (second call; counter: $(desc "${c2}"))"
c2="${c2#int:}"
python3 -c 'import sys; sys.exit(0 if int(sys.argv[2]) == int(sys.argv[1]) + 1 else 1)' "${c1}" "${c2}" ||
    fail "the second counter to be the first + 1 = $((c1 + 1)) (first was ${c1}, second ${c2})"
printf 'ok  step 3: counter %s -> %s\n' "${c1}" "${c2}"

# Step 4: logout
STEP=4
request /session/logout auth
expect_status 200 "(logout)"
LOGGED_OUT=1
printf 'ok  step 4: logged out\n'

# Step 5: the token is dead
STEP=5
want5="HTTP 401 with a JSON body that has an \"error\" field (the token was logged out)"
request /resource/counter auth
[[ "${CODE}" == 401 ]] || fail "${want5}"
er="$(field "${BODY}" error)"
[[ "${er}" == str:?* ]] || fail "${want5} (error: $(desc "${er}"))"
printf 'ok  step 5: counter after logout -> 401 (%s)\n' "${er#str:}"

printf 'runbook: all 5 steps passed\n'

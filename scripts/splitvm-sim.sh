#!/usr/bin/env bash
# splitvm-sim.sh — the Qubes split-VM chain, simulated on one Linux machine (needs root).
#
# Each qube is a network namespace with nothing but its own loopback: k_client, k_proxy,
# k_server, and k_other (a qube the dom0 policy does not name). No namespace has a network
# path to another. The only way across is the simulation's qrexec:
#   - qrexec-client-vm (scripts/sim/qrexec-client-vm) learns the calling qube from the
#     namespace it runs in, asks "dom0" (scripts/sim/qrexec-dom0), which evaluates the SHIPPED
#     policy file qubes/policy.d/30-chromecard.policy (plus a stand-in for dom0's
#     90-default.policy) the way Qubes does, and either prints "Request refused" and exits 126,
#     or does inside the target namespace what a Qubes 4.2 qrexec-agent (4.2.33 and later)
#     does for qubes.ConnectTCP (scripts/sim/qubes.ConnectTCP): one connection to IPv4
#     127.0.0.1:PORT joined to the caller's stdin/stdout, or exit 125 for the caller when
#     nothing listens there;
#   - qvm-connect-tcp (scripts/sim/qvm-connect-tcp): a socat listener whose EXEC is that
#     qrexec-client-vm, as in Qubes;
#   - the shipped socket units (qubes/systemd/chromecard-fwd-*.socket, Accept=true), run by
#     scripts/sim/socket-unit: one `qrexec-client-vm --use-stdin-socket ...` per connection.
# k_server and k_proxy run with the runbook's split-VM commands, verbatim (TLS, mutual TLS),
# plus `--gate soft` for k_proxy; scripts/runbook.sh runs in k_client against 9771.
#
# What is not simulated: Xen, vchan and Qubes' own qrexec daemons (the stand-ins follow
# qrexec-client-vm.c and qrexec/policy/parser.py of QubesOS/qubes-core-qrexec for the parts
# the chain uses, and refuse policy features they do not reproduce); systemd itself (the
# forwarder units' socket settings and ExecStart= are used as shipped, but k_server and
# k_proxy run as root with the runbook's flags, not under their units, whose sandboxing is
# only checked by scripts/sim/verify-units.sh); the udev rule and USB attachment; the
# stand-in qvm-connect-tcp listens on 127.0.0.1 and stays in the foreground.
set -euo pipefail

readonly PROG="${0##*/}"
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd -- "${HERE}/.." && pwd -P)"
readonly HERE REPO
readonly SIM="${REPO}/scripts/sim"
readonly QUBES=(k_client k_proxy k_server k_other)
readonly EXIT_SKIP=77

usage() {
    cat <<USAGE
Usage:
  ${PROG} [run] [--state DIR] [--keep]
      The whole simulation: the runbook from k_client through both kinds of forwarders, the
      refusals, the prototype's policy; then everything is stopped (unless --keep).
  ${PROG} up --state DIR [--policy shipped|prototype] [--forwards qvm|units] [--default-host]
      Make the qubes and start k_server, k_proxy and the forwarders; leave them running.
      --default-host starts k_server and k_proxy without --host (their default bind).
  ${PROG} forwards qvm|units --state DIR     restart the forwarders the other way
  ${PROG} policy shipped|prototype --state DIR   switch dom0's policy directory
  ${PROG} exec QUBE --state DIR -- CMD [ARG...]   run CMD inside QUBE (exit status of CMD)
  ${PROG} bg NAME QUBE --state DIR [--wait-port PORT] -- CMD [ARG...]   start CMD in the background
  ${PROG} stop NAME --state DIR               stop what bg started as NAME
  ${PROG} down --state DIR                    stop everything, delete the namespaces
  ${PROG} probe                               exit 0 if network namespaces can be made here,
                                             ${EXIT_SKIP} (with the reason on stderr) if not

Inside a qube, PATH holds k_server, k_proxy, qrexec-client-vm and qvm-connect-tcp, the
working directory holds tls/phase2/ with that qube's certificates, and dom0's decisions
are in DIR/dom0/journal.log. Binaries: \$CHROMECARD_BIN_DIR, else target/debug.
USAGE
}

die() {
    printf '%s: %s\n' "${PROG}" "$*" >&2
    exit 1
}
say() { printf '%s\n' "$*"; }

# ---- probe -------------------------------------------------------------------------------

probe() {
    local why=()
    [[ "$(id -u)" -eq 0 ]] || why+=("not root (network namespaces need CAP_SYS_ADMIN; run as root, as CI does)")
    for tool in ip socat curl python3 openssl; do
        command -v "${tool}" >/dev/null 2>&1 || why+=("${tool} is not installed")
    done
    if [[ ${#why[@]} -eq 0 ]]; then
        local ns="ccsim-probe-$$" err
        if ! err="$(ip netns add "${ns}" 2>&1)"; then
            why+=("\`ip netns add\` failed: ${err}")
        else
            if ! err="$(ip netns exec "${ns}" true 2>&1)"; then
                why+=("\`ip netns exec\` failed: ${err}")
            fi
            ip netns del "${ns}" 2>/dev/null || true
        fi
    fi
    if [[ ${#why[@]} -gt 0 ]]; then
        printf '%s: network namespaces cannot be used here: %s\n' "${PROG}" "${why[*]}" >&2
        return ${EXIT_SKIP}
    fi
}

# ---- state -------------------------------------------------------------------------------

STATE=
PREFIX=

load_state() {
    [[ -n "${STATE}" ]] || die "--state DIR is required"
    [[ -f "${STATE}/prefix" ]] || die "${STATE}: no simulation there (run: ${PROG} up --state ${STATE})"
    STATE="$(cd -- "${STATE}" && pwd -P)"
    PREFIX="$(cat "${STATE}/prefix")"
}

ns() { printf '%s%s' "${PREFIX}" "$1"; }

qube_env() {
    # qube_env QUBE: the environment of a process in QUBE, as `env` arguments.
    local home="${STATE}/qubes/$1"
    printf '%s\0' -i \
        "PATH=${STATE}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        "HOME=${home}" "XDG_STATE_HOME=${home}/.local/state" "CCSIM_STATE=${STATE}" \
        "RUST_LOG=${RUST_LOG:-info}" "LANG=C.UTF-8" "TMPDIR=${home}/tmp"
}

in_qube() {
    # in_qube QUBE CMD...: run CMD inside QUBE (foreground), in its home directory.
    local q="$1" envargs
    shift
    mapfile -d '' envargs < <(qube_env "${q}")
    (cd "${STATE}/qubes/${q}" && exec ip netns exec "$(ns "${q}")" env "${envargs[@]}" "$@")
}

start_bg() {
    # start_bg NAME QUBE CMD...: start CMD in QUBE as its own process group; pid in pids/NAME.
    local name="$1" q="$2" envargs log="${STATE}/logs/$1.log"
    shift 2
    [[ ! -s "${STATE}/pids/${name}" ]] || die "${name} is already running (${PROG} stop ${name})"
    mapfile -d '' envargs < <(qube_env "${q}")
    printf '[%s] %s: %s\n' "$(date +%T)" "${q}" "$*" >>"${log}"
    (cd "${STATE}/qubes/${q}" && exec setsid ip netns exec "$(ns "${q}")" env "${envargs[@]}" "$@") \
        >>"${log}" 2>&1 </dev/null &
    echo $! >"${STATE}/pids/${name}"
}

# Liveness from /proc, ignoring zombies: a stopped process whose parent is gone waits for
# PID 1 to reap it, and some container init processes are slow to (or never do).
proc_state() {
    # proc_state PID -> "STATE PPID PGRP" of a live process; fails if there is none.
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat="${stat##*) }"
    printf '%s' "${stat%% "${stat#* * * }"}"
}

proc_alive() {
    local st
    st="$(proc_state "$1")" || return 1
    [[ "${st%% *}" != Z ]]
}

group_alive() {
    # group_alive PGID: some non-zombie process is in process group PGID.
    local f pid st fields
    for f in /proc/[0-9]*; do
        pid="${f#/proc/}"
        st="$(proc_state "${pid}")" || continue
        read -r -a fields <<<"${st}"
        if [[ "${fields[2]}" == "$1" && "${fields[0]}" != Z ]]; then
            return 0
        fi
    done
    return 1
}

stop_bg() {
    # stop_bg NAME: stop the process group started as NAME (TERM, then KILL).
    local pidf="${STATE}/pids/$1" pid
    [[ -s "${pidf}" ]] || return 0
    pid="$(cat "${pidf}")"
    kill -TERM -- "-${pid}" 2>/dev/null || true
    for _ in $(seq 1 50); do
        group_alive "${pid}" || break
        sleep 0.1
    done
    kill -KILL -- "-${pid}" 2>/dev/null || true
    rm -f "${pidf}"
}

listening() {
    # listening QUBE PORT: what listens on PORT inside QUBE (ss local addresses).
    ip netns exec "$(ns "$1")" ss -Hltn "sport = :$2" | awk '{print $4}'
}

wait_port() {
    # wait_port NAME QUBE PORT: wait until PORT listens in QUBE while NAME keeps running.
    local name="$1" q="$2" port="$3" pid
    pid="$(cat "${STATE}/pids/${name}")"
    for _ in $(seq 1 200); do
        if [[ -n "$(listening "${q}" "${port}")" ]]; then
            return 0
        fi
        if ! proc_alive "${pid}"; then
            cat "${STATE}/logs/${name}.log" >&2 || true
            die "${name} exited before listening on ${q}:${port}"
        fi
        sleep 0.1
    done
    cat "${STATE}/logs/${name}.log" >&2 || true
    die "${name} did not listen on ${q}:${port} within 20 s"
}

# ---- up / down -----------------------------------------------------------------------------

bin_dir() {
    local d="${CHROMECARD_BIN_DIR:-${REPO}/target/debug}"
    for b in k_server k_proxy; do
        [[ -x "${d}/${b}" ]] || die "${d}/${b} not found: run \`cargo build --bins\` (or set CHROMECARD_BIN_DIR)"
    done
    printf '%s' "$(cd -- "${d}" && pwd -P)"
}

# The runbook's split-VM commands (README "The runbook"), verbatim; `--gate soft` added to
# k_proxy because there is no USB key here.
K_SERVER_CMD=(k_server --host 127.0.0.1 --port 8780 --proxy-token dev-proxy-token
    --tls-certfile tls/phase2/k_server.crt --tls-keyfile tls/phase2/k_server.key)
K_PROXY_CMD=(k_proxy --host 127.0.0.1 --port 8771 --session-ttl 300
    --server-base-url https://127.0.0.1:9780 --server-ca-file tls/phase2/ca.crt
    --proxy-token dev-proxy-token
    --tls-certfile tls/phase2/k_proxy.crt --tls-keyfile tls/phase2/k_proxy.key
    --gate soft)

drop_host() {
    # drop_host CMD...: the command without its `--host 127.0.0.1` (to test the default bind).
    local out=() skip=0 a
    for a in "$@"; do
        if [[ ${skip} -eq 1 ]]; then
            skip=0
            continue
        fi
        if [[ "${a}" == --host ]]; then
            skip=1
            continue
        fi
        out+=("${a}")
    done
    printf '%s\0' "${out[@]}"
}

start_forwards() {
    # start_forwards qvm|units
    case "$1" in
    qvm)
        start_bg fwd-k_proxy k_proxy qvm-connect-tcp 9780:k_server:8780
        start_bg fwd-k_client k_client qvm-connect-tcp 9771:k_proxy:8771
        ;;
    units)
        start_bg fwd-k_proxy k_proxy "${SIM}/socket-unit" "${REPO}/qubes/systemd/chromecard-fwd-k_server.socket"
        start_bg fwd-k_client k_client "${SIM}/socket-unit" "${REPO}/qubes/systemd/chromecard-fwd-k_proxy.socket"
        ;;
    *) die "forwards: qvm or units, not '$1'" ;;
    esac
    wait_port fwd-k_proxy k_proxy 9780
    wait_port fwd-k_client k_client 9771
    echo "$1" >"${STATE}/forwards"
}

stop_forwards() {
    stop_bg fwd-k_proxy
    stop_bg fwd-k_client
}

set_policy() {
    case "$1" in
    shipped | prototype) ln -sfn "policy-$1" "${STATE}/dom0/policy" ;;
    *) die "policy: shipped or prototype, not '$1'" ;;
    esac
}

up() {
    local policy="$1" forwards="$2" default_host="$3" bins q
    [[ -n "${STATE}" ]] || die "--state DIR is required"
    probe || exit $?
    bins="$(bin_dir)"
    mkdir -p "${STATE}"
    STATE="$(cd -- "${STATE}" && pwd -P)"
    [[ ! -e "${STATE}/prefix" ]] || die "${STATE} already holds a simulation (${PROG} down --state ${STATE})"
    PREFIX="ccsim$$-"
    mkdir -p "${STATE}/bin" "${STATE}/pids" "${STATE}/logs" "${STATE}/dom0"
    printf '%s\n' "${PREFIX}" >"${STATE}/prefix"
    (
        IFS=,
        printf '%s\n' "${QUBES[*]}"
    ) >"${STATE}/qube-names"

    # What each qube has on its PATH.
    ln -s "${bins}/k_server" "${bins}/k_proxy" "${SIM}/qrexec-client-vm" "${SIM}/qvm-connect-tcp" "${STATE}/bin/"

    # dom0: the shipped policy file, unchanged, and the prototype's for comparison.
    mkdir -p "${STATE}/dom0/policy-shipped" "${STATE}/dom0/policy-prototype"
    cp "${REPO}/qubes/policy.d/30-chromecard.policy" "${STATE}/dom0/policy-shipped/"
    cp "${SIM}/90-default.policy" "${STATE}/dom0/policy-shipped/"
    cp "${SIM}/prototype.policy" "${STATE}/dom0/policy-prototype/30-prototype.policy"
    cp "${SIM}/90-default.policy" "${STATE}/dom0/policy-prototype/"
    : >"${STATE}/dom0/journal.log"
    set_policy "${policy}"
    "${SIM}/qrexec-dom0" --policy-dir "${STATE}/dom0/policy-shipped" check >/dev/null
    "${SIM}/qrexec-dom0" --policy-dir "${STATE}/dom0/policy-prototype" check >/dev/null

    # Certificates, each qube holding only its own (k_client: just the CA).
    "${REPO}/tls/make-certs.sh" --out "${STATE}/certs" >"${STATE}/logs/make-certs.log" 2>&1 ||
        die "tls/make-certs.sh failed: $(cat "${STATE}/logs/make-certs.log")"
    for q in "${QUBES[@]}"; do
        mkdir -p "${STATE}/qubes/${q}/tls/phase2" "${STATE}/qubes/${q}/tmp"
        cp "${STATE}/certs/ca.crt" "${STATE}/qubes/${q}/tls/phase2/"
    done
    cp "${STATE}/certs"/k_server.{crt,key} "${STATE}/qubes/k_server/tls/phase2/"
    cp "${STATE}/certs"/k_proxy.{crt,key} "${STATE}/qubes/k_proxy/tls/phase2/"

    # The qubes: one network namespace each, loopback only.
    for q in "${QUBES[@]}"; do
        ip netns add "$(ns "${q}")"
        ip -n "$(ns "${q}")" link set lo up
    done

    local kserver=("${K_SERVER_CMD[@]}") kproxy=("${K_PROXY_CMD[@]}")
    if [[ "${default_host}" == 1 ]]; then
        mapfile -d '' kserver < <(drop_host "${K_SERVER_CMD[@]}")
        mapfile -d '' kproxy < <(drop_host "${K_PROXY_CMD[@]}")
    fi
    start_bg k_server k_server "${kserver[@]}"
    wait_port k_server k_server 8780
    start_bg k_proxy k_proxy "${kproxy[@]}"
    wait_port k_proxy k_proxy 8771
    start_forwards "${forwards}"
}

down() {
    local f q pids
    [[ -f "${STATE}/prefix" ]] || return 0
    for f in "${STATE}"/pids/*; do
        [[ -e "${f}" ]] && stop_bg "${f##*/}"
    done
    for q in "${QUBES[@]}"; do
        if ip netns list | awk '{print $1}' | grep -qxF "$(ns "${q}")"; then
            # Anything still running in our own namespaces was started by this simulation.
            pids="$(ip netns pids "$(ns "${q}")" 2>/dev/null || true)"
            # shellcheck disable=SC2086 # one pid per word
            [[ -z "${pids}" ]] || kill -KILL ${pids} 2>/dev/null || true
            ip netns del "$(ns "${q}")" 2>/dev/null || true
        fi
    done
    rm -f "${STATE}/prefix"
}

# ---- checks ------------------------------------------------------------------------------

FAILS=0
ok() { say "ok    $*"; }
bad() {
    say "FAIL  $*"
    FAILS=$((FAILS + 1))
}

dom0_last() { tail -n 1 "${STATE}/dom0/journal.log"; }

# call QUBE TARGET SERVICE: qrexec-client-vm from QUBE with no input; sets RC, ERR, DOM0.
call() {
    local errf="${STATE}/logs/call.err"
    RC=0
    in_qube "$1" qrexec-client-vm "$2" "$3" </dev/null >/dev/null 2>"${errf}" || RC=$?
    ERR="$(cat "${errf}")"
    DOM0="$(dom0_last)"
}

expect_refused() {
    # expect_refused WHAT QUBE TARGET SERVICE DOM0_SUBSTRING
    call "$2" "$3" "$4"
    local want="qrexec: $4: $2 -> ${3:-@default}: denied: "
    if [[ ${RC} -eq 126 && "${ERR}" == *"Request refused"* && "${DOM0}" == "${want}"*"$5"* ]]; then
        ok "$1: refused (exit 126, \"Request refused\"); dom0: ${DOM0#qrexec: }"
    else
        bad "$1: expected exit 126, \"Request refused\" and dom0 \"${want}...$5...\"; got exit ${RC}, stderr \"${ERR}\", dom0 \"${DOM0}\""
    fi
}

expect_allowed() {
    # expect_allowed WHAT QUBE TARGET SERVICE DEST
    call "$2" "$3" "$4"
    local want="qrexec: $4: $2 -> ${3:-@default}: allowed to $5"
    if [[ ${RC} -eq 0 && "${DOM0}" == "${want}" ]]; then
        ok "$1: allowed; dom0: ${DOM0#qrexec: }"
    else
        bad "$1: expected exit 0 and dom0 \"${want}\"; got exit ${RC}, stderr \"${ERR}\", dom0 \"${DOM0}\""
    fi
}

runbook() {
    # runbook LOGNAME: scripts/runbook.sh in k_client through 9771; output to stdout and log.
    local rc=0
    in_qube k_client "${REPO}/scripts/runbook.sh" --port 9771 --cacert tls/phase2/ca.crt \
        >"${STATE}/logs/$1.log" 2>&1 || rc=$?
    sed 's/^/      | /' "${STATE}/logs/$1.log"
    return ${rc}
}

run_all() {
    local keep="$1" t0 q links out
    t0=$(date +%s)
    local own_state=0
    probe || exit $?
    if [[ -z "${STATE}" ]]; then
        STATE="$(mktemp -d "${TMPDIR:-/tmp}/chromecard-splitvm.XXXXXX")"
        own_state=1
    fi
    if [[ "${keep}" == 0 ]]; then
        trap 'down' EXIT
    fi
    say "== splitvm-sim: state in ${STATE}"
    up shipped qvm 0
    say "== qubes (network namespaces ${PREFIX}*): ${QUBES[*]}; dom0 policy: qubes/policy.d/30-chromecard.policy + 90-default.policy"
    say "   k_server: ${K_SERVER_CMD[*]}"
    say "   k_proxy:  ${K_PROXY_CMD[*]}"

    # Isolation: loopback only, and k_server's port is not reachable from k_client directly.
    for q in "${QUBES[@]}"; do
        links="$(ip -n "$(ns "${q}")" -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')"
        [[ "${links}" == "lo " ]] || bad "isolation: ${q} has interfaces: ${links}"
    done
    if in_qube k_client curl -sS --noproxy '*' --max-time 3 -o /dev/null \
        --cacert tls/phase2/ca.crt https://127.0.0.1:8780/healthz 2>/dev/null; then
        bad "isolation: k_client reached 127.0.0.1:8780 directly"
    else
        ok "isolation: every qube has only lo; k_client's 127.0.0.1:8780 is not k_server"
    fi

    # Bound to IPv4 loopback (what qubes.ConnectTCP connects to).
    out="$(listening k_server 8780) / $(listening k_proxy 8771)"
    if [[ "${out}" == "127.0.0.1:8780 / 127.0.0.1:8771" ]]; then
        ok "bind: k_server on 127.0.0.1:8780, k_proxy on 127.0.0.1:8771 (nothing else)"
    else
        bad "bind: expected 127.0.0.1:8780 / 127.0.0.1:8771, got ${out}"
    fi

    say "== pass 1: forwarders started with the runbook's qvm-connect-tcp lines"
    say "   k_proxy:  qvm-connect-tcp 9780:k_server:8780"
    say "   k_client: qvm-connect-tcp 9771:k_proxy:8771"
    say "   k_client: scripts/runbook.sh --port 9771 --cacert tls/phase2/ca.crt"
    if runbook pass1; then ok "pass 1: the runbook passed from k_client through both qvm-connect-tcp forwards"; else bad "pass 1: the runbook failed"; fi

    say "== pass 2: forwarders are the shipped socket units (Accept=true, qrexec-client-vm --use-stdin-socket)"
    stop_forwards
    start_forwards units
    say "   k_proxy:  qubes/systemd/chromecard-fwd-k_server.socket + chromecard-fwd-k_server@.service"
    say "   k_client: qubes/systemd/chromecard-fwd-k_proxy.socket + chromecard-fwd-k_proxy@.service"
    if runbook pass2; then ok "pass 2: the runbook passed from k_client through both socket-unit forwards"; else bad "pass 2: the runbook failed"; fi

    say "== refusals under the shipped policy"
    expect_refused "k_client straight to k_server +8780" k_client k_server qubes.ConnectTCP+8780 "30-chromecard.policy:"
    expect_refused "k_client to @default +8780" k_client "" qubes.ConnectTCP+8780 "30-chromecard.policy:"
    expect_refused "k_other (not in the policy) to k_proxy +8771" k_other k_proxy qubes.ConnectTCP+8771 "30-chromecard.policy:"
    expect_refused "k_other (not in the policy) to k_server +8780" k_other k_server qubes.ConnectTCP+8780 "30-chromecard.policy:"
    expect_refused "k_server back to k_proxy +8771" k_server k_proxy qubes.ConnectTCP+8771 "30-chromecard.policy:"
    expect_refused "k_proxy to k_server on another port (+22)" k_proxy k_server qubes.ConnectTCP+22 "90-default.policy:"
    expect_allowed "k_proxy to k_server +8780 (positive control)" k_proxy k_server qubes.ConnectTCP+8780 k_server
    start_bg try-k_client k_client qvm-connect-tcp 9780:k_server:8780
    wait_port try-k_client k_client 9780
    if in_qube k_client curl -sS --noproxy '*' --max-time 5 -o /dev/null --cacert tls/phase2/ca.crt \
        https://127.0.0.1:9780/healthz 2>/dev/null; then
        bad "k_client: qvm-connect-tcp 9780:k_server:8780 reached k_server"
    elif grep -q "Request refused" "${STATE}/logs/try-k_client.log"; then
        ok "k_client: qvm-connect-tcp 9780:k_server:8780 listens, but each connection is closed: \"Request refused\""
    else
        bad "k_client: the qvm-connect-tcp forwarder did not report \"Request refused\""
    fi
    stop_bg try-k_client

    say "== the prototype's policy (@default destination + target=) with the runbook's named calls"
    set_policy prototype
    stop_forwards
    start_forwards qvm
    expect_refused "prototype policy: k_proxy to k_server +8780, named (qvm-connect-tcp 9780:k_server:8780)" \
        k_proxy k_server qubes.ConnectTCP+8780 "90-default.policy:"
    expect_refused "prototype policy: k_client to k_proxy +8771, named (qvm-connect-tcp 9771:k_proxy:8771)" \
        k_client k_proxy qubes.ConnectTCP+8771 "90-default.policy:"
    expect_allowed "prototype policy: k_proxy to @default +8780 (its rule matches only @default calls)" \
        k_proxy "" qubes.ConnectTCP+8780 k_server
    if runbook prototype; then
        bad "prototype policy: the runbook passed in k_client, but the named calls should be refused"
    elif grep -q "FAIL step 1: .*cannot reach\|FAIL step 1: TLS" "${STATE}/logs/prototype.log"; then
        ok "prototype policy: the runbook in k_client fails at step 1: 9771 accepts, but qrexec refuses the call to k_proxy"
    else
        bad "prototype policy: the runbook in k_client failed, but not at step 1 as expected"
    fi
    # Inside k_proxy (no first hop needed): login works, the counter needs k_server: 502.
    if in_qube k_proxy "${REPO}/scripts/runbook.sh" --port 8771 --cacert tls/phase2/ca.crt \
        >"${STATE}/logs/prototype-k_proxy.log" 2>&1; then
        bad "prototype policy: the runbook inside k_proxy passed, but k_proxy -> k_server should be refused"
    elif grep -q "FAIL step 3: .*" "${STATE}/logs/prototype-k_proxy.log" &&
        grep -q "got HTTP 502.*upstream_unavailable" "${STATE}/logs/prototype-k_proxy.log"; then
        ok "prototype policy: inside k_proxy, login works but the counter answers 502 upstream_unavailable (k_proxy -> k_server refused)"
    else
        sed 's/^/      | /' "${STATE}/logs/prototype-k_proxy.log"
        bad "prototype policy: the runbook inside k_proxy did not fail at step 3 with 502 upstream_unavailable"
    fi

    say "== back to the shipped policy, same qvm-connect-tcp lines"
    set_policy shipped
    stop_forwards
    start_forwards qvm
    if runbook pass3; then ok "shipped policy: the runbook passes again"; else bad "shipped policy: the runbook failed"; fi

    say "== dom0's decisions, in order (the simulation's journal):"
    sed "s|${STATE}/dom0/||; s/^/      /" "${STATE}/dom0/journal.log"
    if [[ ${FAILS} -ne 0 ]]; then
        say "== splitvm-sim: ${FAILS} check(s) FAILED ($(($(date +%s) - t0)) s); logs in ${STATE}/logs"
        return 1
    fi
    say "== splitvm-sim: all checks passed ($(($(date +%s) - t0)) s)"
    if [[ "${keep}" == 0 && "${own_state}" == 1 ]]; then
        trap - EXIT
        down
        rm -rf -- "${STATE}"
    fi
    if [[ "${keep}" == 1 ]]; then
        say "   still running; try: ${PROG} exec k_client --state ${STATE} -- curl --cacert tls/phase2/ca.crt https://127.0.0.1:9771/healthz"
        say "   stop with: ${PROG} down --state ${STATE}"
    fi
}

# ---- command line --------------------------------------------------------------------------

CMD=run
if [[ $# -gt 0 && "$1" != -* ]]; then
    CMD="$1"
    shift
fi
ARG1=
ARG2=
case "${CMD}" in
forwards | policy | exec | stop)
    [[ $# -gt 0 && "$1" != -* ]] || die "${CMD} needs an argument (--help)"
    ARG1="$1"
    shift
    ;;
bg)
    [[ $# -gt 1 ]] || die "bg needs NAME QUBE (--help)"
    ARG1="$1"
    ARG2="$2"
    shift 2
    ;;
esac
POLICY=shipped
FORWARDS=qvm
DEFAULT_HOST=0
KEEP=0
WAIT_PORT=
REST=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --state) STATE="${2:?--state needs a value}"; shift 2 ;;
    --policy) POLICY="${2:?--policy needs a value}"; shift 2 ;;
    --forwards) FORWARDS="${2:?--forwards needs a value}"; shift 2 ;;
    --default-host) DEFAULT_HOST=1; shift ;;
    --keep) KEEP=1; shift ;;
    --wait-port) WAIT_PORT="${2:?--wait-port needs a value}"; shift 2 ;;
    --) shift; REST=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (--help)" ;;
    esac
done

case "${CMD}" in
run) run_all "${KEEP}" ;;
up) up "${POLICY}" "${FORWARDS}" "${DEFAULT_HOST}" ;;
down) load_state; down ;;
probe) probe ;;
forwards) load_state; stop_forwards; start_forwards "${ARG1}" ;;
policy) load_state; set_policy "${ARG1}" ;;
exec)
    load_state
    [[ ${#REST[@]} -gt 0 ]] || die "exec QUBE --state DIR -- CMD..."
    in_qube "${ARG1}" "${REST[@]}"
    ;;
bg)
    load_state
    [[ ${#REST[@]} -gt 0 ]] || die "bg NAME QUBE --state DIR -- CMD..."
    start_bg "${ARG1}" "${ARG2}" "${REST[@]}"
    [[ -z "${WAIT_PORT}" ]] || wait_port "${ARG1}" "${ARG2}" "${WAIT_PORT}"
    ;;
stop) load_state; stop_bg "${ARG1}" ;;
*) die "unknown command '${CMD}' (--help)" ;;
esac

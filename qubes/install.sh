#!/usr/bin/env bash
# install.sh — install chromecard's binaries, systemd units, udev rule and secrets in a qube.
#
#   qubes/install.sh template [--bin-dir DIR] [--root DIR]
#   qubes/install.sh appvm --role ROLE [--bin-dir DIR] [--root DIR] [--no-activate]
#   qubes/install.sh secrets --role ROLE --tls-dir DIR [--proxy-token-file FILE | --new-token] [--root DIR]
#
# See qubes/README.md for the whole procedure (dom0 policy, qvm-service flags, the key).
set -euo pipefail

readonly PROG="${0##*/}"
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
readonly HERE
readonly REPO="${HERE%/qubes}"

usage() {
    cat <<USAGE
Usage:
  ${PROG} template [--bin-dir DIR] [--root DIR]
      In a TEMPLATE (as root): install everything for all three roles. Binaries go to
      /opt/chromecard/bin (an app qube does not see its template's /usr/local), units to
      /etc/systemd/system (enabled), the udev rule to /etc/udev/rules.d, the service user
      via /etc/sysusers.d. Units start only in qubes where dom0 set the service flag:
        qvm-service --enable k_server chromecard-k_server
        qvm-service --enable k_proxy  chromecard-k_proxy
        qvm-service --enable k_client chromecard-k_client

  ${PROG} appvm --role k_server|k_proxy|k_client [--bin-dir DIR] [--root DIR] [--no-activate]
      In an APP QUBE only (as root), nothing in its template: binaries to /usr/local/bin
      (persistent), units, udev rule and sysusers file to /rw/config/chromecard/boot/, and
      /rw/config/rc.local runs /rw/config/chromecard/boot/boot.sh at every start (it puts
      the units in /run/systemd/system and starts them). Activates at once unless
      --no-activate. The same dom0 service flag is needed.

  ${PROG} secrets --role k_server|k_proxy|k_client --tls-dir DIR [--proxy-token-file FILE | --new-token] [--root DIR]
      In each app qube (both ways): copy the role's certificates (from tls/make-certs.sh)
      and the proxy token to /rw/config/chromecard/ (root only, persistent). k_client gets
      only ca.crt, readable by all, for curl --cacert. Without --proxy-token-file the token
      already installed is kept (so that renewing certificates does not split the pair);
      where there is none, or with --new-token, a new random token is written: copy the
      same token to both k_server and k_proxy.

Options:
  --bin-dir DIR   where k_server and k_proxy are (default: ${REPO}/target/release)
  --root DIR      install below DIR instead of / (staging, tests); nothing is started
  --no-activate   appvm: do not run boot.sh now
USAGE
}

die() {
    printf '%s: error: %s\n' "${PROG}" "$*" >&2
    exit 1
}

[[ $# -ge 1 ]] || {
    usage >&2
    exit 2
}
case "$1" in
-h | --help)
    usage
    exit 0
    ;;
template | appvm | secrets) CMD="$1" ;;
*) die "unknown command '$1' (template, appvm or secrets; --help)" ;;
esac
shift

ROLE=
BIN_DIR="${REPO}/target/release"
ROOT=/
ACTIVATE=1
TLS_DIR=
TOKEN_FILE=
NEW_TOKEN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --role) ROLE="${2:?--role needs a value}"; shift 2 ;;
    --bin-dir) BIN_DIR="${2:?--bin-dir needs a value}"; shift 2 ;;
    --root) ROOT="${2:?--root needs a value}"; shift 2 ;;
    --no-activate) ACTIVATE=0; shift ;;
    --tls-dir) TLS_DIR="${2:?--tls-dir needs a value}"; shift 2 ;;
    --proxy-token-file) TOKEN_FILE="${2:?--proxy-token-file needs a value}"; shift 2 ;;
    --new-token) NEW_TOKEN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (--help)" ;;
    esac
done
ROOT="${ROOT%/}"
[[ -z "${ROOT}" || -d "${ROOT}" ]] || die "--root ${ROOT}: no such directory"
LIVE=0
[[ -z "${ROOT}" ]] && LIVE=1
if [[ ${LIVE} -eq 1 && "$(id -u)" -ne 0 ]]; then
    die "run as root (sudo), or give --root DIR to stage the files"
fi
case "${CMD}:${ROLE}" in
template:) ;;
template:*) die "template installs all roles; drop --role" ;;
*:k_server | *:k_proxy | *:k_client) ;;
*:) die "${CMD} needs --role k_server|k_proxy|k_client" ;;
*) die "--role must be k_server, k_proxy or k_client, not '${ROLE}'" ;;
esac

units_for() {
    case "$1" in
    k_server) echo k_server.service ;;
    k_proxy) echo k_proxy.service chromecard-fwd-k_server.socket chromecard-fwd-k_server@.service ;;
    k_client) echo chromecard-fwd-k_proxy.socket chromecard-fwd-k_proxy@.service ;;
    esac
}

binaries_for() {
    case "$1" in
    k_server) echo k_server ;;
    k_proxy) echo k_proxy ;;
    k_client) ;;
    esac
}

install_binaries() {
    # install_binaries DEST ROLE...
    local dest="$1" role bin
    shift
    install -d -m 0755 "${ROOT}${dest}"
    for role in "$@"; do
        for bin in $(binaries_for "${role}"); do
            [[ -x "${BIN_DIR}/${bin}" ]] ||
                die "${BIN_DIR}/${bin} not found: build it (cargo build --release --bins) or pass --bin-dir"
            install -m 0755 "${BIN_DIR}/${bin}" "${ROOT}${dest}/${bin}"
            echo "installed ${dest}/${bin}"
        done
    done
}

install_unit() {
    # install_unit UNIT DESTDIR BINDIR: copy a shipped unit, pointing ExecStart at BINDIR.
    local unit="$1" destdir="$2" bindir="$3"
    install -d -m 0755 "${ROOT}${destdir}"
    sed "s|/usr/local/bin/|${bindir}/|g" "${HERE}/systemd/${unit}" >"${ROOT}${destdir}/${unit}"
    chmod 0644 "${ROOT}${destdir}/${unit}"
    echo "installed ${destdir}/${unit}"
}

# The service user's fixed UID and GID (qubes/sysusers.d/chromecard.conf). Files in
# /rw/chromecard outlive the root file system of an app qube, which is rebuilt from its
# template at every boot: a fixed number keeps them the service's (see qubes/README.md).
SERVICE_USER=chromecard
SERVICE_ID="$(awk '$1 == "u" && $2 == "chromecard" {print $3}' "${HERE}/sysusers.d/chromecard.conf")"
readonly SERVICE_USER SERVICE_ID
[[ "${SERVICE_ID}" =~ ^[0-9]+$ ]] || die "${HERE}/sysusers.d/chromecard.conf: no fixed UID for chromecard"

needs_service_user() {
    # k_client runs no service of its own: no user there.
    [[ "$1" == k_server || "$1" == k_proxy ]]
}

id_owner() {
    # id_owner FILE ID: the name that holds numeric ID (field 3) in FILE (passwd or group
    # format), empty if none. Reads the files under --root, so staging checks the staged root.
    local file="$1" id="$2"
    [[ -r "${file}" ]] || return 0
    awk -F: -v id="${id}" '$3 == id {print $1; exit}' "${file}"
}

check_service_id() {
    # The fixed UID and GID must be free, or already the service user's.
    local who
    who="$(id_owner "${ROOT}/etc/passwd" "${SERVICE_ID}")"
    if [[ -n "${who}" && "${who}" != "${SERVICE_USER}" ]]; then
        die "UID ${SERVICE_ID} (fixed for ${SERVICE_USER} in qubes/sysusers.d/chromecard.conf) belongs to '${who}' here;" \
            "pick a free number in the system range, change it in that file, and install again (qubes/README.md)"
    fi
    who="$(id_owner "${ROOT}/etc/group" "${SERVICE_ID}")"
    if [[ -n "${who}" && "${who}" != "${SERVICE_USER}" ]]; then
        die "GID ${SERVICE_ID} (fixed for ${SERVICE_USER} in qubes/sysusers.d/chromecard.conf) belongs to group '${who}' here;" \
            "pick a free number in the system range, change it in that file, and install again (qubes/README.md)"
    fi
    who="$(awk -F: -v u="${SERVICE_USER}" '$1 == u {print $3; exit}' "${ROOT}/etc/passwd" 2>/dev/null || true)"
    if [[ -n "${who}" && "${who}" != "${SERVICE_ID}" ]]; then
        if [[ "${CMD}" == appvm ]]; then
            # An app qube makes the user again at every boot: the next one gets the fixed UID.
            echo "note: user ${SERVICE_USER} has UID ${who} until this qube restarts, then ${SERVICE_ID}" >&2
        else
            die "user ${SERVICE_USER} exists here with UID ${who}, not the fixed ${SERVICE_ID}:" \
                "remove it (userdel ${SERVICE_USER}) and install again; the units re-own /rw/chromecard at start"
        fi
    fi
}

ensure_config_dir() {
    # /rw/config/chromecard: root only when it is new. An existing one keeps its mode:
    # `secrets --role k_client` makes it 0755 so that `user` can read tls/ca.crt.
    local d="${ROOT}/rw/config/chromecard"
    if [[ ! -d "${d}" ]]; then
        install -d -m 0700 "${d}"
    fi
}

case "${CMD}" in
template)
    check_service_id
    install_binaries /opt/chromecard/bin k_server k_proxy
    for unit in $(units_for k_server) $(units_for k_proxy) $(units_for k_client); do
        install_unit "${unit}" /etc/systemd/system /opt/chromecard/bin
    done
    install -D -m 0644 "${HERE}/udev/70-chromecard-fido.rules" "${ROOT}/etc/udev/rules.d/70-chromecard-fido.rules"
    install -D -m 0644 "${HERE}/sysusers.d/chromecard.conf" "${ROOT}/etc/sysusers.d/chromecard.conf"
    echo "installed /etc/udev/rules.d/70-chromecard-fido.rules /etc/sysusers.d/chromecard.conf"
    if command -v systemd-sysusers >/dev/null 2>&1; then
        if [[ ${LIVE} -eq 1 ]]; then
            systemd-sysusers /etc/sysusers.d/chromecard.conf
        else
            systemd-sysusers --root="${ROOT}" "${ROOT}/etc/sysusers.d/chromecard.conf"
        fi
    fi
    # Enabled in the template; each unit's ConditionPathExists=/var/run/qubes-service/...
    # keeps it off in every qube where dom0 did not set the flag.
    if [[ ${LIVE} -eq 1 ]]; then
        systemctl enable k_server.service k_proxy.service \
            chromecard-fwd-k_server.socket chromecard-fwd-k_proxy.socket
        udevadm control --reload || true
    else
        systemctl --root="${ROOT}" enable k_server.service k_proxy.service \
            chromecard-fwd-k_server.socket chromecard-fwd-k_proxy.socket
    fi
    echo "done: shut the template down, then in dom0 set the service flags (qubes/README.md)"
    ;;

appvm)
    if needs_service_user "${ROLE}"; then
        check_service_id
    fi
    install_binaries /usr/local/bin "${ROLE}"
    BOOT=/rw/config/chromecard/boot
    ensure_config_dir
    for unit in $(units_for "${ROLE}"); do
        install_unit "${unit}" "${BOOT}/units" /usr/local/bin
    done
    if needs_service_user "${ROLE}"; then
        install -D -m 0644 "${HERE}/sysusers.d/chromecard.conf" "${ROOT}${BOOT}/chromecard.conf"
    else
        rm -f "${ROOT}${BOOT}/chromecard.conf"
    fi
    if [[ "${ROLE}" == k_proxy ]]; then
        install -D -m 0644 "${HERE}/udev/70-chromecard-fido.rules" "${ROOT}${BOOT}/70-chromecard-fido.rules"
    fi
    install -m 0755 "${HERE}/appvm-boot.sh" "${ROOT}${BOOT}/boot.sh"
    if needs_service_user "${ROLE}"; then
        echo "installed ${BOOT}/ (units, sysusers file, boot.sh)"
    else
        echo "installed ${BOOT}/ (units, boot.sh; no service user for ${ROLE})"
    fi
    RC="${ROOT}/rw/config/rc.local"
    if [[ ! -e "${RC}" ]]; then
        printf '#!/bin/sh\n' >"${RC}"
    fi
    chmod 0755 "${RC}"
    if ! grep -qxF "${BOOT}/boot.sh" "${RC}"; then
        # Before a top-level `exit` (nothing after it runs), else at the end, after a
        # newline if the file's last line lacks one (it would join that line).
        if grep -qE '^exit([[:space:]]|$)' "${RC}"; then
            awk -v line="${BOOT}/boot.sh" '!done && /^exit([[:space:]]|$)/ { print line; done = 1 } { print }' \
                "${RC}" >"${RC}.chromecard-new"
            cat "${RC}.chromecard-new" >"${RC}"
            rm -f "${RC}.chromecard-new"
        else
            [[ ! -s "${RC}" || -z "$(tail -c 1 "${RC}")" ]] || printf '\n' >>"${RC}"
            printf '%s\n' "${BOOT}/boot.sh" >>"${RC}"
        fi
        echo "added ${BOOT}/boot.sh to /rw/config/rc.local"
    fi
    if [[ ${LIVE} -eq 1 && ${ACTIVATE} -eq 1 ]]; then
        "${BOOT}/boot.sh"
    fi
    ;;

secrets)
    [[ -n "${TLS_DIR}" ]] || die "secrets needs --tls-dir DIR (the output of tls/make-certs.sh)"
    [[ -z "${TOKEN_FILE}" || ${NEW_TOKEN} -eq 0 ]] || die "--proxy-token-file and --new-token exclude each other: give one"
    case "${ROLE}" in
    k_server) files=(ca.crt k_server.crt k_server.key) ;;
    k_proxy) files=(ca.crt k_proxy.crt k_proxy.key) ;;
    k_client) files=(ca.crt) ;;
    esac
    for f in "${files[@]}"; do
        [[ -r "${TLS_DIR}/${f}" ]] || die "${TLS_DIR}/${f}: missing (make it with tls/make-certs.sh)"
    done
    umask 077
    dest="${ROOT}/rw/config/chromecard"
    install -d -m 0700 "${dest}" "${dest}/tls"
    for f in "${files[@]}"; do
        install -m 0600 "${TLS_DIR}/${f}" "${dest}/tls/${f}"
    done
    if [[ "${ROLE}" == k_client ]]; then
        chmod 0755 "${dest}" "${dest}/tls"
        chmod 0644 "${dest}/tls/ca.crt"
        echo "installed /rw/config/chromecard/tls/ca.crt (use: curl --cacert /rw/config/chromecard/tls/ca.crt)"
        exit 0
    fi
    if [[ -n "${TOKEN_FILE}" ]]; then
        tok="$(head -n 1 -- "${TOKEN_FILE}")"
        [[ -n "${tok}" ]] || die "${TOKEN_FILE}: empty"
        printf '%s\n' "${tok}" >"${dest}/proxy-token"
    elif [[ ${NEW_TOKEN} -eq 0 && -s "${dest}/proxy-token" ]]; then
        echo "kept the proxy token already in ${dest#"${ROOT}"}/proxy-token (--new-token replaces it)"
    else
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"${dest}/proxy-token"
        printf '\n' >>"${dest}/proxy-token"
        echo "wrote a NEW random proxy token: copy ${dest#"${ROOT}"}/proxy-token to the other qube" \
            "(k_server and k_proxy must hold the same one)"
    fi
    chmod 0600 "${dest}/proxy-token"
    echo "installed /rw/config/chromecard/proxy-token and tls/{${files[*]}} (root only)"
    ;;
esac

#!/usr/bin/env bash
# verify-units.sh — `systemd-analyze verify` on every shipped unit, as qubes/install.sh
# installs them, both ways (in a template, and in an app qube only).
#
#   scripts/sim/verify-units.sh [--bin-dir DIR]     (default: target/debug)
#
# systemd-analyze verify checks a unit against a file system root: the targets it names must
# exist there and every ExecStart= program must be an executable file there. So each check
# runs on a scratch root holding:
#   - this machine's systemd unit library (sysinit.target, sockets.target, ...), copied;
#   - what qubes/install.sh put there: the REAL k_server and k_proxy binaries, the units,
#     the udev rule, the service user;
#   - /usr/bin/install (coreutils) and /usr/bin/sh, used by the ExecStartPre= steps, copied
#     from this machine;
#   - /usr/bin/qrexec-client-vm: Qubes' tool exists only in a Qubes VM, so the simulation's
#     stand-in (scripts/sim/qrexec-client-vm) is put there. This is the only substitution.
# A check passes only if systemd-analyze exits 0 AND prints nothing (it only warns, and
# exits 0, about unknown keys). Template services (NAME@.service) are verified through an
# instance (NAME@0.service) so that their ExecStart= is checked too.
set -euo pipefail

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd -- "${HERE}/../.." && pwd -P)"
BIN_DIR="${REPO}/target/debug"
if [[ "${1:-}" == --bin-dir ]]; then
    BIN_DIR="${2:?--bin-dir needs a value}"
fi

command -v systemd-analyze >/dev/null 2>&1 || {
    echo "verify-units: systemd-analyze not found: sudo apt-get install -y systemd" >&2
    exit 1
}
UNIT_LIB=
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [[ -e "${d}/sysinit.target" ]]; then
        UNIT_LIB="${d}"
        break
    fi
done
[[ -n "${UNIT_LIB}" ]] || {
    echo "verify-units: no systemd unit library (sysinit.target) on this machine: sudo apt-get install -y systemd" >&2
    exit 1
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chromecard-verify-units.XXXXXX")"
trap 'rm -rf -- "${WORK}"' EXIT

UNITS=(k_server.service k_proxy.service
    chromecard-fwd-k_server.socket chromecard-fwd-k_server@0.service
    chromecard-fwd-k_proxy.socket chromecard-fwd-k_proxy@0.service)

new_root() {
    local root="$1"
    mkdir -p "${root}/usr/lib/systemd" "${root}/usr/bin"
    cp -a "${UNIT_LIB}" "${root}/usr/lib/systemd/system"
    cp "$(command -v install)" "${root}/usr/bin/install"
    cp "$(command -v sh)" "${root}/usr/bin/sh"
    install -m 0755 "${HERE}/qrexec-client-vm" "${root}/usr/bin/qrexec-client-vm"
}

FAILED=0
verify() {
    # verify LABEL ROOT
    local label="$1" root="$2" out rc=0
    out="$(cd "${root}" && systemd-analyze verify --man=no --generators=no --root="${root}" "${UNITS[@]}" 2>&1)" || rc=$?
    if [[ ${rc} -ne 0 || -n "${out}" ]]; then
        printf 'FAIL %s: systemd-analyze verify exited %s\n%s\n' "${label}" "${rc}" "${out}" >&2
        FAILED=1
    else
        printf 'ok   %s: systemd-analyze verify passed on %s\n' "${label}" "${UNITS[*]}"
    fi
}

# 1. In a template: units in /etc/systemd/system, binaries in /opt/chromecard/bin.
T="${WORK}/template"
new_root "${T}"
"${REPO}/qubes/install.sh" template --root "${T}" --bin-dir "${BIN_DIR}" >"${WORK}/template.log" 2>&1 || {
    cat "${WORK}/template.log" >&2
    exit 1
}
verify "template install (qubes/install.sh template)" "${T}"

# 2. In an app qube only: units from /rw/config/chromecard/boot/units, which boot.sh copies to
#    /run/systemd/system; binaries in /usr/local/bin. These are the shipped files byte for byte.
A="${WORK}/appvm"
new_root "${A}"
for role in k_server k_proxy k_client; do
    "${REPO}/qubes/install.sh" appvm --role "${role}" --root "${A}" --bin-dir "${BIN_DIR}" --no-activate \
        >>"${WORK}/appvm.log" 2>&1 || {
        cat "${WORK}/appvm.log" >&2
        exit 1
    }
done
mkdir -p "${A}/run/systemd/system"
cp "${A}/rw/config/chromecard/boot/units/"* "${A}/run/systemd/system/"
for unit in "${REPO}"/qubes/systemd/*; do
    if ! cmp -s "${unit}" "${A}/run/systemd/system/${unit##*/}"; then
        echo "FAIL appvm install: ${unit##*/} differs from qubes/systemd/${unit##*/}" >&2
        FAILED=1
    fi
done
verify "app-qube install (qubes/install.sh appvm, the shipped files as they are)" "${A}"

if [[ ${FAILED} -ne 0 ]]; then
    exit 1
fi
echo "verify-units: all shipped units pass systemd-analyze verify"

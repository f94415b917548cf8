#!/bin/sh
# chromecard boot step for an app qube whose template knows nothing of chromecard
# (qubes/install.sh appvm). Installed as /rw/config/chromecard/boot/boot.sh and run as root
# from /rw/config/rc.local at every start: the root file system of an app qube comes fresh
# from its template, so the service user, the units and the udev rule are put back each time,
# in the runtime locations systemd and udev read (/run/systemd/system, /run/udev/rules.d).
# Units still start only where dom0 set the qube's service flag (qvm-service ... chromecard-*).
#
# The units are started with --no-block, as Qubes' own rc.local advises: rc.local runs
# inside qubes-misc-post.service, and waiting there for other units can stall the boot.
#
# Tests: CHROMECARD_ROOT=DIR works below DIR (systemd-sysusers --root=DIR) and prints the
# systemctl and udevadm commands instead of running them.
set -eu

R="${CHROMECARD_ROOT:-}"
R="${R%/}"
BOOT="${R}/rw/config/chromecard/boot"

run() {
    if [ -n "${R}" ]; then
        echo "would run: $*"
    else
        "$@"
    fi
}

# The service user (k_server and k_proxy qubes only; k_client has none). Its UID is fixed
# in chromecard.conf, so the files in /rw/chromecard stay its own across boots.
if [ -f "${BOOT}/chromecard.conf" ]; then
    if [ -n "${R}" ]; then
        systemd-sysusers --root="${R}" "${BOOT}/chromecard.conf"
    else
        systemd-sysusers "${BOOT}/chromecard.conf"
    fi
    want="$(awk '$1 == "u" && $2 == "chromecard" {print $3}' "${BOOT}/chromecard.conf")"
    have="$(awk -F: '$1 == "chromecard" {print $3}' "${R}/etc/passwd")"
    if [ -n "${want}" ] && [ "${have}" != "${want}" ]; then
        # Another account of the template took the number: the units still work (they
        # re-own their directory under /rw/chromecard at start), but say so.
        echo "chromecard: user chromecard has UID ${have:-none}, not ${want} (taken by another account of the template?)" >&2
    fi
fi

mkdir -p "${R}/run/systemd/system"
cp "${BOOT}"/units/* "${R}/run/systemd/system/"

if [ -f "${BOOT}/70-chromecard-fido.rules" ]; then
    mkdir -p "${R}/run/udev/rules.d"
    cp "${BOOT}/70-chromecard-fido.rules" "${R}/run/udev/rules.d/"
    run udevadm control --reload || true
    # A key attached before this ran gets the new group and mode now.
    run udevadm trigger --action=change --subsystem-match=hidraw || true
fi

run systemctl daemon-reload
for unit in k_server.service chromecard-fwd-k_server.socket k_proxy.service chromecard-fwd-k_proxy.socket; do
    if [ -f "${R}/run/systemd/system/${unit}" ]; then
        run systemctl start --no-block "${unit}" || echo "chromecard: could not start ${unit} (see: journalctl -u ${unit})" >&2
    fi
done

#!/bin/sh
# chromecard boot step for an app qube whose template knows nothing of chromecard
# (qubes/install.sh appvm). Installed as /rw/config/chromecard/boot/boot.sh and run as root
# from /rw/config/rc.local at every start: the root file system of an app qube comes fresh
# from its template, so the service user, the units and the udev rule are put back each time,
# in the runtime locations systemd and udev read (/run/systemd/system, /run/udev/rules.d).
# Units still start only where dom0 set the qube's service flag (qvm-service ... chromecard-*).
set -eu

BOOT=/rw/config/chromecard/boot

systemd-sysusers "${BOOT}/chromecard.conf"

mkdir -p /run/systemd/system
cp "${BOOT}"/units/* /run/systemd/system/

if [ -f "${BOOT}/70-chromecard-fido.rules" ]; then
    mkdir -p /run/udev/rules.d
    cp "${BOOT}/70-chromecard-fido.rules" /run/udev/rules.d/
    udevadm control --reload
    # A key attached before this ran gets the new group and mode now.
    udevadm trigger --action=change --subsystem-match=hidraw
fi

systemctl daemon-reload
for unit in k_server.service chromecard-fwd-k_server.socket k_proxy.service chromecard-fwd-k_proxy.socket; do
    if [ -f "/run/systemd/system/${unit}" ]; then
        systemctl start "${unit}" || echo "chromecard: could not start ${unit} (see: journalctl -u ${unit})" >&2
    fi
done

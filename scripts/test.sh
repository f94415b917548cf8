#!/usr/bin/env bash
# The project's test command: formatting, lints, the binaries the end-to-end tests start,
# then every unit and end-to-end test, then the real key path in a VM (scripts/test-usb.sh);
# under CI=true also the quickstart up to its runbook (CHROMECARD_QUICKSTART=1 elsewhere)
# and the fuzz smoke run (CHROMECARD_FUZZ_SMOKE=1).
# Needs curl, openssl, socat and python3 on PATH, and qemu for the VM
# (.ci/run installs them on Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in cargo curl openssl socat python3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "test.sh: missing: ${missing[*]}" >&2
    echo "  on Debian: sudo apt-get install -y libudev-dev pkg-config curl openssl socat python3" >&2
    exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build --bins (the end-to-end tests start these)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
echo "== the real key path: --gate fido2 against the virtual USB key (scripts/test-usb.sh)"
scripts/test-usb.sh
if [ "${CI:-}" = true ] || [ "${CHROMECARD_QUICKSTART:-}" = 1 ]; then
    # The README's other command, as a user runs it (a release build), stopping after the
    # runbook instead of waiting for Ctrl-C; its state goes to a scratch directory.
    echo "== the quickstart (scripts/quickstart.sh, up to the runbook)"
    quickstart_state="$(mktemp -d)"
    XDG_STATE_HOME="$quickstart_state" QUICKSTART_EXIT_AFTER_RUNBOOK=1 scripts/quickstart.sh
    rm -rf "$quickstart_state"
fi
if [ "${CI:-}" = true ] || [ "${CHROMECARD_FUZZ_SMOKE:-}" = 1 ]; then echo "== fuzz smoke (scripts/fuzz.sh --smoke)"; scripts/fuzz.sh --smoke; fi

#!/usr/bin/env bash
# The real key path's tests: e2e/tests/usbkey.rs (k_proxy --gate fido2 against the virtual
# key) and e2e/tests/vkey_interop.rs (the virtual key against libfido2 and python-fido2).
# They need /dev/uhid. Where it is writable (root, uhid loaded) they run here; otherwise
# in a small VM (scripts/vm-run.sh), all in one boot. scripts/test.sh runs this.
#
#   scripts/test-usb.sh            build the test binaries, then run them (here or in the VM)
#   scripts/test-usb.sh --inside B...  run the given test binaries here (what the VM runs)
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=(usbkey qubes_ctap vkey_interop)
TEST_ARGS=()
for t in "${TESTS[@]}"; do TEST_ARGS+=(--test "$t"); done

run_inside() {
    # pyenv's shims start a shell per python3 call: seconds each under emulation.
    PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -v '/\.pyenv/' | paste -sd: -)"
    export PATH
    local failed=0 bin started
    for bin in "$@"; do
        started=$(date +%s)
        echo "== ${bin##*/} --ignored --test-threads=1"
        if ! "$bin" --ignored --test-threads=1; then failed=1; fi
        echo "test-usb: ${bin##*/} took $(($(date +%s) - started)) s"
    done
    return "$failed"
}

if [[ "${1:-}" == --inside ]]; then
    shift
    run_inside "$@"
    exit
fi

# One line per test binary: cargo's JSON messages name the executables.
mapfile -t bins < <(
    cargo test -p chromecard-e2e --locked --no-run --message-format=json "${TEST_ARGS[@]}" 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])
'
)
if ((${#bins[@]} != ${#TESTS[@]})); then
    echo "test-usb: expected ${#TESTS[@]} test binaries, cargo built ${#bins[@]}: ${bins[*]:-none}" >&2
    cargo test -p chromecard-e2e --locked --no-run "${TEST_ARGS[@]}" >&2
    exit 1
fi
cargo build --workspace --bins --locked -q

if [[ -w /dev/uhid ]]; then
    echo "test-usb: /dev/uhid is writable: running here"
    run_inside "${bins[@]}"
else
    echo "test-usb: no writable /dev/uhid here: running in a VM (scripts/vm-run.sh)"
    started=$(date +%s)
    scripts/vm-run.sh scripts/test-usb.sh --inside "${bins[@]}"
    echo "test-usb: the VM suite took $(($(date +%s) - started)) s in all"
fi

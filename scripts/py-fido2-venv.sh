#!/usr/bin/env bash
# Make (or check) the Python virtual environment holding Yubico's python-fido2, the
# independent CTAP2/CTAPHID client that e2e/tests/vkey_interop.rs drives the virtual key
# with. Idempotent: does nothing when the pinned versions are already installed.
#
#   scripts/py-fido2-venv.sh [DIR]     (default: <workspace>/target/py-fido2)
#
# The tests find its interpreter through $CHROMECARD_PY_FIDO2 (default
# target/py-fido2/bin/python). Needs python3 with the venv module (Debian: python3-venv)
# and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

# The newest 1.x release (2.x changed the API); cryptography pinned for repeatable runs.
FIDO2_VERSION=1.2.0
CRYPTOGRAPHY_VERSION=44.0.3

dir=${1:-target/py-fido2}
# Debian's interpreter by preference (PATH may lead to another, e.g. pyenv's shims).
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
fi

have() {
    [ -x "$dir/bin/python" ] && "$dir/bin/python" - "$FIDO2_VERSION" "$CRYPTOGRAPHY_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("fido2"), version("cryptography")) == tuple(sys.argv[1:3]) else 1)
EOF
}

if have; then
    echo "py-fido2-venv: $dir has fido2 $FIDO2_VERSION"
    exit 0
fi
if [ ! -x "$dir/bin/python" ]; then
    if ! "$python" -m venv "$dir"; then
        echo "py-fido2-venv: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        rm -rf "$dir"
        exit 1
    fi
fi
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
    "fido2==$FIDO2_VERSION" "cryptography==$CRYPTOGRAPHY_VERSION"
if ! have; then
    echo "py-fido2-venv: fido2 $FIDO2_VERSION is not importable from $dir/bin/python" >&2
    exit 1
fi
echo "py-fido2-venv: installed fido2 $FIDO2_VERSION into $dir"

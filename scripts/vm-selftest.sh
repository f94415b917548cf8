#!/usr/bin/env bash
# Checks, inside the VM of scripts/vm-run.sh, what the real-key-path tests rely on:
#   scripts/vm-run.sh scripts/vm-selftest.sh
# /dev/uhid is writable and a FIDO (usage page 0xF1D0) uhid device gets a /dev/hidrawN;
# loopback TCP over 127.0.0.1 and ::1; a unix socket in $TMPDIR; the working directory;
# the writable scratch folder; a cargo-built binary from target/debug runs.
# Exits non-zero on the first failure.
set -euo pipefail

fail() {
    echo "vm-selftest: FAIL: $*" >&2
    exit 1
}
ok() { echo "vm-selftest: ok: $*"; }

[ "${VM_RUN:-}" = 1 ] || fail "run me inside the VM: scripts/vm-run.sh scripts/vm-selftest.sh"
cd "$(dirname "$0")/.."
root=$PWD

# --- /dev/uhid and a FIDO hidraw node ---------------------------------------------------
[ -c /dev/uhid ] || fail "/dev/uhid is not a character device"
[ -w /dev/uhid ] || fail "/dev/uhid is not writable"
ok "/dev/uhid: $(ls -l /dev/uhid)"

python3 - <<'PY' || fail "uhid FIDO device (see above)"
import glob, os, struct, sys, time

UHID_DESTROY, UHID_CREATE2 = 1, 11
BUS_USB = 0x03
# CTAPHID: usage page 0xF1D0, usage 0x01, 64-byte input and output reports.
rd = bytes([
    0x06, 0xD0, 0xF1, 0x09, 0x01, 0xA1, 0x01,
    0x09, 0x20, 0x15, 0x00, 0x26, 0xFF, 0x00, 0x75, 0x08, 0x95, 0x40, 0x81, 0x02,
    0x09, 0x21, 0x15, 0x00, 0x26, 0xFF, 0x00, 0x75, 0x08, 0x95, 0x40, 0x91, 0x02,
    0xC0,
])

def hidraws():
    return set(os.listdir("/sys/class/hidraw")) if os.path.isdir("/sys/class/hidraw") else set()

before = hidraws()
fd = os.open("/dev/uhid", os.O_RDWR)
# struct uhid_event { u32 type; struct uhid_create2_req { u8 name[128], phys[64], uniq[64];
#   u16 rd_size, bus; u32 vendor, product, version, country; u8 rd_data[4096]; } } (packed)
ev = struct.pack("<I128s64s64sHHIIII4096s", UHID_CREATE2, b"vm-selftest FIDO", b"", b"",
                 len(rd), BUS_USB, 0x1209, 0xF1D0, 1, 0, rd)
os.write(fd, ev)
new = set()
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    new = hidraws() - before
    if new and all(os.path.exists("/dev/" + n) for n in new):
        break
    time.sleep(0.05)
if not new:
    sys.exit("vm-selftest: no /sys/class/hidraw entry appeared after UHID_CREATE2")
name = sorted(new)[0]
with open(f"/sys/class/hidraw/{name}/device/report_descriptor", "rb") as f:
    got = f.read()
if not got.startswith(b"\x06\xd0\xf1"):
    sys.exit(f"vm-selftest: {name} has report descriptor {got.hex()}, not the FIDO one")
node = "/dev/" + name
if not os.path.exists(node):
    sys.exit(f"vm-selftest: {node} did not appear")
os.close(os.open(node, os.O_RDWR))
print(f"vm-selftest: ok: UHID_CREATE2 with usage page 0xF1D0 gave {node} "
      f"({os.readlink('/sys/class/hidraw/' + name + '/device').split('/')[-1]})")
os.write(fd, struct.pack("<I", UHID_DESTROY))
os.close(fd)
deadline = time.monotonic() + 5
while os.path.exists(node) and time.monotonic() < deadline:
    time.sleep(0.05)
if os.path.exists(node):
    sys.exit(f"vm-selftest: {node} still there after UHID_DESTROY")
print(f"vm-selftest: ok: UHID_DESTROY removed {node}")
PY

# --- loopback TCP (IPv4 and IPv6) and a unix socket ------------------------------------
www=$(mktemp -d)
echo "hello from the VM" >"$www/index.txt"
for addr in 127.0.0.1 ::1; do
    port=$(python3 -c "import socket; s=socket.socket(socket.AF_INET6 if ':' in '$addr' else socket.AF_INET); s.bind(('$addr', 0)); print(s.getsockname()[1])")
    python3 -m http.server --bind "$addr" --directory "$www" "$port" >/dev/null 2>&1 &
    srv=$!
    url="http://$addr:$port/index.txt"
    [[ "$addr" == *:* ]] && url="http://[$addr]:$port/index.txt"
    body=""
    for _ in $(seq 1 100); do
        body=$(curl -fsS --max-time 5 "$url" 2>/dev/null) && break
        sleep 0.1
    done
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
    [ "$body" = "hello from the VM" ] || fail "curl $url got '$body'"
    ok "loopback TCP: python3 -m http.server on $addr, curl $url"
done
python3 - <<'PY' || fail "unix socket in \$TMPDIR"
import os, socket, tempfile
path = os.path.join(tempfile.mkdtemp(), "s.sock")
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(1)
cli = socket.socket(socket.AF_UNIX); cli.connect(path)
conn, _ = srv.accept(); cli.sendall(b"ping"); assert conn.recv(4) == b"ping"
print(f"vm-selftest: ok: unix socket {path}")
PY

# --- working directory, scratch, a cargo-built binary ----------------------------------
[ -f "$root/scripts/vm-run.sh" ] || fail "the working directory $root is not the checkout"
ok "working directory $root"
[ -n "${VM_SCRATCH:-}" ] && [ -d "$VM_SCRATCH" ] || fail "VM_SCRATCH is not a folder: '${VM_SCRATCH:-}'"
echo "written in the VM" >"$VM_SCRATCH/vm-selftest.txt" || fail "cannot write to $VM_SCRATCH"
[ "$(cat "$VM_SCRATCH/vm-selftest.txt")" = "written in the VM" ] || fail "read back from $VM_SCRATCH"
rm "$VM_SCRATCH/vm-selftest.txt"
ok "scratch folder $VM_SCRATCH is writable"
if touch "$root/.vm-selftest-ro" 2>/dev/null; then
    rm -f "$root/.vm-selftest-ro"
    fail "the host's root is writable from the VM"
fi
ok "the host's root is read-only"
bin="$root/target/debug/k_server"
if [ -x "$bin" ]; then
    "$bin" --help >/dev/null || fail "$bin --help"
    ok "target/debug/k_server --help runs"
else
    echo "vm-selftest: skipped: $bin not built"
fi
echo "vm-selftest: all checks passed"

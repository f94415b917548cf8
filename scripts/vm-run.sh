#!/usr/bin/env bash
# Run one command inside a throw-away QEMU VM that boots Debian's own kernel and sees this
# host's root file system read-only, so that it has /dev/uhid (and the hidraw nodes the
# kernel makes for uhid devices) even where the host has none. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/vm-run.sh [--scratch DIR] [--] CMD [ARGS...]

Boots Debian's kernel (/boot/vmlinuz-*, package linux-image-amd64) under
qemu-system-x86_64 with a small busybox initramfs (built on the fly and cached under
target/vm/, rebuilt when the kernel, the module list or the init script changes) and runs
CMD in it:

  - the host's / is mounted read-only over virtio-9p and CMD runs chrooted into it, so it
    uses the host's own binaries and libraries (target/debug/*, curl, python3, ...);
  - fresh /proc, /sys, /dev (devtmpfs: /dev/uhid, /dev/hidrawN), /dev/pts, /dev/shm, and
    tmpfs on /tmp, /run and /var/tmp (the host's files there are not visible);
  - loopback only: lo is up with 127.0.0.1 and ::1, there is no other network;
  - modules loaded: uhid, hid-generic, hid, the virtio/9p ones, virtio_console;
  - CMD runs in the current working directory (one below /tmp, /run or /var/tmp is shared
    read-only on its own at the same path),
    with stdin from /dev/null; its stdout and stderr come back to this script's stdout
    and stderr; its exit status becomes this script's exit status.

Options:
  --scratch DIR   host folder shared read-write with the VM, mounted at the same path
                  inside it and exported to CMD as $VM_SCRATCH. Default: a fresh folder
                  under target/vm/, deleted afterwards unless VM_KEEP_SCRATCH=1.
                  vm-run keeps its own files in DIR/.vm-run/ (removed afterwards).
  -h, --help      this text.

Environment given to CMD: PATH (the host's, or VM_PATH), HOME=/tmp, TMPDIR=/tmp, USER/LOGNAME=root,
VM_SCRATCH, VM_RUN=1, and the host's values of CI, LANG, LC_*, and every variable whose
name starts with CHROMECARD_, RUST_, RUSTUP_ or CARGO_, plus the names listed in VM_ENV.
TERM is not set. (They are passed in a generated file in DIR/.vm-run/, not on the kernel
command line.)

Variables read by vm-run itself:
  VM_ACCEL=kvm|tcg   accelerator; default kvm when /dev/kvm works, else tcg
  VM_TIMEOUT=SECS    kill the VM after SECS seconds (default 600); exit status 124
  VM_DEBUG=1         show the kernel's and the init's console on stderr (always saved
                     to target/vm/last-console.log)
  VM_ENV="A B"       extra host variables to pass to CMD
  VM_PATH=...        PATH for CMD instead of the host's (e.g. to skip slow shims:
                     every exec is slower under TCG)
  VM_KERNEL=PATH     kernel image (default: the newest /boot/vmlinuz-*)
  VM_MEM=MIB         memory (default 2048); VM_SMP=N  CPUs (default 2)
  VM_APPEND="..."    extra kernel command line parameters
  VM_PVH=0           boot the compressed bzImage instead of its unpacked ELF image
                     (cached as target/vm/vmlinux-*; it saves seconds under TCG)
  VM_KEEP_SCRATCH=1  keep the default scratch folder

It prints one line to stderr with the boot time (qemu start until CMD starts), e.g.
"vm-run: booted in 3.1 s (tcg)".

Exit status: CMD's; 2 for a usage error or a missing package; 124 on timeout; 125 when the
VM stopped without reporting CMD's status (see target/vm/last-console.log).

Needs (Debian): apt-get install qemu-system-x86 linux-image-amd64 busybox-static cpio
(and xz-utils or zstd if the kernel's modules are compressed).
EOF
}

die() {
    echo "vm-run: $*" >&2
    exit 2
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vmdir="$root/target/vm"
scratch=""

while (($#)); do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --scratch)
        (($# >= 2)) || die "--scratch needs a folder"
        scratch=$2
        shift 2
        ;;
    --scratch=*)
        scratch=${1#--scratch=}
        shift
        ;;
    --)
        shift
        break
        ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
    esac
done
(($#)) || die "no command given (see --help)"

timeout_s=${VM_TIMEOUT:-600}
if ! [[ "$timeout_s" =~ ^[0-9]+$ ]] || ((timeout_s == 0)); then die "VM_TIMEOUT must be a positive number of seconds, not '$timeout_s'"; fi
mem=${VM_MEM:-2048}
smp=${VM_SMP:-2}
debug=${VM_DEBUG:-0}

# ---- prerequisites -------------------------------------------------------------------
missing=()
qemu=$(command -v qemu-system-x86_64 || true)
[ -n "$qemu" ] || missing+=(qemu-system-x86)
kernel=${VM_KERNEL:-}
if [ -z "$kernel" ]; then
    kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null | sort -V | tail -n 1)
fi
if [ -z "$kernel" ] || [ ! -r "$kernel" ]; then
    if [ -n "${VM_KERNEL:-}" ]; then die "VM_KERNEL=$VM_KERNEL is not readable"; fi
    missing+=(linux-image-amd64)
fi
busybox=""
for b in /bin/busybox /usr/bin/busybox; do
    # The initramfs has no libraries: the busybox must be the static one.
    if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then
        busybox=$b
        break
    fi
done
[ -n "$busybox" ] || missing+=(busybox-static)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
if ((${#missing[@]})); then
    echo "vm-run: missing packages: ${missing[*]}" >&2
    echo "  on Debian: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 2
fi
kver=${kernel##*/vmlinuz-}
moddir=/lib/modules/$kver
[ -f "$moddir/modules.dep" ] || die "no $moddir/modules.dep for kernel $kernel (install its linux-image package, or set VM_KERNEL)"

# The VM gets fresh /tmp, /run and /var/tmp: a working directory below them (a checkout in
# /tmp, as CI may make) is shared read-only on its own, at the same path.
work_share=()
case "$PWD" in
/tmp | /run | /var/tmp | /proc* | /sys* | /dev*)
    die "the working directory $PWD is hidden inside the VM (it gets fresh /tmp, /run, /var/tmp, /proc, /sys, /dev); cd elsewhere"
    ;;
*$'\n'* | *,*)
    die "the working directory's path must not contain a newline or a comma: $PWD"
    ;;
/tmp/* | /run/* | /var/tmp/*)
    # shellcheck disable=SC2054 # the commas belong to qemu's option syntax
    work_share=(-fsdev "local,id=workfs,path=$PWD,security_model=none,readonly=on,multidevs=remap"
        -device virtio-9p-pci,fsdev=workfs,mount_tag=work)
    ;;
esac

# ---- the initramfs ---------------------------------------------------------------------
# Modules wanted; their dependencies come from modules.dep. Whatever of these the kernel
# has built in is simply absent from modules.dep and skipped.
want_modules=(virtio_pci virtio_console 9pnet_virtio 9p uhid hid-generic)

# The init, run as PID 1 by busybox sh. It reads the run's settings from the scratch
# folder, so nothing run-specific is on the kernel command line or in the cached image.
read -r -d '' init_script <<'INIT' || true
#!/bin/busybox sh
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
say() { echo "vm-init: $*"; }
halt_now() { sync; poweroff -f; sleep 5; }

while read -r m; do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done </etc/vm-modules

o9p=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /host /scratch
if ! mount -t 9p -o "$o9p,cache=loose,ro" host /host; then say "cannot mount the host's root"; halt_now; fi
if ! mount -t 9p -o "$o9p,cache=mmap" scratch /scratch; then say "cannot mount the scratch folder"; halt_now; fi
ctl=/scratch/.vm-run
read -r sp <"$ctl/path"

h=/host
mount -t proc proc $h/proc
mount -t sysfs sysfs $h/sys
mount -t devtmpfs devtmpfs $h/dev
mkdir -p $h/dev/pts $h/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $h/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $h/dev/shm
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $h/tmp
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $h/run
mkdir -p $h/run/lock && chmod 1777 $h/run/lock
[ -d $h/var/tmp ] && mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $h/var/tmp
if [ -f /scratch/.vm-run/work ]; then
    read -r wp </scratch/.vm-run/work
    mkdir -p "$h$wp"
    if ! mount -t 9p -o "$o9p,cache=loose,ro" work "$h$wp"; then say "cannot mount the working directory $wp"; halt_now; fi
fi
mkdir -p "$h$sp" 2>/dev/null
if ! mount --move /scratch "$h$sp"; then say "cannot mount the scratch folder at $sp"; halt_now; fi
ctl=$h$sp/.vm-run
ip link set lo up

# The virtio serial ports for CMD's stdout/stderr and for the start mark, found by name.
out=; err=; mark=; n=0
while :; do
    for d in /sys/class/virtio-ports/*; do
        [ -r "$d/name" ] || continue
        case "$(cat "$d/name")" in
        vmrun.out) out=/dev/${d##*/} ;;
        vmrun.err) err=/dev/${d##*/} ;;
        vmrun.mark) mark=/dev/${d##*/} ;;
        esac
    done
    [ -n "$out" ] && [ -n "$err" ] && [ -n "$mark" ] && [ -c "$out" ] && [ -c "$err" ] && [ -c "$mark" ] && break
    n=$((n + 1))
    if [ $n -gt 500 ]; then say "virtio serial ports missing"; halt_now; fi
    sleep 0.01
done

env -i "VMRUN_MARK=$mark" /bin/chroot $h /bin/sh "$sp/.vm-run/run.sh" </dev/null >"$out" 2>"$err"
echo $? >"$ctl/status.tmp" && mv "$ctl/status.tmp" "$ctl/status"
halt_now
INIT

# Resolve the module list from modules.dep (dependencies first).
declare -A mod_path=() mod_deps=() mod_done=()
while IFS= read -r line; do
    p=${line%%:*}
    b=${p##*/}
    b=${b%%.ko*}
    b=${b//-/_}
    mod_path[$b]=$p
    mod_deps[$p]=${line#*:}
done <"$moddir/modules.dep"
mod_order=()
add_module() { # PATH
    local p=$1 d
    [ -z "${mod_done[$p]:-}" ] || return 0
    mod_done[$p]=1
    for d in ${mod_deps[$p]}; do add_module "$d"; done
    mod_order+=("$p")
}
for m in "${want_modules[@]}"; do
    m=${m//-/_}
    if [ -n "${mod_path[$m]:-}" ]; then
        add_module "${mod_path[$m]}"
    elif ! grep -qE "/${m//_/[-_]}\.ko" "$moddir/modules.builtin" 2>/dev/null; then
        die "kernel $kver has no module $m"
    fi
done

key=$( {
    echo "$kernel $kver"
    stat -c '%s %Y' "$kernel" "$busybox" "$moddir/modules.dep"
    printf '%s\n' "${mod_order[@]}"
    printf '%s\n' "$init_script"
} | sha256sum | cut -c1-16)
mkdir -p "$vmdir"
initrd=$vmdir/initramfs-$kver-$key.cpio
if [ ! -s "$initrd" ]; then
    echo "vm-run: building $initrd" >&2
    stage=$(mktemp -d "$vmdir/initramfs.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"/{bin,dev,proc,sys,etc,host,scratch,lib/modules}
    cp "$busybox" "$stage/bin/busybox"
    for a in $("$busybox" --list); do
        [ "$a" = busybox ] || ln -s busybox "$stage/bin/$a"
    done
    : >"$stage/etc/vm-modules"
    for p in "${mod_order[@]}"; do
        src=$moddir/$p
        b=${p##*/}
        case "$p" in
        *.ko) cp "$src" "$stage/lib/modules/$b" ;;
        *.ko.xz)
            command -v xz >/dev/null 2>&1 || die "compressed modules: apt-get install xz-utils"
            b=${b%.xz}
            xz -dc "$src" >"$stage/lib/modules/$b"
            ;;
        *.ko.zst)
            command -v zstd >/dev/null 2>&1 || die "compressed modules: apt-get install zstd"
            b=${b%.zst}
            zstd -qdc "$src" >"$stage/lib/modules/$b"
            ;;
        *.ko.gz)
            b=${b%.gz}
            gzip -dc "$src" >"$stage/lib/modules/$b"
            ;;
        *) die "unknown module format: $p" ;;
        esac
        echo "$b" >>"$stage/etc/vm-modules"
    done
    printf '%s\n' "$init_script" >"$stage/init"
    chmod 755 "$stage/init"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$initrd.tmp.$$"
    mv "$initrd.tmp.$$" "$initrd"
    rm -rf "$stage"
    trap - EXIT
    # Older images for this kernel are stale now.
    find "$vmdir" -maxdepth 1 -name "initramfs-$kver-*.cpio" ! -name "${initrd##*/}" -delete
fi

# The bzImage decompresses itself, which takes seconds under TCG. A kernel built with
# CONFIG_PVH boots straight from its uncompressed ELF image instead (QEMU's PVH entry), so
# unpack that once and cache it next to the initramfs.
boot_kernel=$kernel
if [ "${VM_PVH:-1}" = 1 ] && grep -qx 'CONFIG_PVH=y' "/boot/config-$kver" 2>/dev/null; then
    kkey=$(stat -c '%s %Y' "$kernel" | sha256sum | cut -c1-16)
    vmlinux=$vmdir/vmlinux-$kver-$kkey
    if [ ! -s "$vmlinux" ]; then
        # Find the payload by its magic: xz, zstd or gzip (what Debian's kernels use).
        for fmt in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08\x00'; do
            tool=${fmt%%:*}
            command -v "$tool" >/dev/null 2>&1 || continue
            # The first match is the payload (a later one may be inside it).
            off=$(LC_ALL=C grep -obUaP "${fmt#*:}" "$kernel" | head -n 1 | cut -d: -f1 || true)
            [ -n "$off" ] || continue
            tail -c +$((off + 1)) "$kernel" | "$tool" -dc >"$vmlinux.tmp.$$" 2>/dev/null || true
            if [ "$(head -c 4 "$vmlinux.tmp.$$" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
                mv "$vmlinux.tmp.$$" "$vmlinux"
                find "$vmdir" -maxdepth 1 -name "vmlinux-$kver-*" ! -name "${vmlinux##*/}" -delete
                break
            fi
            rm -f "$vmlinux.tmp.$$"
        done
    fi
    [ -s "$vmlinux" ] && boot_kernel=$vmlinux
fi

# ---- accelerator -----------------------------------------------------------------------
# /dev/kvm can be there and still not run a guest (nested virtualisation that stops in the
# guest's first steps, or a QEMU that aborts on the host's MSRs). So the probe boots the
# kernel without a root file system: it panics at once, and panic=-1 with -no-reboot ends
# QEMU. The verdict is cached per QEMU binary, host kernel and guest kernel.
kvm_boots() {
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
    local probe verdict
    probe=$vmdir/kvm-probe-$( {
        uname -r
        stat -c '%s %Y' "$qemu" "$boot_kernel"
    } | sha256sum | cut -c1-16)
    if [ ! -f "$probe" ]; then
        verdict=no
        if (timeout 20 "$qemu" -no-user-config -nodefaults -display none -monitor none \
            -machine pc -accel kvm -cpu host -m 256 -no-reboot -serial null \
            -kernel "$boot_kernel" -append "console=ttyS0 panic=-1 loglevel=0" \
            </dev/null >/dev/null 2>&1 || exit 1) 2>/dev/null; then
            verdict=yes
        else
            echo "vm-run: /dev/kvm is there but a KVM guest does not boot on this host; using tcg (verdict cached in $probe)" >&2
        fi
        echo "$verdict" >"$probe"
    fi
    [ "$(cat "$probe")" = yes ]
}
accel=${VM_ACCEL:-}
if [ -z "$accel" ]; then
    accel=tcg
    if kvm_boots; then accel=kvm; fi
fi
case "$accel" in
kvm) cpu=host ;;
tcg) cpu=max ;;
*) die "VM_ACCEL must be kvm or tcg, not '$accel'" ;;
esac

# ---- the run's files -------------------------------------------------------------------
own_scratch=0
if [ -z "$scratch" ]; then
    scratch=$(mktemp -d "$vmdir/scratch.XXXXXX")
    own_scratch=1
else
    mkdir -p "$scratch" || die "cannot create the scratch folder $scratch"
fi
scratch=$(cd "$scratch" && pwd -P)
case "$scratch" in
*$'\n'* | *,*) die "the scratch folder's path must not contain a newline or a comma: $scratch" ;;
esac
ctl=$scratch/.vm-run
rm -rf "$ctl"
mkdir -p "$ctl"
run=$(mktemp -d "$vmdir/run.XXXXXX")

qpid=""
watchdog=""
relays=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$qpid" ]; then kill "$qpid" 2>/dev/null || true; fi
    if [ -n "$watchdog" ]; then kill "$watchdog" 2>/dev/null || true; fi
    if ((${#relays[@]})); then kill "${relays[@]}" 2>/dev/null || true; fi
    rm -rf "$run" "$ctl"
    if ((own_scratch)) && [ "${VM_KEEP_SCRATCH:-0}" != 1 ]; then rm -rf "$scratch"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

q() { # single-quote for sh
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

printf '%s\n' "$scratch" >"$ctl/path"
if ((${#work_share[@]})); then printf '%s\n' "$PWD" >"$ctl/work"; fi
{
    echo "export PATH=$(q "${VM_PATH:-$PATH}")"
    echo "export HOME=/tmp TMPDIR=/tmp USER=root LOGNAME=root VM_RUN=1"
    echo "export VM_SCRATCH=$(q "$scratch")"
    # shellcheck disable=SC2086 # VM_ENV is a list of names
    for name in $(compgen -e) ${VM_ENV:-}; do
        case "$name" in
        CHROMECARD_* | RUST_* | RUSTUP_* | CARGO_* | CI | LANG | LC_*) ;;
        *) [[ " ${VM_ENV:-} " == *" $name "* ]] || continue ;;
        esac
        [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        [ -n "${!name+x}" ] || continue
        echo "export $name=$(q "${!name}")"
    done
} >"$ctl/env"
{
    echo ". $(q "$ctl/env")"
    echo "cd $(q "$PWD") || exit 125"
    # Tell the host that CMD starts now (it prints the boot time).
    # shellcheck disable=SC2016 # expanded in the VM
    echo 'echo started >"$VMRUN_MARK"; unset VMRUN_MARK'
    printf 'exec'
    for a in "$@"; do printf ' %s' "$(q "$a")"; done
    echo
} >"$ctl/run.sh"

# ---- run -------------------------------------------------------------------------------
mkfifo "$run/out" "$run/err" "$run/mark"
log=$run/console.log
last_log=$vmdir/last-console.log
: >"$log"
cat "$run/out" &
relays+=($!)
cat "$run/err" >&2 &
relays+=($!)
t0=$EPOCHREALTIME
(
    if IFS= read -r _; then
        t1=$EPOCHREALTIME
        awk -v a="$t0" -v b="$t1" -v acc="$accel" 'BEGIN { printf "vm-run: booted in %.1f s (%s)\n", b - a, acc }' >&2
    fi
    cat >/dev/null
) <"$run/mark" &
relays+=($!)
if [ "$debug" = 1 ]; then
    mkfifo "$run/console"
    tee -a "$log" <"$run/console" >&2 &
    relays+=($!)
    console=(-chardev "file,id=con,path=$run/console")
    cmdline="console=ttyS0 panic=-1"
else
    console=(-chardev "file,id=con,path=$log")
    cmdline="console=ttyS0 quiet loglevel=0 panic=-1"
fi

cmdline+=" ${VM_APPEND:-}"

"$qemu" -name vm-run -no-user-config -nodefaults -display none -monitor none \
    -machine pc -accel "$accel" -cpu "$cpu" -m "$mem" -smp "$smp" -no-reboot \
    -kernel "$boot_kernel" -initrd "$initrd" -append "$cmdline" \
    "${console[@]}" -serial chardev:con \
    -fsdev "local,id=hostfs,path=/,security_model=none,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=hostfs,mount_tag=host \
    -fsdev "local,id=scratchfs,path=$scratch,security_model=none,multidevs=remap" \
    -device virtio-9p-pci,fsdev=scratchfs,mount_tag=scratch \
    "${work_share[@]}" \
    -device virtio-serial-pci \
    -chardev "file,id=out,path=$run/out" -device virtserialport,chardev=out,name=vmrun.out \
    -chardev "file,id=err,path=$run/err" -device virtserialport,chardev=err,name=vmrun.err \
    -chardev "file,id=mark,path=$run/mark" -device virtserialport,chardev=mark,name=vmrun.mark \
    </dev/null &
qpid=$!
(
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    sleep "$timeout_s" &
    s=$!
    wait "$s"
    touch "$run/timed-out"
    kill "$qpid" 2>/dev/null
) &
watchdog=$!
qrc=0
wait "$qpid" || qrc=$?
qpid=""
kill "$watchdog" 2>/dev/null || true
watchdog=""
# The relays end when QEMU closes the FIFOs. Had QEMU never opened one (it failed to
# start), its reader would block in open(): opening it read-write and closing it again
# releases such a reader and is harmless to the others.
release_fifos() {
    local f
    for f in "$run"/out "$run"/err "$run"/mark "$run"/console; do
        if [ -p "$f" ]; then
            exec 3<>"$f"
            exec 3>&-
        fi
    done
}
while :; do
    alive=0
    for p in "${relays[@]}"; do
        if kill -0 "$p" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    release_fifos
    sleep 0.05
done
wait "${relays[@]}" 2>/dev/null || true
relays=()
cp "$log" "$last_log.$$" && mv "$last_log.$$" "$last_log"

if [ -f "$run/timed-out" ]; then
    echo "vm-run: timed out after $timeout_s s (VM_TIMEOUT); killed the VM. Console log: $last_log" >&2
    exit 124
fi
if [ -f "$ctl/status" ]; then
    read -r status <"$ctl/status"
    if [[ "$status" =~ ^[0-9]+$ ]]; then exit "$status"; fi
fi
echo "vm-run: the VM stopped without reporting the command's exit status (qemu exit status $qrc)." >&2
echo "vm-run: last lines of the console log ($last_log):" >&2
tail -n 20 "$last_log" >&2 || true
exit 125

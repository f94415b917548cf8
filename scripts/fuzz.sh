#!/usr/bin/env bash
# Fuzz the parsers of untrusted input (fuzz/: credential, login, token, auth_data, cose_key,
# enrolment, ctaphid, ctap2_answer, resource_path) and print the executions per target and
# whether any crashed.
#
#   scripts/fuzz.sh [SECONDS]             libFuzzer, SECONDS per target (default 60)
#   scripts/fuzz.sh --smoke [SECONDS]     the CI smoke: the same target functions as
#                                         ordinary property tests on stable, no libFuzzer,
#                                         SECONDS per target (default 3)
#   options: --target NAME (repeatable; default all)
#            --sanitizer address|none (default: address when the toolchain takes it)
#            --jobs N (libFuzzer processes per target, default 1)
#
# libFuzzer on the stable toolchain, two ways (the script picks the first that works):
#  1. cargo-fuzz (`cargo install cargo-fuzz`) with RUSTC_BOOTSTRAP=1, which lets stable
#     rustc take -Zsanitizer=address: `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET`.
#  2. without cargo-fuzz: plain `cargo build --release` of fuzz/ with the same
#     coverage flags cargo-fuzz passes (-Cpasses=sancov-module and the
#     -Cllvm-args=-sanitizer-coverage-* options, all stable -C flags), sanitizer none
#     (or address, again through RUSTC_BOOTSTRAP=1), then the target binaries run
#     directly. libfuzzer-sys compiles libFuzzer itself, so only a C++ compiler is needed.
# Crashes land in fuzz/artifacts/TARGET/; the growing corpus in fuzz/corpus/TARGET/ (both
# git-ignored); fuzz/seeds/TARGET/ holds the committed seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
SECONDS_PER=""
TARGETS=()
SANITIZER=""
JOBS=1
while (($#)); do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --target) TARGETS+=("$2"); shift ;;
        --sanitizer) SANITIZER="$2"; shift ;;
        --jobs) JOBS="$2"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
        [0-9]*) SECONDS_PER="$1" ;;
        *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
ALL_TARGETS=(credential login token auth_data cose_key enrolment ctaphid ctap2_answer resource_path)
((${#TARGETS[@]})) || TARGETS=("${ALL_TARGETS[@]}")

if ((SMOKE)); then
    SECONDS_PER=${SECONDS_PER:-3}
    echo "== fuzz smoke: ${TARGETS[*]} (${SECONDS_PER} s each, property tests on stable, fixed seed)"
    # The main workspace's target dir: the dependencies it already built are reused, so
    # after `cargo build` of the workspace this compiles only the fuzz crate.
    filter=()
    if ((${#TARGETS[@]} < ${#ALL_TARGETS[@]})); then filter=("${TARGETS[@]}"); fi
    mkdir -p target
    log=target/fuzz-smoke.log
    set +e
    CHROMECARD_FUZZ_SMOKE_SECS="$SECONDS_PER" cargo test --locked \
        --manifest-path fuzz/Cargo.toml --no-default-features --target-dir "$ROOT/target" \
        --test smoke -- --test-threads 2 --nocapture "${filter[@]}" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    echo "== fuzz smoke summary (executions per target; the real fuzzer is scripts/fuzz.sh SECONDS)"
    grep -E '^fuzz smoke:' "$log" || true
    if ((rc != 0)); then
        echo "fuzz smoke: FAILED (a target panicked or did not build; inputs under fuzz/artifacts/)" >&2
    fi
    exit "$rc"
fi

SECONDS_PER=${SECONDS_PER:-60}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

fuzz_flags() {
    local f=""
    f+=" -Cpasses=sancov-module"
    f+=" -Cllvm-args=-sanitizer-coverage-level=4"
    f+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
    f+=" -Cllvm-args=-sanitizer-coverage-pc-table"
    f+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
    f+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
    f+=" -Cllvm-args=-sanitizer-coverage-stack-depth"
    f+=" --cfg fuzzing -Cdebug-assertions -Coverflow-checks -Ccodegen-units=1"
    if [ "$1" = address ]; then f+=" -Zsanitizer=address"; fi
    echo "$f"
}

# Which way: cargo-fuzz if installed, else plain cargo with the same flags
# (CHROMECARD_FUZZ_WAY=plain-cargo forces the latter).
if [ -n "${CHROMECARD_FUZZ_WAY:-}" ]; then
    WAY=$CHROMECARD_FUZZ_WAY
elif cargo fuzz --version >/dev/null 2>&1; then
    WAY=cargo-fuzz
else
    WAY=plain-cargo
fi
if [ -z "$SANITIZER" ]; then
    # Stable rustc takes -Zsanitizer only with RUSTC_BOOTSTRAP=1; check that it links.
    if echo 'fn main(){}' | RUSTC_BOOTSTRAP=1 rustc -Zsanitizer=address -o /tmp/chromecard-asan-probe.$$ - >/dev/null 2>&1; then
        SANITIZER=address
    else
        SANITIZER=none
    fi
    rm -f /tmp/chromecard-asan-probe.$$
fi
echo "== fuzz: ${TARGETS[*]} for ${SECONDS_PER} s each; libFuzzer via $WAY, sanitizer $SANITIZER, $TRIPLE"

# fuzz/Cargo.lock is its own (fuzz/ is outside the workspace): build from it as committed,
# never from a lock cargo quietly re-resolved.
if [ "$WAY" = cargo-fuzz ]; then
    BIN_DIR="$ROOT/fuzz/target/$TRIPLE/release"
    # cargo-fuzz has no --locked (rust-fuzz/cargo-fuzz#312): check the lock first.
    cargo metadata --locked --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -s "$SANITIZER" --debug-assertions)
else
    # Its own target dir, so that it and cargo-fuzz do not rebuild each other's files.
    BIN_DIR="$ROOT/fuzz/target/plain/$TRIPLE/release"
    # Every flag is a stable -C flag except -Zsanitizer, which needs RUSTC_BOOTSTRAP=1.
    bootstrap=()
    if [ "$SANITIZER" = address ]; then bootstrap=(RUSTC_BOOTSTRAP=1); fi
    env "${bootstrap[@]}" RUSTFLAGS="$(fuzz_flags "$SANITIZER")" \
        cargo build --locked --manifest-path fuzz/Cargo.toml --release --bins --target "$TRIPLE" \
        --target-dir "$ROOT/fuzz/target/plain" \
        --config 'profile.release.debug="line-tables-only"'
fi

declare -A EXECS CRASH
failed=0
for t in "${TARGETS[@]}"; do
    corpus="fuzz/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    log="fuzz/artifacts/$t/last-run.log"
    echo "-- $t (${SECONDS_PER} s)"
    parallel=()
    # -jobs makes libFuzzer write fuzz-N.log files into the current directory.
    if ((JOBS > 1)); then parallel=(-jobs="$JOBS" -workers="$JOBS"); fi
    set +e
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}" \
        "$BIN_DIR/$t" "$corpus" "fuzz/seeds/$t" \
        -max_total_time="$SECONDS_PER" -print_final_stats=1 -max_len=4096 \
        -artifact_prefix="$artifacts/" "${parallel[@]}" >"$log" 2>&1
    rc=$?
    set -e
    if ((JOBS > 1)); then cat fuzz-[0-9]*.log >>"$log" 2>/dev/null && rm -f fuzz-[0-9]*.log; fi
    execs=$(grep -h '^stat::number_of_executed_units:' "$log" | awk '{s+=$2} END {print s+0}')
    EXECS[$t]=$execs
    crash=$(grep -lE 'ERROR: libFuzzer|SUMMARY: (Address|Leak)Sanitizer|panicked at' "$log" >/dev/null && echo yes || echo no)
    if ((rc != 0)) && [ "$crash" = no ]; then crash="exit $rc"; fi
    CRASH[$t]=$crash
    if [ "$crash" != no ]; then
        failed=1
        echo "   CRASH: see $log and $artifacts/"
        grep -E 'panicked at|ERROR:|SUMMARY|Test unit written' "$log" | head -5 | sed 's/^/   /'
    fi
    grep -E '^#[0-9]+ +DONE|^Done ' "$log" | tail -1 | sed 's/^/   /' || true
done

echo
echo "== fuzz summary ($WAY, sanitizer $SANITIZER, ${SECONDS_PER} s per target)"
printf '%-12s %14s  %s\n' target executions crash
for t in "${TARGETS[@]}"; do
    printf '%-12s %14s  %s\n' "$t" "${EXECS[$t]}" "${CRASH[$t]}"
done
if ((failed)); then
    echo "fuzz: a target crashed (artifacts under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: no crash found"

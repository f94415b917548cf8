//! The CI smoke for the fuzz targets, on the stable toolchain and without libFuzzer:
//! every target function of `chromecard_fuzz` runs over its seed corpus (`seeds/`,
//! plus `corpus/` if a libFuzzer run left one) and then over inputs mutated from it
//! by a fixed-seed generator, for a few seconds each. Not coverage-guided (that is
//! `scripts/fuzz.sh`), but the same code and the same property checks, and any input
//! that panics is written to `artifacts/smoke-<target>-<n>` and fails the test.
//!
//! `CHROMECARD_FUZZ_SMOKE_SECS` (default 3) sets the time per target,
//! `CHROMECARD_FUZZ_SEED` the generator's seed (default fixed, so runs repeat).

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: small, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const MAX_LEN: usize = 4096;

/// Tokens the mutator splices in, so that random search reaches the parsers' branches.
fn dictionary(target: &str) -> &'static [&'static [u8]] {
    match target {
        "credential" => &[
            b"\nauthorization: ",
            b"\ncookie: ",
            b"\nx-chromecard-csrf: 1",
            b"\nsec-fetch-site: cross-site",
            b"\nsec-fetch-site: same-origin",
            b"\norigin: http://127.0.0.1:8770",
            b"\nhost: 127.0.0.1:8770",
            b"\ncontent-type: application/json",
            b"Bearer ",
            b"bearer  ",
            b"Basic ",
            b"chromecard_session=",
            b"; ",
            b"=",
            b"GET",
            b"POST",
            b"\xff",
            b" ",
        ],
        "login" => &[
            b"{",
            b"}",
            b"\"username\"",
            b"\"scope\"",
            b"\"cookie\"",
            b":",
            b",",
            b"[",
            b"]",
            b"\"alice\"",
            b"\"counter\"",
            b"true",
            b"null",
            b"1e999",
            b"\"\\u0000\"",
            b"\"\\ud800\"",
        ],
        "token" => &[b"A", b"-", b"_", b"=", b"+", b"/", b"\xc3\xa9"],
        "auth_data" | "cose_key" => &[
            b"\xa5\x01\x02\x03\x26\x20\x01\x21\x58\x20",
            b"\xa4\x01\x01\x03\x27\x20\x06\x21\x58\x20",
            b"\x22\x58\x20",
            b"\xa1\x6bcredProtect\x02",
            b"\xa0",
            b"\x41",
            b"\x58\x20",
            b"\x59\xff\xff",
            b"\x9f\xff",
            b"\xbf\xff",
            b"\x00\x10",
        ],
        "enrolment" => &[
            b"\n",
            b":",
            b",",
            b"es256",
            b"eddsa",
            b"+presence",
            b"+verification",
            b"+pin",
            b"#",
            b"alice",
            b"==",
        ],
        "ctaphid" => &[
            b"\x00\x00\x00\x09\x90",
            b"\x00\x00\x00\x09\x83",
            b"\x00\x00\x00\x09\xbb\x00\x01\x02",
            b"\x00\x00\x00\x09\xbf\x00\x01",
            b"\x00\x00\x00\x09\x00",
            b"\x00\x00\x00\x09\x01",
        ],
        "resource_path" => &[
            b"/resource/",
            b"..",
            b"%2e",
            b"%2F",
            b"%5c",
            b"//",
            b"?",
            b"\\",
        ],
        "ctap2_answer" => &[b"\x00\xa3", b"\x01", b"\x58\x25", b"\x62id", b"\x64type"],
        _ => &[],
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], dict: &[&[u8]], mut v: Vec<u8>) -> Vec<u8> {
    if rng.below(16) == 0 {
        // Fresh random bytes now and then.
        let len = rng.below(256);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    for _ in 0..1 + rng.below(8) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a chunk.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            5 if !seeds.is_empty() => {
                // Splice with another seed.
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            6 | 7 if !dict.is_empty() => {
                let word = dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                v.splice(at..at, word.iter().copied());
            }
            8 if len > 0 => v.truncate(rng.below(len)),
            _ => {}
        }
    }
    v.truncate(MAX_LEN);
    v
}

fn read_dir_files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| fs::read(p).ok())
        .collect()
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    let _ = fs::create_dir_all(&dir);
    let mut n = 0;
    loop {
        let p = dir.join(format!("smoke-{target}-{n}"));
        if !p.exists() {
            let _ = fs::write(&p, input);
            return p;
        }
        n += 1;
    }
}

fn run_target(target: &str) {
    let f = chromecard_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no target {target}"));
    let secs: f64 = std::env::var("CHROMECARD_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let seed: u64 = std::env::var("CHROMECARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c4_c0ca_4d5e_ed00);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = read_dir_files(&root.join("seeds").join(target));
    let corpus = read_dir_files(&root.join("corpus").join(target));
    let replayed = seeds.len() + corpus.len();
    seeds.extend(corpus);
    assert!(
        !seeds.is_empty(),
        "no seeds for {target} under fuzz/seeds/{target}"
    );
    let dict = dictionary(target);
    // Each target gets its own stream, the same on every run.
    let name_hash = target.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = Rng((seed ^ name_hash) | 1);

    let check = |input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
            let saved = save_crash(target, input);
            panic!(
                "fuzz target {target} failed on a {}-byte input, saved to {} \
                 (replay: cargo test --manifest-path fuzz/Cargo.toml --no-default-features, or \
                 scripts/fuzz.sh reproduces with the libFuzzer binary); input: {:?}",
                input.len(),
                saved.display(),
                String::from_utf8_lossy(input)
            );
        }
    };
    for s in &seeds {
        check(s);
    }
    let start = Instant::now();
    let budget = Duration::from_secs_f64(secs);
    let mut execs = replayed as u64;
    let mut current = seeds[0].clone();
    while start.elapsed() < budget {
        for _ in 0..64 {
            let base = if rng.below(4) == 0 {
                current.clone()
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            let input = mutate(&mut rng, &seeds, dict, base);
            check(&input);
            current = input;
            execs += 1;
        }
    }
    println!(
        "fuzz smoke: {target}: {execs} executions in {:.1} s ({replayed} seeds replayed), no crash",
        start.elapsed().as_secs_f64()
    );
}

macro_rules! smoke {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            run_target(stringify!($name));
        }
    )*};
}

smoke!(
    credential,
    login,
    token,
    auth_data,
    cose_key,
    enrolment,
    ctaphid,
    ctap2_answer,
    resource_path
);

#[test]
fn every_target_has_a_smoke_test_and_seeds() {
    let smoked = [
        "credential",
        "login",
        "token",
        "auth_data",
        "cose_key",
        "enrolment",
        "ctaphid",
        "ctap2_answer",
        "resource_path",
    ];
    for (name, _) in chromecard_fuzz::TARGETS {
        assert!(smoked.contains(name), "target {name} has no smoke test");
        let fuzz_bin = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(
            fuzz_bin.is_file(),
            "target {name} has no fuzz_targets/{name}.rs"
        );
    }
}
